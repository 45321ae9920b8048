"""The system under test, all real processes: an embedded PostgreSQL in a private data dir (held by this
process and by every server), a private Redis that can be SIGKILLed or stopped, the data dir's shared
embedding service (started by this process, used by every server), HTTP server replicas that can be
SIGKILLed and started again on their port, and stdio servers (one per agent connection)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import anyio
import httpx2
import redis.asyncio as aioredis
from mcp import Client
from mcp.client.stdio import stdio_client
from pydantic import SecretStr

from mcp_shared_memory.embedded import EmbeddedBackends, remove_data_dir, start_embedded
from mcp_shared_memory.runtime import Runtime, open_runtime
from mcp_shared_memory.settings import Settings

from ..redis_server import RedisProcess, free_port, redis_process
from ..server.mcp_clients import stdio_server


class Replica:
    """``mcp-shared-memory serve --transport http`` on a fixed port."""

    def __init__(self, env: dict[str, str], log: IO[bytes]) -> None:
        self.env, self.log = env, log
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    async def start(self) -> None:
        args = [sys.executable, "-m", "mcp_shared_memory", "serve", "--transport", "http", "--port", str(self.port)]
        self.proc = subprocess.Popen(args, env=self.env, stdout=subprocess.DEVNULL, stderr=self.log)  # noqa: ASYNC220 - returns at once
        async with httpx2.AsyncClient() as http:
            with anyio.fail_after(90):
                while True:
                    assert self.proc.poll() is None, "a replica exited while starting; see its log"
                    try:
                        if (await http.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1)).status_code == 200:
                            return
                    except httpx2.HTTPError:
                        pass
                    await anyio.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Cluster:
    backends: EmbeddedBackends
    redis: RedisProcess
    replicas: list[Replica]
    runtime: Runtime  # this process's own server runtime: tokens, and what PostgreSQL holds
    env: dict[str, str]
    data_dir: Path
    errlog: IO[str]  # the stdio servers' stderr

    @property
    def log_path(self) -> Path:
        """Every server's stderr (the replicas' and the stdio servers')."""
        return self.data_dir / "servers.log"

    @property
    def database_url(self) -> str:
        assert self.backends.database_url is not None
        return self.backends.database_url

    @property
    def postmaster_pid(self) -> int:
        assert self.backends.postgres is not None
        pid = self.backends.postgres._server_pid()
        assert pid is not None
        return pid

    @property
    def embedding_service_pid(self) -> int:
        return int((self.data_dir / "embeddings" / "service.pid").read_text())

    async def redis_pid(self) -> int:
        client = aioredis.Redis.from_url(self.redis.url, socket_timeout=2)
        try:
            return int((await client.info("server"))["process_id"])
        finally:
            await client.aclose()

    def stdio_client(self, tenant: str, agent_id: str, scope: str) -> Client:
        """A ``serve`` process over stdio bound to ``agent_id`` in ``tenant`` (a new process per client)."""
        params = stdio_server(self.env, tenant=tenant, agent_id=agent_id, scope=scope)
        return Client(stdio_client(params, errlog=self.errlog), mode="auto")  # type: ignore[arg-type]


@asynccontextmanager
async def cluster(replicas: int = 2) -> AsyncIterator[Cluster]:
    data_dir = Path(tempfile.mkdtemp(prefix="msm-faults-", dir="/tmp"))
    backends = await anyio.to_thread.run_sync(lambda: start_embedded(data_dir, postgres=True, redis=False))
    try:
        async with redis_process() as redis:
            env = {k: v for k, v in os.environ.items() if not k.startswith("MSM_")}
            # the servers attach to the embedded PostgreSQL as holders themselves (and so supervise it)
            env.update(MSM_DATA_DIR=str(data_dir), MSM_REDIS_URL=redis.url, MSM_REDIS_TIMEOUT="0.5")
            settings = Settings(data_dir=data_dir, redis_url=SecretStr(redis.url), redis_timeout=0.5)
            log_path = data_dir / "servers.log"
            with open(log_path, "ab") as log, open(log_path, "a") as errlog:  # noqa: ASYNC230 - local, once
                servers = [Replica(env, log) for _ in range(replicas)]
                try:
                    async with open_runtime(settings) as runtime:  # applies the migrations first
                        async with anyio.create_task_group() as tg:
                            for server in servers:
                                tg.start_soon(server.start)
                        yield Cluster(backends, redis, servers, runtime, env, data_dir, errlog)
                finally:
                    for server in servers:
                        server.stop()
    finally:
        await anyio.to_thread.run_sync(backends.release)
        remove_data_dir(data_dir)


async def wait_healthy(url: str, seconds: float = 60) -> float:
    """Seconds until ``url``'s /healthz answers 200."""
    began = time.monotonic()
    health = url.replace("/mcp", "/healthz")
    async with httpx2.AsyncClient() as http:
        with anyio.fail_after(seconds):
            while True:
                try:
                    if (await http.get(health, timeout=1)).status_code == 200:
                        return time.monotonic() - began
                except httpx2.HTTPError:
                    pass
                await anyio.sleep(0.05)
