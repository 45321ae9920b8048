"""Filtered reads and search candidates over the episodic log (PostgreSQL full text + pgvector).

Every query here is scoped to one tenant and scope and takes the same filter parameters, applied in
SQL before any ranking or limit, so a filtered result is complete. Search returns *candidates* from
each ranking (exact vector k-NN, full-text rank) with both signals; fusing them is a rule of the
domain (``ranking.py``).
"""

from __future__ import annotations

import asyncio
import inspect
from collections import OrderedDict
from collections.abc import Awaitable
from typing import Any, Literal

from ..event_filter import EventFilter
from ..models import Event, Scope
from ..vectors import Vector, cosine
from .episodic import EVENT_COLUMNS, M_COLUMNS, row_to_event
from .lexical import (
    MATCHING,
    SCOPE_SIZE_CAP,
    WEIGHTS,
    idf_hits,
    idf_score_of_hits,
    idf_statements,
    question_queries,
    question_terms,
    score_of_hits,
)
from .postgres import PostgresPool, Record
from .quantized import shortlist_length, with_two_pass

# $1-$3: tenant, scope type, scope id; $4-$10: the filter (NULL: no condition). Constant SQL, never
# built from input.
SCOPE_AND_FILTER = """
tenant_id = $1 AND scope_type = $2 AND scope_id = $3
AND ($4::text[] IS NULL OR agent_id = ANY($4::text[]))
AND ($5::text[] IS NULL OR agent_type = ANY($5::text[]))
AND ($6::text[] IS NULL OR event_type = ANY($6::text[]))
AND ($7::timestamptz IS NULL OR created_at >= $7::timestamptz)
AND ($8::timestamptz IS NULL OR created_at < $8::timestamptz)
AND importance >= $9::float8
AND ($10::jsonb IS NULL OR metadata @> $10::jsonb)
"""

# Newest first, or after a cursor oldest first: two statements, so that each reads the scope's index in its
# order and stops at the limit (one ordered by a CASE sorted every matching event of the scope).
FILTERED_NEWEST = f"""
SELECT {EVENT_COLUMNS} FROM shared_episodic_memories
WHERE {SCOPE_AND_FILTER}
ORDER BY seq DESC LIMIT $11
"""
FILTERED_SINCE = f"""
SELECT {EVENT_COLUMNS} FROM shared_episodic_memories
WHERE {SCOPE_AND_FILTER} AND seq > $11
ORDER BY seq LIMIT $12
"""

# Exact k-NN over the scope's rows ("+ 0" keeps the planner off any ANN index: with a selective scope
# filter an HNSW scan silently returns fewer rows than match).
VECTOR_CANDIDATES = f"""
SELECT id, (embedding <=> $11) + 0 AS distance
FROM shared_episodic_memories
WHERE {SCOPE_AND_FILTER} AND embedding IS NOT NULL AND embedding_model = $12
ORDER BY distance LIMIT $13
"""

# The question's terms OR-ed (msm_query, a function in FROM: evaluated once, where a scalar subquery was
# re-evaluated for every row under a generic plan), ranked by ts_rank normalised by document length (flag 1:
# divide by 1 + log(length)), so a long event does not win by mentioning every word once. Not
# ts_rank_cd: cover density ignores lexemes without positions, which is how whole identifiers are kept.
LEXICAL_CANDIDATES = f"""
SELECT id, ts_rank(lexemes, question.tsq, 1) AS rank
FROM shared_episodic_memories, {question_queries("$14")}
WHERE {SCOPE_AND_FILTER} AND question.tsq IS NOT NULL AND {MATCHING}
ORDER BY rank DESC, seq DESC LIMIT $13
"""


NO_SIZE = "NULL::bigint"


def _search_lexical(lexical: str, statements: str = "", size: str = NO_SIZE, half: str = "") -> str:
    """Lexical mode: no vector (no embedding of the question); $11 the question, $12 the candidate count.
    ``half``: the full-text half of a hybrid search, with what the vector half needs (``half`` is the
    weights' expression): each candidate's vector, and the terms' weights."""
    renumbered = lexical.replace("$13", "$12").replace("$14", "$11")
    more = f", m.embedding, m.embedding_model, {half} AS weights" if half else ""
    weights_from = "\nCROSS JOIN w" if half and statements else ""
    return f"""
WITH {statements.replace("$14", "$11")}
lex AS ({renumbered})
SELECT {M_COLUMNS}, NULL::float8 AS similarity, lex.rank AS lexical, {size} AS scope_events{more}
FROM lex JOIN shared_episodic_memories m ON m.id = lex.id{weights_from}
"""


