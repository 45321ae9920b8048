"""What the README and DESIGN.md promise under failure, with real faults: Redis cut, stalled or SIGKILLed
(a private server behind a fault-injecting proxy), PostgreSQL slowed by a trigger, an embedder that is
down or rejects one text, and a server process killed between its COMMIT and its Redis update."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from mcp import Client
from redis.exceptions import ConnectionError as RedisConnectionError

from mcp_shared_memory.errors import ConfigError
from mcp_shared_memory.memory import SharedMemory
from mcp_shared_memory.models import Principal, Scope
from mcp_shared_memory.runtime import Connections, Runtime, open_connections, open_runtime
from mcp_shared_memory.server.app import build_server
from mcp_shared_memory.server.state import ServerLifespan
from mcp_shared_memory.settings import Settings
from mcp_shared_memory.stores.messages import BusMessage, EventWritten, Topic
from mcp_shared_memory.stores.redis_client import connect_redis

from .conftest import Backdoor, fresh_id, isolated
from .faults import eventually, faulty_redis_runtime
from .redis_server import redis_process
from .tcp_proxy import FaultyProxy, faulty_proxy

pytestmark = pytest.mark.anyio

ALICE = Scope("user", "alice")


@asynccontextmanager
async def runtime_on(
    settings: Settings, connections: Connections, redis_url: str, **changes: object
) -> AsyncIterator[Runtime]:
    """Another server process: the session's PostgreSQL and model, its own Redis client to ``redis_url``."""
    client = connect_redis(redis_url, timeout=float(changes.get("redis_timeout", 0.5)))  # type: ignore[arg-type]
    try:
        own = Connections(db=connections.db, redis=client, embedder=connections.embedder)
        async with open_runtime(settings.model_copy(update=changes), connections=own) as runtime:
            yield runtime
    finally:
        await client.aclose()


@asynccontextmanager
async def two_processes(
    settings: Settings, connections: Connections
) -> AsyncIterator[tuple[FaultyProxy, Runtime, Runtime]]:
    """Two server processes on one private Redis: A reaches it through a fault-injecting proxy, B directly."""
    common = isolated(settings, redis_breaker_seconds=0)
    async with (
        redis_process() as server,
        faulty_proxy("127.0.0.1", server.port) as proxy,
        runtime_on(common, connections, proxy.url()) as a,
        runtime_on(common, connections, server.url) as b,
    ):
        yield proxy, a, b


class Heard:
    """Bus messages a listener received, with a way to wait for one."""

    def __init__(self) -> None:
        self.messages: list[BusMessage] = []
        self._event = anyio.Event()

    async def __call__(self, message: BusMessage) -> None:
        self.messages.append(message)
        self._event.set()
        self._event = anyio.Event()

    async def nth(self, n: int) -> BusMessage:
        """The n-th message heard (1-based), once it arrives."""
        while len(self.messages) < n:
            await self._event.wait()
        return self.messages[n - 1]


# availability ---------------------------------------------------------------------------------------------


async def test_server_keeps_serving_when_redis_is_down_and_a_client_subscribes(
    settings: Settings, connections: Connections, alice: Principal
) -> None:
    """DESIGN rule 1: with Redis down, reads fall back to PostgreSQL and writes still succeed; a client
    subscribing while Redis is down must not take the server down."""
    async with runtime_on(isolated(settings), connections, "redis://127.0.0.1:1/0") as runtime:
        server = build_server(ServerLifespan(runtime.settings, local_principal=alice, runtime=runtime))
        with anyio.fail_after(30):
            async with Client(server, mode="legacy") as client:
                await client.subscribe_resource(f"memory://{alice.tenant}/user/alice/recent")
                result = await client.call_tool("write_event", {"content": "written with Redis down"})
                assert not result.is_error, result.content
                recent = await client.call_tool("get_recent_shared", {})
                assert "written with Redis down" in str(recent.structured_content)


