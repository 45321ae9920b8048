"""Semantic facts in pgvector: the default backend when no Qdrant server is configured."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from ..models import Fact, FactWrite, Scope, SearchMode
from ..vectors import Vector
from .facts import Embed, lexical_weight
from .postgres import PostgresPool, Record

FACT_COLUMNS = "id, scope_type, scope_id, fact, source_event_ids, source_agents, confirmations, first_seen, last_seen"

# Serialises fact writes of one scope across processes, so two agents storing the same fact at once
# confirm one row instead of creating two.
LOCK_SCOPE = "SELECT pg_advisory_xact_lock(hashtextextended($1, 7340002))"

# Exact two-phase search over the scope (see SEARCH_EVENTS in the episodic store for why).
NEAREST = f"""
WITH top_k AS (
  SELECT id, (embedding <=> $4) + 0 AS distance
  FROM semantic_facts
  WHERE tenant_id = $1 AND scope_type = $2 AND scope_id = $3 AND embedding_model = $5
  ORDER BY distance
  LIMIT $6
)
SELECT {", ".join(f"f.{c.strip()}" for c in FACT_COLUMNS.split(","))}, 1 - t.distance AS similarity
FROM top_k t JOIN semantic_facts f ON f.id = t.id
WHERE 1 - t.distance >= $7::float8
ORDER BY t.distance
"""

# Lexical and hybrid search: every fact of the scope is scored, so the result is exact and complete (facts
# tables are small: one row per distinct fact). ``$9`` is the weight of keyword relevance (1 in lexical
# mode), ``$10`` keeps only the facts sharing a query term (lexical mode); see stores/facts.py. ts_rank, not
# ts_rank_cd: cover density skips lexemes without positions, which is what msm_lexemes makes identifiers
# (array_to_tsvector), so "ERR_4417" would weigh nothing and a look-alike sharing "checkout" would win.
# Flag 1 divides by 1 + log(length), as events do, so a long fact does not win by mentioning every word.
RANKED = f"""
WITH q AS MATERIALIZED (SELECT msm_query($6) AS query),
scored AS (
  SELECT f.id, 1 - (f.embedding <=> $4) AS similarity,
         -- Ranked only where a term matches; no query term (NULL) matches nothing.
         CASE WHEN f.lexemes @@ q.query THEN ts_rank(f.lexemes, q.query, 1) END AS relevance
  FROM semantic_facts f, q
  WHERE f.tenant_id = $1 AND f.scope_type = $2 AND f.scope_id = $3 AND f.embedding_model = $5
),
shares AS (
  SELECT id, similarity, relevance,
         COALESCE(GREATEST(similarity, 0) / NULLIF(max(similarity) OVER (), 0), 0) AS semantic_share,
         COALESCE(relevance / NULLIF(max(relevance) OVER (), 0), 0) AS lexical_share
  FROM scored
)
SELECT {", ".join(f"f.{c.strip()}" for c in FACT_COLUMNS.split(","))}, s.similarity,
       COALESCE(s.relevance, 0) AS lexical,
       (1 - $9::float8) * s.semantic_share + $9::float8 * s.lexical_share AS score
FROM shares s JOIN semantic_facts f ON f.id = s.id
WHERE s.relevance IS NOT NULL OR (NOT $10::bool AND s.similarity >= $7::float8)
ORDER BY score DESC, s.similarity DESC, f.id
LIMIT $8
"""

# Confirmations count distinct agents (migration 010): an agent re-stating a fact, in other words or from
# other events, adds its events but not a confirmation; a consolidation rerun changes nothing but last_seen.
# The right-hand sides read the row before the update.
CONFIRM = f"""
UPDATE semantic_facts
SET confirmations = GREATEST(1, (SELECT count(DISTINCT a) FROM unnest(source_agents || $3::text[]) AS a)),
    last_seen = now(),
    source_event_ids = ARRAY(SELECT DISTINCT unnest(source_event_ids || $2::uuid[])),
    source_agents = ARRAY(SELECT DISTINCT unnest(source_agents || $3::text[]))
