"""The engine against real PostgreSQL+pgvector and Redis/Valkey: the article's behaviour and its defects."""

from __future__ import annotations

import datetime as dt

import anyio
import pytest

from mcp_shared_memory.errors import AccessDenied, InvalidInput, NotFound
from mcp_shared_memory.memory import SharedMemory
from mcp_shared_memory.models import Principal, Scope
from mcp_shared_memory.recent import MemberRange
from mcp_shared_memory.runtime import Connections
from mcp_shared_memory.settings import Settings
from mcp_shared_memory.stores.cache import CachedRecent, RedisCache
from mcp_shared_memory.stores.redis_client import RedisBreaker

from .conftest import Backdoor, isolated
from .faults import faulty_redis_runtime

pytestmark = pytest.mark.anyio

ALICE = Scope("user", "alice")


async def test_agents_of_one_user_share_recent_events(
    memory: SharedMemory, alice: Principal, alice_coder: Principal
) -> None:
    await memory.write_event(alice, "Auth service uses OAuth2 PKCE flow", importance=0.8)
    await memory.write_event(alice_coder, "Token validation must use RS256 not HS256", importance=0.9)

    recent = await memory.get_recent_shared(alice_coder, limit=10)

    assert [e.content for e in recent] == [
        "Token validation must use RS256 not HS256",
        "Auth service uses OAuth2 PKCE flow",
    ]
    assert [e.agent_id for e in recent] == ["code-1", "research-1"]
    assert recent[1].agent_type == "research"


async def test_paraphrased_query_finds_the_event_with_default_settings(memory: SharedMemory, alice: Principal) -> None:
    for text in (
        "The deployment pipeline runs on GitHub Actions with a manual approval step",
        "The login service authenticates users with OAuth2 and PKCE",
        "Quarterly revenue grew by twelve percent in the EMEA region",
        "The database backups are taken nightly and kept for thirty days",
    ):
        await memory.write_event(alice, text)

    hits = await memory.search_shared(alice, "how do users sign in?")

    assert hits, "the paraphrased query found nothing with the default similarity floor"
    assert hits[0].content == "The login service authenticates users with OAuth2 and PKCE"
    assert all(0 < h.similarity <= 1 for h in hits if h.similarity is not None)


async def test_the_articles_openai_floor_would_drop_the_correct_local_hit(
    memory: SharedMemory, alice: Principal
) -> None:
    """Defect 5: 0.72 is an OpenAI-scale floor; the local model needs its own (~0.25)."""
    await memory.write_event(alice, "The login service authenticates users with OAuth2 and PKCE")

    query = "how do users sign in?"
    assert await memory.search_shared(alice, query, min_similarity=0.72, mode="semantic") == []
    assert memory.settings.search_floor == pytest.approx(0.25)
    assert await memory.search_shared(alice, query, mode="semantic")


async def cached_events(backdoor: Backdoor, tenant: str, scope: Scope) -> list[int]:
    """The seqs the recent set holds, newest first (what a reader would be served from Redis)."""
    cache = RedisCache(
        backdoor.redis, prefix=backdoor.keys.prefix, recent_max=100, recent_ttl=60, breaker=RedisBreaker(0)
    )
    cached = await cache.read_recent(tenant, scope, MemberRange(count=None))
    assert isinstance(cached, CachedRecent), cached
    return [e.seq for e in cached.events]


async def test_recent_events_survive_cache_expiry(memory: SharedMemory, alice: Principal, backdoor: Backdoor) -> None:
    """Defect 1: when the Redis keys expire the events are read through from PostgreSQL and recached."""
    for i in range(5):
        await memory.write_event(alice, f"observation number {i}")
    await backdoor.redis.delete(backdoor.keys.recent(alice.tenant, ALICE))

    recent = await memory.get_recent_shared(alice, limit=3)

    assert [e.content for e in recent] == [f"observation number {i}" for i in (4, 3, 2)]
    assert len(await cached_events(backdoor, alice.tenant, ALICE)) == 5