async def test_a_connection_closed_under_a_command_is_a_connection_error_the_client_retries(
    settings: Settings,
) -> None:
    """Another task closing a connection between its connected check and its write (the cluster client
    does it to every connection of a node it drops on a failover) made redis-py raise AttributeError
    (redis/redis-py#4287), which no fallback caught: a committed write failed for its agent. It is a
    ConnectionError now, which the client retries on a fresh connection."""
    client = connect_redis(settings.redis_url.get_secret_value(), timeout=0.5)
    try:
        await client.ping()
        conn = await client.connection_pool.get_connection()
        closed_once = False

        async def closed_by_another_task() -> None:
            nonlocal closed_once
            if not closed_once:
                closed_once = True
                await conn.disconnect()

        conn.check_health = closed_by_another_task  # type: ignore[method-assign]
        with pytest.raises(RedisConnectionError):
            await conn.send_packed_command(conn.pack_command("PING"))
        closed_once = False
        await client.connection_pool.release(conn)
        key = f"{fresh_id('closed')}:k"
        assert await client.set(key, "written on a fresh connection")
        assert closed_once, "the command did not go through the connection closed under it"
        assert await client.get(key) == "written on a fresh connection"
        await client.delete(key)
    finally:
        await client.aclose()


# nothing committed is ever missing from what readers are served -------------------------------------------


async def test_write_cancelled_after_commit_is_still_seen_by_other_agents(
    settings: Settings, connections: Connections, alice: Principal, alice_coder: Principal, backdoor: Backdoor
) -> None:
    """A request cancelled after PostgreSQL committed its INSERT (a client timeout while Redis hangs)
    still ends with the event where readers look."""
    async with faulty_redis_runtime(
        isolated(settings, redis_breaker_seconds=0), connections, redis_timeout=0.5
    ) as faulty:
        memory = faulty.runtime.memory
        await memory.write_event(alice, "before", importance=0.8)
        await memory.get_recent_shared(alice_coder, limit=10)  # warm cache with a floor
        faulty.proxy.stall()
        with anyio.CancelScope() as request:

            async def cancel_once_committed() -> None:
                await eventually(lambda: backdoor.episodic.recent(alice.tenant, ALICE, limit=1, min_importance=0.9))
                request.cancel()

            async with anyio.create_task_group() as tg:
                tg.start_soon(cancel_once_committed)
                await memory.write_event(alice, "committed, then the request was cancelled", importance=0.95)
        faulty.proxy.restore()

        seen = [e.content for e in await memory.get_recent_shared(alice_coder, limit=10)]
        assert "committed, then the request was cancelled" in seen, seen


@pytest.mark.parametrize("fault", ["cut", "stall"])
async def test_event_whose_redis_update_failed_reaches_other_processes_in_order(
    settings: Settings, connections: Connections, alice: Principal, alice_coder: Principal, fault: str
) -> None:
    """Process A's Redis update fails after its commit (connection reset, or Redis hanging past the
    timeout). Process B must still serve A's event, and a since_seq cursor must not skip it: B's next
    write announces A's queued event before its own."""
    async with two_processes(settings, connections) as (proxy, a, b):
        await b.memory.write_event(alice_coder, "event one", importance=0.8)
        cursor = max(e.seq for e in await b.memory.get_recent_shared(alice_coder, limit=10))  # B's floor is set

        proxy.cut() if fault == "cut" else proxy.stall()
        assert (await a.memory.write_event(alice, "event two, written by process A", importance=0.8)).written
        proxy.restore()
        await b.memory.write_event(alice_coder, "event three", importance=0.8)

        seen = [e.content for e in await b.memory.get_recent_shared(alice_coder, limit=10)]
        paged = [e.content for e in await b.memory.get_recent_shared(alice_coder, since_seq=cursor, limit=10)]
        assert seen == ["event three", "event two, written by process A", "event one"], seen
        assert paged == ["event two, written by process A", "event three"], paged


async def test_the_sweep_announces_what_a_failed_redis_update_left_queued(
    settings: Settings, connections: Connections, alice: Principal, alice_coder: Principal
) -> None:
    """With no later writer in the scope, the periodic sweep announces the queued event: other
    processes' caches and subscribers catch up."""
    async with two_processes(settings, connections) as (proxy, a, b):
        heard = Heard()
        b.bus.add_listener(heard)
        await b.bus.subscribe(Topic(alice.tenant, ALICE))
        await b.memory.write_event(alice_coder, "event one", importance=0.8)
        cursor = max(e.seq for e in await b.memory.get_recent_shared(alice_coder, limit=10))  # B's floor is set
        with anyio.fail_after(10):
            await heard.nth(1)
        proxy.cut()
        written = await a.memory.write_event(alice, "queued while Redis was unreachable", importance=0.8)
        proxy.restore()
        assert await b.memory.get_recent_shared(alice_coder, since_seq=cursor) == []  # not announced yet: no gap

        with anyio.fail_after(10):
            assert await b.maintenance.publish_queued(older_than=0) >= 1  # (other tests may leave some too)
            message = await heard.nth(2)
        assert isinstance(message, EventWritten) and message.event_id == written.event_id
        paged = await b.memory.get_recent_shared(alice_coder, since_seq=cursor)
        assert [e.id for e in paged] == [written.event_id]
        assert await b.maintenance.publish_queued(older_than=0) == 0


