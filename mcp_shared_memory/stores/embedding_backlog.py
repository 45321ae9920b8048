"""Events committed without a vector, waiting for the model (see ``embedding_queue.py``).

Two ways in: the background queue claims rows across tenants with a lease (``SKIP LOCKED``, committed
before the model runs, so a claimant that dies only delays its rows until the lease ends); a search
embeds its own scope's waiting rows first, on the tenant's connection (read-your-writes). Writing a
vector is idempotent (``WHERE embedding IS NULL``), so both may race on a row.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from ..models import Scope
from ..vectors import Vector
from .postgres import PostgresPool

CLAIM = """
UPDATE shared_episodic_memories SET embedding_retry_at = now() + make_interval(secs => $2)
WHERE id IN (
  SELECT id FROM shared_episodic_memories
  WHERE embedding IS NULL AND (embedding_retry_at IS NULL OR embedding_retry_at <= now())
  ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED
)
RETURNING id, content, extract(epoch FROM now() - created_at)::float8 AS age
"""
PENDING_IN_SCOPE = """
SELECT id, content FROM shared_episodic_memories
WHERE tenant_id = $1 AND scope_type = $2 AND scope_id = $3 AND embedding IS NULL AND embedding_error IS NULL
ORDER BY seq DESC LIMIT $4
"""
SET_EMBEDDING = """
UPDATE shared_episodic_memories
SET embedding = $2, embedding_model = $3, embedding_retry_at = NULL, embedding_error = NULL
WHERE id = $1 AND embedding IS NULL
"""
RELEASE = """
UPDATE shared_episodic_memories SET embedding_retry_at = NULL WHERE id = ANY($1::uuid[]) AND embedding IS NULL
"""
REJECT = """
UPDATE shared_episodic_memories
SET embedding_retry_at = now() + make_interval(secs => $3), embedding_error = left($2, 500)
WHERE id = ANY($1::uuid[]) AND embedding IS NULL
"""
RETRY_REJECTED = """
UPDATE shared_episodic_memories SET embedding_retry_at = NULL, embedding_error = NULL
WHERE embedding IS NULL AND embedding_error IS NOT NULL
"""
CLEAR = """
UPDATE shared_episodic_memories
SET embedding = NULL, embedding_model = NULL, embedding_retry_at = NULL, embedding_error = NULL
"""
COUNTS = """
SELECT count(*) FILTER (WHERE embedding_error IS NULL) AS waiting,
       count(*) FILTER (WHERE embedding_error IS NOT NULL) AS rejected,
       extract(epoch FROM now() - min(created_at) FILTER (WHERE embedding_error IS NULL)) AS oldest_seconds
FROM shared_episodic_memories WHERE embedding IS NULL
"""
REJECTED = """
SELECT tenant_id, id, embedding_error FROM shared_episodic_memories
WHERE embedding IS NULL AND embedding_error IS NOT NULL ORDER BY seq LIMIT $1
"""


@dataclass(frozen=True, slots=True)
class BacklogCounts:
    """``waiting``: committed, not yet embedded; ``rejected``: the model refused the text (retried hourly);
    ``oldest_seconds``: age of the oldest waiting event (None when none waits)."""

    waiting: int
    rejected: int
    oldest_seconds: float | None


@dataclass(frozen=True, slots=True)
class Claimed:
    """A claimed event; ``age``: seconds since it was committed."""

    event_id: uuid.UUID
    content: str
    age: float


@dataclass(frozen=True, slots=True)
class RejectedEvent:
    tenant_id: str
    event_id: uuid.UUID
    reason: str


class PostgresEmbeddingBacklog:
    """The claim, write-back and report methods need the owner's pool (they cross tenants);
    ``pending_in_scope`` and ``set_in_scope`` run on a tenant's connection."""

    def __init__(self, db: PostgresPool) -> None:
        self._db = db

    async def claim(self, *, limit: int, lease_seconds: float) -> list[Claimed]:
        """Claim up to ``limit`` waiting events (oldest first) for ``lease_seconds``, committed at once."""
        async with self._db.cross_tenant() as conn:
            rows = await conn.fetch(CLAIM, limit, lease_seconds)
        return [Claimed(r["id"], r["content"], r["age"]) for r in rows]

    async def set(self, vectors: list[tuple[uuid.UUID, Vector]], *, model_id: str) -> None:
        if vectors:
            async with self._db.cross_tenant() as conn:
                await conn.executemany(SET_EMBEDDING, [(i, v, model_id) for i, v in vectors])

    async def release(self, event_ids: list[uuid.UUID]) -> None:
        """Give claimed events back at once (the model is down: whoever reaches it first embeds them)."""
        if event_ids:
            async with self._db.cross_tenant() as conn:
                await conn.execute(RELEASE, event_ids)

    async def reject(self, event_ids: list[uuid.UUID], *, reason: str, retry_after: float) -> None:
        """The model refused these texts: record why, and retry them after ``retry_after`` seconds only."""
        if event_ids:
            async with self._db.cross_tenant() as conn:
                await conn.execute(REJECT, event_ids, reason, retry_after)

    async def retry_rejected(self) -> int:
        """Clear every rejection mark (``reembed --retry-rejected``); returns how many."""
        async with self._db.cross_tenant() as conn:
            status = await conn.execute(RETRY_REJECTED)
        return int(status.split()[-1])

    async def clear(self) -> int:
        """Drop every event vector (before re-embedding with another model)."""
        async with self._db.cross_tenant() as conn:
            status = await conn.execute(CLEAR)
        return int(status.split()[-1])

    async def counts(self) -> BacklogCounts:
        async with self._db.cross_tenant() as conn:
            row = await conn.fetchrow(COUNTS)
        assert row is not None
        oldest = row["oldest_seconds"]
        return BacklogCounts(int(row["waiting"]), int(row["rejected"]), None if oldest is None else float(oldest))

    async def rejected(self, *, limit: int = 20) -> list[RejectedEvent]:
        async with self._db.cross_tenant() as conn:
            rows = await conn.fetch(REJECTED, limit)
        return [RejectedEvent(r["tenant_id"], r["id"], r["embedding_error"]) for r in rows]

    # a search's own scope (read-your-writes)

    async def pending_in_scope(self, tenant: str, scope: Scope, *, limit: int) -> list[tuple[uuid.UUID, str]]:
        """The scope's newest ``limit`` events still waiting for a vector (not those the model refused)."""
        async with self._db.tenant(tenant, reads_only=True) as conn:
            rows = await conn.fetch(PENDING_IN_SCOPE, tenant, scope.type, scope.id, limit)
        return [(r["id"], r["content"]) for r in rows]

    async def set_in_scope(self, tenant: str, vectors: list[tuple[uuid.UUID, Vector]], *, model_id: str) -> None:
        if vectors:
            async with self._db.tenant(tenant) as conn:
                await conn.executemany(SET_EMBEDDING, [(i, v, model_id) for i, v in vectors])
