"""Reading a tenant out of, and into, the stores for ``export`` / ``import`` (``ops/transfer.py``).

Everything runs on the owner's pool: an import must see whether an id is taken in another tenant. Events
are read in ``seq`` order and inserted in that order, so a scope's order survives (the ``seq`` numbers
themselves are the installation's and are assigned anew). Rows are inserted with their ids, timestamps and
provenance; a copy into another tenant than the exported one gets ids derived from (tenant, id), since ids
are unique in an installation, and importing it again finds them and skips them. Imported events
bypass the outbox: the scopes' cached recent sets are dropped instead, and refilled from PostgreSQL.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from qdrant_client import AsyncQdrantClient, models

from ..errors import StoreUnavailable
from ..models import Scope
from ..vectors import Vector
from .cache import RedisKeys
from .postgres import PostgresPool
from .qdrant_collection import ensure_collection
from .qdrant_points import DENSE, LEXICAL, lexical_vector, match
from .redis_client import REDIS_ERRORS, RedisClient

PAGE = 500
ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "mcp-shared-memory/import")

SCOPED = "tenant_id = $1 AND ($2::text IS NULL OR (scope_type = $2 AND scope_id = $3))"
EVENT_FIELDS = (
    "id, seq, scope_type, scope_id, agent_id, agent_type, event_type, role, content, content_hash, importance, "
    "metadata, idempotency_key, consolidated, consolidated_at, created_at, embedding_model"
)
EVENTS = f"""
SELECT {EVENT_FIELDS}, embedding FROM shared_episodic_memories WHERE {SCOPED} AND seq > $4 ORDER BY seq LIMIT $5
"""
FACT_FIELDS = (
    "id, scope_type, scope_id, fact, source_event_ids, source_agents, confirmations, first_seen, last_seen, "
    "embedding_model"
)
FACTS = f"SELECT {FACT_FIELDS}, embedding FROM semantic_facts WHERE {SCOPED} AND id > $4 ORDER BY id LIMIT $5"
WORKSPACES = """
SELECT id, task, agents, status, context, created_by, created_at, updated_at FROM workspaces
WHERE tenant_id = $1 AND ($2::text IS NULL OR id = $2) ORDER BY created_at, id
"""
COUNTS = f"""
SELECT (SELECT count(*) FROM shared_episodic_memories WHERE {SCOPED}) AS events,
       (SELECT count(*) FROM semantic_facts WHERE {SCOPED}) AS facts,
       (SELECT count(*) FROM workspaces WHERE tenant_id = $1 AND ($2::text IS NULL OR $2 = 'workspace')
          AND ($3::text IS NULL OR id = $3)) AS workspaces
"""
INSERT_EVENT = """
INSERT INTO shared_episodic_memories
  (id, tenant_id, scope_type, scope_id, agent_id, agent_type, event_type, role, content, content_hash, importance,
   metadata, idempotency_key, consolidated, consolidated_at, created_at, embedding_model, embedding)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)
ON CONFLICT DO NOTHING
"""
INSERT_FACT = """
INSERT INTO semantic_facts
  (id, tenant_id, scope_type, scope_id, fact, source_event_ids, source_agents, confirmations, first_seen, last_seen,
   embedding_model, embedding)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
