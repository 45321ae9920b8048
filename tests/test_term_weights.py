"""The lexical half of search weighs each question term by its rarity in the scope (``stores/lexical.py``):
a rare identifier outweighs a word every event repeats, every candidate gets its lexical score, and the
statistics are the scope's own."""

from __future__ import annotations

import pytest

from mcp_shared_memory.memory import SharedMemory
from mcp_shared_memory.models import Principal, Scope

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
