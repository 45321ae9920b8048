"""The cross-agent episodic log in PostgreSQL + pgvector: the source of truth.

Writes go through a per-scope ``ScopeWriter``: writers of one scope are serialised from their INSERT
to after their Redis update, so seq order is commit order and cache order within the scope. Every
event is queued in a transactional outbox by the statement that commits it and leaves the queue once
the cache and the bus have it (``ScopeWriter.published``); a writer always publishes what an earlier
writer of its scope left queued before its own event.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import anyio

from ..errors import Conflict, StoreUnavailable
from ..models import Event, EventRef, NewEvent, Scope, UnconsolidatedEvent
from .postgres import PgConnection, PostgresPool, Record

COLUMNS = ("id", "seq", "scope_type", "scope_id", "agent_id", "agent_type", "event_type", "role", "content",
           "importance", "metadata", "created_at")  # fmt: skip
EVENT_COLUMNS = ", ".join(COLUMNS)
M_COLUMNS = ", ".join(f"m.{c}" for c in COLUMNS)

# One statement: insert the event, queue it in the outbox, and read what earlier writers of the scope
# left queued (the statement's snapshot is taken after the scope lock was granted, so it sees them).
APPEND = f"""
WITH ins AS (
  INSERT INTO shared_episodic_memories
    (tenant_id, scope_type, scope_id, agent_id, agent_type, event_type, role, content, content_hash,
     embedding, embedding_model, importance, metadata, idempotency_key)
  VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
  ON CONFLICT ON CONSTRAINT shared_ep_idempotency DO NOTHING
  RETURNING {EVENT_COLUMNS}, tenant_id
), queued AS (
  INSERT INTO msm_cache_outbox (event_id, tenant_id, scope_type, scope_id, seq)
  SELECT id, tenant_id, scope_type, scope_id, seq FROM ins
)
SELECT true AS inserted, {EVENT_COLUMNS} FROM ins
UNION ALL
SELECT false AS inserted, {M_COLUMNS}
FROM msm_cache_outbox o JOIN shared_episodic_memories m ON m.id = o.event_id
WHERE o.tenant_id = $1 AND o.scope_type = $2 AND o.scope_id = $3
"""

BACKLOG = f"""
SELECT {M_COLUMNS}
FROM msm_cache_outbox o JOIN shared_episodic_memories m ON m.id = o.event_id
WHERE o.tenant_id = $1 AND o.scope_type = $2 AND o.scope_id = $3
ORDER BY o.seq
"""
# The writer's last statement: what it published leaves the queue, and it lets go of the scope's lock.
DEQUEUE_AND_UNLOCK = """
WITH published AS (DELETE FROM msm_cache_outbox WHERE event_id = ANY($1::uuid[]))
SELECT pg_advisory_unlock(hashtextextended($2, 7340004))
"""
QUEUED_SCOPES = """
SELECT DISTINCT tenant_id, scope_type, scope_id FROM msm_cache_outbox
WHERE queued_at < now() - make_interval(secs => $1) LIMIT $2
"""

OUTBOX_SIZE = "SELECT count(*) FROM msm_cache_outbox"

LOCK_SCOPE = "SELECT pg_advisory_lock(hashtextextended($1, 7340004))"
TRY_LOCK_SCOPE = "SELECT pg_try_advisory_lock(hashtextextended($1, 7340004))"

# Idempotency keys are per agent (migration 010): another agent's key is not this agent's.
SELECT_BY_IDEMPOTENCY_KEY = f"""
SELECT {EVENT_COLUMNS}, content_hash FROM shared_episodic_memories
WHERE tenant_id = $1 AND scope_type = $2 AND scope_id = $3 AND agent_id = $4 AND idempotency_key = $5
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

COUNT_EVENTS = """
SELECT count(*) FROM shared_episodic_memories WHERE tenant_id = $1 AND scope_type = $2 AND scope_id = $3
"""

# Rows written before the lexical index existed (migration 008) or before it was keyed by scope (020): filled
# in batches, oldest first, by the lexemes trigger (which an update of content fires), where both columns'
# rule lives.
FILL_LEXEMES = """
UPDATE shared_episodic_memories SET content = content
WHERE id IN (
  SELECT id FROM shared_episodic_memories WHERE scoped_lexemes IS NULL ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED
)
"""
COUNT_WITHOUT_LEXEMES = "SELECT count(*) FROM shared_episodic_memories WHERE scoped_lexemes IS NULL"

