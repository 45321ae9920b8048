"""The server on a real Redis Cluster (``redis+cluster://``): every command and script of a scope in one
slot, sharded pub/sub between server processes, and a master SIGKILLed while agents write."""

from __future__ import annotations

import logging
import time
import uuid

import anyio
import pytest
from mcp import Client
from redis.asyncio.cluster import RedisCluster

from mcp_shared_memory.errors import RateLimited, SharedMemoryError
from mcp_shared_memory.event_filter import EventFilter
from mcp_shared_memory.models import Event, Principal, Scope
from mcp_shared_memory.recent import MemberRange
from mcp_shared_memory.runtime import Connections
from mcp_shared_memory.settings import Settings
from mcp_shared_memory.stores.cache import CachedRecent, RedisCache, RedisKeys
from mcp_shared_memory.stores.event_search import PostgresEventSearch
from mcp_shared_memory.stores.messages import EventWritten, Topic, WorkspaceChanged
from mcp_shared_memory.stores.quota import TenantEventQuota
from mcp_shared_memory.stores.redis_client import RedisBreaker, node_client

from ..conftest import fresh_id, isolated
from ..redis_server import RedisClusterProcesses
from ..server.mcp_clients import Inbox, stdio_server, watch
from ..test_failure_modes import Heard, runtime_on

pytestmark = pytest.mark.anyio

REDIS_LOGGERS = ("mcp_shared_memory.stores.redis_client", "mcp_shared_memory.stores.bus")


def agent(tenant: str, agent_id: str = "writer") -> Principal:
    return Principal(tenant=tenant, agent_id=agent_id, allowed_scopes=("user:*",), default_scope=Scope("user", "u0"))


def scopes_on_every_master(client: RedisCluster, keys: RedisKeys, tenant: str) -> list[Scope]:
    """One user scope per master: their keys (and so their Lua scripts) live on three different nodes."""
    found: dict[str, Scope] = {}
    for i in range(1000):
        scope = Scope("user", f"u{i}")
        node = client.get_node_from_key(keys.recent(tenant, scope))
        assert node is not None
        found.setdefault(node.name, scope)
        if len(found) == 3:
            return list(found.values())
    raise AssertionError("three masters expected")


async def truth(connections: Connections, tenant: str, scope: Scope, limit: int = 100) -> list[Event]:
    return await PostgresEventSearch(connections.db).recent(tenant, scope, EventFilter(), limit=limit)


def redis_failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name in REDIS_LOGGERS and r.levelno >= logging.WARNING]


