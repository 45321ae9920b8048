"""Hybrid search and filters: identifiers found exactly among look-alikes, modes as documented, filters
applied before ranking (complete results), isolation for every mode and filter, clear errors."""

from __future__ import annotations

from datetime import timedelta

import pytest

from mcp_shared_memory.errors import InvalidInput
from mcp_shared_memory.memory import SharedMemory
from mcp_shared_memory.models import Principal, Scope

from .conftest import Backdoor

pytestmark = pytest.mark.anyio

ALICE = Scope("user", "alice")
MODES = ["hybrid", "semantic", "lexical"]


async def test_an_identifier_is_found_first_among_hundreds_of_look_alikes(
    memory: SharedMemory, alice: Principal, backdoor: Backdoor
) -> None:
    look_alikes = [
        f"Deploy of payments-api v2.{i // 10}.{i % 10} failed with ERR_{4400 + i} on host db-{i:02d}.prod"
        for i in range(300)
    ]
    await backdoor.bulk_append(alice.tenant, ALICE, look_alikes)
    target = await memory.write_event(alice, "ERR_4417 means the card issuer timed out; retry after 30 s")

    for question in ("what does ERR_4417 mean?", "ERR_4417"):
        hits = await memory.search_shared(alice, question, limit=5)
        assert hits[0].id == target.event_id, [h.content for h in hits]
        assert hits[0].lexical and hits[0].score
    versioned = await memory.search_shared(alice, "which error did v2.1.7 fail with?", limit=3)
    assert "v2.1.7 " in versioned[0].content


async def test_modes_behave_as_documented(memory: SharedMemory, alice: Principal) -> None:
    login = await memory.write_event(alice, "The login service authenticates users with OAuth2 and PKCE")
    code = await memory.write_event(alice, "Ticket OPS-5521 tracks the flaky nightly backup job")
    await memory.write_event(alice, "Quarterly revenue grew by twelve percent in the EMEA region")

    semantic = await memory.search_shared(alice, "how does someone log in?", mode="semantic")
    assert semantic[0].id == login.event_id and semantic[0].lexical is not None
    assert all(h.similarity is not None and h.similarity >= memory.settings.search_floor for h in semantic)

    lexical = await memory.search_shared(alice, "OPS-5521", mode="lexical")
    assert [h.id for h in lexical] == [code.event_id]  # only events sharing a term; no embedding needed
    assert lexical[0].similarity is None and lexical[0].lexical

    assert await memory.search_shared(alice, "zebra quantum", mode="lexical") == []
    hybrid = await memory.search_shared(alice, "OPS-5521 status", min_similarity=0.99)
    assert [h.id for h in hybrid] == [code.event_id]  # a keyword hit survives a floor no cosine reaches
    with pytest.raises(InvalidInput, match="mode"):
        await memory.search_shared(alice, "x", mode="fuzzy")  # type: ignore[arg-type]


async def test_a_filtered_search_is_complete_when_enough_events_match(
    memory: SharedMemory, alice: Principal, alice_coder: Principal, backdoor: Backdoor
) -> None:
    """Filters apply before ranking: 12 matching events among 400 better-ranked others are all returned."""
    noise = [f"The cache node {i} ran out of memory during the load test" for i in range(400)]
    await backdoor.bulk_append(alice.tenant, ALICE, noise)
    for i in range(12):
        await memory.write_event(alice_coder, f"Decision {i}: keep the cache TTL at one hour", event_type="decision")

    for mode in ("hybrid", "semantic"):
        hits = await memory.search_shared(
            alice, "cache node out of memory", limit=12, mode=mode, min_similarity=-1,
            filters={"event_types": ["decision"], "agent_ids": ["code-1"]},
        )  # fmt: skip
        assert len(hits) == 12 and {h.event_type for h in hits} == {"decision"}
    recent = await memory.get_recent_shared(alice, limit=5, filters={"agent_types": ["code"]})
    assert [e.content for e in recent] == [f"Decision {i}: keep the cache TTL at one hour" for i in (11, 10, 9, 8, 7)]


async def test_time_importance_and_metadata_filters(memory: SharedMemory, alice: Principal) -> None:
    old = await memory.write_event(alice, "Rollout of v3 planned", importance=0.9, metadata={"project": "atlas"})
    assert old.event is not None
    cutoff = old.event.created_at + timedelta(microseconds=1)
    new = await memory.write_event(alice, "Rollout of v3 done", importance=0.3, metadata={"project": "atlas"})
    await memory.write_event(alice, "Rollout of v3 for another project", metadata={"project": "zeus"})

    def ids(events: list) -> list:  # type: ignore[type-arg]
        return [e.id for e in events]

    after = await memory.search_shared(alice, "rollout v3", filters={"since": cutoff, "metadata": {"project": "atlas"}})
    assert ids(after) == [new.event_id]
    before = await memory.get_recent_shared(alice, filters={"until": cutoff})
    assert ids(before) == [old.event_id]
    important = await memory.search_shared(alice, "rollout v3", filters={"min_importance": 0.8})
    assert ids(important) == [old.event_id]
    history = await memory.get_agent_history(alice, "research-1", filters={"metadata": {"project": "zeus"}})
    assert [e.content for e in history] == ["Rollout of v3 for another project"]


