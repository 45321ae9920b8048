"""Degraded dependencies and hostile input: the bus through Redis blips and restarts, PostgreSQL slow or
failing mid-protocol, an embedder rejecting one text, a hot scope behind a slow Redis, malformed input."""

from __future__ import annotations

import functools
import time
import uuid
from typing import Any

import anyio
import asyncpg
import pytest

from mcp_shared_memory.errors import InvalidInput, SharedMemoryError, StoreUnavailable
from mcp_shared_memory.memory import SharedMemory
from mcp_shared_memory.models import Principal, Scope
from mcp_shared_memory.runtime import Connections
from mcp_shared_memory.settings import Settings
from mcp_shared_memory.stores.messages import EventWritten, Topic
from mcp_shared_memory.stores.postgres import DRIVER_ERRORS, translated

from .conftest import Backdoor, isolated
from .faults import eventually, faulty_redis_runtime
from .redis_server import redis_process
from .tcp_proxy import faulty_proxy
from .test_failure_modes import Heard, runtime_on

pytestmark = pytest.mark.anyio

ALICE = Scope("user", "alice")


# the bus --------------------------------------------------------------------------------------------------


async def test_notifications_resume_within_two_seconds_of_a_redis_restart(
    settings: Settings, connections: Connections, alice: Principal
) -> None:
    """Redis SIGKILLed and restarted on the same port: the subscriber reconnects and re-subscribes by
    itself, and the first write after the restart is heard within 2 s (with the synchronous redis-py
    Retry handed to the asyncio client, the pub/sub connection stayed dead ~29 s, until a health check)."""
    async with redis_process() as server, runtime_on(isolated(settings), connections, server.url) as runtime:
        heard = Heard()
        runtime.bus.add_listener(heard)
        await runtime.bus.subscribe(Topic(alice.tenant, ALICE))
        await runtime.memory.write_event(alice, "before the restart")
        with anyio.fail_after(5):
            await heard.nth(1)

        await server.kill()
        await server.start()
        restarted = time.monotonic()
        with anyio.fail_after(2):
            written = 1
            while len(heard.messages) < 2:
                written += 1
                await runtime.memory.write_event(alice, f"after the restart {written}")
                with anyio.move_on_after(0.1):
                    await heard.nth(2)
        assert time.monotonic() - restarted < 2
        assert isinstance(heard.messages[1], EventWritten)


async def test_a_subscription_made_while_redis_is_unreachable_takes_effect_once_it_is_back(
    settings: Settings, connections: Connections, alice: Principal
) -> None:
    """redis-py records a channel only after its SUBSCRIBE succeeded, so the bus retries a SUBSCRIBE
    that failed (Redis down at that moment) instead of leaving the channel silent for good."""
    async with faulty_redis_runtime(isolated(settings, redis_breaker_seconds=0), connections) as faulty:
        runtime = faulty.runtime
        heard = Heard()
        runtime.bus.add_listener(heard)
        await runtime.bus.subscribe(Topic(alice.tenant, Scope("user", "somebody-else")))  # connection up
        faulty.proxy.cut()
        await runtime.bus.subscribe(Topic(alice.tenant, ALICE))  # SUBSCRIBE fails: Redis unreachable
        faulty.proxy.restore()

        with anyio.fail_after(5):
            while not heard.messages:
                await runtime.memory.write_event(alice, f"after the blip {uuid.uuid4()}", importance=0.9)
                with anyio.move_on_after(0.2):
                    await heard.nth(1)
        assert {m.scope for m in heard.messages if isinstance(m, EventWritten)} == {ALICE}


# PostgreSQL -----------------------------------------------------------------------------------------------

SLOW_INSERT_TRIGGER = """
CREATE OR REPLACE FUNCTION msm_test_slow_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.content LIKE 'SLOW-%' THEN PERFORM pg_sleep(1.5); END IF;
  RETURN NEW;
END $$;
CREATE OR REPLACE TRIGGER msm_test_slow_insert BEFORE INSERT ON shared_episodic_memories
FOR EACH ROW EXECUTE FUNCTION msm_test_slow_insert();
"""


async def test_since_seq_paging_has_no_gaps_under_concurrent_writers(
    memory: SharedMemory, alice: Principal, alice_coder: Principal, backdoor: Backdoor
) -> None:
    """seq is drawn at INSERT, not at commit: a slow writer draws N, a fast one draws N+1 and commits
    first. Writers of a scope are serialised up to their cache update, so a reader paging in between
    can never advance its cursor past an event that commits later with a lower seq."""
    await backdoor.db.execute(SLOW_INSERT_TRIGGER)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(functools.partial(memory.write_event, alice, "SLOW-writer's event", importance=0.8))
            # the slow writer is inside its INSERT
            await eventually(
                lambda: backdoor.db.fetchval("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'")
            )
            await memory.write_event(alice_coder, "fast writer's event", importance=0.8)
            page = await memory.get_recent_shared(alice, since_seq=0, limit=100)
            cursor = max(e.seq for e in page)
    finally:
        await backdoor.db.execute("DROP TRIGGER IF EXISTS msm_test_slow_insert ON shared_episodic_memories")

    next_page = await memory.get_recent_shared(alice, since_seq=cursor, limit=100)
    seen = [e.content for e in page + next_page]
    assert seen == ["SLOW-writer's event", "fast writer's event"], seen