async def test_cache_is_complete_when_writes_race_a_refill(
    memory: SharedMemory, alice: Principal, backdoor: Backdoor
) -> None:
    """Writers that commit while a reader refills an expired cache are never lost from it."""
    for i in range(10):
        await memory.write_event(alice, f"before expiry {i}")
    await backdoor.redis.delete(backdoor.keys.recent(alice.tenant, ALICE))

    async def write(i: int) -> None:
        await memory.write_event(alice, f"during refill {i}")

    async def read() -> None:
        await memory.get_recent_shared(alice, limit=5)

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(write, i)
            tg.start_soon(read)

    from_cache = await cached_events(backdoor, alice.tenant, ALICE)
    from_db = await backdoor.episodic.recent(alice.tenant, ALICE, limit=30)
    assert from_cache == [e.seq for e in from_db]


async def test_workspace_is_durable_when_redis_forgets_it(
    memory: SharedMemory, alice: Principal, backdoor: Backdoor
) -> None:
    """Defect 2: the workspace lives in PostgreSQL; Redis only caches it."""
    workspace = await memory.create_workspace(alice, "Migrate billing to Stripe", ["research-1", "code-1"])
    await backdoor.redis.delete(backdoor.keys.workspace(alice.tenant, workspace.id))

    again = await memory.get_workspace(alice, workspace.id)

    assert again.task == "Migrate billing to Stripe"
    assert again.agents == ["research-1", "code-1"]
    assert again.status == "active"


async def test_dedup_window_keys_include_tenant_and_scope_type(
    memory: SharedMemory, alice: Principal, other_tenant: Principal
) -> None:
    """Defect 3: user `x` and workspace `x` (and tenants) never share a dedup key."""
    ws = await memory.create_workspace(alice, "dedup scopes", ["a"])
    user_scope, ws_scope = f"user:{ws.id}", f"workspace:{ws.id}"
    both = Principal(tenant=alice.tenant, agent_id="a", allowed_scopes=(user_scope, ws_scope))

    first = await memory.write_event(both, "same content", scope=user_scope)
    second = await memory.write_event(both, "same content", scope=ws_scope)
    third = await memory.write_event(other_tenant, "same content", scope=user_scope)
    repeat = await memory.write_event(both, "same content", scope=user_scope)

    assert (first.status, second.status, third.status) == ("written", "written", "written")
    assert repeat.status == "deduplicated"
    assert repeat.event_id == first.event_id


async def test_metadata_round_trips_through_jsonb(memory: SharedMemory, alice: Principal, backdoor: Backdoor) -> None:
    """Defect 4: a dict goes into the JSONB column and comes back as a dict."""
    metadata = {"source": "ci", "files": ["a.py", "b.py"], "nested": {"ok": True, "n": 3}}
    await memory.write_event(alice, "metadata event", metadata=metadata)

    (event,) = await backdoor.episodic.recent(alice.tenant, ALICE, limit=1)

    assert event.metadata == metadata


async def test_search_returns_every_row_of_a_selective_scope(
    memory: SharedMemory, alice: Principal, backdoor: Backdoor
) -> None:
    """Defect 6: a small scope inside a big table gets `limit` rows when that many exist."""
    texts = [f"incident report {i}: the cache node {i} ran out of memory" for i in range(300)]
    for bulk in range(30):
        await backdoor.bulk_append(alice.tenant, Scope("user", f"bulk-{bulk}"), texts[bulk::30])
    for i in range(12):
        await memory.write_event(alice, f"alice's unrelated note {i} about gardening and tomatoes")

    hits = await memory.search_shared(alice, "cache node out of memory", limit=12, min_similarity=-1)

    assert len(hits) == 12
    assert {h.scope_id for h in hits} == {"alice"}


async def test_colons_in_ids_cannot_forge_another_scope(memory: SharedMemory, alice: Principal) -> None:
    """Defect 7: identifiers are validated, so `a:b` can never address another key."""
    with pytest.raises(InvalidInput):
        Scope.parse("user:alice:recent")
    with pytest.raises(InvalidInput):
        Principal(tenant="t:1", agent_id="a")
    with pytest.raises(InvalidInput):
        await memory.get_agent_history(alice, "research-1:x")
    forged = Principal(tenant=alice.tenant, agent_id="x", allowed_scopes=("*",))
    with pytest.raises(InvalidInput):
        await memory.write_event(forged, "forged", scope="workspace:a:b")


