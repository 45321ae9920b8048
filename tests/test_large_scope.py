"""Search in large scopes: above ``search_quantize_above`` events the vector ranking runs in two passes (a
shortlist by Hamming distance between the vectors' sign bits, then the exact cosine of the shortlist). The
threshold is lowered to 200 events here; the results must be those of the exact scan, filtered before the
limit, complete, and confined to the tenant and scope."""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest

from mcp_shared_memory.event_filter import EventFilter
from mcp_shared_memory.memory import SharedMemory
from mcp_shared_memory.models import Event, Principal, Scope
from mcp_shared_memory.runtime import Connections, open_runtime
from mcp_shared_memory.settings import Settings
from mcp_shared_memory.stores.event_search import PostgresEventSearch
from mcp_shared_memory.stores.lexical import SCOPE_SIZE_CAP
from mcp_shared_memory.stores.postgres import PgConnection, PostgresPool

from .conftest import Backdoor, isolated
from .faults import eventually

pytestmark = pytest.mark.anyio

THRESHOLD = 200
SCOPE_EVENTS = 400
ALICE = Scope("user", "alice")
COMPONENTS = [
    "billing service", "auth gateway", "search index", "payment worker", "user profile API", "notification queue",
    "analytics pipeline", "CI runner", "mobile app", "feature flag store", "session cache", "email sender",
    "inventory database", "rate limiter", "audit log", "image resizer", "checkout flow", "webhook dispatcher",
]  # fmt: skip
FINDINGS = [
    "times out under load", "returns stale data after a deploy", "leaks memory on long sessions",
    "rejects valid OAuth2 tokens", "double-charges on retries", "drops events when Redis restarts",
    "is slow because of a missing index", "logs personal data in plain text", "crashes on empty input",
    "retries forever without backoff",
]  # fmt: skip
ACTIONS = [
    "we should add a circuit breaker", "the fix is to pin the client version", "a migration adds the index",
    "ops agreed to raise the pool size", "the test suite now covers it", "the owner is the platform team",
]  # fmt: skip
QUESTIONS = [
    "why does the billing service time out?", "which component leaks memory?", "who owns the audit log?",
    "problems with OAuth2 tokens", "what did ops agree to?", "is anything charging customers twice?",
]  # fmt: skip


def event_texts(count: int, *, seed: int = 0) -> list[str]:
    combos = random.Random(seed).sample(list(itertools.product(COMPONENTS, FINDINGS, ACTIONS)), count)
    return [f"The {c} {f}; {a}." for c, f, a in combos]


@pytest.fixture
async def large(settings: Settings, connections: Connections) -> AsyncIterator[SharedMemory]:
    """A memory whose scopes of more than THRESHOLD events are searched in two passes."""
    async with open_runtime(isolated(settings, search_quantize_above=THRESHOLD), connections=connections) as opened:
        yield opened.memory


def search_store(connections: Connections, quantize_above: int | None) -> PostgresEventSearch:
    return PostgresEventSearch(connections.requests_db, quantize_above=quantize_above)


async def vector_candidates(
    store: PostgresEventSearch, backdoor: Backdoor, tenant: str, question: str, *, per_ranking: int = 10
) -> list[Event]:
    vector = await backdoor.embedder.embed(question)
    found = await store.candidates(
        tenant, ALICE, EventFilter(), vector=vector, query=None, model_id=backdoor.embedder.model_id,
        per_ranking=per_ranking,
    )  # fmt: skip
    return sorted(found, key=lambda e: e.similarity or -1.0, reverse=True)


def similarities(events: list[Event]) -> list[float]:
    return [round(e.similarity or -1.0, 5) for e in events]


