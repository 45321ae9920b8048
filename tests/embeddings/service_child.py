"""A client process of the embedding service for tests/embeddings/test_service.py, driven line by line.

    python service_child.py DATA_DIR

installs the exit signal handlers (as the CLI does), prints ``loaded``, then answers each command with one
JSON line: ``open`` → the embedder's class (the service starts in the background, as in a server);
``start`` → the service's pid once this process holds it (blocking start, as many processes racing);
``embed TEXT`` → the vector and whether it was embedded in-process; ``close`` → ``closed``. EOF exits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path

from mcp_shared_memory.embedded import install_exit_signal_handlers
from mcp_shared_memory.embeddings import create_embedder
from mcp_shared_memory.embeddings.local_service import LocalServiceEmbedder
from mcp_shared_memory.settings import Settings


async def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=f"[child {os.getpid()}] %(message)s")
    embedder = create_embedder(Settings(data_dir=Path(sys.argv[1])))
    assert isinstance(embedder, LocalServiceEmbedder)

    def reply(value: object) -> None:
        sys.stdout.write(json.dumps(value) + "\n")
        sys.stdout.flush()

    reply("loaded")
    while line := await asyncio.to_thread(sys.stdin.readline):
        command, _, arg = line.rstrip("\n").partition(" ")
        if command == "open":
            await embedder.open(wait=False)
            reply(type(embedder).__name__)
        elif command == "start":
            await asyncio.to_thread(embedder.service.start)
            reply(embedder.service.status().get("pid"))
        elif command == "embed":
            vector = await embedder.embed(arg)
            reply({"vector": vector.tolist(), "in_process": embedder.in_process})
        elif command == "close":
            await embedder.close()
            reply("closed")
    await embedder.close()


if __name__ == "__main__":
    install_exit_signal_handlers()
    asyncio.run(main())