def _vector_half(signal: str, statements: str = "", question: str = "") -> str:
    """The vector half of a hybrid search: the vector ranking, with what its candidates hold of the question
    (``signal``, as ``lexical_signal``: the terms' bits for the idf rank, the rank itself for ts_rank)."""
    return f"""
WITH {statements}
vec AS ({VECTOR_CANDIDATES}),
candidates AS (SELECT id, distance FROM vec)
SELECT {M_COLUMNS}, 1 - c.distance AS similarity, {signal} AS lexical_signal, {NO_SIZE} AS scope_events
FROM candidates c JOIN shared_episodic_memories m ON m.id = c.id{question}
"""


# The default rank (see lexical.py): weights counted over the matching events, in the same statement.
IDF_STATEMENTS = idf_statements(SCOPE_AND_FILTER, "$14") + ","
LEXICAL_CANDIDATES_IDF = f"""
SELECT id, {idf_score_of_hits("hits")} AS rank FROM matched, w ORDER BY rank DESC, seq DESC LIMIT $13
"""
IDF_SIZE = "(SELECT n FROM counts)"
TS_RANK_OF_ANY = "CASE WHEN m.lexemes @@ q.tsq THEN ts_rank(m.lexemes, q.tsq, 1) END"
SEARCH_LEXICAL = {
    "ts_rank": _search_lexical(LEXICAL_CANDIDATES),
    "idf": _search_lexical(LEXICAL_CANDIDATES_IDF, IDF_STATEMENTS, IDF_SIZE),
}
LexicalRank = Literal["ts_rank", "idf"]
# A hybrid search runs as two statements side by side: the full-text half starts with the search, while the
# question is being embedded, and the vector half as soon as the vector is there. One statement made the
# full-text half wait for the model (about 1 ms of a small scope's search; in a 100k-event scope, the whole
# embedding). Both halves carry what fusing needs: the full-text half each candidate's vector and the terms'
# weights, the vector half which of the question's terms each of its candidates holds.
LEXICAL_HALF = {
    "ts_rank": _search_lexical(LEXICAL_CANDIDATES, half="NULL::float8[]"),
    "idf": _search_lexical(LEXICAL_CANDIDATES_IDF, IDF_STATEMENTS, IDF_SIZE, half=WEIGHTS),
}
VECTOR_HALF = {
    "ts_rank": _vector_half(f"COALESCE({TS_RANK_OF_ANY}, 0)", question="\nCROSS JOIN msm_query($14) AS q(tsq)"),
    "idf": _vector_half(idf_hits("m.lexemes"), question_terms("$14") + ",", "\nCROSS JOIN q"),
}
# Semantic mode: the vector ranking alone. No question, so nothing of the full-text statements runs (under a
# generic plan they read every event of the scope even for an empty question).
SEARCH_SEMANTIC = f"""
WITH vec AS ({VECTOR_CANDIDATES}),
candidates AS (SELECT id, distance FROM vec)
SELECT {M_COLUMNS}, 1 - c.distance AS similarity, 0::float8 AS lexical, {NO_SIZE} AS scope_events
FROM candidates c JOIN shared_episodic_memories m ON m.id = c.id
"""
# The vector ranking with two passes in large scopes (quantized.py): semantic mode's, or a hybrid search's
# vector half (by lexical rank); then by whether a filter is given.
SEARCH_TWO_PASS = {
    mode: {
        filtered: with_two_pass(sql, exact=VECTOR_CANDIDATES, scope_and_filter=SCOPE_AND_FILTER, filtered=filtered)
        for filtered in (False, True)
    }
    for mode, sql in {"semantic": SEARCH_SEMANTIC, **VECTOR_HALF}.items()
}
NO_FILTER = EventFilter()
# A search with a question is planned for its own parameters in a scope the store has seen hold at least
# this many events. asyncpg prepares every statement, and after five runs PostgreSQL keeps a generic plan,
# made for a scope of one event (it takes tenant, scope type and id for independent): the full-text half then
# reads every event of the scope. Planned for the scope at hand, it intersects the full-text index with the
# scope's. Measured with both plans on the same questions: 0.6 x the time at 10k events, 0.8 x at 5k, but
# 1.15 x at 2k and +1.2 ms at 100 (planning this statement costs more than it saves there).
PLAN_PER_SEARCH_FROM = SCOPE_SIZE_CAP
# Lasts until the connection goes back to the pool (asyncpg resets the session).
PLAN_PER_SEARCH = "SET plan_cache_mode = force_custom_plan"
SCOPES_REMEMBERED = 4096
ScopeKey = tuple[str, str, str]