UNCONSOLIDATED_SCOPES = """
SELECT DISTINCT tenant_id, scope_type, scope_id FROM shared_episodic_memories
WHERE consolidated = false AND ($1::text IS NULL OR tenant_id = $1)
LIMIT $2
"""
UNCONSOLIDATED_EVENTS = """
SELECT id, seq, agent_id, event_type, content, importance, embedding, embedding_model
FROM shared_episodic_memories
WHERE tenant_id = $1 AND scope_type = $2 AND scope_id = $3 AND consolidated = false
ORDER BY seq LIMIT $4
"""
MARK_CONSOLIDATED = """
UPDATE shared_episodic_memories SET consolidated = true, consolidated_at = now()
WHERE id = ANY($1::uuid[]) AND consolidated = false
"""
TRY_LOCK_CONSOLIDATION = "SELECT pg_try_advisory_lock(hashtextextended($1, 7340003))"

# Retraction (retraction.py) and retention (retention.py): see those modules for the rules.
# An event of a scope is named by its id or its seq (``EventRef``): a statement for each.
RETRACT = {
    key: f"""
DELETE FROM shared_episodic_memories
WHERE tenant_id = $1 AND scope_type = $2 AND scope_id = $3 AND {key} = $4 AND ($5::text IS NULL OR agent_id = $5)
RETURNING {EVENT_COLUMNS}
"""
    for key in ("id", "seq")
}
SELECT_EVENT = {
    key: f"""
SELECT {EVENT_COLUMNS} FROM shared_episodic_memories
WHERE tenant_id = $1 AND scope_type = $2 AND scope_id = $3 AND {key} = $4
"""
    for key in ("id", "seq")
}
EXPIRE_EVENTS = """
WITH gone AS (
  DELETE FROM shared_episodic_memories WHERE id IN (
    SELECT id FROM shared_episodic_memories WHERE scope_type = $1 AND created_at < $2 LIMIT $3 FOR UPDATE SKIP LOCKED
  ) RETURNING tenant_id, scope_type, scope_id, id, seq
)
SELECT tenant_id, scope_type, scope_id, array_agg(id ORDER BY seq) AS ids, array_agg(seq ORDER BY seq) AS seqs
FROM gone GROUP BY tenant_id, scope_type, scope_id
"""
UNLOCK_CONSOLIDATION = "SELECT pg_advisory_unlock(hashtextextended($1, 7340003))"


def row_to_event(row: Record) -> Event:
    return Event(**{k: v for k, v in dict(row).items() if k not in ("inserted", "content_hash")})


@dataclass(frozen=True, slots=True)
class Appended:
    """What ``ScopeWriter.append`` did: the event (new, or the one this agent stored first under the
    same idempotency key) and the scope's events still waiting for the cache and bus, oldest first."""

    event: Event
    inserted: bool
    backlog: list[Event]