async def test_two_passes_find_the_exact_top_results(
    large: SharedMemory, memory: SharedMemory, alice: Principal, backdoor: Backdoor, connections: Connections
) -> None:
    await backdoor.bulk_append(alice.tenant, ALICE, event_texts(SCOPE_EVENTS))
    exact, two_pass = search_store(connections, None), search_store(connections, THRESHOLD)
    for question in QUESTIONS:
        # the shortlist is 12 x 10 events of 400: the exact top 10 must survive the first pass
        expected = await vector_candidates(exact, backdoor, alice.tenant, question)
        got = await vector_candidates(two_pass, backdoor, alice.tenant, question)
        assert similarities(got) == similarities(expected), question
        hits = await large.search_shared(alice, question, mode="semantic", min_similarity=-1)
        reference = await memory.search_shared(alice, question, mode="semantic", min_similarity=-1)
        assert similarities(hits) == similarities(reference) and len(hits) == 10, question
        hybrid, reference = await large.search_shared(alice, question), await memory.search_shared(alice, question)
        assert [h.id for h in hybrid] == [h.id for h in reference], question


async def test_the_threshold_decides_which_search_runs(
    alice: Principal, backdoor: Backdoor, connections: Connections
) -> None:
    """A fault only the first pass can see (the best event's bits are gone) shows which search ran: the
    two passes start above the threshold, never at it."""
    await backdoor.bulk_append(alice.tenant, ALICE, event_texts(SCOPE_EVENTS))
    question = QUESTIONS[0]
    best = (await vector_candidates(search_store(connections, None), backdoor, alice.tenant, question))[0]
    await backdoor.db.execute("UPDATE shared_episodic_memories SET embedding_bits = NULL WHERE id = $1", best.id)

    at_threshold = await vector_candidates(search_store(connections, SCOPE_EVENTS), backdoor, alice.tenant, question)
    assert at_threshold[0].id == best.id
    above = await vector_candidates(search_store(connections, SCOPE_EVENTS - 1), backdoor, alice.tenant, question)
    assert best.id not in {e.id for e in above} and len(above) == 10


async def test_filters_apply_before_the_shortlist_and_results_are_complete(
    large: SharedMemory, alice: Principal, alice_coder: Principal, backdoor: Backdoor
) -> None:
    """12 matching events among 400 better-ranked others are all returned, in every mode."""
    noise = [f"The cache node {i} ran out of memory during the load test" for i in range(SCOPE_EVENTS)]
    await backdoor.bulk_append(alice.tenant, ALICE, noise)
    for i in range(12):
        await large.write_event(alice_coder, f"Decision {i}: keep the cache TTL at one hour", event_type="decision")
    await large.write_event(alice, "Decision: the research agent keeps the cache as is", event_type="decision")

    for mode in ("hybrid", "semantic"):
        hits = await large.search_shared(
            alice, "cache node out of memory", limit=12, mode=mode, min_similarity=-1,
            filters={"event_types": ["decision"], "agent_ids": ["code-1"]},
        )  # fmt: skip
        assert len(hits) == 12 and {(h.event_type, h.agent_id) for h in hits} == {("decision", "code-1")}
    few = await large.search_shared(
        alice, "cache", limit=20, mode="semantic", min_similarity=-1, filters={"agent_types": ["research"]}
    )
    assert [h.content for h in few] == ["Decision: the research agent keeps the cache as is"]


async def test_no_two_pass_search_crosses_tenants_or_scopes(
    large: SharedMemory, alice: Principal, other_tenant: Principal, backdoor: Backdoor
) -> None:
    secret = "Secret ERR_9001: the vault token of the billing service rotates nightly"
    await backdoor.bulk_append(alice.tenant, ALICE, [*event_texts(SCOPE_EVENTS - 1, seed=1), secret])
    bob = Principal(tenant=alice.tenant, agent_id="b", allowed_scopes=("user:bob",), default_scope=Scope("user", "bob"))
    theirs = event_texts(SCOPE_EVENTS, seed=2)
    await backdoor.bulk_append(other_tenant.tenant, ALICE, theirs)
    await backdoor.bulk_append(bob.tenant, Scope("user", "bob"), theirs)

    for intruder in (other_tenant, bob):
        for mode in ("semantic", "hybrid"):
            for filters in (None, {"agent_ids": ["bulk-1"]}):
                hits = await large.search_shared(
                    intruder, "vault token ERR_9001", mode=mode, limit=50, min_similarity=-1, filters=filters
                )
                assert hits and {h.content for h in hits} <= set(theirs)
    own = await large.search_shared(alice, "vault token ERR_9001", mode="semantic")
    assert own[0].content == secret