def filter_args(tenant: str, scope: Scope, filters: EventFilter) -> tuple[Any, ...]:
    return (
        tenant, scope.type, scope.id, filters.agent_ids, filters.agent_types, filters.event_types,
        filters.since, filters.until, filters.min_importance, filters.metadata,
    )  # fmt: skip


class PostgresEventSearch:
    """``quantize_above``: the vector ranking of a scope with more events runs in two passes
    (``quantized.py``); None: always the exact scan."""

    def __init__(
        self,
        db: PostgresPool,
        *,
        lexical_rank: LexicalRank = "idf",
        quantize_above: int | None = None,
        plan_per_search_from: int = PLAN_PER_SEARCH_FROM,
    ) -> None:
        if not 0 < plan_per_search_from <= SCOPE_SIZE_CAP:
            raise ValueError(f"plan_per_search_from must be between 1 and {SCOPE_SIZE_CAP} (what a search counts)")
        self._db = db
        self._search_lexical = SEARCH_LEXICAL[lexical_rank]
        self._lexical_half = LEXICAL_HALF[lexical_rank]
        self._vector_half = VECTOR_HALF[lexical_rank]
        self._vector_half_two_pass = SEARCH_TWO_PASS[lexical_rank]
        self._lexical_rank = lexical_rank
        self._quantize_above = quantize_above
        self._plan_per_search_from = plan_per_search_from
        self._large: OrderedDict[ScopeKey, None] = OrderedDict()  # recently searched scopes of that size

    async def recent(
        self, tenant: str, scope: Scope, filters: EventFilter, *, limit: int, since_seq: int | None = None
    ) -> list[Event]:
        """Filtered newest events (newest first), or those after ``since_seq`` (oldest first)."""
        async with self._db.tenant(tenant, reads_only=True) as conn:
            if since_seq is None:
                rows = await conn.fetch(FILTERED_NEWEST, *filter_args(tenant, scope, filters), limit)
            else:
                rows = await conn.fetch(FILTERED_SINCE, *filter_args(tenant, scope, filters), since_seq, limit)
        return [row_to_event(r) for r in rows]

    async def candidates(
        self,
        tenant: str,
        scope: Scope,
        filters: EventFilter,
        *,
        vector: Vector | Awaitable[Vector | None] | None,
        query: str | None,
        model_id: str,
        per_ranking: int,
    ) -> list[Event]:
        """The best ``per_ranking`` events of each ranking asked for (vector, lexical or both), with
        ``similarity`` and ``lexical`` set; no order, no floor. ``vector`` may still be computing (an
        awaitable): the full-text half runs meanwhile; None from it, or no vector, ranks by words only."""
        args = filter_args(tenant, scope, filters)
        if query is None:
            ready = await _ready(vector)
            if ready is None:
                return []
            search, more = self._vector_search(filters, None, per_ranking)
            rows = await self._fetch(tenant, search, *args, ready, model_id, per_ranking, *more)
            return [row_to_event(r) for r in rows]
        if vector is None:
            rows = await self._fetch(tenant, self._search_lexical, *args, query, per_ranking, scope=scope)
            self._remember_size(tenant, scope, rows)
            return [row_to_event(r) for r in rows]
        return await self._hybrid(tenant, scope, filters, vector, query, model_id, per_ranking)

    async def _hybrid(
        self,
        tenant: str,
        scope: Scope,
        filters: EventFilter,
        vector: Vector | Awaitable[Vector | None],
        query: str,
        model_id: str,
        per_ranking: int,
    ) -> list[Event]:
        """Both halves side by side (see ``LEXICAL_HALF``), fused into one list of candidates."""
        args = filter_args(tenant, scope, filters)
        lexical_half = asyncio.ensure_future(
            self._fetch(tenant, self._lexical_half, *args, query, per_ranking, scope=scope)
        )
        try:
            ready = await _ready(vector)
            vector_rows: list[Record] = []
            if ready is not None:
                search, more = self._vector_search(filters, query, per_ranking)
                vector_rows = await self._fetch(tenant, search, *args, ready, model_id, per_ranking, *more)
            lexical_rows = await lexical_half
        finally:
            if not lexical_half.done():
                lexical_half.cancel()
            elif not lexical_half.cancelled():
                lexical_half.exception()  # retrieved: the error that ended the search is the one raised
        self._remember_size(tenant, scope, lexical_rows)
        if ready is None:
            return [_event(r) for r in lexical_rows]
        return _fused_halves(lexical_rows, vector_rows, ready, model_id, self._lexical_rank)

    async def _fetch(self, tenant: str, statement: str, *args: Any, scope: Scope | None = None) -> list[Record]:
        """``statement`` on a connection of the tenant; with ``scope``, a statement with a question,
        planned for its own parameters in a scope known to be large (``PLAN_PER_SEARCH_FROM``)."""
        custom_plan = scope is not None and self.plans_per_search(tenant, scope)
        async with self._db.tenant(tenant, reads_only=not custom_plan) as conn:
            if custom_plan:
                await conn.execute(PLAN_PER_SEARCH)
            return await conn.fetch(statement, *args)

    def _remember_size(self, tenant: str, scope: Scope, rows: list[Record]) -> None:
        if rows and rows[0]["scope_events"] is not None:
            self._remember(tenant, scope, large=rows[0]["scope_events"] >= self._plan_per_search_from)

    def plans_per_search(self, tenant: str, scope: Scope) -> bool:
        """Whether a search with a question in this scope is planned for its own parameters (the last
        search that counted the scope found it large)."""
        return (tenant, scope.type, scope.id) in self._large

    def _remember(self, tenant: str, scope: Scope, *, large: bool) -> None:
        key = (tenant, scope.type, scope.id)
        if not large:
            self._large.pop(key, None)
            return
        self._large[key] = None
        self._large.move_to_end(key)
        if len(self._large) > SCOPES_REMEMBERED:
            self._large.popitem(last=False)

    def _vector_search(self, filters: EventFilter, query: str | None, per_ranking: int) -> tuple[str, tuple[Any, ...]]:
        """The statement of a search with a vector, and its parameters after the ranking's length: the
        question (unless semantic), then the two-pass threshold and shortlist length (unless always exact)."""
        question: tuple[Any, ...] = () if query is None else (query,)
        if self._quantize_above is None:
            return (SEARCH_SEMANTIC if query is None else self._vector_half), question
        two_pass = SEARCH_TWO_PASS["semantic"] if query is None else self._vector_half_two_pass
        return two_pass[filters != NO_FILTER], (*question, self._quantize_above, shortlist_length(per_ranking))