WHERE id = $1
RETURNING {FACT_COLUMNS}
"""

INSERT = f"""
INSERT INTO semantic_facts
  (tenant_id, scope_type, scope_id, fact, embedding, embedding_model, source_event_ids, source_agents)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
RETURNING {FACT_COLUMNS}
"""

DELETE = "DELETE FROM semantic_facts WHERE tenant_id = $1 AND scope_type = $2 AND scope_id = $3 AND id = $4"


def row_to_fact(row: Record) -> Fact:
    return Fact(**dict(row))


class PgVectorFactsStore:
    def __init__(self, db: PostgresPool, *, model_id: str) -> None:
        self._db = db
        self.model_id = model_id

    async def open(self) -> None:
        """The pool and schema are owned by the composition root."""

    async def close(self) -> None:
        """The pool is owned by the composition root."""

    async def upsert(
        self,
        tenant: str,
        scope: Scope,
        fact: str,
        vector: Vector,
        *,
        source_event_ids: Sequence[uuid.UUID],
        source_agents: Sequence[str],
        duplicate_floor: float,
    ) -> FactWrite:
        async with self._db.tenant(tenant) as conn, conn.transaction():
            await conn.execute(LOCK_SCOPE, f"{tenant}:{scope}")
            nearest = await conn.fetch(NEAREST, tenant, scope.type, scope.id, vector, self.model_id, 1, duplicate_floor)
            if nearest:
                row = await conn.fetchrow(CONFIRM, nearest[0]["id"], list(source_event_ids), list(source_agents))
                assert row is not None
                return FactWrite(status="confirmed", fact=row_to_fact(row))
            row = await conn.fetchrow(
                INSERT, tenant, scope.type, scope.id, fact, vector, self.model_id,
                list(source_event_ids), list(source_agents),
            )  # fmt: skip
            assert row is not None
            return FactWrite(status="stored", fact=row_to_fact(row))

    async def search(
        self,
        tenant: str,
        scope: Scope,
        vector: Vector,
        *,
        query: str,
        top_k: int,
        min_similarity: float,
        mode: SearchMode = "hybrid",
    ) -> list[Fact]:
        async with self._db.tenant(tenant, reads_only=True) as conn:
            if mode == "semantic":
                rows = await conn.fetch(
                    NEAREST, tenant, scope.type, scope.id, vector, self.model_id, top_k, min_similarity
                )
                return [row_to_fact(r).model_copy(update={"score": r["similarity"]}) for r in rows]
            rows = await conn.fetch(
                RANKED, tenant, scope.type, scope.id, vector, self.model_id, query, min_similarity, top_k,
                lexical_weight(mode), mode == "lexical",
            )  # fmt: skip
        return [row_to_fact(r) for r in rows]

    async def reembed(self, embed: Embed) -> int:
        """Every tenant's facts: on the owner's pool only."""
        async with self._db.cross_tenant() as conn:
            rows = await conn.fetch("SELECT id, fact FROM semantic_facts ORDER BY first_seen")
        for start in range(0, len(rows), 64):
            chunk = rows[start : start + 64]
            vectors = await embed([r["fact"] for r in chunk])
            async with self._db.cross_tenant() as conn:
                await conn.executemany(
                    "UPDATE semantic_facts SET embedding = $2, embedding_model = $3 WHERE id = $1",
                    [(r["id"], v, self.model_id) for r, v in zip(chunk, vectors, strict=True)],
                )
        return len(rows)

    async def forget(self, tenant: str, scope: Scope, fact_id: uuid.UUID) -> bool:
        async with self._db.tenant(tenant) as conn:
            status = await conn.execute(DELETE, tenant, scope.type, scope.id, fact_id)
        return status.endswith(" 1")
