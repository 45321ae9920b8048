"""The cross-agent episodic log and workspaces in PostgreSQL + pgvector: the source of truth."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import asyncpg
import numpy as np

from ..errors import ConfigError, NotFound
from ..models import Event, Scope, Workspace
from .postgres import DRIVER_ERRORS, PostgresPool

EVENT_COLUMNS = (
    "id, seq, scope_type, scope_id, agent_id, agent_type, event_type, role, content, importance, metadata, created_at"
)

INSERT_EVENT = f"""
INSERT INTO shared_episodic_memories
  (tenant_id, scope_type, scope_id, agent_id, agent_type, event_type, role, content, content_hash,
   embedding, embedding_model, importance, metadata, idempotency_key)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
ON CONFLICT ON CONSTRAINT shared_ep_idempotency DO NOTHING
RETURNING {EVENT_COLUMNS}
"""

QUEUE_FOR_CACHE = "INSERT INTO msm_cache_outbox (event_id) VALUES ($1) ON CONFLICT DO NOTHING"
CLAIM_OUTBOX = f"""
SELECT m.tenant_id, {", ".join(f"m.{c.strip()}" for c in EVENT_COLUMNS.split(","))}
FROM msm_cache_outbox o JOIN shared_episodic_memories m ON m.id = o.event_id
ORDER BY m.seq LIMIT $1 FOR UPDATE OF o SKIP LOCKED
"""
DEQUEUE_OUTBOX = "DELETE FROM msm_cache_outbox WHERE event_id = ANY($1::uuid[])"

LOCK_SCOPE_WRITES = "SELECT pg_advisory_lock(hashtextextended($1, 7340004))"
UNLOCK_SCOPE_WRITES = "SELECT pg_advisory_unlock(hashtextextended($1, 7340004))"

SELECT_BY_IDEMPOTENCY_KEY = f"""
SELECT {EVENT_COLUMNS} FROM shared_episodic_memories
WHERE tenant_id = $1 AND scope_type = $2 AND scope_id = $3 AND idempotency_key = $4
"""

SELECT_RECENT = f"""
SELECT {EVENT_COLUMNS} FROM shared_episodic_memories
WHERE tenant_id = $1 AND scope_type = $2 AND scope_id = $3 AND importance >= $4
ORDER BY seq DESC LIMIT $5
"""

SELECT_SINCE = f"""
SELECT {EVENT_COLUMNS} FROM shared_episodic_memories
WHERE tenant_id = $1 AND scope_type = $2 AND scope_id = $3 AND importance >= $4 AND seq > $5
ORDER BY seq ASC LIMIT $6
"""

SELECT_AGENT_HISTORY = f"""
SELECT {EVENT_COLUMNS} FROM shared_episodic_memories
WHERE tenant_id = $1 AND scope_type = $2 AND scope_id = $3 AND agent_id = $4
ORDER BY seq DESC LIMIT $5
"""

# Exact k-NN over the scope's rows, in two phases: rank (id, distance) only, then fetch the k winners'
# columns, so the scan neither builds every row nor computes the distance twice. "+ 0" keeps the planner
# from ever using an ANN index here: with a selective tenant/scope filter an HNSW scan silently returns
# fewer rows than match. The similarity floor applies to the top-k, where it cannot disturb the plan.
SEARCH_EVENTS = f"""
WITH top_k AS (
  SELECT id, (embedding <=> $4) + 0 AS distance
  FROM shared_episodic_memories
  WHERE tenant_id = $1 AND scope_type = $2 AND scope_id = $3
    AND embedding IS NOT NULL AND embedding_model = $5
  ORDER BY distance
  LIMIT $6
)
SELECT {", ".join(f"m.{c.strip()}" for c in EVENT_COLUMNS.split(","))}, 1 - t.distance AS similarity
FROM top_k t JOIN shared_episodic_memories m ON m.id = t.id
WHERE 1 - t.distance >= $7::float8
ORDER BY t.distance
"""

COUNT_EVENTS = """
SELECT count(*) FROM shared_episodic_memories WHERE tenant_id = $1 AND scope_type = $2 AND scope_id = $3
"""

# SKIP LOCKED: several processes back-filling at once each take different rows.
CLAIM_UNEMBEDDED = """
SELECT id, content FROM shared_episodic_memories
WHERE embedding IS NULL AND (embedding_failed_at IS NULL OR embedding_failed_at < now() - interval '1 hour')
ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED
"""
MARK_EMBEDDING_FAILED = "UPDATE shared_episodic_memories SET embedding_failed_at = now() WHERE id = $1"

SET_EMBEDDING = """
UPDATE shared_episodic_memories SET embedding = $2, embedding_model = $3, embedding_failed_at = NULL WHERE id = $1
"""

WORKSPACE_COLUMNS = "id, task, agents, status, context, created_by, created_at, updated_at"

INSERT_WORKSPACE = f"""
INSERT INTO workspaces (tenant_id, id, task, agents, status, context, created_by)
VALUES ($1, $2, $3, $4, 'active', $5, $6)
RETURNING {WORKSPACE_COLUMNS}
"""

SELECT_WORKSPACE = f"SELECT {WORKSPACE_COLUMNS} FROM workspaces WHERE tenant_id = $1 AND id = $2"

UPDATE_WORKSPACE = f"""
UPDATE workspaces
SET status = COALESCE($3, status),
    context = CASE WHEN $4::jsonb IS NULL THEN context ELSE context || $4::jsonb END,
    agents = COALESCE($5, agents),
    updated_at = now()
