"""A server process for crash tests: opens a runtime from its MSM_* environment, prints "ready", then
writes one event per line read from stdin (content, idempotency key = the line) and prints its seq."""

from __future__ import annotations

import sys

import anyio

from mcp_shared_memory import Principal, Scope, Settings, open_runtime


async def main() -> None:
    settings = Settings()
    agent = Principal(
        tenant=sys.argv[1], agent_id="crashing-writer", allowed_scopes=("user:*",), default_scope=Scope("user", "alice")
    )
    async with open_runtime(settings) as runtime:
        print("ready", flush=True)
        while line := (await anyio.to_thread.run_sync(sys.stdin.readline)).strip():
            written = await runtime.memory.write_event(agent, line, idempotency_key=line)
            assert written.event is not None
            print(written.event.seq, flush=True)


if __name__ == "__main__":
    anyio.run(main)
