"""Semantic facts: one behavioural suite run against both backends (pgvector on the embedded PostgreSQL,
Qdrant through qdrant-client's local mode, the same client API a server is used through), with real
embeddings and fresh tenants per test."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from qdrant_client import AsyncQdrantClient, models
from qdrant_client.http.exceptions import UnexpectedResponse

from mcp_shared_memory.embeddings import Embedder
from mcp_shared_memory.errors import ConfigError, NotFound, StoreUnavailable
from mcp_shared_memory.memory import SharedMemory
from mcp_shared_memory.models import Fact, Principal, Scope, SearchMode
from mcp_shared_memory.runtime import Connections, Runtime, create_facts_store, open_runtime
from mcp_shared_memory.settings import Settings
from mcp_shared_memory.stores.facts import FactsStore
from mcp_shared_memory.stores.facts_pg import PgVectorFactsStore
from mcp_shared_memory.stores.facts_qdrant import QdrantFactsStore, collection_name, fact_point_id
from mcp_shared_memory.stores.postgres import PostgresPool
from mcp_shared_memory.stores.qdrant_points import LEXICAL, terms

from .conftest import Backdoor, fresh_id

pytestmark = [
    pytest.mark.anyio,
    # Local mode warns that payload indexes and search params have no effect there; a server uses them.
    pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning"),
    pytest.mark.filterwarnings("ignore:Local mode performs exact:UserWarning"),
    pytest.mark.filterwarnings("ignore:Api key is used with an insecure connection:UserWarning"),
]

USER = Scope("user", "alice")
WORKSPACE_X = Scope("workspace", "ws-x")
WORKSPACE_Y = Scope("workspace", "ws-y")
RATE_LIMIT = "The API rate limit is 100 requests per minute"
MODES: tuple[SearchMode, ...] = ("hybrid", "semantic", "lexical")
ERR_4417 = "Error ERR_4417 means the card issuer timed out"
# Look-alikes of ERR_4417: the same words around another code (ERR_4418, ERR_4471 and their neighbours).
LOOK_ALIKES = [
    f"Error ERR_{code} means {meaning}"
    for code, meaning in zip(
        (4418, 4471, 4147, 4714, 4407, 4427, 4416, 4419, 4317, 4517, 4411, 4477),
        (
            "the card issuer timed out again",
            "the card was declined by the bank",
            "the card number is invalid",
            "the CVC check failed",
            "the account is frozen",
            "the card has insufficient funds",
            "the currency is not supported",
            "the merchant is blocked",
            "3-D Secure authentication failed",
            "the card has expired",
            "the card issuer is unreachable",
            "the payment timed out at checkout",
        ),
        strict=True,
    )
]


class YieldingQdrantClient(AsyncQdrantClient):
    """Local mode completes each call without ever yielding to the event loop, where a call to a server
    yields while in flight. This restores those switch points, so concurrent writers interleave (and
    race) as they would against a server."""


def _yielding(name: str) -> Any:
    async def call(self: AsyncQdrantClient, *args: Any, **kwargs: Any) -> Any:
        # A varying number of switch points, so that requests overtake each other as on a network.
        for _ in range(random.randint(1, 4)):
            await asyncio.sleep(0)
        result = await getattr(AsyncQdrantClient, name)(self, *args, **kwargs)
        for _ in range(random.randint(1, 4)):
            await asyncio.sleep(0)
        return result

    return call


for _name in (
    "collection_exists", "create_collection", "get_collection", "get_collections", "create_payload_index",
    "query_points", "query_batch_points", "retrieve", "scroll", "count", "upsert", "set_payload", "update_vectors",
    "delete", "create_vector_name",
):  # fmt: skip
    setattr(YieldingQdrantClient, _name, _yielding(_name))


@dataclass(frozen=True)
class Kit:
    """What the facts stores are built from: the session's model and pool, the test's settings."""

    settings: Settings
    embedder: Embedder
    db: PostgresPool


@pytest.fixture
def kit(runtime: Runtime, backdoor: Backdoor) -> Kit:
    return Kit(settings=runtime.settings, embedder=backdoor.embedder, db=backdoor.db)


def qdrant_store(kit: Kit, client: AsyncQdrantClient | None = None, **kwargs: Any) -> QdrantFactsStore:
    options: dict[str, Any] = {"model_id": kit.embedder.model_id, "dimension": kit.embedder.dimension}
    options.update(kwargs)
    if client is None:
        return QdrantFactsStore(YieldingQdrantClient(location=":memory:"), owns_client=True, **options)
    return QdrantFactsStore(client, **options)


@pytest.fixture(params=["pgvector", "qdrant"])
async def store(request: pytest.FixtureRequest, kit: Kit) -> AsyncIterator[FactsStore]:
    facts: FactsStore
    if request.param == "pgvector":
        facts = PgVectorFactsStore(kit.db, model_id=kit.embedder.model_id)
    else:
        facts = qdrant_store(kit)
    await facts.open()
    yield facts
    await facts.close()


async def put(
    store: FactsStore,
    kit: Kit,
    tenant: str,
    scope: Scope,
    fact: str,
    *,
    agent: str = "research-1",
    events: list[uuid.UUID] | None = None,
) -> Any:
    return await store.upsert(
        tenant, scope, fact, await kit.embedder.embed(fact), source_event_ids=events or [],
        source_agents=[agent], duplicate_floor=kit.settings.duplicate_floor,
    )  # fmt: skip


async def put_all(store: FactsStore, kit: Kit, tenant: str, scope: Scope, facts: list[str]) -> list[Fact]:
    """Store every fact as a fact of its own, however alike (look-alikes would confirm each other)."""
    written = []
    for fact, vector in zip(facts, await kit.embedder.embed_many(facts), strict=True):
        result = await store.upsert(
            tenant, scope, fact, vector, source_event_ids=[], source_agents=["research-1"], duplicate_floor=2.0
        )
        assert result.status == "stored"
        written.append(result.fact)
    return written


async def find(
    store: FactsStore, kit: Kit, tenant: str, scope: Scope, query: str, *,
    top_k: int = 10, min_similarity: float | None = None, mode: SearchMode = "hybrid",
) -> list[Fact]:  # fmt: skip
    floor = kit.settings.search_floor if min_similarity is None else min_similarity
    vector = await kit.embedder.embed(query)
    return await store.search(tenant, scope, vector, query=query, top_k=top_k, min_similarity=floor, mode=mode)


# behaviour shared by both backends ------------------------------------------------------------------


async def test_stored_fact_is_found_by_a_paraphrase(store: FactsStore, kit: Kit, tenant: str) -> None:
    written = await put(store, kit, tenant, USER, RATE_LIMIT)
    await put(store, kit, tenant, USER, "Deployments happen every Tuesday")

    hits = await find(store, kit, tenant, USER, "how many requests per minute are allowed?")

    assert written.status == "stored" and written.fact.confirmations == 1
    assert hits[0].id == written.fact.id and hits[0].fact == RATE_LIMIT
    assert hits[0].similarity is not None and hits[0].similarity >= kit.settings.search_floor
    assert (hits[0].scope_type, hits[0].scope_id) == ("user", "alice")
    assert hits[0].first_seen.tzinfo is not None and hits[0].last_seen.tzinfo is not None


async def test_near_duplicate_confirms_the_fact(store: FactsStore, kit: Kit, tenant: str) -> None:
    first_event, second_event = uuid.uuid4(), uuid.uuid4()
    first = await put(store, kit, tenant, USER, RATE_LIMIT, agent="research-1", events=[first_event])
    await asyncio.sleep(0.01)
    second = await put(
        store, kit, tenant, USER, "the API rate-limit is 100 requests per minute!", agent="code-1",
        events=[second_event],
    )  # fmt: skip

    assert second.status == "confirmed"
    assert second.fact.id == first.fact.id and second.fact.fact == RATE_LIMIT
    assert second.fact.confirmations == 2
    assert set(second.fact.source_agents) == {"research-1", "code-1"}
    assert set(second.fact.source_event_ids) == {first_event, second_event}
    assert second.fact.first_seen == first.fact.first_seen
    assert second.fact.last_seen > first.fact.last_seen
    [stored] = await find(store, kit, tenant, USER, "API rate limit", min_similarity=-1)
    assert stored.confirmations == 2 and set(stored.source_event_ids) == {first_event, second_event}

    # Confirming again from events already recorded (a consolidation rerun) does not count twice.
    again = await put(store, kit, tenant, USER, RATE_LIMIT + ".", agent="code-1", events=[second_event])
    assert again.status == "confirmed" and again.fact.confirmations == 2


async def test_an_agent_restating_a_fact_adds_its_events_but_no_confirmation(
    store: FactsStore, kit: Kit, tenant: str
) -> None:
    events = [uuid.uuid4() for _ in range(3)]
    first = await put(store, kit, tenant, USER, RATE_LIMIT, agent="research-1", events=[events[0]])
    restated = await put(
        store, kit, tenant, USER, "the API rate-limit is 100 requests per minute!", agent="research-1",
        events=[events[1]],
    )  # fmt: skip

    assert restated.status == "confirmed" and restated.fact.id == first.fact.id
    assert restated.fact.confirmations == 1 and restated.fact.source_agents == ["research-1"]
    assert set(restated.fact.source_event_ids) == {events[0], events[1]}

    other = await put(store, kit, tenant, USER, RATE_LIMIT + ".", agent="code-1", events=[events[2]])
    assert other.fact.confirmations == 2 and set(other.fact.source_agents) == {"research-1", "code-1"}
    [stored] = await find(store, kit, tenant, USER, "API rate limit", min_similarity=-1)
    assert stored.confirmations == 2 and set(stored.source_event_ids) == set(events)


async def test_a_different_fact_is_stored_separately(store: FactsStore, kit: Kit, tenant: str) -> None:
    first = await put(store, kit, tenant, USER, RATE_LIMIT)
    other = await put(store, kit, tenant, USER, "Deployments happen every Tuesday")

    assert other.status == "stored" and other.fact.id != first.fact.id
    found = await find(store, kit, tenant, USER, "anything", min_similarity=-1)
    assert {f.id for f in found} == {first.fact.id, other.fact.id}
    assert all(f.confirmations == 1 for f in found)


async def test_forget_removes_only_that_fact(store: FactsStore, kit: Kit, tenant: str) -> None:
    doomed = await put(store, kit, tenant, USER, RATE_LIMIT)
    kept = await put(store, kit, tenant, USER, "Deployments happen every Tuesday")

    assert await store.forget(tenant, USER, doomed.fact.id) is True
    assert await store.forget(tenant, USER, doomed.fact.id) is False
    assert await store.forget(tenant, USER, uuid.uuid4()) is False
    assert [f.id for f in await find(store, kit, tenant, USER, "rate limit", min_similarity=-1)] == [kept.fact.id]

    # Storing it again after forgetting it starts over.
    again = await put(store, kit, tenant, USER, RATE_LIMIT)
    assert again.status == "stored" and again.fact.confirmations == 1


async def test_tenants_and_scopes_never_see_each_others_facts(store: FactsStore, kit: Kit, tenant: str) -> None:
    tenant_b = fresh_id("tenant-b")
    ours = await put(store, kit, tenant, WORKSPACE_X, RATE_LIMIT)

    for other_tenant, other_scope in ((tenant_b, WORKSPACE_X), (tenant, WORKSPACE_Y), (tenant, USER)):
        for mode in MODES:
            assert await find(store, kit, other_tenant, other_scope, RATE_LIMIT, min_similarity=-1, mode=mode) == []
        # The right id from the wrong tenant or scope deletes nothing.
        assert await store.forget(other_tenant, other_scope, ours.fact.id) is False
        # The same fact elsewhere is a new fact there, not a confirmation of ours.
        theirs = await put(store, kit, other_tenant, other_scope, RATE_LIMIT, agent="intruder")
        assert theirs.status == "stored" and theirs.fact.id != ours.fact.id

    for mode in MODES:
        [still] = await find(store, kit, tenant, WORKSPACE_X, RATE_LIMIT, min_similarity=-1, mode=mode)
        assert still.id == ours.fact.id and still.confirmations == 1 and still.source_agents == ["research-1"]
        [theirs_found] = await find(store, kit, tenant_b, WORKSPACE_X, RATE_LIMIT, min_similarity=-1, mode=mode)
        assert theirs_found.source_agents == ["intruder"]


async def test_top_k_and_threshold_are_honoured_in_semantic_mode(store: FactsStore, kit: Kit, tenant: str) -> None:
    facts = [
        RATE_LIMIT,
        "Deployments happen every Tuesday",
        "Alice prefers answers in French",
        "The staging database runs PostgreSQL 16 on port 5433",
        "Quarterly revenue grew by twelve percent in the EMEA region",
    ]
    for fact in facts:
        await put(store, kit, tenant, USER, fact)

    question = "what language does alice want replies in?"
    everything = await find(store, kit, tenant, USER, question, min_similarity=-1, mode="semantic")
    assert len(everything) == 5 and everything[0].fact == "Alice prefers answers in French"
    scores = [f.similarity for f in everything]
    assert scores == sorted(scores, reverse=True)
    assert all(f.score == f.similarity and f.lexical is None for f in everything)

    top_two = await find(store, kit, tenant, USER, question, top_k=2, mode="semantic")
    assert [f.id for f in top_two] == [f.id for f in everything[:2] if f.similarity >= kit.settings.search_floor]

    floor = (scores[0] + scores[1]) / 2
    above = await find(store, kit, tenant, USER, question, min_similarity=floor, mode="semantic")
    assert [f.fact for f in above] == ["Alice prefers answers in French"]
    assert await find(store, kit, tenant, USER, "completely unrelated gibberish", min_similarity=0.99) == []


async def test_concurrent_upserts_of_a_new_fact_make_one_fact(store: FactsStore, kit: Kit, tenant: str) -> None:
    writers = 8
    vector = await kit.embedder.embed(RATE_LIMIT)
    events = [uuid.uuid4() for _ in range(writers)]

    results = await asyncio.gather(*(
        store.upsert(
            tenant, USER, RATE_LIMIT, vector, source_event_ids=[events[i]], source_agents=[f"agent-{i}"],
            duplicate_floor=kit.settings.duplicate_floor,
        )
        for i in range(writers)
    ))  # fmt: skip

    assert sorted(r.status for r in results) == ["confirmed"] * (writers - 1) + ["stored"]
    [fact] = await find(store, kit, tenant, USER, RATE_LIMIT, min_similarity=-1)
    assert fact.confirmations == writers
    assert set(fact.source_agents) == {f"agent-{i}" for i in range(writers)}
    assert set(fact.source_event_ids) == set(events)


async def test_reembed_returns_the_count_and_search_still_works(store: FactsStore, kit: Kit, tenant: str) -> None:
    for fact in (RATE_LIMIT, "Deployments happen every Tuesday", "Alice prefers answers in French"):
        await put(store, kit, tenant, USER, fact)

    count = await store.reembed(kit.embedder.embed_many)

    # pgvector re-embeds the whole (shared test) table, a fresh Qdrant collection holds only these.
    assert count == 3 if isinstance(store, QdrantFactsStore) else count >= 3
    hits = await find(store, kit, tenant, USER, "how many requests per minute are allowed?")
    assert hits[0].fact == RATE_LIMIT
    assert (await put(store, kit, tenant, USER, RATE_LIMIT + ".")).status == "confirmed"


async def test_an_identifier_finds_its_fact_first_among_look_alikes(store: FactsStore, kit: Kit, tenant: str) -> None:
    [target, *_] = await put_all(store, kit, tenant, USER, [ERR_4417, *LOOK_ALIKES])

    for question in (
        "ERR_4417",
        "What does ERR_4417 mean?",
        "what happens on ERR_4417 in checkout",
        "customer saw ERR_4417 at checkout",
        "why did payment fail with err_4417",
    ):
        for mode in ("hybrid", "lexical"):
            hits = await find(store, kit, tenant, USER, question, top_k=5, mode=mode)
            assert hits[0].id == target.id, (question, mode, [h.fact for h in hits])
            assert hits[0].lexical is not None and hits[0].lexical > max(h.lexical or 0 for h in hits[1:])


async def test_modes_behave_as_documented(store: FactsStore, kit: Kit, tenant: str) -> None:
    deployments, rate_limit, french = await put_all(
        store, kit, tenant, USER, ["Deployments happen every Tuesday", RATE_LIMIT, "Alice prefers answers in French"]
    )
    question = "when are deployments?"  # shares a word with one fact only

    semantic = await find(store, kit, tenant, USER, question, min_similarity=-1, mode="semantic")
    assert len(semantic) == 3 and all(f.lexical is None and f.score == f.similarity for f in semantic)
    assert [f.similarity for f in semantic] == sorted((f.similarity for f in semantic), reverse=True)

    # Only the facts sharing a term, whatever the floor; similarity still reported; score = lexical / best.
    [hit] = await find(store, kit, tenant, USER, question, min_similarity=0.99, mode="lexical")
    assert hit.id == deployments.id and hit.lexical is not None and hit.lexical > 0 and hit.score == 1.0
    assert hit.similarity is not None and hit.similarity < 0.99
    assert await find(store, kit, tenant, USER, "is it what it was?", min_similarity=-1, mode="lexical") == []

    # Fused: every fact qualifies at floor -1, best score first, the keyword hit on top.
    hybrid = await find(store, kit, tenant, USER, question, min_similarity=-1)
    assert {f.id for f in hybrid} == {deployments.id, rate_limit.id, french.id}
    assert hybrid[0].id == deployments.id
    assert [f.score for f in hybrid] == sorted((f.score or 0.0 for f in hybrid), reverse=True)
    assert [f.lexical for f in hybrid[1:]] == [0, 0]
    for fact in hybrid:
        best_similarity = max(f.similarity or 0.0 for f in semantic)
        expected = 0.5 * max(fact.similarity or 0.0, 0.0) / best_similarity + 0.5 * (fact.lexical or 0.0) / hit.lexical
        assert fact.score == pytest.approx(expected, abs=1e-5)
    assert await find(store, kit, tenant, USER, "completely unrelated gibberish", min_similarity=0.99) == []


async def test_hybrid_keeps_a_keyword_hit_below_the_similarity_floor(store: FactsStore, kit: Kit, tenant: str) -> None:
    runbook, _ = await put_all(store, kit, tenant, USER, ["Runbook RB-77 covers ERR_4417", RATE_LIMIT])
    question = "ERR_4417"

    assert await find(store, kit, tenant, USER, question, min_similarity=0.99, mode="semantic") == []
    # The rate-limit fact is neither similar enough nor sharing a term: dropped.
    [hit] = await find(store, kit, tenant, USER, question, min_similarity=0.99)
    assert hit.id == runbook.id and hit.similarity is not None and hit.similarity < 0.99
    assert hit.lexical is not None and hit.lexical > 0


@pytest.mark.parametrize("mode", MODES)
async def test_results_are_complete(store: FactsStore, kit: Kit, tenant: str, mode: SearchMode) -> None:
    services = ["billing", "search", "checkout", "auth", "payments", "ledger", "mail", "reports", "admin", "web"]
    facts = [f"The {name} service is deployed by the platform team on Fridays" for name in services]
    facts += [f"{name.title()} questions go to the #{name} channel" for name in ("design", "sales")]
    await put_all(store, kit, tenant, USER, facts)

    # Ten facts share "deployed" (all qualify in lexical and hybrid mode); all twelve pass floor -1.
    hits = await find(store, kit, tenant, USER, "who deployed it?", top_k=10, min_similarity=0.99, mode=mode)
    assert len(hits) == (0 if mode == "semantic" else 10)
    hits = await find(store, kit, tenant, USER, "who deployed it?", top_k=12, min_similarity=-1, mode=mode)
    assert len(hits) == (10 if mode == "lexical" else 12)
    assert len({h.id for h in hits}) == len(hits)


# Qdrant specifics ----------------------------------------------------------------------------------


async def test_the_keyword_terms_match_postgresql_identifiers(kit: Kit) -> None:
    """Qdrant's terms come from Python, PostgreSQL's from msm_lexemes: the same identifiers, whole."""
    text = "ERR_4417 at payments-api v2.3.1 (src/app/main.py, JIRA-1234, ops@example.com); the requests failed."
    python = terms(text)
    assert {"err_4417", "err", "4417", "payments-api", "v2.3.1", "src/app/main.py", "jira-1234"} <= set(python)
    assert {"request", "failed"} <= set(python) and not {"the", "at"} & set(python)
    lexemes = set(await kit.db.fetchval("SELECT tsvector_to_array(msm_lexemes($1))", text))
    identifiers = {t for t in python if not t.isalpha()}
    assert identifiers - {"1234"} <= lexemes  # PostgreSQL's parser reads JIRA-1234's number as '-1234'


async def test_hybrid_search_is_exact_however_shallow_the_first_read(kit: Kit) -> None:
    """Qdrant fuses two lists read ``fusion_pool`` deep, deeper until nothing outside can outrank a hit: a
    pool of 1 gives the same results as one holding every fact."""
    client = YieldingQdrantClient(location=":memory:")
    shallow, deep = qdrant_store(kit, client, fusion_pool=1), qdrant_store(kit, client, fusion_pool=1000)
    tenant = fresh_id("tenant")
    await put_all(deep, kit, tenant, USER, [ERR_4417, *LOOK_ALIKES, RATE_LIMIT, "Deployments happen every Tuesday"])

    for question in ("what happens on ERR_4417 in checkout", "card declined", "rate limit for the API"):
        for mode in MODES:
            for top_k in (1, 3, 8):
                expected = await find(deep, kit, tenant, USER, question, top_k=top_k, mode=mode)
                got = await find(shallow, kit, tenant, USER, question, top_k=top_k, mode=mode)
                assert [f.id for f in got] == [f.id for f in expected], (question, mode, top_k)
                assert [f.score for f in got] == pytest.approx([f.score for f in expected], abs=1e-6)
    await client.close()


async def dense_only_collection(kit: Kit, client: AsyncQdrantClient, tenant: str) -> uuid.UUID:
    """A collection as created before keyword search, holding one fact written then."""
    name = collection_name(kit.embedder.model_id, kit.embedder.dimension)
    await client.create_collection(
        name, vectors_config=models.VectorParams(size=kit.embedder.dimension, distance=models.Distance.COSINE)
    )
    point_id = fact_point_id(tenant, USER, ERR_4417)
    now = "2026-01-01T00:00:00+00:00"
    payload = {
        "fact": ERR_4417, "tenant_id": tenant, "scope_type": USER.type, "scope_id": USER.id,
        "embedding_model": kit.embedder.model_id, "source_event_ids": [], "source_agents": ["research-1"],
        "confirmations": 1, "first_seen": now, "last_seen": now,
    }  # fmt: skip
    vector = (await kit.embedder.embed(ERR_4417)).tolist()
    await client.upsert(name, points=[models.PointStruct(id=str(point_id), vector=vector, payload=payload)])
    return point_id


async def test_a_collection_without_keyword_vectors_gets_them(kit: Kit) -> None:
    client = YieldingQdrantClient(location=":memory:")
    tenant = fresh_id("tenant")
    old_fact = await dense_only_collection(kit, client, tenant)

    store = qdrant_store(kit, client)
    await store.open()
    [new_fact, *_] = await put_all(store, kit, tenant, USER, LOOK_ALIKES)

    info = await client.get_collection(store.collection)
    assert LEXICAL in (info.config.params.sparse_vectors or {})
    hits = await find(store, kit, tenant, USER, "ERR_4417", top_k=3, min_similarity=0.99)
    assert hits[0].id == old_fact and hits[0].lexical and hits[0].lexical > (hits[1].lexical or 0)
    [hit] = await find(store, kit, tenant, USER, "ERR_4418", top_k=1, mode="lexical")
    assert hit.id == new_fact.id
    await client.close()


class OldQdrantClient(YieldingQdrantClient):
    """A server that cannot add a vector to an existing collection (before Qdrant 1.18)."""

    async def create_vector_name(self, *args: Any, **kwargs: Any) -> Any:
        raise UnexpectedResponse(404, "Not Found", b"", httpx.Headers())


async def test_without_keyword_vectors_search_stays_semantic(kit: Kit, caplog: pytest.LogCaptureFixture) -> None:
    client = OldQdrantClient(location=":memory:")
    tenant = fresh_id("tenant")
    old_fact = await dense_only_collection(kit, client, tenant)
    store = qdrant_store(kit, client)

    await store.open()
    written = await put(store, kit, tenant, USER, RATE_LIMIT)

    assert "semantic only" in caplog.text
    for mode in MODES:
        hits = await find(store, kit, tenant, USER, "how many requests per minute are allowed?", mode=mode)
        assert hits[0].id == written.fact.id and hits[0].lexical is None and hits[0].score == hits[0].similarity
        assert old_fact not in {h.id for h in hits}
    await client.close()


async def test_collection_name_and_point_ids() -> None:
    assert collection_name("all-MiniLM-L6-v2", 384) == "msm_facts__all-minilm-l6-v2__384"
    assert collection_name("BAAI/bge small", 512) == "msm_facts__baai-bge-small__512"
    same = fact_point_id("t", USER, RATE_LIMIT)
    assert fact_point_id("t", USER, "  the api RATE limit is 100 requests  per minute. ") == same
    assert fact_point_id("t2", USER, RATE_LIMIT) != same
    assert fact_point_id("t", WORKSPACE_X, RATE_LIMIT) != same


async def test_collection_creation_is_idempotent_when_stores_open_at_once(kit: Kit) -> None:
    client = YieldingQdrantClient(location=":memory:")
    stores = [qdrant_store(kit, client) for _ in range(4)]

    await asyncio.gather(*(s.open() for s in stores))
    await asyncio.gather(*(s.open() for s in stores))

    names = [c.name for c in (await client.get_collections()).collections]
    assert names == ["msm_facts__all-minilm-l6-v2__384"]
    tenant = fresh_id("tenant")
    written = await put(stores[0], kit, tenant, USER, RATE_LIMIT)
    assert [f.id for f in await find(stores[3], kit, tenant, USER, RATE_LIMIT)] == [written.fact.id]
    await client.close()


async def test_concurrent_writers_in_separate_stores_make_one_fact(kit: Kit) -> None:
    """Stores that share no lock stand in for separate processes: the insert-only point id and the
    compare-and-set confirmation still give exactly one fact carrying every confirmation."""
    client = YieldingQdrantClient(location=":memory:")
    stores = [qdrant_store(kit, client) for _ in range(4)]
    vector = await kit.embedder.embed(RATE_LIMIT)

    for _ in range(5):  # the interleavings vary from round to round
        tenant = fresh_id("tenant")
        results = await asyncio.gather(*(
            s.upsert(
                tenant, USER, RATE_LIMIT, vector, source_event_ids=[], source_agents=[f"agent-{i}-{j}"],
                duplicate_floor=kit.settings.duplicate_floor,
            )
            for i, s in enumerate(stores)
            for j in range(3)
        ))  # fmt: skip

        assert [r.status for r in results].count("stored") == 1
        [fact] = await find(stores[0], kit, tenant, USER, RATE_LIMIT, min_similarity=-1)
        assert fact.confirmations == 12 and len(fact.source_agents) == 12
    await client.close()


async def test_a_point_counted_by_the_old_rule_reads_as_its_distinct_agents(kit: Kit) -> None:
    """Points confirmed when every restatement counted (no migration rewrites Qdrant) read right."""
    client = YieldingQdrantClient(location=":memory:")
    store = qdrant_store(kit, client)
    tenant = fresh_id("tenant")
    written = await put(store, kit, tenant, USER, RATE_LIMIT)
    await client.set_payload(store.collection, {"confirmations": 5}, points=[str(written.fact.id)], wait=True)

    [found] = await find(store, kit, tenant, USER, RATE_LIMIT, min_similarity=-1)
    assert found.confirmations == 1
    confirmed = await put(store, kit, tenant, USER, RATE_LIMIT + ".", agent="code-1")
    assert confirmed.fact.confirmations == 2
    [record] = await client.retrieve(store.collection, [str(written.fact.id)], with_payload=True)
    assert (record.payload or {})["confirmations"] == 2
    await client.close()


async def test_existing_collection_of_another_dimension_is_a_config_error(kit: Kit) -> None:
    client = AsyncQdrantClient(location=":memory:")
    await client.create_collection(
        "msm_facts__all-minilm-l6-v2__384",
        vectors_config=models.VectorParams(size=8, distance=models.Distance.COSINE),
    )
    with pytest.raises(ConfigError, match="8-dim"):
        await qdrant_store(kit, client).open()
    await client.close()


async def test_reembed_moves_facts_of_the_previous_model_into_this_one(kit: Kit) -> None:
    client = YieldingQdrantClient(location=":memory:")
    old = qdrant_store(kit, client, model_id="old-model")
    tenant = fresh_id("tenant")
    stored = await put(old, kit, tenant, USER, RATE_LIMIT, events=[uuid.uuid4()])
    await put(old, kit, tenant, USER, RATE_LIMIT + "!", agent="code-1")
    new = qdrant_store(kit, client)
    await new.open()
    assert await find(new, kit, tenant, USER, RATE_LIMIT) == []

    assert await new.reembed(kit.embedder.embed_many) == 1

    [moved] = await find(new, kit, tenant, USER, "how many requests per minute are allowed?")
    assert moved.id == stored.fact.id and moved.confirmations == 2
    assert moved.source_event_ids == stored.fact.source_event_ids
    assert set(moved.source_agents) == {"research-1", "code-1"}
    assert (await client.count("msm_facts__old-model__384")).count == 0
    await client.close()


async def test_unreachable_qdrant_fails_with_a_safe_message(kit: Kit, tmp_path: Path) -> None:
    secret = "sekret-api-key-123"
    settings = Settings(qdrant_url="http://127.0.0.1:9", qdrant_api_key=secret, data_dir=tmp_path)
    store = create_facts_store(settings, kit.db, kit.embedder)
    assert isinstance(store, QdrantFactsStore)

    await store.open()  # logged, not fatal: events keep working while Qdrant is down
    with pytest.raises(StoreUnavailable) as failure:
        await store.search(
            fresh_id("tenant"), USER, np.ones(384, dtype=np.float32), query="rate limit", top_k=5, min_similarity=0.2
        )
    await store.close()

    assert "Qdrant" in failure.value.message
    assert secret not in failure.value.message and "127.0.0.1" not in failure.value.message

    with pytest.raises(ConfigError):
        QdrantFactsStore.from_settings(Settings(data_dir=tmp_path), model_id="m", dimension=3)


async def test_shared_memory_with_the_qdrant_store(
    kit: Kit, connections: Connections, alice: Principal, alice_coder: Principal, other_tenant: Principal
) -> None:
    facts = qdrant_store(kit)
    async with open_runtime(kit.settings, connections=connections, facts=facts) as runtime:
        await run_shared_memory_checks(runtime.memory, alice, alice_coder, other_tenant)


async def run_shared_memory_checks(
    shared: SharedMemory, alice: Principal, alice_coder: Principal, other_tenant: Principal
) -> None:
    first = await shared.store_fact(alice, RATE_LIMIT)
    second = await shared.store_fact(alice_coder, RATE_LIMIT + ".")
    other = await shared.store_fact(alice, "Deployments happen every Tuesday")

    assert (first.status, second.status, other.status) == ("stored", "confirmed", "stored")
    assert second.fact.id == first.fact.id and second.fact.confirmations == 2
    assert set(second.fact.source_agents) == {"research-1", "code-1"}
    hits = await shared.search_facts(alice, "how many requests per minute are allowed?")
    assert hits[0].id == first.fact.id
    assert await shared.search_facts(other_tenant, "rate limit", min_similarity=-1) == []
    with pytest.raises(NotFound):
        await shared.forget_fact(other_tenant, str(first.fact.id))

    await shared.forget_fact(alice, str(first.fact.id))
    assert [f.id for f in await shared.search_facts(alice, "rate limit", min_similarity=-1)] == [other.fact.id]
    with pytest.raises(NotFound):
        await shared.forget_fact(alice, str(first.fact.id))
