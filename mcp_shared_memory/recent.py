"""The recent-events read-through, as pure rules: which cached members answer a query, and when the
cache provably holds the whole answer. No I/O here; ``SharedMemory`` applies these to what the cache
and PostgreSQL return.

The cache keeps a scope's newest events in a set scored by ``seq`` with a *floor*: every event of the
scope with ``seq > floor`` is in the set, except those trimmed below the newest ``recent_max``
(``floor == 0``: the set holds the whole scope). A cache without a floor is cold and must be refilled.
An answer is served from the cache only when the floor proves nothing is missing from it; otherwise
the query goes to PostgreSQL. This is what keeps ``since_seq`` cursors free of gaps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .models import Event


@dataclass(frozen=True, slots=True)
class RecentQuery:
    limit: int
    min_importance: float = 0.0
    since_seq: int | None = None


@dataclass(frozen=True, slots=True)
class MemberRange:
    """The members of the recent set a query needs: the newest ``count`` (all when None), or, with
    ``after_seq``, the oldest ``count`` above that seq."""

    count: int | None
    after_seq: int | None = None


def cacheable(query: RecentQuery, *, recent_max: int) -> bool:
    """A query asking for more events than the cache keeps always goes to PostgreSQL."""
    return query.limit <= recent_max


def member_range(query: RecentQuery) -> MemberRange:
    """Fetch only what can answer the query: an importance filter needs the whole set."""
    if query.min_importance > 0:
        return MemberRange(count=None)
    if query.since_seq is not None:
        return MemberRange(count=query.limit, after_seq=query.since_seq)
    return MemberRange(count=query.limit)


def refill_floor(newest: Sequence[Event], *, recent_max: int) -> int:
    """The floor proven by the newest ``recent_max`` events read from PostgreSQL (newest first): fewer
    than asked for means they are the whole scope."""
    if len(newest) < recent_max or not newest:
        return 0
    return min(e.seq for e in newest) - 1


def answer(newest: Sequence[Event], floor: int, query: RecentQuery) -> list[Event] | None:
    """Answer ``query`` from events that include every event of the scope with ``seq > floor`` (given
    newest first). None when they cannot prove the answer complete: ask PostgreSQL."""
    matching = [e for e in newest if e.importance >= query.min_importance] if query.min_importance > 0 else newest
    if query.since_seq is not None:
        if query.since_seq < floor:
            return None
        after = [e for e in matching if e.seq > query.since_seq]
        after.reverse()
        return after[: query.limit]
    if len(matching) >= query.limit or floor == 0:
        return list(matching[: query.limit])
    return None