@pytest.mark.parametrize("mode", MODES)
async def test_no_mode_or_filter_crosses_tenants_or_scopes(
    memory: SharedMemory, alice: Principal, other_tenant: Principal, mode: str
) -> None:
    await memory.write_event(alice, "Secret ERR_9001: the vault token rotates nightly", event_type="decision")
    bob = Principal(tenant=alice.tenant, agent_id="b", allowed_scopes=("user:bob",), default_scope=Scope("user", "bob"))
    for intruder in (other_tenant, bob):
        for filters in (None, {"event_types": ["decision"]}, {"agent_ids": ["research-1"]}):
            found = await memory.search_shared(intruder, "ERR_9001 vault token", mode=mode, filters=filters)  # type: ignore[arg-type]
            assert found == []
        assert await memory.get_recent_shared(intruder, filters={"agent_ids": ["research-1"]}) == []


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ({"colour": "red"}, "colour"),
        ({"since": "2026-11-02T00:00:00Z", "until": "2026-11-01T00:00:00Z"}, "since must be before until"),
        ({"agent_ids": [f"agent-{i}" for i in range(51)]}, "at most 50"),
        ({"agent_ids": ["a:b"]}, "invalid agent id"),
        ({"since": "2026-11-01T00:00:00"}, "timezone"),
    ],
)
async def test_bad_filters_get_a_clear_error_and_change_nothing(
    memory: SharedMemory,
    alice: Principal,
    filters: dict,
    message: str,  # type: ignore[type-arg]
) -> None:
    with pytest.raises(InvalidInput, match=message):
        await memory.search_shared(alice, "anything", filters=filters)
    with pytest.raises(InvalidInput, match=message):
        await memory.get_recent_shared(alice, filters=filters)


async def test_recency_half_life_prefers_newer_events(memory: SharedMemory, alice: Principal) -> None:
    first = await memory.write_event(alice, "The staging database runs PostgreSQL 16")
    second = await memory.write_event(alice, "The staging database now runs PostgreSQL 17")
    assert first.event is not None and second.event is not None
    plain = await memory.search_shared(alice, "staging database PostgreSQL version")
    recent = await memory.search_shared(alice, "staging database PostgreSQL version", recency_half_life=1e-3)
    assert recent[0].id == second.event_id
    assert {h.id for h in plain} == {h.id for h in recent}
    with pytest.raises(InvalidInput, match="recency_half_life"):
        await memory.search_shared(alice, "x", recency_half_life=0)


async def test_older_events_are_indexed_for_lexical_search_in_batches(
    memory: SharedMemory, alice: Principal, backdoor: Backdoor
) -> None:
    """Events written before the lexical index existed are filled in batches (migration 008)."""
    from mcp_shared_memory.maintenance import fill_lexemes

    written = await memory.write_event(alice, "The blue-green switch for checkout-svc is at 14:00 UTC")
    # The runtime's maintenance also fills once when it starts, and may take the event first: clear again.
    for _ in range(3):
        await backdoor.db.execute(
            "UPDATE shared_episodic_memories SET lexemes = NULL, scoped_lexemes = NULL WHERE id = $1", written.event_id
        )
        assert await memory.search_shared(alice, "checkout-svc", mode="lexical") == []
        if await fill_lexemes(backdoor.episodic, batch=1) >= 1:
            break
    else:
        raise AssertionError("fill_lexemes never indexed the event")
    assert [h.id for h in await memory.search_shared(alice, "checkout-svc", mode="lexical")] == [written.event_id]


async def test_events_written_before_the_scoped_index_are_found_before_and_after_it_is_filled(
    memory: SharedMemory, alice: Principal, backdoor: Backdoor
) -> None:
    """Migration 020 keys the full-text index by scope; until an older event is filled, its lexemes find it."""
    from mcp_shared_memory.maintenance import fill_lexemes

    written = await memory.write_event(alice, "Rollback of ledger-svc v4.2.0 finished at 09:10")
    unscoped = "UPDATE shared_episodic_memories SET scoped_lexemes = NULL WHERE id = $1"
    for mode in ("lexical", "hybrid"):
        await backdoor.db.execute(unscoped, written.event_id)
        hits = await memory.search_shared(alice, "ledger-svc v4.2.0", mode=mode)
        assert [h.id for h in hits][:1] == [written.event_id]
    for _ in range(3):  # the runtime's maintenance may fill it first: clear again
        await backdoor.db.execute(unscoped, written.event_id)
        if await fill_lexemes(backdoor.episodic, batch=1) >= 1:
            break
    else:
        raise AssertionError("fill_lexemes never filled the event")
    filled = await backdoor.db.fetchval(
        "SELECT scoped_lexemes IS NOT NULL FROM shared_episodic_memories WHERE id = $1", written.event_id
    )
    assert filled
    assert [h.id for h in await memory.search_shared(alice, "ledger-svc v4.2.0", mode="lexical")] == [written.event_id]
