"""Filtered reads and search candidates over the episodic log (PostgreSQL full text + pgvector).

Every query here is scoped to one tenant and scope and takes the same filter parameters, applied in
SQL before any ranking or limit, so a filtered result is complete. Search returns *candidates* from
each ranking (exact vector k-NN, full-text rank) with both signals; fusing them is a rule of the
domain (``ranking.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..models import Event, EventFilter, Scope
from .episodic import EVENT_COLUMNS, M_COLUMNS, row_to_event
from .postgres import PostgresPool

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

# The question's terms OR-ed (msm_query), ranked by ts_rank normalised by document length (flag 1:
# divide by 1 + log(length)), so a long event does not win by mentioning every word once. Not
# ts_rank_cd: cover density ignores lexemes without positions, which is how whole identifiers are kept.
LEXICAL_CANDIDATES = f"""
SELECT id, ts_rank(lexemes, q.tsq, 1) AS rank
FROM shared_episodic_memories, (SELECT msm_query($14) AS tsq) q
WHERE {SCOPE_AND_FILTER} AND q.tsq IS NOT NULL AND lexemes @@ q.tsq
ORDER BY rank DESC, seq DESC LIMIT $13
"""

# Both candidate lists, and both signals for every candidate (similarity NULL without a vector of this
# model; lexical 0 without a shared term).
SEARCH = f"""
WITH vec AS ({VECTOR_CANDIDATES}),
lex AS ({LEXICAL_CANDIDATES}),
candidates AS (SELECT id FROM vec UNION SELECT id FROM lex)
SELECT {M_COLUMNS},
  CASE WHEN m.embedding IS NOT NULL AND m.embedding_model = $12 THEN 1 - (m.embedding <=> $11) END
    AS similarity,
  COALESCE(lex.rank, 0) AS lexical,
  vec.id IS NOT NULL AS vector_candidate
FROM candidates c
JOIN shared_episodic_memories m ON m.id = c.id
LEFT JOIN lex ON lex.id = c.id
LEFT JOIN vec ON vec.id = c.id
"""

# Lexical mode: no vector (no embedding of the question); $11 the question, $12 the candidate count.
SEARCH_LEXICAL = f"""
SELECT {M_COLUMNS}, NULL::float8 AS similarity, ts_rank(m.lexemes, q.tsq, 1) AS lexical
FROM shared_episodic_memories m, (SELECT msm_query($11) AS tsq) q
WHERE {SCOPE_AND_FILTER} AND q.tsq IS NOT NULL AND m.lexemes @@ q.tsq
ORDER BY lexical DESC, m.seq DESC LIMIT $12
"""


def filter_args(tenant: str, scope: Scope, filters: EventFilter) -> tuple[Any, ...]:
    return (
        tenant, scope.type, scope.id, filters.agent_ids, filters.agent_types, filters.event_types,
        filters.since, filters.until, filters.min_importance, filters.metadata,
    )  # fmt: skip


class PostgresEventSearch:
    def __init__(self, db: PostgresPool) -> None:
        self._db = db

    async def recent(
        self, tenant: str, scope: Scope, filters: EventFilter, *, limit: int, since_seq: int | None = None
    ) -> list[Event]:
        """Filtered newest events (newest first), or those after ``since_seq`` (oldest first)."""
        rows = await self._db.fetch(FILTERED_RECENT, *filter_args(tenant, scope, filters), since_seq, limit)
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
        if vector is None:
            rows = await self._db.fetch(SEARCH_LEXICAL, *args, query or "", per_ranking)
        elif query is None:
            rows = await self._db.fetch(SEARCH, *args, vector, model_id, per_ranking, "")
        else:
            rows = await self._db.fetch(SEARCH, *args, vector, model_id, per_ranking, query)
        return [_candidate(r) for r in rows]


def _candidate(row: Any) -> Event:
    fields = {k: v for k, v in dict(row).items() if k != "vector_candidate"}
    return Event(**fields)