async def test_write_succeeds_when_redis_fails_after_commit(
    settings: Settings, connections: Connections, alice: Principal, backdoor: Backdoor
) -> None:
    """Defect 8: Redis failing after the commit is logged, not raised; an idempotency key makes
    the agent's retry safe, and the retry announces the event the failure left queued."""
    no_breaker = isolated(settings, redis_breaker_seconds=0)
    async with faulty_redis_runtime(no_breaker, connections) as faulty:
        memory = faulty.runtime.memory
        faulty.proxy.cut()
        first = await memory.write_event(alice, "written while redis breaks", idempotency_key="call-42")
        faulty.proxy.restore()
        retry = await memory.write_event(alice, "written while redis breaks", idempotency_key="call-42")

        assert first.status == "written"
        assert retry.status == "replayed" and retry.event_id == first.event_id
        stored = await backdoor.episodic.recent(alice.tenant, ALICE, limit=10)
        assert [e.content for e in stored] == ["written while redis breaks"]
        recent = await memory.get_recent_shared(alice, limit=10)
        assert [e.id for e in recent] == [first.event_id]
        queued = "SELECT count(*) FROM msm_cache_outbox WHERE event_id = $1"
        assert await backdoor.db.fetchval(queued, first.event_id) == 0  # nothing left behind


async def test_events_carry_id_and_seq_and_page_by_since_seq(memory: SharedMemory, alice: Principal) -> None:
    """Defect 9: every event has id and seq; a reader pages with since_seq without gaps or repeats."""
    written = [(await memory.write_event(alice, f"paged event {i}")).event for i in range(25)]
    assert all(e is not None and e.seq > 0 for e in written)

    seen: list[int] = []
    cursor = 0
    while True:
        page = await memory.get_recent_shared(alice, limit=10, since_seq=cursor)
        if not page:
            break
        seen += [e.seq for e in page]
        cursor = page[-1].seq

    assert seen == [e.seq for e in written if e is not None]


async def test_timestamps_are_timezone_aware(memory: SharedMemory, alice: Principal) -> None:
    """Defect 10: no naive utcnow()."""
    result = await memory.write_event(alice, "tz check")
    workspace = await memory.create_workspace(alice, "tz workspace")

    assert result.event is not None and result.event.created_at.tzinfo is not None
    assert workspace.created_at.tzinfo is not None
    cached = await memory.get_recent_shared(alice, limit=1)
    assert cached[0].created_at.utcoffset() == dt.timedelta(0)


async def test_failed_write_releases_its_dedup_claim(
    settings: Settings, connections: Connections, alice: Principal
) -> None:
    """A write that PostgreSQL cannot take must not make its retry look like a duplicate."""
    from mcp_shared_memory.errors import StoreUnavailable

    from .faults import faulty_postgres_runtime

    async with faulty_postgres_runtime(isolated(settings), connections) as faulty:
        faulty.proxy.cut()
        with pytest.raises(StoreUnavailable):
            await faulty.runtime.memory.write_event(alice, "retry me")
        faulty.proxy.restore()

        retry = await faulty.runtime.memory.write_event(alice, "retry me")
        assert retry.status == "written"


async def test_concurrent_writers_lose_nothing(memory: SharedMemory, alice: Principal, alice_coder: Principal) -> None:
    async def write(agent: Principal, i: int) -> None:
        await memory.write_event(agent, f"{agent.agent_id} concurrent {i}")

    async with anyio.create_task_group() as tg:
        for i in range(40):
            tg.start_soon(write, alice, i)
            tg.start_soon(write, alice_coder, i)

    recent = await memory.get_recent_shared(alice, limit=100)
    assert len(recent) == 80
    assert len({e.seq for e in recent}) == 80
    assert [e.seq for e in recent] == sorted((e.seq for e in recent), reverse=True)


