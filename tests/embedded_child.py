"""A holder process for tests/test_embedded.py, driven line by line on stdin.

    python embedded_child.py DATA_DIR

installs the exit signal handlers (as every program holding the servers must: SIGTERM then releases
them), prints ``loaded``, then answers each command with one line:
``go`` (start_embedded from the main thread) → JSON with the URLs and server pids;
``write NAME`` → ``ok``; ``read`` → JSON rows/keys; ``release`` → ``released``. EOF exits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path

import asyncpg
import redis

from mcp_shared_memory.embedded import EmbeddedBackends, install_exit_signal_handlers, start_embedded


async def _write(dsn: str, name: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS holders (name text PRIMARY KEY)")
        await conn.execute("INSERT INTO holders VALUES ($1)", name)
    finally:
        await conn.close()


async def _read(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return [r["name"] for r in await conn.fetch("SELECT name FROM holders ORDER BY name")]
    finally:
        await conn.close()


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=f"[child {os.getpid()}] %(message)s")
    install_exit_signal_handlers()
    data_dir = Path(sys.argv[1])
    backends: EmbeddedBackends | None = None
    client: redis.Redis | None = None

    def reply(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    reply("loaded")
    for line in sys.stdin:
        command, _, arg = line.strip().partition(" ")
        if command == "go":
            backends = start_embedded(data_dir, postgres=True, redis=True)
            assert backends.database_url and backends.redis_url
            client = redis.Redis.from_url(backends.redis_url)
            assert backends.postgres is not None
            postmaster = int((backends.postgres.pgdata / "postmaster.pid").read_text().split()[0])
            reply(
                json.dumps(
                    {
                        "pid": os.getpid(),
                        "database_url": backends.database_url,
                        "redis_url": backends.redis_url,
                        "postmaster_pid": postmaster,
                        "valkey_pid": client.info("server")["process_id"],
                        "postgres_mode": backends.postgres.start_mode if backends.postgres else None,
                    }
                )
            )
        elif command == "write":
            assert backends is not None and backends.database_url and client is not None
            asyncio.run(_write(backends.database_url, arg))
            client.sadd("holders", arg)
            reply("ok")
        elif command == "read":
            assert backends is not None and backends.database_url and client is not None
            keys = sorted(k.decode() for k in client.smembers("holders"))  # type: ignore[union-attr]
            reply(json.dumps({"rows": asyncio.run(_read(backends.database_url)), "keys": keys}))
        elif command == "release":
            assert backends is not None
            if client is not None:
                client.close()
            backends.release()
            reply("released")


if __name__ == "__main__":
    main()