class ScopeWriter:
    """The one writer of a scope (per installation) while held."""

    def __init__(self, conn: PgConnection, tenant: str, scope: Scope) -> None:
        self._conn = conn
        self.tenant = tenant
        self.scope = scope
        self.lock_key = f"{tenant}:{scope}"
        self._published: list[uuid.UUID] = []

    async def append(self, new: NewEvent) -> Appended:
        """Commit ``new`` (queued for publishing); returns it with the scope's earlier backlog.

        An idempotency key this agent already used returns that event (not inserted) when the content is
        the same, and raises ``Conflict`` (nothing written) when it differs."""
        args = (
            self.tenant, self.scope.type, self.scope.id, new.agent_id, new.agent_type, new.event_type, new.role,
            new.content, new.content_hash, new.embedding,
            new.embedding_model if new.embedding is not None else None, new.importance, new.metadata,
            new.idempotency_key,
        )  # fmt: skip
        rows = await self._conn.fetch(APPEND, *args)
        created = [row_to_event(r) for r in rows if r["inserted"]]
        backlog = sorted((row_to_event(r) for r in rows if not r["inserted"]), key=lambda e: e.seq)
        if created:
            return Appended(created[0], True, backlog)
        row = await self._conn.fetchrow(
            SELECT_BY_IDEMPOTENCY_KEY, self.tenant, self.scope.type, self.scope.id, new.agent_id, new.idempotency_key
        )
        if row is None:  # the conflicting row was committed by another writer and cannot vanish
            raise StoreUnavailable("the event with this idempotency key could not be read back; retry")
        if row["content_hash"] != new.content_hash:
            # A retry carries the same content; different content under the key is another write, and
            # replaying the first one would silently drop it.
            raise Conflict(
                f"idempotency key {new.idempotency_key!r} was already used by this agent for different content;"
                " use a new key"
            )
        return Appended(row_to_event(row), False, backlog)

    async def backlog(self) -> list[Event]:
        """The scope's committed events not yet published, oldest first."""
        rows = await self._conn.fetch(BACKLOG, self.tenant, self.scope.type, self.scope.id)
        return [row_to_event(r) for r in rows]

    def published(self, events: list[Event]) -> None:
        """The cache and bus have these: they leave the queue when the writer is released. Events never
        marked stay queued for the scope's next writer or the sweep."""
        self._published += [e.id for e in events]

    async def _release(self) -> None:
        """Dequeue what was published and release the scope's lock: the connection then goes back to the
        pool as it came (see ``PostgresPool.tenant``), without a reset."""
        if await self._conn.fetchval(DEQUEUE_AND_UNLOCK, self._published, self.lock_key):
            self._conn.session_restored()


class _LocalQueue:
    def __init__(self) -> None:
        self.lock = anyio.Lock()
        self.users = 0


