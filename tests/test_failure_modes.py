"""Review findings: each test asserts what the README / DESIGN.md promise. Against the reviewed commit
(559cfb5) every test fails. Commit 8dfd260 (scope_writes, shielded write path,
floor inside the sorted set, hub subscribe retry) make tests 1, 2, the breaker test, the eviction test,
4 and 5 pass; the rest still fail and demonstrate open defects. Fix the package, not the tests."""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

import anyio
import pytest
from mcp import Client
from redis.exceptions import ConnectionError as RedisConnectionError

from mcp_shared_memory.errors import EmbeddingUnavailable, InvalidInput, SharedMemoryError
from mcp_shared_memory.memory import SharedMemory
from mcp_shared_memory.models import Principal, Scope
from mcp_shared_memory.server.notifications import LISTEN_TENANT, NotificationHub, TenantBus
from mcp_shared_memory.settings import Settings
from mcp_shared_memory.stores.cache import BREAKER_SECONDS, RedisCache, connect_redis
from mcp_shared_memory.stores.episodic import INSERT_EVENT

from .server.mcp_clients import stdio_server

pytestmark = pytest.mark.anyio

ALICE = Scope("user", "alice")


# helpers ---------------------------------------------------------------------------------------------


def second_process(memory: SharedMemory, settings: Settings) -> SharedMemory:
    """Another server process: same PostgreSQL and Redis, its own Redis client and circuit breaker."""
    assert settings.redis_url is not None
    cache = RedisCache(
        connect_redis(settings.redis_url.get_secret_value(), timeout=settings.redis_timeout),
        prefix=settings.redis_prefix, recent_max=settings.recent_max, recent_ttl=settings.recent_ttl,
    )  # fmt: skip
    return SharedMemory(
        settings=settings, episodic=memory.episodic, cache=cache, embedder=memory.embedder, facts=memory.facts
    )


# 1. availability: Redis down when the first client subscribes kills the server ---------------------


async def test_server_keeps_serving_when_redis_is_down_and_a_client_subscribes(
    backend_env: dict[str, str],
) -> None:
    """DESIGN rule 1: with Redis down, reads fall back to PostgreSQL and writes still succeed.
    Actually: the first channel acquire fails, NotificationHub.run() then calls get_message() on a
    PubSub that never got a connection -> RuntimeError('pubsub connection not set') -> the lifespan
    task group dies and the whole server process exits (HTTP: every tenant's sessions)."""
    tenant = f"t{uuid.uuid4().hex[:10]}"
    server = stdio_server(
        backend_env, tenant=tenant, agent_id="agent-a", scope="user:alice", redis_url="redis://127.0.0.1:1/0"
    )
    with anyio.fail_after(30):
        async with Client(server, mode="legacy") as client:
            await client.list_tools()  # initialized -> the connection registers for list_changed
            await anyio.sleep(1.5)  # the hub's reader loop runs
            result = await client.call_tool("write_event", {"content": "written with Redis down"})
            assert not result.is_error, result.content


# 2. a write cancelled after its commit never reaches the cache or the subscribers ----------------------


