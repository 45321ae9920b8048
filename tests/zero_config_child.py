"""One agent process on the zero-config backends: writes its event, waits to see the other's,
then reports what it sees via recent and semantic search (JSON on stdout)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import anyio

from mcp_shared_memory import Principal, Scope, Settings, open_memory

FACTS = {
    "one": "The payment service retries failed card charges three times",
    "two": "Our staging cluster runs in the Frankfurt region",
}
QUERIES = {"one": "where is staging hosted?", "two": "how often are declined payments retried?"}


async def main(name: str, data_dir: str) -> None:
    settings = Settings(data_dir=Path(data_dir), database_url=None, redis_url=None)
    agent = Principal(
        tenant="zero", agent_id=f"agent-{name}", allowed_scopes=("user:*",), default_scope=Scope("user", "u")
    )
    async with open_memory(settings) as memory:
        await memory.write_event(agent, FACTS[name], importance=0.8)
        deadline = time.monotonic() + 60
        while len(recent := await memory.get_recent_shared(agent, limit=10)) < 2:
            if time.monotonic() > deadline:
                break
            await anyio.sleep(0.05)
        hits = await memory.search_shared(agent, QUERIES[name], limit=1)
        print(json.dumps({
            "recent": sorted(e.agent_id for e in recent),
            "search": [(h.agent_id, h.content) for h in hits],
        }))  # fmt: skip


if __name__ == "__main__":
    from mcp_shared_memory.embedded import install_exit_signal_handlers

    install_exit_signal_handlers()  # a terminated agent releases the embedded servers it holds
    anyio.run(main, sys.argv[1], sys.argv[2])