ON CONFLICT DO NOTHING
"""
INSERT_WORKSPACE = """
INSERT INTO workspaces (tenant_id, id, task, agents, status, context, created_by, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT DO NOTHING
"""


def _scope_args(tenant: str, scope: Scope | None) -> tuple[str, str | None, str | None]:
    return tenant, scope.type if scope else None, scope.id if scope else None


def derived_id(tenant: str, original: uuid.UUID) -> uuid.UUID:
    return uuid.uuid5(ID_NAMESPACE, f"{tenant}\x1f{original}")


async def counts(db: PostgresPool, tenant: str, scope: Scope | None) -> dict[str, int]:
    async with db.cross_tenant() as conn:
        row = await conn.fetchrow(COUNTS, *_scope_args(tenant, scope))
    assert row is not None
    return {k: int(row[k]) for k in ("events", "facts", "workspaces")}


async def read_workspaces(db: PostgresPool, tenant: str, scope: Scope | None) -> list[dict[str, Any]]:
    if scope is not None and scope.type != "workspace":
        return []
    async with db.cross_tenant() as conn:
        return [dict(r) for r in await conn.fetch(WORKSPACES, tenant, scope.id if scope else None)]


async def read_events(db: PostgresPool, tenant: str, scope: Scope | None) -> AsyncIterator[list[dict[str, Any]]]:
    """The events in ``seq`` order, a page at a time (``embedding`` a ``Vector`` or None)."""
    after = 0
    while True:
        async with db.cross_tenant() as conn:
            rows = await conn.fetch(EVENTS, *_scope_args(tenant, scope), after, PAGE)
        if not rows:
            return
        after = rows[-1]["seq"]
        yield [dict(r) for r in rows]


async def read_pg_facts(db: PostgresPool, tenant: str, scope: Scope | None) -> AsyncIterator[list[dict[str, Any]]]:
    after = uuid.UUID(int=0)
    while True:
        async with db.cross_tenant() as conn:
            rows = await conn.fetch(FACTS, *_scope_args(tenant, scope), after, PAGE)
        if not rows:
            return
        after = rows[-1]["id"]
        yield [dict(r) for r in rows]


async def insert_rows(db: PostgresPool, kind: str, rows: Sequence[tuple[Any, ...]]) -> int:
    """Insert a batch in one transaction, skipping rows already there; returns how many were new."""
    statement = {"event": INSERT_EVENT, "fact": INSERT_FACT, "workspace": INSERT_WORKSPACE}[kind]
    inserted = 0
    async with db.cross_tenant() as conn, conn.transaction():
        for row in rows:
            inserted += int((await conn.execute(statement, *row)).split()[-1])
    return inserted


async def drop_cached(client: RedisClient, *, prefix: str, tenant: str, scopes: Sequence[Scope]) -> None:
    """The scopes' recent sets and the tenant's cached event count: rebuilt from PostgreSQL on next use."""
    keys = RedisKeys(prefix)
    try:
        await client.delete(*[keys.recent(tenant, s) for s in scopes], f"{prefix}:{{{tenant}}}:event-count")
    except REDIS_ERRORS as exc:
        raise StoreUnavailable(
            f"Redis is unavailable ({type(exc).__name__}): the import is in PostgreSQL, but the recent cache of "
            f"its scopes may be stale until it expires (MSM_RECENT_TTL)"
        ) from exc


async def read_qdrant_facts(
    client: AsyncQdrantClient, collection: str, tenant: str, scope: Scope | None, *, vectors: bool
) -> AsyncIterator[list[tuple[uuid.UUID, dict[str, Any], list[float] | None]]]:
    conditions: list[models.Condition] = [match("tenant_id", tenant)]
    if scope is not None:
        conditions += [match("scope_type", scope.type), match("scope_id", scope.id)]
    offset: Any = None
    while True:
        try:
            points, offset = await client.scroll(
                collection, scroll_filter=models.Filter(must=conditions), limit=PAGE, offset=offset,
                with_payload=True, with_vectors=[DENSE] if vectors else False,
            )  # fmt: skip
        except Exception as exc:  # many transport types; none may leak an address
            raise StoreUnavailable(f"Qdrant is unavailable ({type(exc).__name__}); retry later") from exc
        page = []
        for p in points:
            vector = p.vector.get(DENSE) if isinstance(p.vector, dict) else p.vector
            dense = [float(x) for x in vector] if vectors and isinstance(vector, list) else None  # type: ignore[arg-type]
            page.append((uuid.UUID(str(p.id)), dict(p.payload or {}), dense))
        if page:
            yield page
        if offset is None:
            return


async def write_qdrant_facts(
    client: AsyncQdrantClient,
    collection: str,
    *,
    dimension: int,
    facts: Sequence[tuple[uuid.UUID, dict[str, Any], Vector]],
) -> int:
    """Insert facts (id, payload, vector), leaving points already there as they are; returns how many."""
    try:
        lexical = await ensure_collection(client, collection, dimension=dimension)
        ids = [str(i) for i, _, _ in facts]
        existing = {str(p.id) for p in await client.retrieve(collection, ids, with_payload=False)}
        points = [
            models.PointStruct(
                id=str(i), payload=payload,
                vector={DENSE: v.tolist(), LEXICAL: sparse} if lexical and (sparse := lexical_vector(payload["fact"]))
                else ({DENSE: v.tolist()} if lexical else v.tolist()),
            )
            for i, payload, v in facts if str(i) not in existing
        ]  # fmt: skip
        if points:
            await client.upsert(collection, points=points, wait=True)
    except Exception as exc:  # many transport types; none may leak an address
        raise StoreUnavailable(
            f"Qdrant is unavailable ({type(exc).__name__}); nothing of this batch was written"
        ) from exc
    return len(points)