async def test_write_cancelled_after_commit_is_still_seen_by_other_agents(
    memory: SharedMemory, alice: Principal, alice_coder: Principal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MCP requests are cancelled routinely (notifications/cancelled, client timeouts, HTTP disconnects).
    A cancellation that lands after PostgreSQL committed the INSERT but before write_event reached
    record_event leaves a durable event that the Redis set never gets: readers trust the floor, so
    every other agent's get_recent_shared misses it (writes keep refreshing the TTL, so it never heals),
    and no notification is published."""
    await memory.write_event(alice, "before", importance=0.8)
    await memory.get_recent_shared(alice_coder, limit=10)  # warm cache with a floor
    real_insert = memory.episodic.insert_event

    with anyio.CancelScope() as scope:

        async def committed_then_cancelled(*args: Any, **kwargs: Any) -> Any:
            result = await real_insert(*args, **kwargs)  # committed
            scope.cancel()  # ... the cancellation arrives while the reply is on its way back
            await anyio.sleep(5)
            return result

        monkeypatch.setattr(memory.episodic, "insert_event", committed_then_cancelled)
        await memory.write_event(alice, "committed, then the request was cancelled", importance=0.8)
    monkeypatch.undo()

    in_postgres = [e.content for e in await memory.episodic.recent(alice.tenant, ALICE, limit=10)]
    assert "committed, then the request was cancelled" in in_postgres
    seen = [e.content for e in await memory.get_recent_shared(alice_coder, limit=10)]
    assert "committed, then the request was cancelled" in seen, seen


# 3. cache invariant broken across processes -----------------------------------------------------------


async def test_event_written_while_one_process_breaker_is_open_is_visible_to_other_processes(
    memory: SharedMemory, settings: Settings, alice: Principal, alice_coder: Principal
) -> None:
    """One Redis timeout (here on the dedup check) opens process A's breaker for 2 s; A's write then
    skips record_event and only A remembers the scope as stale (`_stale` is per process). Process B
    trusts the floor: it never returns the event (and B's writes keep the cache alive, so never heals),
    and a since_seq cursor skips it for good. No notification was published either."""
    a, b = second_process(memory, settings), second_process(memory, settings)
    try:
        await b.write_event(alice_coder, "event one", importance=0.8)
        await b.get_recent_shared(alice_coder, limit=10)  # B's reader sets the floor
        cursor = max(e.seq for e in await b.get_recent_shared(alice_coder, limit=10))

        real_set = a.cache.redis.set

        async def timeout_once(*args: Any, **kwargs: Any) -> Any:
            a.cache.redis.set = real_set
            raise TimeoutError("Redis slow for a moment")

        a.cache.redis.set = timeout_once
        written = await a.write_event(alice, "event two, written by process A", importance=0.8)
        assert written.status == "written"
        await anyio.sleep(BREAKER_SECONDS + 0.1)
        assert await a.republish_pending() >= 1  # the server's sweeper, every 5 s
        await b.write_event(alice_coder, "event three", importance=0.8)

        seen = [e.content for e in await b.get_recent_shared(alice_coder, limit=10)]
        paged = [e.content for e in await b.get_recent_shared(alice_coder, since_seq=cursor, limit=10)]
        assert "event two, written by process A" in seen, seen
        assert "event two, written by process A" in paged, paged
    finally:
        await a.cache.close()
        await b.cache.close()


async def test_event_whose_cache_update_failed_is_visible_to_other_processes(
    memory: SharedMemory, settings: Settings, alice: Principal, alice_coder: Principal
) -> None:
    """The post-commit Redis update can still fail (A's connection to Redis drops or times out at that
    moment). Only A marks the scope stale and heals it lazily, the next time A itself touches the scope;
    process B trusts the floor, never returns the event, and its since_seq cursor skips it for good."""
    a, b = second_process(memory, settings), second_process(memory, settings)
    try:
        await b.write_event(alice_coder, "event one", importance=0.8)
        cursor = max(e.seq for e in await b.get_recent_shared(alice_coder, limit=10))  # B's floor is set

        real_record = a.cache._record

        async def dropped_once(*args: Any, **kwargs: Any) -> Any:
            a.cache._record = real_record
            raise RedisConnectionError("Connection reset by peer")

        a.cache._record = dropped_once
        assert (await a.write_event(alice, "event two, written by process A", importance=0.8)).written
        await anyio.sleep(BREAKER_SECONDS + 0.5)  # Redis is fine again
        assert await a.republish_pending() >= 1  # the server's sweeper, every 5 s
        await b.write_event(alice_coder, "event three", importance=0.8)

        seen = [e.content for e in await b.get_recent_shared(alice_coder, limit=10)]
        paged = [e.content for e in await b.get_recent_shared(alice_coder, since_seq=cursor, limit=10)]
        assert "event two, written by process A" in seen, seen
        assert "event two, written by process A" in paged, paged
    finally:
        await a.cache.close()
        await b.cache.close()


async def test_evicted_recent_set_is_rebuilt_not_reported_empty(memory: SharedMemory, alice: Principal) -> None:
    """cache.py's docstring: 'an expired or evicted cache is rebuilt instead of silently returning
    nothing'. The floor and the sorted set are two keys; Redis evicts (allkeys-/volatile-lru) or expires
    them independently. With the floor left behind (0 = 'the set is the whole scope') an evicted set
    reads as an empty scope, and after the next write as a one-event scope."""
    for i in range(3):
        await memory.write_event(alice, f"fact {i}", importance=0.8)
    await memory.get_recent_shared(alice, limit=10)  # floor set
    await memory.cache.redis.delete(memory.cache.keys.recent(alice.tenant, ALICE))  # eviction of one key

    recent = await memory.get_recent_shared(alice, limit=10)

    assert [e.content for e in recent] == ["fact 2", "fact 1", "fact 0"]


# 4. since_seq cursors skip events committed out of seq order -------------------------------------------


async def test_since_seq_paging_has_no_gaps_under_concurrent_writers(
    memory: SharedMemory, alice: Principal, alice_coder: Principal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DESIGN: seq is the 'polling cursor', get_recent_shared(since_seq) lets 'a reader page without
    gaps'. seq is an identity drawn at INSERT time, not at commit: writer 1 draws N and its statement is
    slow to finish (WAL flush, lock wait...); writer 2 draws N+1 and commits first; a reader paging in
    between advances its cursor past N and never sees writer 1's event."""
    from mcp_shared_memory.stores import episodic as episodic_module

    slow_insert = (
        INSERT_EVENT.replace("INSERT INTO", "WITH ins AS (INSERT INTO", 1)
        + "), pause AS (SELECT pg_sleep(CASE WHEN (SELECT content FROM ins) LIKE 'SLOW%' THEN 1.5 ELSE 0 END))"
        + " SELECT ins.* FROM ins, pause"
    )
    monkeypatch.setattr(episodic_module, "INSERT_EVENT", slow_insert)

    async def slow_writer() -> None:
        await memory.write_event(alice, "SLOW writer's event", importance=0.8)

    async with anyio.create_task_group() as tg:
        tg.start_soon(slow_writer)
        await anyio.sleep(0.3)  # writer 1 has drawn its seq and is still inside its INSERT
        await memory.write_event(alice_coder, "fast writer's event", importance=0.8)
        page = await memory.get_recent_shared(alice, since_seq=0, limit=100)
        cursor = max(e.seq for e in page)

    next_page = await memory.get_recent_shared(alice, since_seq=cursor, limit=100)
    seen = [e.content for e in page + next_page]
    assert "SLOW writer's event" in seen, seen


# 5. a failed SUBSCRIBE is never retried ---------------------------------------------------------------


async def test_subscription_that_failed_during_a_redis_blip_recovers(memory: SharedMemory, alice: Principal) -> None:
    """notifications.py says 'redis-py re-subscribes every channel it knows when it reconnects', but
    redis-py records a channel only after SUBSCRIBE succeeded: a channel whose SUBSCRIBE failed is never
    subscribed, and its refcount > 0 stops later acquirers from trying again. Its subscribers get no
    notification until every one of them leaves."""
    bus = TenantBus()
    hub = NotificationHub(memory.cache.redis, memory.cache.keys, bus)
    received: list[str] = []
    token = LISTEN_TENANT.set(alice.tenant)
    bus.subscribe(lambda event: received.append(str(event.uri)))
    LISTEN_TENANT.reset(token)
    async with anyio.create_task_group() as tg:
        await tg.start(hub.run)
        await hub.acquire(alice.tenant, Scope("user", "somebody-else"))  # the pub/sub connection is up

        pubsub = hub._pubsub
        real = pubsub.execute_command

        async def redis_restarting(*args: Any) -> None:
            raise RedisConnectionError("Connection reset by peer")

        pubsub.execute_command = redis_restarting
        await hub.acquire(alice.tenant, ALICE)  # SUBSCRIBE fails: Redis is restarting
        pubsub.execute_command = real
        await pubsub.connection.disconnect()  # ... and comes back: redis-py reconnects and re-subscribes
        await hub.acquire(alice.tenant, ALICE)  # a second listener of the same scope
        await anyio.sleep(2.5)  # time enough for any retry

        await memory.write_event(alice, "after the blip", importance=0.9)
        with anyio.move_on_after(5):
            while not received:  # noqa: ASYNC110 - the bus listener is a plain callback
                await anyio.sleep(0.05)
        tg.cancel_scope.cancel()
    await hub.close()
    assert received == [f"memory://{alice.tenant}/user/alice/recent"]


# 6. workspace cache: a slower, older write overwrites a newer one for the whole cache TTL -------------------


async def test_concurrent_workspace_updates_leave_no_stale_cache(memory: SharedMemory, alice: Principal) -> None:
    """update_workspace does 'UPDATE in PostgreSQL, then SET the cache' with no ordering between
    writers: when two agents update at once and the earlier commit's SET lands last, every replica's
    get_workspace / context resource serves the older status for MSM_WORKSPACE_CACHE_TTL (1 h).
    (The read-through in get_workspace has the same race against an update.)"""
    workspace = await memory.create_workspace(alice, "Ship v3")
    real_put = memory.cache.put_workspace
    first_committed, second_done = anyio.Event(), anyio.Event()

    async def put(tenant: str, ws: Any, *, ttl: int, changed: bool = False) -> None:
        if ws.status == "paused":  # the first writer's SET is a little late (scheduling, GC, a slow hop)
            first_committed.set()
            await second_done.wait()
        await real_put(tenant, ws, ttl=ttl, changed=changed)

    memory.cache.put_workspace = put  # type: ignore[method-assign]
    try:

        async def second() -> None:
            await first_committed.wait()
            await memory.update_workspace(alice, workspace.id, status="completed")
            second_done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(second)
            await memory.update_workspace(alice, workspace.id, status="paused")
    finally:
        del memory.cache.put_workspace

    durable = await memory.episodic.get_workspace(alice.tenant, workspace.id)
    served = await memory.get_workspace(alice, workspace.id)
    assert durable is not None and durable.status == "completed"
    assert served.status == "completed", f"served {served.status!r}, PostgreSQL says {durable.status!r}"


# 7. one unembeddable event stops the embedding back-fill for everyone --------------------------------------


async def test_one_unembeddable_event_does_not_block_the_backfill(
    memory: SharedMemory, alice: Principal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """embed_pending claims the oldest 64 unembedded rows of ALL tenants and embeds them in one call
    that fails as a whole. An input the endpoint always rejects (OpenAI: HTTP 400 over 8192 tokens,
    which 8000 CJK characters can exceed; the embedder turns it into EmbeddingUnavailable for the whole
    batch) is retried first forever, so no later event of any tenant is ever embedded again."""

    async def outage(text: str) -> None:
        raise EmbeddingUnavailable()

    monkeypatch.setattr(memory.embedder, "embed", outage)
    poison = await memory.write_event(alice, "REJECTED-BY-ENDPOINT " + "字" * 200)
    normal = await memory.write_event(alice, "The staging cluster moved to eu-west-1")
    monkeypatch.undo()
    real_batch = memory.embedder._embed_batch

    async def endpoint(texts: list[str]) -> Any:
        if any(t.startswith("REJECTED-BY-ENDPOINT") for t in texts):
            raise EmbeddingUnavailable("The embedding endpoint rejected model 'x' (HTTP 400: max 8192 tokens)")
        return await real_batch(texts)

    monkeypatch.setattr(memory.embedder, "_embed_batch", endpoint)
    try:
        for _ in range(2):  # two periods of embed_missing_periodically
            with contextlib.suppress(EmbeddingUnavailable):
                await memory.embed_missing()
        hits = await memory.search_shared(alice, "which region hosts staging?")
        assert normal.event_id in [h.id for h in hits]
    finally:
        monkeypatch.undo()
        await memory.episodic.db.execute("DELETE FROM shared_episodic_memories WHERE id = $1", poison.event_id)


# 8. malformed input: reported as an outage, or a raw exception; one bad query fails other tenants' calls ----


@pytest.mark.parametrize("metadata", [{"note": "a\x00b"}, {"note": "half a pair \ud800"}])
async def test_unstorable_metadata_is_invalid_input_not_an_outage(
    memory: SharedMemory, alice: Principal, metadata: dict[str, str]
) -> None:
    """validation.metadata accepts NUL and lone surrogates; PostgreSQL's jsonb rejects them and the
    agent is told 'PostgreSQL is unavailable ... retry later' (StoreUnavailable) - it retries forever."""
    with pytest.raises(InvalidInput):
        await memory.write_event(alice, "x", metadata=metadata)


async def test_lone_surrogate_content_is_invalid_input(memory: SharedMemory, alice: Principal) -> None:
    """content_hash() does content.encode(): a raw UnicodeEncodeError escapes write_event (the errors.py
    contract says every failure is a SharedMemoryError)."""
    with pytest.raises(InvalidInput):
        await memory.write_event(alice, "half a pair \ud800")


async def test_one_callers_bad_query_does_not_fail_other_callers(
    memory: SharedMemory, alice: Principal, other_tenant: Principal
) -> None:
    """The embedder coalesces concurrent requests into one batch and fails the whole batch when one
    text breaks the tokenizer: tenant B's perfectly good search fails because tenant A sent '\\ud800'
    at the same moment (concurrent write_events would be stored without a vector the same way)."""
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


# 9. consolidation holds a pooled connection while asking the pool for another ------------------------------


def test_a_pool_too_small_for_consolidation_is_refused() -> None:
    """Consolidation holds one connection for its scope lock while storing facts on another: a pool of
    one would deadlock, so the setting is refused at start-up with a clear message."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="db_pool_max"):
        Settings(db_pool_max=1)


async def test_a_hot_scope_with_a_slow_redis_does_not_stall_other_tenants(
    memory: SharedMemory, alice: Principal, other_tenant: Principal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """scope_writes holds a pooled connection while it waits on pg_advisory_lock, and keeps the lock
    through record_event, which is now attempted even when the breaker is open. With Redis answering
    in 1 s (its timeout), six agents writing to one workspace serialise to ~6 s and hold every pooled
    connection (default 4): another tenant's plain PostgreSQL read waits seconds for a connection."""
    import time

    real = memory.cache._record

    async def slow_redis(*args: Any, **kwargs: Any) -> Any:
        if alice.tenant in kwargs["keys"][0]:
            await anyio.sleep(1.0)
        return await real(*args, **kwargs)

    monkeypatch.setattr(memory.cache, "_record", slow_redis)
    waited: list[float] = []

    async def other_tenant_read() -> None:
        await anyio.sleep(0.2)
        started = time.perf_counter()
        await memory.get_agent_history(other_tenant, "research-1")
        waited.append(time.perf_counter() - started)

    async with anyio.create_task_group() as tg:
        for i in range(6):
            tg.start_soon(memory.write_event, alice, f"hot scope write {i}")
        tg.start_soon(other_tenant_read)
    assert waited[0] < 0.5, f"an unrelated tenant's read waited {waited[0]:.1f} s for a pooled connection"