def _event(row: Record, **signals: float | None) -> Event:
    """An event of either half, with the signals given (those of the row otherwise); the halves' other
    columns (vector, weights, terms held) are not the event's and are left out."""
    return Event(**{**dict(row), **signals})


def _fused_halves(
    lexical_rows: list[Record], vector_rows: list[Record], vector: Vector, model_id: str, rank: LexicalRank
) -> list[Event]:
    """Every candidate of either half with both signals: a full-text candidate's similarity comes from the
    vector half when it is there too, else from its own vector; a vector candidate's full-text score from
    the terms it holds (weighted as the full-text half weighed them) or its rank."""
    exact = {r["id"]: r["similarity"] for r in vector_rows}
    weights = lexical_rows[0]["weights"] if lexical_rows else None
    question = vector.tolist()  # converted once for every cosine below
    found = {}
    for row in lexical_rows:
        similarity = exact.get(row["id"])
        if similarity is None and row["embedding"] is not None and row["embedding_model"] == model_id:
            similarity = cosine(row["embedding"], question)
        found[row["id"]] = _event(row, similarity=similarity)
    for row in vector_rows:
        if row["id"] in found:
            continue
        signal = row["lexical_signal"]
        if rank == "ts_rank":
            lexical = float(signal)
        else:  # no weights: no event of the full-text half, so none holds a term (or it was just written)
            lexical = score_of_hits(signal, list(weights)) if weights is not None else 0.0
        found[row["id"]] = _event(row, lexical=lexical)
    return list(found.values())


async def _ready(vector: Vector | Awaitable[Vector | None] | None) -> Vector | None:
    return await vector if inspect.isawaitable(vector) else vector
