"""Filtered reads and search candidates over the episodic log (PostgreSQL full text + pgvector).

Every query here is scoped to one tenant and scope and takes the same filter parameters, applied in
SQL before any ranking or limit, so a filtered result is complete. Search returns *candidates* from
each ranking (exact vector k-NN, full-text rank) with both signals; fusing them is a rule of the
domain (``ranking.py``).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Literal

import numpy as np

from ..models import Event, EventFilter, Scope
from .episodic import EVENT_COLUMNS, M_COLUMNS, row_to_event
from .lexical import SCOPE_SIZE_CAP, idf_score, idf_score_of_hits, idf_statements
from .postgres import PostgresPool
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

FILTERED_RECENT = f"""
SELECT {EVENT_COLUMNS} FROM shared_episodic_memories
WHERE {SCOPE_AND_FILTER} AND ($11::bigint IS NULL OR seq > $11::bigint)
ORDER BY CASE WHEN $11::bigint IS NULL THEN -seq ELSE seq END
LIMIT $12
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
SELECT id, ts_rank(lexemes, q.tsq, 1) AS rank
FROM shared_episodic_memories, msm_query($14) AS q(tsq)
WHERE {SCOPE_AND_FILTER} AND q.tsq IS NOT NULL AND lexemes @@ q.tsq
ORDER BY rank DESC, seq DESC LIMIT $13
"""


NO_SIZE = "NULL::bigint"


def _search(lexical: str, of_any: str, statements: str = "", question: str = "", size: str = NO_SIZE) -> str:
    """Both candidate lists, and both signals for every candidate (similarity NULL without a vector of
    this model; lexical 0 without a shared term): ``of_any`` scores an event ``m`` the lexical list did
    not reach, with the FROM items in ``question``; ``statements`` are common table expressions the
    lists read; ``size`` the scope's size as they count it (capped), if they do."""
    return f"""
WITH {statements}
vec AS ({VECTOR_CANDIDATES}),
lex AS ({lexical}),
candidates AS (SELECT id FROM vec UNION SELECT id FROM lex)
SELECT {M_COLUMNS},
  CASE WHEN m.embedding IS NOT NULL AND m.embedding_model = $12 THEN 1 - (m.embedding <=> $11) END
    AS similarity,
  COALESCE(lex.rank, {of_any}, 0) AS lexical, {size} AS scope_events
FROM candidates c
JOIN shared_episodic_memories m ON m.id = c.id
LEFT JOIN lex ON lex.id = c.id{question}
"""


def _search_lexical(lexical: str, statements: str = "", size: str = NO_SIZE) -> str:
    """Lexical mode: no vector (no embedding of the question); $11 the question, $12 the candidate count."""
    renumbered = lexical.replace("$13", "$12").replace("$14", "$11")
    return f"""
WITH {statements.replace("$14", "$11")}
lex AS ({renumbered})
SELECT {M_COLUMNS}, NULL::float8 AS similarity, lex.rank AS lexical, {size} AS scope_events
FROM lex JOIN shared_episodic_memories m ON m.id = lex.id
"""


# The default rank (see lexical.py): weights counted over the matching events, in the same statement.
IDF_STATEMENTS = idf_statements(SCOPE_AND_FILTER, "$14") + ","
LEXICAL_CANDIDATES_IDF = f"""
SELECT id, {idf_score_of_hits("hits")} AS rank FROM matched, w ORDER BY rank DESC, seq DESC LIMIT $13
"""
IDF_SIZE = "(SELECT n FROM counts)"
TS_RANK_OF_ANY = "CASE WHEN m.lexemes @@ q.tsq THEN ts_rank(m.lexemes, q.tsq, 1) END"
SEARCH = {
    "ts_rank": _search(LEXICAL_CANDIDATES, TS_RANK_OF_ANY, question="\nCROSS JOIN msm_query($14) AS q(tsq)"),
    "idf": _search(
        LEXICAL_CANDIDATES_IDF, idf_score("m.lexemes"), IDF_STATEMENTS, "\nCROSS JOIN q CROSS JOIN w", IDF_SIZE
    ),
}
SEARCH_LEXICAL = {
    "ts_rank": _search_lexical(LEXICAL_CANDIDATES),
    "idf": _search_lexical(LEXICAL_CANDIDATES_IDF, IDF_STATEMENTS, IDF_SIZE),
}
LexicalRank = Literal["ts_rank", "idf"]
# Semantic mode: the vector ranking alone. No question, so nothing of the full-text statements runs (under a
# generic plan they read every event of the scope even for an empty question).
SEARCH_SEMANTIC = f"""
WITH vec AS ({VECTOR_CANDIDATES}),
candidates AS (SELECT id, distance FROM vec)
SELECT {M_COLUMNS}, 1 - c.distance AS similarity, 0::float8 AS lexical, {NO_SIZE} AS scope_events
FROM candidates c JOIN shared_episodic_memories m ON m.id = c.id
"""
# The same with two passes in large scopes (quantized.py), by mode (lexical rank, or "semantic"), then by
# whether a filter is given.
SEARCH_TWO_PASS = {
    mode: {
        filtered: with_two_pass(sql, exact=VECTOR_CANDIDATES, scope_and_filter=SCOPE_AND_FILTER, filtered=filtered)
        for filtered in (False, True)
    }
    for mode, sql in {**SEARCH, "semantic": SEARCH_SEMANTIC}.items()
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
        self._search = SEARCH[lexical_rank]
        self._search_lexical = SEARCH_LEXICAL[lexical_rank]
        self._search_two_pass = SEARCH_TWO_PASS[lexical_rank]
        self._quantize_above = quantize_above
        self._plan_per_search_from = plan_per_search_from
        self._large: OrderedDict[ScopeKey, None] = OrderedDict()  # recently searched scopes of that size

    async def recent(
        self, tenant: str, scope: Scope, filters: EventFilter, *, limit: int, since_seq: int | None = None
    ) -> list[Event]:
        """Filtered newest events (newest first), or those after ``since_seq`` (oldest first)."""
        async with self._db.tenant(tenant) as conn:
            rows = await conn.fetch(FILTERED_RECENT, *filter_args(tenant, scope, filters), since_seq, limit)
        return [row_to_event(r) for r in rows]

    async def candidates(
        self,
        tenant: str,
        scope: Scope,
        filters: EventFilter,
        *,
        vector: np.ndarray | None,
        query: str | None,
        model_id: str,
        per_ranking: int,
    ) -> list[Event]:
        """The best ``per_ranking`` events of each ranking asked for (vector, lexical or both), with
        ``similarity`` and ``lexical`` set; no order, no floor."""
        args = filter_args(tenant, scope, filters)
        async with self._db.tenant(tenant) as conn:
            if query is not None and self.plans_per_search(tenant, scope):
                await conn.execute(PLAN_PER_SEARCH)
            if vector is None:
                rows = await conn.fetch(self._search_lexical, *args, query or "", per_ranking)
            else:
                search, more = self._vector_search(filters, query, per_ranking)
                rows = await conn.fetch(search, *args, vector, model_id, per_ranking, *more)
        if rows and rows[0]["scope_events"] is not None:
            self._remember(tenant, scope, large=rows[0]["scope_events"] >= self._plan_per_search_from)
        return [row_to_event(r) for r in rows]

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
            return (SEARCH_SEMANTIC if query is None else self._search), question
        two_pass = SEARCH_TWO_PASS["semantic"] if query is None else self._search_two_pass
        return two_pass[filters != NO_FILTER], (*question, self._quantize_above, shortlist_length(per_ranking))