async def test_writes_cache_dedup_rate_limit_and_quota_run_in_one_slot_each(
    settings: Settings, connections: Connections, backdoor: RedisCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """Scopes on all three masters: writes land in the recent set of their own slot (one script with the
    recent and the dedup key), reads are served from it, dedup and the rate limiter's and quota's
    scripts answer, and no Redis call failed (a cross-slot command would, and fall back silently)."""
    caplog.set_level(logging.WARNING)
    tenant = fresh_id("tenant")
    me = agent(tenant)
    async with runtime_on(
        isolated(settings), connections, backdoor_url(backdoor), rate_limit_per_minute=60, rate_limit_burst=3
    ) as runtime:
        keys = RedisKeys(runtime.settings.redis_prefix)
        scopes = scopes_on_every_master(backdoor, keys, tenant)
        for scope in scopes:
            for n in range(3):
                written = await runtime.memory.write_event(me, f"{scope.id} event {n}", scope=scope, importance=0.8)
                assert written.status == "written"
            again = await runtime.memory.write_event(me, f"{scope.id} event 2", scope=scope)
            assert (again.status, again.original_agent_id) == ("deduplicated", "writer")
            replay_key = f"key-{scope.id}"
            first = await runtime.memory.write_event(me, "keyed", scope=scope, idempotency_key=replay_key)
            replayed = await runtime.memory.write_event(me, "keyed", scope=scope, idempotency_key=replay_key)
            assert replayed.status == "replayed" and replayed.event_id == first.event_id

            expected = [e.seq for e in await truth(connections, tenant, scope)]
            assert [e.seq for e in await runtime.memory.get_recent_shared(me, scope=scope, limit=10)] == expected
            cache = RedisCache(
                backdoor, prefix=runtime.settings.redis_prefix, recent_max=100, recent_ttl=60, breaker=RedisBreaker(0)
            )
            cached = await cache.read_recent(tenant, scope, MemberRange(count=10))
            assert isinstance(cached, CachedRecent) and [e.seq for e in cached.events] == expected

        assert runtime.rate_limiter is not None
        for _ in range(3):
            await runtime.rate_limiter.take(tenant, "agent:writer")
        with pytest.raises(RateLimited):
            await runtime.rate_limiter.take(tenant, "agent:writer")

        quota = TenantEventQuota(
            connections.db, backdoor, prefix=runtime.settings.redis_prefix, limit=100, breaker=RedisBreaker(0)
        )
        assert await quota.count(tenant) == 12
        await quota.added(tenant, 2)
        assert await quota.count(tenant) == 14
    assert redis_failures(caplog) == []


def backdoor_url(client: RedisCluster) -> str:
    node = client.get_default_node()
    assert node is not None
    return f"redis+cluster://{node.host}:{node.port}"


async def test_notifications_cross_runtimes_on_sharded_channels(
    settings: Settings, connections: Connections, cluster: RedisClusterProcesses, backdoor: RedisCluster
) -> None:
    """Two server processes: what one writes in scopes on three masters, the other hears, over sharded
    channels (SSUBSCRIBE on the node owning the channel's slot, nothing on the broadcast pub/sub)."""
    tenant = fresh_id("tenant")
    me = agent(tenant)
    common = isolated(settings)
    async with (
        runtime_on(common, connections, cluster.url) as writer,
        runtime_on(common, connections, cluster.url) as reader,
    ):
        scopes = scopes_on_every_master(backdoor, RedisKeys(common.redis_prefix), tenant)
        heard = Heard()
        reader.bus.add_listener(heard)
        for scope in scopes:
            await reader.bus.subscribe(Topic(tenant, scope))
        await reader.bus.subscribe(Topic(tenant))

        for scope in scopes:
            channel = reader.bus.channel(Topic(tenant, scope))
            owner = backdoor.get_node_from_key(channel)
            assert owner is not None
            node = node_client(backdoor, owner)
            try:
                assert dict(await node.pubsub_shardnumsub(channel)).get(channel) == 1
                assert dict(await node.pubsub_numsub(channel)).get(channel) == 0
            finally:
                await node.aclose()

        ids = set()
        for scope in scopes:
            written = await writer.memory.write_event(me, f"hello from {scope.id}", scope=scope)
            ids.add(written.event_id)
        await writer.bus.publish(WorkspaceChanged(tenant, "w1", created=True, owner="writer"))
        with anyio.fail_after(5):
            await heard.nth(len(scopes) + 1)
        assert {m.event_id for m in heard.messages if isinstance(m, EventWritten)} == ids
        assert [m.workspace_id for m in heard.messages if isinstance(m, WorkspaceChanged)] == ["w1"]


async def test_two_server_processes_notify_each_other_through_the_cluster(
    backend_env: dict[str, str], cluster: RedisClusterProcesses
) -> None:
    """Real `mcp-shared-memory serve` processes (stdio) configured with a redis+cluster:// URL."""
    tenant = f"t{uuid.uuid4().hex[:10]}"
    uri = f"memory://{tenant}/user/alice/recent"
    env = {**backend_env, "MSM_REDIS_URL": cluster.url, "MSM_EMBEDDING_SERVICE": "off"}
    binding = {"tenant": tenant, "scope": "user:alice", "agent_type": "code"}
    inbox = Inbox()
    async with (
        Client(stdio_server(env, agent_id="agent-a", **binding), mode="legacy") as a,
        Client(stdio_server(env, agent_id="agent-b", **binding), mode="legacy", message_handler=inbox) as b,
        watch(b, "legacy", inbox, [uri]),
    ):
        await a.call_tool("write_event", {"content": "payments-api moved to the cluster", "importance": 0.8})
        with anyio.fail_after(10):
            await inbox.wait_for(lambda box: uri in box.updated)
        recent = await b.call_tool("get_recent_shared", {"limit": 5})
        assert recent.structured_content is not None
        assert [e["agent_id"] for e in recent.structured_content["events"]] == ["agent-a"]


async def test_a_master_killed_during_writes_loses_nothing_and_notifications_resume(
    settings: Settings, connections: Connections, cluster: RedisClusterProcesses, backdoor: RedisCluster
) -> None:
    """Four agents write (with idempotency keys, retrying failures) in scopes on all three masters while
    the master of one scope is SIGKILLed: its replica takes over, every acknowledged write is stored
    exactly once, the subscriber hears that scope again, and the recent cache agrees with PostgreSQL."""
    tenant = fresh_id("tenant")
    common = isolated(settings)
    acknowledged: dict[str, uuid.UUID] = {}  # idempotency key -> event id
    async with (
        runtime_on(common, connections, cluster.url) as writer,
        runtime_on(common, connections, cluster.url) as reader,
    ):
        scopes = scopes_on_every_master(backdoor, RedisKeys(common.redis_prefix), tenant)
        victim_scope = scopes[0]
        heard = Heard()
        reader.bus.add_listener(heard)
        for scope in scopes:
            await reader.bus.subscribe(Topic(tenant, scope))
        stop, enough = anyio.Event(), anyio.Event()

        async def write(agent_id: str, key: str, scope: Scope) -> uuid.UUID:
            while True:  # a client retries a failed call with the same key
                try:
                    done = await writer.memory.write_event(
                        agent(tenant, agent_id), f"{key} content", scope=scope, idempotency_key=key, importance=0.7
                    )
                except SharedMemoryError:
                    continue
                assert done.event_id is not None
                acknowledged[key] = done.event_id
                if len(acknowledged) >= 40:
                    enough.set()
                return done.event_id

        async def agent_loop(n: int) -> None:
            i = 0
            while not stop.is_set():
                await write(f"agent-{n}", f"a{n}-{i}", scopes[(n + i) % len(scopes)])
                i += 1

        async with anyio.create_task_group() as agents:
            for n in range(4):
                agents.start_soon(agent_loop, n)
            with anyio.fail_after(30):
                await enough.wait()
            owner = backdoor.get_node_from_key(RedisKeys(common.redis_prefix).recent(tenant, victim_scope))
            assert owner is not None
            victim = next(node for node in cluster.nodes if node.port == int(owner.port))
            victim.kill()
            killed = time.monotonic()
            with anyio.fail_after(30):
                await cluster.wait_healthy()
            promoted = time.monotonic() - killed

            # Notifications of the victim's scope resume: a new write there is heard.
            def was_heard(event_id: uuid.UUID) -> bool:
                return any(isinstance(m, EventWritten) and m.event_id == event_id for m in heard.messages)

            with anyio.fail_after(15):
                for n in range(1_000_000):
                    event_id = await write("prober", f"probe-{n}", victim_scope)
                    with anyio.move_on_after(0.2):
                        while not was_heard(event_id):
                            await heard.nth(len(heard.messages) + 1)
                    if was_heard(event_id):
                        break
            resumed = time.monotonic() - killed
            stop.set()
        print(f"\nfailover: replica promoted after {promoted:.1f} s, notifications resumed after {resumed:.1f} s")

        # The checker: every acknowledged write is in PostgreSQL exactly once.
        stored: list[Event] = []
        for scope in scopes:
            stored += await truth(connections, tenant, scope, limit=1000)
        assert sorted(e.id for e in stored) == sorted(set(acknowledged.values()))
        assert len({e.id for e in stored}) == len(stored) == len(acknowledged)

        # The recent cache agrees with PostgreSQL in every scope, as read by either server.
        for scope in scopes:
            expected = [e.seq for e in await truth(connections, tenant, scope, limit=20)]
            for runtime in (writer, reader):
                assert [
                    e.seq for e in await runtime.memory.get_recent_shared(agent(tenant), scope=scope, limit=20)
                ] == (expected)
            cache = RedisCache(
                backdoor, prefix=common.redis_prefix, recent_max=100, recent_ttl=60, breaker=RedisBreaker(0)
            )
            cached = await cache.read_recent(tenant, scope, MemberRange(count=20))
            assert isinstance(cached, CachedRecent) and [e.seq for e in cached.events] == expected

    victim.start()  # back as a replica of the promoted one, for whatever runs next
    with anyio.fail_after(30):
        await cluster.wait_healthy()