async def test_no_cursor_gap_when_a_server_is_killed_between_commit_and_cache_update(
    settings: Settings, connections: Connections, backend_env: dict[str, str], alice: Principal
) -> None:
    """A server SIGKILLed after its COMMIT and before its Redis update: the event is durable (a retry
    returns it as replayed), and the scope's next writer announces it before its own event, so a
    since_seq cursor served from the cache never skips it."""
    common = isolated(settings, redis_breaker_seconds=0)
    async with (
        redis_process() as server,
        faulty_proxy("127.0.0.1", server.port) as proxy,
        runtime_on(common, connections, server.url) as survivor,
    ):
        first = await survivor.memory.write_event(alice, "before the crash", importance=0.8)
        assert first.event is not None
        await survivor.memory.get_recent_shared(alice, limit=10)  # the cache has a floor

        env = {k: v for k, v in os.environ.items() if not k.startswith("MSM_")}
        env.update(backend_env, MSM_REDIS_URL=proxy.url(), MSM_REDIS_PREFIX=common.redis_prefix,
                   MSM_REDIS_TIMEOUT="60", MSM_REDIS_BREAKER_SECONDS="0")  # fmt: skip
        command = [sys.executable, "-m", "tests.writer_child", alice.tenant]
        async with await anyio.open_process(command, env=env, cwd=os.getcwd()) as child:
            assert child.stdin is not None and child.stdout is not None
            with anyio.fail_after(60):
                assert (await child.stdout.receive()).strip() == b"ready"
            proxy.stall()  # the child's Redis update will hang after its COMMIT ...
            await child.stdin.send(b"committed by the killed server\n")
            await eventually(lambda: _durable(connections, alice.tenant, "committed by the killed server"), seconds=30)
            child.send_signal(signal.SIGKILL)  # ... and the server dies right there
            await child.wait()
        proxy.restore()

        after = await survivor.memory.write_event(alice, "after the crash", importance=0.8)
        paged = await survivor.memory.get_recent_shared(alice, since_seq=first.event.seq, limit=10)
        assert [e.content for e in paged] == ["committed by the killed server", "after the crash"], paged
        writer = Principal(
            tenant=alice.tenant, agent_id="crashing-writer", allowed_scopes=("user:*",), default_scope=ALICE
        )  # the killed server's agent retries (idempotency keys are per agent)
        retried = await survivor.memory.write_event(
            writer, "committed by the killed server", idempotency_key="committed by the killed server"
        )
        assert retried.status == "replayed" and after.written


async def _durable(connections: Connections, tenant: str, content: str) -> bool:
    from mcp_shared_memory.stores.episodic import PostgresEpisodicStore

    events = await PostgresEpisodicStore(connections.db).recent(tenant, ALICE, limit=10)
    return any(e.content == content for e in events)


async def test_evicted_recent_set_is_rebuilt_not_reported_empty(
    memory: SharedMemory, alice: Principal, backdoor: Backdoor
) -> None:
    """An evicted (or expired) recent set is rebuilt from PostgreSQL, never read as an empty scope."""
    for i in range(3):
        await memory.write_event(alice, f"fact {i}", importance=0.8)
    await memory.get_recent_shared(alice, limit=10)  # floor set
    await backdoor.redis.delete(backdoor.keys.recent(alice.tenant, ALICE))

    recent = await memory.get_recent_shared(alice, limit=10)

    assert [e.content for e in recent] == ["fact 2", "fact 1", "fact 0"]


async def test_a_backend_that_cannot_open_raises_its_own_error_not_a_task_group(settings: Settings) -> None:
    """The embedder and the backends open side by side in a task group, which wraps even one error: the
    CLI's handler and the stdio server's background start, which sort errors by type, got an ExceptionGroup
    (a traceback, or "an internal error") instead of the message that names the setting to fix."""
    owner_only = settings.model_copy(update={"database_url": None, "database_owner_url": settings.database_url})
    with anyio.fail_after(60), pytest.raises(ConfigError, match="MSM_DATABASE_OWNER_URL is set but MSM_DATABASE_URL"):
        async with open_connections(owner_only):
            pass
