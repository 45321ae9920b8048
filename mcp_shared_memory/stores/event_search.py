"""Filtered reads and search candidates over the episodic log (PostgreSQL full text + pgvector).

Every query here is scoped to one tenant and scope and takes the same filter parameters, applied in
SQL before any ranking or limit, so a filtered result is complete. Search returns *candidates* from
each ranking (exact vector k-NN, full-text rank) with both signals; fusing them is a rule of the
domain (``ranking.py``).
"""

from __future__ import annotations

from typing import Any, Literal

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

# A BM25-style alternative (MSM_SEARCH_LEXICAL_RANK=idf): each question term weighs its inverse document
# frequency within the scope (an error code counts far more than "deploy"), summed over the terms an event
# shares with the question and normalised by the event's length. Measured better (fleet corpus recall@5
# 0.63 against 0.56) but 3-4x slower, as it reads every event sharing any term; not the default.
LEXICAL_CANDIDATES_IDF = f"""
WITH question AS MATERIALIZED (SELECT msm_query($14) AS tsq),
terms AS MATERIALIZED (
  SELECT quote_literal(term)::tsquery AS term FROM unnest(tsvector_to_array(msm_lexemes($14))) AS term
),
matched AS MATERIALIZED (
  SELECT id, length(lexemes) AS terms_in_event, lexemes
  FROM shared_episodic_memories, question
  WHERE {SCOPE_AND_FILTER} AND question.tsq IS NOT NULL AND lexemes @@ question.tsq
),
hits AS (
  SELECT matched.id, matched.terms_in_event, terms.term FROM matched JOIN terms ON matched.lexemes @@ terms.term
),
scope_size AS (SELECT count(*) AS total FROM shared_episodic_memories WHERE {SCOPE_AND_FILTER}),
idf AS (
  SELECT term, ln(1 + (scope_size.total - count(*) + 0.5) / (count(*) + 0.5)) AS weight
  FROM hits, scope_size GROUP BY term, scope_size.total
)
SELECT hits.id, sum(idf.weight) / (1 + ln(1 + min(hits.terms_in_event))) AS rank
FROM hits JOIN idf USING (term)
GROUP BY hits.id ORDER BY rank DESC, hits.id LIMIT $13
"""


def _search(lexical: str) -> str:
    """Both candidate lists, and both signals for every candidate (similarity NULL without a vector of
    this model; lexical 0 without a shared term)."""
    return f"""
WITH vec AS ({VECTOR_CANDIDATES}),
lex AS ({lexical}),
candidates AS (SELECT id FROM vec UNION SELECT id FROM lex)
SELECT {M_COLUMNS},
  CASE WHEN m.embedding IS NOT NULL AND m.embedding_model = $12 THEN 1 - (m.embedding <=> $11) END
    AS similarity,
  COALESCE(lex.rank, 0) AS lexical
FROM candidates c
JOIN shared_episodic_memories m ON m.id = c.id
LEFT JOIN lex ON lex.id = c.id
"""


def _search_lexical(lexical: str) -> str:
    """Lexical mode: no vector (no embedding of the question); $11 the question, $12 the candidate count."""
    renumbered = lexical.replace("$13", "$12").replace("$14", "$11")
    return f"""
WITH lex AS ({renumbered})
SELECT {M_COLUMNS}, NULL::float8 AS similarity, lex.rank AS lexical
FROM lex JOIN shared_episodic_memories m ON m.id = lex.id
"""


SEARCH = {"ts_rank": _search(LEXICAL_CANDIDATES), "idf": _search(LEXICAL_CANDIDATES_IDF)}
SEARCH_LEXICAL = {"ts_rank": _search_lexical(LEXICAL_CANDIDATES), "idf": _search_lexical(LEXICAL_CANDIDATES_IDF)}
LexicalRank = Literal["ts_rank", "idf"]


def filter_args(tenant: str, scope: Scope, filters: EventFilter) -> tuple[Any, ...]:
    return (
        tenant, scope.type, scope.id, filters.agent_ids, filters.agent_types, filters.event_types,
        filters.since, filters.until, filters.min_importance, filters.metadata,
    )  # fmt: skip


class PostgresEventSearch:
    def __init__(self, db: PostgresPool, *, lexical_rank: LexicalRank = "ts_rank") -> None:
        self._db = db
        self._search = SEARCH[lexical_rank]
        self._search_lexical = SEARCH_LEXICAL[lexical_rank]

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
            rows = await self._db.fetch(self._search_lexical, *args, query or "", per_ranking)
        else:
            rows = await self._db.fetch(self._search, *args, vector, model_id, per_ranking, query or "")
        return [row_to_event(r) for r in rows]