STALE_BITS = """
SELECT count(*) FILTER (WHERE embedding_bits IS DISTINCT FROM msm_embedding_bits(embedding)) AS stale,
       count(*) FILTER (WHERE embedding_bits IS NULL) AS without
FROM shared_episodic_memories WHERE tenant_id = $1
"""


async def bits_state(db: PostgresPool | PgConnection, tenant: str) -> tuple[int, int]:
    """(events whose code does not match their embedding, events without a code)"""
    row = await db.fetchrow(STALE_BITS, tenant)
    assert row is not None
    return row["stale"], row["without"]


async def _bits_state_is(backdoor: Backdoor, tenant: str, expected: tuple[int, int]) -> bool:
    return await bits_state(backdoor.db, tenant) == expected


async def test_every_way_of_writing_an_embedding_keeps_its_bits(
    memory: SharedMemory, alice: Principal, backdoor: Backdoor
) -> None:
    await memory.write_event(alice, "The staging database runs PostgreSQL 17")  # embedded just after its commit
    await backdoor.bulk_append(alice.tenant, ALICE, event_texts(5))
    await eventually(lambda: _bits_state_is(backdoor, alice.tenant, (0, 0)))  # the queue's write-back and COPY

    vector = await backdoor.embedder.embed("anything")
    # In one transaction: the runtime's embedding queue would otherwise embed the cleared events first.
    async with backdoor.db.cross_tenant() as conn, conn.transaction():
        await conn.execute("UPDATE shared_episodic_memories SET embedding = NULL WHERE tenant_id = $1", alice.tenant)
        assert await bits_state(conn, alice.tenant) == (0, 6)  # cleared for re-embedding
        await conn.execute(
            "UPDATE shared_episodic_memories SET embedding = $2 WHERE tenant_id = $1", alice.tenant, vector
        )
        assert await bits_state(conn, alice.tenant) == (0, 0)  # back-filled


async def test_searches_of_a_large_scope_are_planned_for_their_own_parameters(
    alice: Principal, backdoor: Backdoor, connections: Connections, settings: Settings
) -> None:
    """Once a search has counted a scope at the store's threshold, the next ones with a question are planned
    for their own parameters (not the generic plan, made for a one-event scope); smaller scopes keep the
    generic plan. What a search returns is the same either way, and the setting does not outlive it."""
    threshold = 60
    store = PostgresEventSearch(connections.requests_db, plan_per_search_from=threshold)
    small = Scope("user", "small")
    await backdoor.bulk_append(alice.tenant, ALICE, event_texts(threshold))
    await backdoor.bulk_append(alice.tenant, small, event_texts(threshold - 1, seed=3))

    async def search(scope: Scope, question: str, *, lexical: bool) -> list[tuple[str, float | None, float | None]]:
        vector = None if lexical else await backdoor.embedder.embed(question)
        found = await store.candidates(
            alice.tenant, scope, EventFilter(), vector=vector, query=question, model_id=backdoor.embedder.model_id,
            per_ranking=10,
        )  # fmt: skip
        return sorted((str(e.id), e.similarity, e.lexical) for e in found)

    assert not store.plans_per_search(alice.tenant, ALICE)
    for lexical in (False, True):
        for question in QUESTIONS:
            generic = await search(ALICE, question, lexical=lexical)
            assert store.plans_per_search(alice.tenant, ALICE)
            assert await search(ALICE, question, lexical=lexical) == generic and generic, question
            await search(small, question, lexical=lexical)
            assert not store.plans_per_search(alice.tenant, small)
            assert not store.plans_per_search(alice.tenant, Scope("user", "bob"))

    async with AsyncExitStack() as stack:  # every pooled connection: the setting went with its search
        for _ in range(settings.db_pool_max):
            conn = await stack.enter_async_context(connections.requests_db.tenant(alice.tenant))
            assert await conn.fetchval("SHOW plan_cache_mode") == "auto"


def test_the_plan_threshold_is_within_what_a_search_counts(connections: Connections) -> None:
    with pytest.raises(ValueError, match="plan_per_search_from"):
        PostgresEventSearch(connections.requests_db, plan_per_search_from=SCOPE_SIZE_CAP + 1)
