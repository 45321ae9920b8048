"""Integrity between the agents of one tenant: a fact's confirmations count distinct agents, and an
idempotency key belongs to the agent that used it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from qdrant_client import AsyncQdrantClient

from mcp_shared_memory.errors import Conflict
from mcp_shared_memory.memory import SharedMemory
from mcp_shared_memory.models import Principal
from mcp_shared_memory.runtime import Connections, Runtime, open_runtime
from mcp_shared_memory.stores.facts_qdrant import QdrantFactsStore
from mcp_shared_memory.stores.migrations import migrations_dir

from .conftest import Backdoor

pytestmark = [
    pytest.mark.anyio,
    # Qdrant's local mode warns that payload indexes and search params have no effect there.
    pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning"),
    pytest.mark.filterwarnings("ignore:Local mode performs exact:UserWarning"),
]

PARAPHRASES = [
    "The API rate limit is 100 requests per minute",
    "the API rate-limit is 100 requests per minute!",
    "The API rate limit is 100 requests per minute.",
    "The API's rate limit is 100 requests per minute",
    "API rate limit: 100 requests per minute",
]


@pytest.fixture(params=["pgvector", "qdrant"])
async def facts_memory(
    request: pytest.FixtureRequest, runtime: Runtime, connections: Connections
) -> AsyncIterator[SharedMemory]:
    """The shared memory with facts in pgvector, or in Qdrant (its local mode)."""
    if request.param == "pgvector":
        yield runtime.memory
        return
    embedder = connections.embedder
    qdrant = QdrantFactsStore(
        AsyncQdrantClient(location=":memory:"), model_id=embedder.model_id, dimension=embedder.dimension,
        owns_client=True,
    )  # fmt: skip
    async with open_runtime(runtime.settings, connections=connections, facts=qdrant) as opened:
        yield opened.memory


# facts -------------------------------------------------------------------------------------------


async def test_one_agent_storing_paraphrases_is_one_confirmation(facts_memory: SharedMemory, alice: Principal) -> None:
    written = [await facts_memory.store_fact(alice, text) for text in PARAPHRASES]

    assert [w.status for w in written] == ["stored"] + ["confirmed"] * 4
    assert {w.fact.id for w in written} == {written[0].fact.id}
    assert [w.fact.confirmations for w in written] == [1] * 5
    [found] = await facts_memory.search_facts(alice, "API rate limit", min_similarity=-1)
    assert found.confirmations == 1 and found.source_agents == ["research-1"]


async def test_confirmations_are_the_distinct_agents(
    facts_memory: SharedMemory, alice: Principal, alice_coder: Principal
) -> None:
    for text in PARAPHRASES[:3]:
        await facts_memory.store_fact(alice, text)
    first = await facts_memory.store_fact(alice_coder, PARAPHRASES[3])
    again = await facts_memory.store_fact(alice_coder, PARAPHRASES[4])

    assert first.status == again.status == "confirmed"
    assert first.fact.confirmations == again.fact.confirmations == 2
    [found] = await facts_memory.search_facts(alice, "API rate limit", min_similarity=-1)
    assert found.confirmations == 2 and sorted(found.source_agents) == ["code-1", "research-1"]


async def test_the_migration_recounts_existing_facts_by_agent(backdoor: Backdoor, tenant: str) -> None:
    """Rows confirmed under the old rule (every restatement counted) are recounted by distinct agents."""
    vector = await backdoor.embedder.embed(PARAPHRASES[0])
    rows = {"one agent five times": (5, ["a", "a"]), "two agents": (7, ["a", "b"]), "no agent": (3, [])}
    for fact, (confirmations, agents) in rows.items():
        await backdoor.db.execute(
            "INSERT INTO semantic_facts (tenant_id, scope_type, scope_id, fact, embedding, embedding_model,"
            " source_agents, confirmations) VALUES ($1, 'user', 'alice', $2, $3, $4, $5, $6)",
            tenant, fact, vector, backdoor.embedder.model_id, agents, confirmations,
        )  # fmt: skip

    migration = migrations_dir().joinpath("010_integrity.sql").read_text(encoding="utf-8")
    await backdoor.db.execute(migration)  # idempotent: the live database has it already

    got = await backdoor.db.fetch("SELECT fact, confirmations FROM semantic_facts WHERE tenant_id = $1", tenant)
    assert {r["fact"]: r["confirmations"] for r in got} == {"one agent five times": 1, "two agents": 2, "no agent": 1}


# idempotency keys --------------------------------------------------------------------------------


async def events_with_key(backdoor: Backdoor, tenant: str, key: str) -> list[tuple[str, str]]:
    rows = await backdoor.db.fetch(
        "SELECT agent_id, content FROM shared_episodic_memories WHERE tenant_id = $1 AND idempotency_key = $2"
        " ORDER BY seq",
        tenant, key,
    )  # fmt: skip
    return [(r["agent_id"], r["content"]) for r in rows]


async def test_another_agents_idempotency_key_cannot_be_pre_claimed(
    memory: SharedMemory, alice: Principal, alice_coder: Principal, backdoor: Backdoor
) -> None:
    key = "call-7"
    squatter = await memory.write_event(alice_coder, "planted by code-1", idempotency_key=key)
    victim = await memory.write_event(alice, "the real finding of research-1", idempotency_key=key)

    assert squatter.status == victim.status == "written"
    assert victim.event is not None and victim.event.agent_id == "research-1"
    assert victim.event.content == "the real finding of research-1"
    assert victim.event_id != squatter.event_id
    assert await events_with_key(backdoor, alice.tenant, key) == [
        ("code-1", "planted by code-1"),
        ("research-1", "the real finding of research-1"),
    ]

    retried = await memory.write_event(alice, "the real finding of research-1", idempotency_key=key)
    assert retried.status == "replayed" and retried.event_id == victim.event_id
    assert retried.event is not None and retried.event.content == "the real finding of research-1"
    assert len(await events_with_key(backdoor, alice.tenant, key)) == 2


async def test_a_reused_key_with_different_content_is_a_conflict(
    memory: SharedMemory, alice: Principal, backdoor: Backdoor
) -> None:
    key = f"call-{uuid.uuid4().hex[:6]}"
    first = await memory.write_event(alice, "deploy started", idempotency_key=key)

    with pytest.raises(Conflict) as conflict:
        await memory.write_event(alice, "deploy finished", idempotency_key=key)

    assert f"idempotency key '{key}' was already used by this agent for different content" in conflict.value.message
    assert "use a new key" in conflict.value.message
    assert await events_with_key(backdoor, alice.tenant, key) == [("research-1", "deploy started")]
    recent = await memory.get_recent_shared(alice, limit=10)
    assert [e.content for e in recent] == ["deploy started"]
    # The retry of the first write still replays it.
    retried = await memory.write_event(alice, "deploy started", idempotency_key=key)
    assert retried.status == "replayed" and retried.event_id == first.event_id
