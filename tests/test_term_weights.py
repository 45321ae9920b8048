"""The lexical half of search weighs each question term by its rarity in the scope (``stores/lexical.py``):
a rare identifier outweighs a word every event repeats, every candidate gets its lexical score, and the
statistics are the scope's own."""

from __future__ import annotations

import uuid

import pytest

from mcp_shared_memory.event_filter import EventFilter
from mcp_shared_memory.memory import SharedMemory
from mcp_shared_memory.models import Event, Principal, Scope
from mcp_shared_memory.runtime import Connections
from mcp_shared_memory.stores.event_search import LexicalRank, PostgresEventSearch

from .conftest import Backdoor

pytestmark = pytest.mark.anyio

ALICE = Scope("user", "alice")
BOB = Scope("user", "bob")


async def test_a_rare_term_outweighs_a_word_every_event_repeats(
    memory: SharedMemory, alice: Principal, backdoor: Backdoor
) -> None:
    # Short events sharing only the common word win an unweighted, length-normalised rank; the answer
    # shares only the rare one.
    await backdoor.bulk_append(alice.tenant, ALICE, [f"Grace: sounds good, see you at {h}:00" for h in range(40)])
    target = await memory.write_event(
        alice, "We spent three summers in Asheville by the Blue Ridge mountains when my parents ran a bakery"
    )
    for mode in ("lexical", "hybrid"):
        hits = await memory.search_shared(alice, "Did Grace ever live in Asheville?", mode=mode, limit=3)
        assert hits[0].id == target.event_id, (mode, [h.content for h in hits])


async def test_a_vector_candidate_keeps_its_lexical_score(
    memory: SharedMemory, alice: Principal, backdoor: Backdoor
) -> None:
    # 40 events share both question terms, so the lexical list (3 x limit deep) never reaches the event
    # that shares one of them; it is still a candidate by meaning, and must carry its shared term.
    await backdoor.bulk_append(alice.tenant, ALICE, [f"billing ledger export batch {i} archived" for i in range(40)])
    target = await memory.write_event(alice, "The billing service charges customers' cards every month")
    hits = await memory.search_shared(alice, "how does billing charge the ledger?", limit=3)
    by_id = {h.id: h for h in hits}
    assert target.event_id in by_id, [h.content for h in hits]
    assert (by_id[target.event_id].lexical or 0) > 0


async def test_term_statistics_are_the_scopes_own(memory: SharedMemory, alice: Principal, backdoor: Backdoor) -> None:
    # In bob's scope every event mentions ERR_9001; in alice's only one does, and 30 short ones mention
    # the question's other word. Counted over the tenant, the code would be the commoner term.
    await backdoor.bulk_append(alice.tenant, BOB, [f"ERR_9001 again on worker {i}" for i in range(200)])
    await backdoor.bulk_append(alice.tenant, ALICE, [f"checkout retried order {i}" for i in range(30)])
    target = await memory.write_event(alice, "Root cause of ERR_9001 found in the cache layer after a long hunt")
    hits = await memory.search_shared(alice, "checkout ERR_9001", mode="lexical", limit=3)
    assert hits[0].id == target.event_id, [h.content for h in hits]
    assert all((h.scope_type, h.scope_id) == ("user", "alice") for h in hits)


@pytest.mark.parametrize("rank", ["idf", "ts_rank"])
async def test_hybrid_gives_each_candidate_the_signals_each_ranking_gives_it(
    rank: LexicalRank, alice: Principal, backdoor: Backdoor, connections: Connections
) -> None:
    # Hybrid search runs its full-text and vector halves side by side and joins their candidates: an event
    # only one half found gets the other signal computed apart (its similarity from its own vector, its
    # full-text score from the terms it holds). Both must be what semantic and lexical search give it.
    texts = [
        f"deploy {i} of payments-api {'rolled back' if i % 3 else 'shipped'} after ERR_44{i % 7}" for i in range(40)
    ]
    texts += [f"why the checkout was slow on day {i}: a retry storm after the release" for i in range(40)]
    await backdoor.bulk_append(alice.tenant, ALICE, texts)
    store = PostgresEventSearch(connections.requests_db, lexical_rank=rank)
    question = "why was payments-api rolled back after ERR_443?"
    vector = await backdoor.embedder.embed(question)

    async def candidates(mode: str, deep: int) -> dict[uuid.UUID, Event]:
        found = await store.candidates(
            alice.tenant, ALICE, EventFilter(), vector=None if mode == "lexical" else vector,
            query=None if mode == "semantic" else question, model_id=backdoor.embedder.model_id, per_ranking=deep,
        )  # fmt: skip
        return {e.id: e for e in found}

    hybrid = await candidates("hybrid", 10)
    semantic, lexical = await candidates("semantic", 80), await candidates("lexical", 80)
    top_semantic = sorted(semantic.values(), key=lambda e: e.similarity or -1.0, reverse=True)[:10]
    top_lexical = sorted(lexical.values(), key=lambda e: e.lexical or 0.0, reverse=True)[:10]
    only_by_meaning = {e.id for e in top_semantic} - {e.id for e in top_lexical}
    only_by_words = {e.id for e in top_lexical} - {e.id for e in top_semantic}
    assert only_by_meaning and only_by_words  # both computations apart are exercised
    assert len(hybrid) >= 10
    for event_id, hit in hybrid.items():
        assert hit.similarity == pytest.approx(semantic[event_id].similarity, abs=1e-6), hit.content
        expected = lexical[event_id].lexical if event_id in lexical else 0.0
        assert hit.lexical == pytest.approx(expected, rel=1e-9, abs=1e-12), hit.content