SCOPE_LOCKS_HELD = """
SELECT count(*) FROM pg_locks
WHERE locktype = 'advisory' AND granted AND objsubid = 1
  AND ((classid::bigint << 32) | objid::bigint) = hashtextextended($1, 7340004)
"""


async def test_a_write_lets_go_of_its_scopes_lock_when_it_returns(
    memory: SharedMemory, alice: Principal, backdoor: Backdoor
) -> None:
    # The writer releases the scope's lock with its last statement (its connection then goes back to the
    # pool without a reset); nothing may keep holding it, or every later writer of the scope would wait.
    for i in range(5):
        await memory.write_event(alice, f"write {i} releases the scope")
        assert await backdoor.db.fetchval(SCOPE_LOCKS_HELD, f"{alice.tenant}:user:alice") == 0
    async with anyio.create_task_group() as tg:
        for i in range(10):
            tg.start_soon(memory.write_event, alice, f"concurrent write {i}")
    assert await backdoor.db.fetchval(SCOPE_LOCKS_HELD, f"{alice.tenant}:user:alice") == 0
    assert len(await memory.get_recent_shared(alice, limit=50)) == 15


async def test_recent_cache_is_capped_and_older_events_come_from_postgres(
    memory: SharedMemory, alice: Principal, backdoor: Backdoor
) -> None:
    for i in range(memory.settings.recent_max + 20):
        await memory.write_event(alice, f"capped {i}", dedup=False)
    key = backdoor.keys.recent(alice.tenant, ALICE)

    assert await backdoor.redis.zcount(key, "(0", "+inf") == memory.settings.recent_max
    everything = await memory.get_recent_shared(alice, limit=memory.settings.recent_max + 20)
    assert len(everything) == memory.settings.recent_max + 20
    page = await memory.get_recent_shared(alice, limit=5, since_seq=everything[-1].seq)
    assert [e.content for e in page] == [f"capped {i}" for i in range(1, 6)]


async def test_importance_filter_and_shared_context(memory: SharedMemory, alice: Principal) -> None:
    workspace = await memory.create_workspace(alice, "Ship the v2 API", ["research-1", "code-1"])
    scope = f"workspace:{workspace.id}"
    await memory.write_event(alice, "minor note nobody needs", importance=0.2, scope=scope)
    await memory.publish_result(alice, "The v2 API schema is final", scope=scope)

    important = await memory.get_recent_shared(alice, scope=scope, min_importance=0.6)
    text = await memory.get_task_context(alice, scope=scope)

    assert [e.event_type for e in important] == ["agent_result", "workspace_created"]
    assert text.startswith('Workspace task: "Ship the v2 API"')
    assert '[research-1 (research), agent_result]: "The v2 API schema is final"' in text
    assert "minor note" not in text

    await memory.store_fact(alice, "The v2 API uses cursor pagination", scope=scope)
    with_facts = await memory.get_task_context(alice, scope=scope)
    assert '--- Shared facts ---\n- "The v2 API uses cursor pagination" (confirmed 1x)' in with_facts


async def test_workspace_summary_and_update(memory: SharedMemory, alice: Principal) -> None:
    workspace = await memory.create_workspace(alice, "Summarise me", context={"repo": "acme/api"})
    for i in range(3):
        await memory.write_event(alice, f"step {i}", scope=f"workspace:{workspace.id}")

    updated = await memory.update_workspace(alice, workspace.id, status="completed", context={"pr": 12})
    summary = await memory.get_workspace_summary(alice, workspace.id, limit=2)

    assert updated.status == "completed"
    assert updated.context == {"repo": "acme/api", "pr": 12}
    assert summary.workspace.status == "completed"
    assert summary.event_count == 4
    assert len(summary.recent_events) == 2
    listed = await memory.list_workspaces(alice)
    assert [w.id for w in listed] == [workspace.id]