class PostgresEpisodicStore:
    """Events, always filtered by tenant and scope (and, on the application role's pool, by row-level
    security). The methods that work across tenants (the outbox sweep's scope list, the lexeme fill,
    consolidation's scope list and marks) need the owner's pool."""

    def __init__(self, db: PostgresPool) -> None:
        self._db = db
        self._local: dict[tuple[str, Scope], _LocalQueue] = {}

    @asynccontextmanager
    async def writer(self, tenant: str, scope: Scope, *, wait: bool = True) -> AsyncIterator[ScopeWriter | None]:
        """Hold the scope's writer lock (None when ``wait`` is False and another holds it). Writers of
        this process queue on a local lock first, so a busy scope holds at most one pooled connection."""
        key = (tenant, scope)
        local = self._local.setdefault(key, _LocalQueue())
        local.users += 1
        try:
            async with local.lock, self._db.tenant(tenant) as conn:
                # Released with the dequeue below; if that fails, by the pool's reset (pg_advisory_unlock_all)
                # when the connection goes back.
                writer = ScopeWriter(conn, tenant, scope)
                if wait:
                    await conn.execute(LOCK_SCOPE, writer.lock_key)
                elif not await conn.fetchval(TRY_LOCK_SCOPE, writer.lock_key):
                    yield None
                    return
                try:
                    yield writer
                finally:
                    # Left queued when this fails: announced again later, which is harmless.
                    with anyio.CancelScope(shield=True), contextlib.suppress(StoreUnavailable):
                        await writer._release()
        finally:
            local.users -= 1
            if local.users == 0:
                self._local.pop(key, None)

    async def queued_scopes(self, *, older_than: float, limit: int = 100) -> list[tuple[str, Scope]]:
        """Scopes with events queued longer than ``older_than`` seconds (their writer died or Redis failed)."""
        async with self._db.cross_tenant() as conn:
            rows = await conn.fetch(QUEUED_SCOPES, older_than, limit)
        return [(r["tenant_id"], Scope(r["scope_type"], r["scope_id"])) for r in rows]

    async def outbox_size(self) -> int:
        """Events committed and not yet announced, in every tenant."""
        async with self._db.cross_tenant() as conn:
            return int(await conn.fetchval(OUTBOX_SIZE))

    async def recent(
        self, tenant: str, scope: Scope, *, limit: int, min_importance: float = 0.0, since_seq: int | None = None
    ) -> list[Event]:
        """Newest first; with ``since_seq``, the events after that cursor, oldest first."""
        async with self._db.tenant(tenant, reads_only=True) as conn:
            if since_seq is None:
                rows = await conn.fetch(SELECT_RECENT, tenant, scope.type, scope.id, min_importance, limit)
            else:
                rows = await conn.fetch(SELECT_SINCE, tenant, scope.type, scope.id, min_importance, since_seq, limit)
        return [row_to_event(r) for r in rows]

    async def count(self, tenant: str, scope: Scope) -> int:
        async with self._db.tenant(tenant) as conn:
            return int(await conn.fetchval(COUNT_EVENTS, tenant, scope.type, scope.id))

    # the lexical index of rows older than it

    async def fill_lexemes(self, *, batch: int) -> int:
        """Index up to ``batch`` events written before the lexical index existed; returns how many."""
        async with self._db.cross_tenant() as conn:
            status = await conn.execute(FILL_LEXEMES, batch)
        return int(status.split()[-1])

    async def count_without_lexemes(self) -> int:
        async with self._db.cross_tenant() as conn:
            return int(await conn.fetchval(COUNT_WITHOUT_LEXEMES))

    # consolidation

    async def unconsolidated_scopes(self, *, tenant: str | None, limit: int) -> list[tuple[str, Scope]]:
        async with self._db.cross_tenant() as conn:
            rows = await conn.fetch(UNCONSOLIDATED_SCOPES, tenant, limit)
        return [(r["tenant_id"], Scope(r["scope_type"], r["scope_id"])) for r in rows]

    @asynccontextmanager
    async def consolidation_turn(self, tenant: str, scope: Scope) -> AsyncIterator[bool]:
        """True while this process is the one consolidating the scope; False when another process is."""
        key = f"{tenant}:{scope}"
        async with self._db.connection() as conn:
            if not await conn.fetchval(TRY_LOCK_CONSOLIDATION, key):
                yield False
                return
            try:
                yield True
            finally:
                # When this fails, the pool's reset releases the lock.
                with anyio.CancelScope(shield=True), contextlib.suppress(StoreUnavailable):
                    await conn.execute(UNLOCK_CONSOLIDATION, key)

    async def unconsolidated(
        self, tenant: str, scope: Scope, *, limit: int, model_id: str
    ) -> list[UnconsolidatedEvent]:
        """The scope's oldest unconsolidated events, with their vectors when of ``model_id``."""
        async with self._db.tenant(tenant) as conn:
            rows = await conn.fetch(UNCONSOLIDATED_EVENTS, tenant, scope.type, scope.id, limit)
        return [_unconsolidated(r, model_id) for r in rows]

    async def mark_consolidated(self, event_ids: list[uuid.UUID]) -> None:
        async with self._db.cross_tenant() as conn:
            await conn.execute(MARK_CONSOLIDATED, event_ids)

    # retraction and retention

    async def get(self, tenant: str, scope: Scope, event: EventRef) -> Event | None:
        async with self._db.tenant(tenant) as conn:
            row = await conn.fetchrow(SELECT_EVENT[_key(event)], tenant, scope.type, scope.id, event)
        return row_to_event(row) if row is not None else None

    async def retract(self, tenant: str, scope: Scope, event: EventRef, *, agent_id: str | None) -> Event | None:
        """Delete one event of the scope (only ``agent_id``'s when given); None when there was none."""
        async with self._db.tenant(tenant) as conn:
            row = await conn.fetchrow(RETRACT[_key(event)], tenant, scope.type, scope.id, event, agent_id)
        return row_to_event(row) if row is not None else None

    async def expire(
        self, scope_type: str, *, before: datetime, limit: int
    ) -> list[tuple[str, Scope, list[tuple[uuid.UUID, int]]]]:
        """Delete up to ``limit`` events of ``scope_type`` written before ``before``, across tenants (the
        owner's pool); returns (tenant, scope, the (id, seq) deleted, oldest first) per scope."""
        async with self._db.cross_tenant() as conn:
            rows = await conn.fetch(EXPIRE_EVENTS, scope_type, before, limit)
        return [
            (r["tenant_id"], Scope(r["scope_type"], r["scope_id"]), list(zip(r["ids"], r["seqs"], strict=True)))
            for r in rows
        ]


def _key(event: EventRef) -> str:
    return "id" if isinstance(event, uuid.UUID) else "seq"


def _unconsolidated(row: Record, model_id: str) -> UnconsolidatedEvent:
    fields: dict[str, Any] = {k: row[k] for k in ("id", "seq", "agent_id", "event_type", "content", "importance")}
    vector = row["embedding"] if row["embedding_model"] == model_id else None
    return UnconsolidatedEvent(**fields, embedding=vector)
