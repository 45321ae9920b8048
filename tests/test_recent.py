"""The recent-events read-through rules, table-driven and without Redis: which members a query needs, the
floor a refill proves, and when cached members provably answer a query (else: ask PostgreSQL)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from mcp_shared_memory.models import Event
from mcp_shared_memory.recent import MemberRange, RecentQuery, answer, cacheable, member_range, refill_floor


def event(seq: int, importance: float = 0.5) -> Event:
    return Event(
        id=uuid.uuid4(), seq=seq, scope_type="user", scope_id="alice", agent_id="a", agent_type="agent",
        event_type="observation", content=f"event {seq}", importance=importance, created_at=datetime.now(UTC),
    )  # fmt: skip


def newest_first(*seqs: int, important: tuple[int, ...] = ()) -> list[Event]:
    return [event(s, 0.9 if s in important else 0.1) for s in sorted(seqs, reverse=True)]


@pytest.mark.parametrize(
    ("query", "wanted"),
    [
        (RecentQuery(limit=20), MemberRange(count=20)),
        (RecentQuery(limit=5, since_seq=40), MemberRange(count=5, after_seq=40)),
        (RecentQuery(limit=5, min_importance=0.6), MemberRange(count=None)),
        (RecentQuery(limit=5, min_importance=0.6, since_seq=40), MemberRange(count=None)),
    ],
    ids=["newest", "after a cursor", "importance filter needs the whole set", "filter with a cursor"],
)
def test_members_a_query_needs(query: RecentQuery, wanted: MemberRange) -> None:
    assert member_range(query) == wanted


@pytest.mark.parametrize(
    ("seqs", "recent_max", "floor"),
    [
        ((), 100, 0),  # an empty scope is complete
        ((3, 2, 1), 100, 0),  # fewer than asked for: the whole scope
        ((50, 49, 48), 3, 47),  # exactly recent_max: older events may exist below the oldest
        ((9, 7, 5), 3, 4),  # gaps in seq (other scopes' events) do not matter
    ],
)
def test_floor_proven_by_a_refill(seqs: tuple[int, ...], recent_max: int, floor: int) -> None:
    assert refill_floor(newest_first(*seqs), recent_max=recent_max) == floor


def test_queries_larger_than_the_cache_go_to_postgres() -> None:
    assert cacheable(RecentQuery(limit=100), recent_max=100)
    assert not cacheable(RecentQuery(limit=101), recent_max=100)


@pytest.mark.parametrize(
    ("cached", "floor", "query", "expected"),
    [
        # newest-N: enough members, or the set is the whole scope
        ((10, 9, 8, 7), 6, RecentQuery(limit=3), [10, 9, 8]),
        ((10, 9), 0, RecentQuery(limit=5), [10, 9]),
        ((10, 9), 8, RecentQuery(limit=5), None),  # events <= 8 may exist but are not cached
        ((), 0, RecentQuery(limit=5), []),  # a known-empty scope
        # cursors: served only when the cursor is at or above the floor, oldest first
        ((10, 9, 8, 7), 6, RecentQuery(limit=10, since_seq=7), [8, 9, 10]),
        ((10, 9, 8, 7), 6, RecentQuery(limit=2, since_seq=6), [7, 8]),
        ((10, 9, 8, 7), 6, RecentQuery(limit=10, since_seq=5), None),  # seq 6 might exist: not cached
        ((10, 9), 8, RecentQuery(limit=10, since_seq=10), []),  # nothing newer
        # importance filter: count only what matches
        ((10, 9, 8, 7), 6, RecentQuery(limit=2, min_importance=0.6), [10, 8]),
        ((10, 9, 8, 7), 6, RecentQuery(limit=3, min_importance=0.6), None),  # a third may lie below the floor
        ((10, 9, 8, 7), 0, RecentQuery(limit=3, min_importance=0.6), [10, 8]),
        ((10, 9, 8, 7), 6, RecentQuery(limit=5, min_importance=0.6, since_seq=8), [10]),
    ],
)
def test_when_cached_members_answer_a_query(
    cached: tuple[int, ...], floor: int, query: RecentQuery, expected: list[int] | None
) -> None:
    members = newest_first(*cached, important=(10, 8))
    result = answer(members, floor, query)
    assert (None if result is None else [e.seq for e in result]) == expected
