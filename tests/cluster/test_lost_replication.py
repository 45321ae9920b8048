"""Replication is asynchronous: a cache write a master acknowledged but never sent to its replica dies
with it. The replica promoted in its place must not serve a recent list missing that event (PostgreSQL
has it) while later events land above the gap."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from mcp_shared_memory.models import Scope
from mcp_shared_memory.runtime import Connections
from mcp_shared_memory.settings import Settings
from mcp_shared_memory.stores.cache import RedisKeys

from ..conftest import fresh_id, isolated
from ..redis_server import ClusterNodeProcess, RedisClusterProcesses
from ..test_failure_modes import runtime_on
from .test_cluster import agent, truth

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def node(port: int) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis(port=port, socket_timeout=2, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


async def command(port: int, *args: str) -> object:
    async with node(port) as client:
        return await client.execute_command(*args)  # type: ignore[no-untyped-call]


async def replica_of(master: ClusterNodeProcess, cluster: RedisClusterProcesses) -> ClusterNodeProcess:
    """The master's replica, once it has acknowledged everything the master wrote so far."""
    with anyio.fail_after(10):
        while True:
            role = await command(master.port, "ROLE")
            assert isinstance(role, list) and role[0] == "master"
            offset, replicas = int(role[1]), role[2]
            if replicas and int(replicas[0][2]) >= offset:
                return next(n for n in cluster.nodes if n.port == int(replicas[0][1]))
            await anyio.sleep(0.05)


async def pid_of(server: ClusterNodeProcess) -> int:
    async with node(server.port) as client:
        return int((await client.info("server"))["process_id"])


async def test_a_cache_write_lost_with_its_master_leaves_no_stale_recent_list(
    settings: Settings, connections: Connections, cluster: RedisClusterProcesses, backdoor: RedisCluster
) -> None:
    """The scope is cached (floor set, replicated); the replica is frozen and cut off, an event is written
    (acknowledged by the master only), the master is SIGKILLed and the replica takes over; writes go on.
    Read through the server, the recent list equals PostgreSQL's newest events, the lost one included."""
    tenant = fresh_id("tenant")
    me = agent(tenant)
    scope = Scope("user", "u0")
    common = isolated(settings)
    key = RedisKeys(common.redis_prefix).recent(tenant, scope)
    async with runtime_on(common, connections, cluster.url) as writer:
        for n in range(3):
            await writer.memory.write_event(me, f"before the failover {n}", scope=scope)
        await writer.memory.get_recent_shared(me, scope=scope, limit=10)  # cold: refilled, with a floor
        owner = backdoor.get_node_from_key(key)
        assert owner is not None
        master = next(n for n in cluster.nodes if n.port == int(owner.port))
        replica = await replica_of(master, cluster)
        frozen = await pid_of(replica)

        os.kill(frozen, signal.SIGSTOP)  # it can neither read the stream nor reconnect
        try:
            await command(master.port, "CLIENT", "KILL", "TYPE", "replica")
            lost = await writer.memory.write_event(me, "acknowledged by the master alone", scope=scope)
            master.kill()
        finally:
            os.kill(frozen, signal.SIGCONT)
        try:
            await command(replica.port, "CLUSTER", "FAILOVER", "TAKEOVER")
            with anyio.fail_after(30):
                await cluster.wait_healthy()

            # The promoted replica holds the scope's floor but not the event its master acknowledged last.
            assert lost.event is not None
            assert await backdoor.zrangebyscore(key, "-inf", "-inf") != []  # the floor
            assert await backdoor.zcount(key, lost.event.seq, lost.event.seq) == 0

            for n in range(3):
                await writer.memory.write_event(me, f"after the failover {n}", scope=scope)
            expected = [e.seq for e in await truth(connections, tenant, scope, limit=10)]
            assert lost.event.seq in expected and len(expected) == 7
            async with runtime_on(common, connections, cluster.url) as another:
                for runtime in (writer, another, writer):
                    recent = await runtime.memory.get_recent_shared(me, scope=scope, limit=10)
                    assert [e.seq for e in recent] == expected
        finally:
            master.start()  # back as a replica of the promoted one, for whatever runs next
            with anyio.fail_after(30):
                await cluster.wait_healthy()