@pytest.mark.parametrize(
    "driver_error", [*DRIVER_ERRORS, asyncpg.InternalClientError, asyncpg.ConnectionDoesNotExistError]
)
def test_every_driver_error_becomes_store_unavailable_with_a_safe_message(driver_error: type[Exception]) -> None:
    """asyncpg's InternalClientError (seen in the first milliseconds after PostgreSQL dies) used to
    escape untranslated: it ended the background repair task and reached agents as a bare failure."""
    with pytest.raises(StoreUnavailable) as raised, translated():
        raise driver_error("postgresql://admin:hunter2@db.internal:5432 went away")
    assert "hunter2" not in raised.value.message and "db.internal" not in raised.value.message
    assert "retry" in raised.value.message


async def test_an_error_of_the_callers_own_is_not_reported_as_a_database_outage(backdoor: Backdoor) -> None:
    """Translation wraps each driver call, never the caller's block: a Redis timeout raised while a
    connection is held stays a TimeoutError instead of reading "PostgreSQL is unavailable"."""
    with pytest.raises(TimeoutError):
        async with backdoor.db.connection() as conn:
            await conn.fetchval("SELECT 1")
            raise TimeoutError("the caller's own timeout")
    assert await backdoor.db.fetchval("SELECT 1") == 1  # the connection went back to the pool


# caches ---------------------------------------------------------------------------------------------------


async def test_concurrent_workspace_updates_leave_no_stale_cache(
    settings: Settings, connections: Connections, alice: Principal, backdoor: Backdoor
) -> None:
    """Two agents (two processes) update a workspace at once and the earlier commit's cache write lands
    last: the cache keeps the newer version (set-if-newer), so nobody is served the older status."""
    common = isolated(settings, redis_breaker_seconds=0)
    async with (
        redis_process() as server,
        faulty_proxy("127.0.0.1", server.port) as proxy,
        runtime_on(common, connections, proxy.url(), redis_timeout=10.0) as slow,
        runtime_on(common, connections, server.url) as fast,
    ):
        workspace = await fast.memory.create_workspace(alice, "Ship v3")
        proxy.stall()  # the first writer's cache write will be late

        async def first() -> None:
            await slow.memory.update_workspace(alice, workspace.id, status="paused")

        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            await eventually(lambda: paused(backdoor, alice, workspace.id))  # its cache write is held up
            await fast.memory.update_workspace(alice, workspace.id, status="completed")
            proxy.restore()

        durable = await backdoor.workspaces.get(alice.tenant, workspace.id)
        assert durable is not None and durable.status == "completed"
        for runtime in (slow, fast):
            served = await runtime.memory.get_workspace(alice, workspace.id)
            assert served.status == "completed", f"served {served.status!r}, PostgreSQL says {durable.status!r}"


async def test_a_hot_scope_with_a_slow_redis_does_not_stall_other_tenants(
    settings: Settings, connections: Connections, alice: Principal, other_tenant: Principal
) -> None:
    """Six agents write to one scope while Redis hangs for its whole timeout (1 s) on every call: their
    writes queue in-process for the scope, holding one pooled connection, so another tenant's plain
    PostgreSQL read does not wait for a connection."""
    async with faulty_redis_runtime(
        isolated(settings, redis_breaker_seconds=0), connections, redis_timeout=1.0
    ) as faulty:
        memory = faulty.runtime.memory
        faulty.proxy.stall()
        waited: list[float] = []

        async def other_tenant_read() -> None:
            await eventually(lambda: _scope_lock_held(connections))  # the writers hold the scope
            started = time.perf_counter()
            await memory.get_agent_history(other_tenant, "research-1")
            waited.append(time.perf_counter() - started)

        async with anyio.create_task_group() as tg:
            for i in range(6):
                tg.start_soon(memory.write_event, alice, f"hot scope write {i}")
            tg.start_soon(other_tenant_read)
        faulty.proxy.restore()
    assert waited[0] < 0.5, f"an unrelated tenant's read waited {waited[0]:.1f} s for a pooled connection"


async def _scope_lock_held(connections: Connections) -> bool:
    held = await connections.db.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted")
    return bool(held)


# input ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("metadata", [{"note": "a\x00b"}, {"note": "half a pair \ud800"}])
async def test_unstorable_metadata_is_invalid_input_not_an_outage(
    memory: SharedMemory, alice: Principal, metadata: dict[str, str]
) -> None:
    """PostgreSQL's jsonb rejects NUL and lone surrogates: the agent is told its input is invalid, not
    that PostgreSQL is unavailable (which it would retry forever)."""
    with pytest.raises(InvalidInput):
        await memory.write_event(alice, "x", metadata=metadata)


async def test_lone_surrogate_content_is_invalid_input(memory: SharedMemory, alice: Principal) -> None:
    with pytest.raises(InvalidInput):
        await memory.write_event(alice, "half a pair \ud800")


async def test_one_callers_bad_query_does_not_fail_other_callers(
    memory: SharedMemory, alice: Principal, other_tenant: Principal
) -> None:
    """The embedder batches concurrent requests: one caller's unembeddable text must not fail another
    tenant's search batched with it."""
    results: dict[str, Any] = {}

    async def run(name: str, principal: Principal, query: str) -> None:
        try:
            results[name] = await memory.search_shared(principal, query)
        except SharedMemoryError as exc:
            results[name] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, "bad", alice, "broken \ud800 query")
        tg.start_soon(run, "good", other_tenant, "a normal question")
    assert isinstance(results["good"], list), results["good"]


def test_a_pool_too_small_for_consolidation_is_refused() -> None:
    """Consolidation holds one connection for its scope lock while storing facts on another: a pool of
    one would deadlock, so the setting is refused at start-up with a clear message."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="db_pool_max"):
        Settings(db_pool_max=1)


async def paused(backdoor: Backdoor, alice: Principal, workspace_id: str) -> bool:
    workspace = await backdoor.workspaces.get(alice.tenant, workspace_id)
    return workspace is not None and workspace.status == "paused"