async def test_agent_history_is_one_agents_events(
    memory: SharedMemory, alice: Principal, alice_coder: Principal
) -> None:
    await memory.write_event(alice, "research finding")
    await memory.write_event(alice_coder, "code change")

    history = await memory.get_agent_history(alice, "code-1")

    assert [e.content for e in history] == ["code change"]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"content": "x" * 40_000}, InvalidInput),
        ({"content": ""}, InvalidInput),
        ({"content": "ok", "importance": 1.5}, InvalidInput),
        ({"content": "ok", "importance": float("nan")}, InvalidInput),
        ({"content": "ok", "scope": "team:alice"}, InvalidInput),
        ({"content": "ok", "scope": "user:bob"}, AccessDenied),
        ({"content": "ok", "event_type": "Bad Type!"}, InvalidInput),
        ({"content": "ok", "metadata": {"x": object()}}, InvalidInput),
        ({"content": "ok", "metadata": {"big": "y" * 20_000}}, InvalidInput),
    ],
)
async def test_bad_write_input_is_rejected_and_writes_nothing(
    memory: SharedMemory, alice: Principal, kwargs: dict, error: type[Exception], backdoor: Backdoor
) -> None:
    with pytest.raises(error) as raised:
        await memory.write_event(alice, **kwargs)

    assert str(raised.value)
    assert await backdoor.episodic.count(alice.tenant, ALICE) == 0
    assert await backdoor.episodic.count(alice.tenant, Scope("user", "bob")) == 0


async def test_unknown_workspace_is_not_found(memory: SharedMemory, alice: Principal) -> None:
    with pytest.raises(NotFound):
        await memory.get_workspace(alice, "00000000-0000-0000-0000-000000000000")
    with pytest.raises(InvalidInput):
        await memory.update_workspace(alice, "nope", status="finished")


async def test_tenant_b_never_sees_tenant_a(memory: SharedMemory, alice: Principal, other_tenant: Principal) -> None:
    """The two-tenant fixture: same user id, same agent id, same scope strings, nothing crosses."""
    await memory.write_event(alice, "tenant A secret: the launch date is March 3", importance=0.9)
    workspace = await memory.create_workspace(alice, "tenant A workspace")
    await memory.store_fact(alice, "Tenant A's launch date is March 3")

    assert await memory.get_recent_shared(other_tenant, limit=100) == []
    assert await memory.get_recent_shared(other_tenant, limit=100, since_seq=0) == []
    assert await memory.search_shared(other_tenant, "launch date", min_similarity=-1) == []
    assert await memory.get_agent_history(other_tenant, "research-1") == []
    assert await memory.list_workspaces(other_tenant) == []
    assert await memory.search_facts(other_tenant, "launch date", min_similarity=-1) == []
    with pytest.raises(NotFound):
        await memory.get_workspace(other_tenant, workspace.id)
    with pytest.raises(NotFound):
        await memory.update_workspace(other_tenant, workspace.id, status="cancelled")
    assert (await memory.get_workspace(alice, workspace.id)).status == "active"
    assert "March 3" not in await memory.get_task_context(other_tenant)


async def test_near_duplicate_fact_confirms_instead_of_adding(
    memory: SharedMemory, alice: Principal, alice_coder: Principal
) -> None:
    first = await memory.store_fact(alice, "The API rate limit is 100 requests per minute")
    second = await memory.store_fact(alice_coder, "The API rate limit is 100 requests per minute.")
    other = await memory.store_fact(alice, "Deployments happen every Tuesday")

    assert first.status == "stored" and second.status == "confirmed"
    assert second.fact.id == first.fact.id and second.fact.confirmations == 2
    assert set(second.fact.source_agents) == {"research-1", "code-1"}
    assert other.status == "stored"
    hits = await memory.search_facts(alice, "how many requests per minute are allowed?")
    assert hits[0].id == first.fact.id

    await memory.forget_fact(alice, str(first.fact.id))
    assert [f.id for f in await memory.search_facts(alice, "rate limit", min_similarity=-1)] == [other.fact.id]
    with pytest.raises(NotFound):
        await memory.forget_fact(alice, str(first.fact.id))