WHERE tenant_id = $1 AND id = $2
RETURNING {WORKSPACE_COLUMNS}
"""

LIST_WORKSPACES = f"""
SELECT {WORKSPACE_COLUMNS} FROM workspaces
WHERE tenant_id = $1 AND ($2::text IS NULL OR status = $2)
ORDER BY created_at DESC LIMIT $3
"""

META_GET = "SELECT key, value FROM memory_meta WHERE key IN ('embedding_model', 'embedding_dimension')"
META_SET = """
INSERT INTO memory_meta (key, value) VALUES ('embedding_model', $1), ('embedding_dimension', $2)
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value
"""


# Embeds each text, giving None where it cannot.
EmbedEach = Callable[[list[str]], Awaitable[list[np.ndarray | None]]]


class _LocalLock:
    def __init__(self) -> None:
        self.lock = anyio.Lock()
        self.users = 0


def row_to_event(row: asyncpg.Record, *, skip: tuple[str, ...] = ()) -> Event:
    return Event(**{k: v for k, v in dict(row).items() if k not in skip})


def row_to_workspace(row: asyncpg.Record) -> Workspace:
    return Workspace(**dict(row))


class PostgresEpisodicStore:
    """Events and workspaces, always filtered by tenant and scope."""

    def __init__(self, db: PostgresPool) -> None:
        self.db = db
        self._local_locks: dict[tuple[str, Scope], _LocalLock] = {}

    async def ensure_embedding_model(self, model_id: str, dimension: int) -> None:
        """Record the model on first use; refuse to mix vectors of another model or dimension."""
        async with self.db.connection() as conn, conn.transaction():
            await conn.execute("LOCK TABLE memory_meta IN SHARE ROW EXCLUSIVE MODE")
            meta = {r["key"]: r["value"] for r in await conn.fetch(META_GET)}
            if not meta:
                await conn.execute(META_SET, model_id, str(dimension))
                return
            if meta.get("embedding_model") != model_id or meta.get("embedding_dimension") != str(dimension):
                raise ConfigError(
                    f"this database holds {meta.get('embedding_model')} vectors "
                    f"({meta.get('embedding_dimension')} dims) but the server is configured for {model_id} "
                    f"({dimension} dims): configure the original model, or run "
                    "`mcp-shared-memory reembed` to re-embed everything with the new one"
                )

    async def set_embedding_model(self, model_id: str, dimension: int) -> None:
        await self.db.execute(META_SET, model_id, str(dimension))

    @asynccontextmanager
    async def scope_writes(self, tenant: str, scope: Scope) -> AsyncIterator[asyncpg.Connection]:
        """Serialise a scope's writers from INSERT to after their cache update, so seq order is commit
        order and cache order within the scope: a reader paging by ``since_seq`` never skips an event
        that commits late with a lower seq. Other scopes are not blocked. Writers of this process queue
        on a local lock first, so a busy scope holds at most one pooled connection here."""
        local = self._local_locks.setdefault((tenant, scope), _LocalLock())
        local.users += 1
        try:
            async with local.lock, self.db.connection() as conn:
                key = f"{tenant}:{scope}"
                await conn.execute(LOCK_SCOPE_WRITES, key)
                try:
                    yield conn
                finally:
                    with anyio.CancelScope(shield=True), contextlib.suppress(*DRIVER_ERRORS):
                        await conn.execute(UNLOCK_SCOPE_WRITES, key)
        finally:
            local.users -= 1
            if local.users == 0:
                self._local_locks.pop((tenant, scope), None)

    async def queue_for_cache(self, conn: asyncpg.Connection, event_id: uuid.UUID) -> None:
        """Remember a committed event whose Redis update failed, for ``republish``."""
        await conn.execute(QUEUE_FOR_CACHE, event_id)

    async def republish(self, publish: Callable[[str, Event], Awaitable[bool]], *, limit: int = 100) -> int:
        """Hand queued events to ``publish`` (oldest first); those it accepts leave the queue."""
        async with self.db.connection() as conn, conn.transaction():
            rows = await conn.fetch(CLAIM_OUTBOX, limit)
            done = [
                row["id"] for row in rows if await publish(row["tenant_id"], row_to_event(row, skip=("tenant_id",)))
            ]
            if done:
                await conn.execute(DEQUEUE_OUTBOX, done)
        return len(done)

    async def insert_event(
        self,
        tenant: str,
        scope: Scope,
        *,
        conn: asyncpg.Connection | None = None,
        agent_id: str,
        agent_type: str,
        event_type: str,
        role: str | None,
        content: str,
        content_hash: str,
        embedding: np.ndarray | None,
        embedding_model: str | None,
        importance: float,
        metadata: dict[str, Any],
        idempotency_key: str | None,
    ) -> tuple[Event, bool]:
        """Insert (on ``conn``, one holding ``scope_writes``, when given); returns (event, inserted).
        A repeated idempotency key returns the stored event."""
        args = (
            tenant, scope.type, scope.id, agent_id, agent_type, event_type, role, content, content_hash,
            embedding, embedding_model if embedding is not None else None, importance, metadata,
            idempotency_key,
        )  # fmt: skip
        db: asyncpg.Connection | PostgresPool = conn if conn is not None else self.db
        row = await db.fetchrow(INSERT_EVENT, *args)
        if row is not None:
            return row_to_event(row), True
        existing = await db.fetchrow(SELECT_BY_IDEMPOTENCY_KEY, tenant, scope.type, scope.id, idempotency_key)
        if existing is None:  # pragma: no cover - the conflicting row cannot vanish: events are never deleted
            raise NotFound("the event with this idempotency key could not be read back; retry")
        return row_to_event(existing), False

    async def recent(
        self, tenant: str, scope: Scope, *, limit: int, min_importance: float = 0.0, since_seq: int | None = None
    ) -> list[Event]:
        """Newest first; with ``since_seq``, the events after that cursor, oldest first."""
        if since_seq is None:
            rows = await self.db.fetch(SELECT_RECENT, tenant, scope.type, scope.id, min_importance, limit)
        else:
            rows = await self.db.fetch(SELECT_SINCE, tenant, scope.type, scope.id, min_importance, since_seq, limit)
        return [row_to_event(r) for r in rows]

    async def search(
        self, tenant: str, scope: Scope, vector: np.ndarray, *, model_id: str, limit: int, min_similarity: float
    ) -> list[Event]:
        rows = await self.db.fetch(SEARCH_EVENTS, tenant, scope.type, scope.id, vector, model_id, limit, min_similarity)
        return [row_to_event(r) for r in rows]

    async def agent_history(self, tenant: str, scope: Scope, agent_id: str, *, limit: int) -> list[Event]:
        rows = await self.db.fetch(SELECT_AGENT_HISTORY, tenant, scope.type, scope.id, agent_id, limit)
        return [row_to_event(r) for r in rows]

    async def count(self, tenant: str, scope: Scope) -> int:
        return int(await self.db.fetchval(COUNT_EVENTS, tenant, scope.type, scope.id))

    async def embed_pending(self, embed: EmbedEach, *, model_id: str, limit: int) -> int:
        """Embed up to ``limit`` events stored without a vector; returns how many rows were processed.
        ``embed`` gives None for a text it could not embed: that event is retried an hour later."""
        async with self.db.connection() as conn, conn.transaction():
            rows = await conn.fetch(CLAIM_UNEMBEDDED, limit)
            if rows:
                vectors = await embed([r["content"] for r in rows])
                done = [(r["id"], v, model_id) for r, v in zip(rows, vectors, strict=True) if v is not None]
                failed = [(r["id"],) for r, v in zip(rows, vectors, strict=True) if v is None]
                if done:
                    await conn.executemany(SET_EMBEDDING, done)
                if failed:
                    await conn.executemany(MARK_EMBEDDING_FAILED, failed)
        return len(rows)

    async def clear_embeddings(self) -> int:
        """Drop every event vector (before re-embedding with another model)."""
        status = await self.db.execute("UPDATE shared_episodic_memories SET embedding = NULL, embedding_model = NULL")
        return int(status.split()[-1])

    # workspaces

    async def create_workspace(
        self, tenant: str, workspace_id: str, *, task: str, agents: list[str], context: dict[str, Any], created_by: str
    ) -> Workspace:
        row = await self.db.fetchrow(INSERT_WORKSPACE, tenant, workspace_id, task, agents, context, created_by)
        assert row is not None
        return row_to_workspace(row)

    async def get_workspace(self, tenant: str, workspace_id: str) -> Workspace | None:
        row = await self.db.fetchrow(SELECT_WORKSPACE, tenant, workspace_id)
        return row_to_workspace(row) if row else None

    async def update_workspace(
        self,
        tenant: str,
        workspace_id: str,
        *,
        status: str | None,
        context_patch: dict[str, Any] | None,
        agents: list[str] | None,
    ) -> Workspace | None:
        row = await self.db.fetchrow(UPDATE_WORKSPACE, tenant, workspace_id, status, context_patch, agents)
        return row_to_workspace(row) if row else None

    async def list_workspaces(self, tenant: str, *, status: str | None, limit: int) -> list[Workspace]:
        rows = await self.db.fetch(LIST_WORKSPACES, tenant, status, limit)
        return [row_to_workspace(r) for r in rows]
