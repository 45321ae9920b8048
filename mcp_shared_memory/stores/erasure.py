"""Erasure (the right-to-erasure path): a user's or workspace's scope, one agent's events, or a whole
tenant, from PostgreSQL, Redis and the Qdrant facts. ``ops/erase.py`` runs the three and audits it.

PostgreSQL goes first, in one transaction on the owner's pool (events with their outbox rows, facts,
and for a workspace scope or a tenant the workspace records; for a tenant also its tokens). Redis and
Qdrant follow; an erasure that failed half-way is completed by running it again (every step is idempotent).
An agent's erasure deletes its events and the facts only it stated, and takes it (and its events) out of
the provenance of the facts others stated too.
"""

from __future__ import annotations

from dataclasses import dataclass

from qdrant_client import AsyncQdrantClient, models

from ..errors import StoreUnavailable
from ..models import Scope
from .postgres import PostgresPool
from .qdrant_points import COLLECTION_PREFIX, match
from .redis_client import REDIS_ERRORS, RedisClient

# $1 tenant, $2 scope type (NULL: every scope), $3 scope id, $4 agent (NULL: every agent)
WHERE = """tenant_id = $1 AND ($2::text IS NULL OR (scope_type = $2 AND scope_id = $3))"""
EVENT_WHERE = WHERE + " AND ($4::text IS NULL OR agent_id = $4)"
EVENT_SCOPES = f"SELECT DISTINCT scope_type, scope_id FROM shared_episodic_memories WHERE {EVENT_WHERE}"
DELETE_EVENTS = f"DELETE FROM shared_episodic_memories WHERE {EVENT_WHERE} RETURNING id"
DELETE_FACTS = f"DELETE FROM semantic_facts WHERE {WHERE}"
DELETE_AGENT_FACTS = f"""
DELETE FROM semantic_facts WHERE {WHERE} AND cardinality(source_agents) > 0 AND source_agents <@ ARRAY[$4::text]
"""
# Facts other agents stated too lose this agent and its events from their provenance.
STRIP_AGENT = f"""
UPDATE semantic_facts
SET source_agents = array_remove(source_agents, $4::text),
    source_event_ids = ARRAY(SELECT unnest(source_event_ids) EXCEPT SELECT unnest($5::uuid[])),
    confirmations = GREATEST(1, (SELECT count(DISTINCT a) FROM unnest(array_remove(source_agents, $4::text)) a))
WHERE {WHERE} AND $4::text = ANY(source_agents)
"""
DELETE_WORKSPACES = "DELETE FROM workspaces WHERE tenant_id = $1 AND ($2::text IS NULL OR id = $2)"
DELETE_TOKENS = "DELETE FROM api_tokens WHERE tenant_id = $1"


@dataclass(frozen=True, slots=True)
class ErasureTarget:
    """A whole tenant (no scope, no agent), one scope, or one agent's events (in one scope or all)."""

    tenant: str
    scope: Scope | None = None
    agent_id: str | None = None

    def describe(self) -> str:
        parts = [f"tenant {self.tenant}"]
        if self.scope is not None:
            parts.append(f"scope {self.scope}")
        if self.agent_id is not None:
            parts.append(f"agent {self.agent_id}")
        return ", ".join(parts)


@dataclass(frozen=True, slots=True)
class ErasedRows:
    events: int
    facts: int
    workspaces: int
    tokens: int
    scopes: list[Scope]


def _count(status: str) -> int:
    return int(status.split()[-1])


async def erase_postgres(db: PostgresPool, target: ErasureTarget) -> ErasedRows:
    """Delete the target's rows in one transaction (the owner's pool)."""
    scope_type = target.scope.type if target.scope else None
    scope_id = target.scope.id if target.scope else None
    args = (target.tenant, scope_type, scope_id)
    async with db.cross_tenant() as conn, conn.transaction():
        scopes = [Scope(r["scope_type"], r["scope_id"]) for r in await conn.fetch(EVENT_SCOPES, *args, target.agent_id)]
        events = [r["id"] for r in await conn.fetch(DELETE_EVENTS, *args, target.agent_id)]
        workspaces = tokens = 0
        if target.agent_id is None:
            facts = _count(await conn.execute(DELETE_FACTS, *args))
            if target.scope is None or target.scope.type == "workspace":
                workspaces = _count(await conn.execute(DELETE_WORKSPACES, target.tenant, scope_id))
            if target.scope is None:
                tokens = _count(await conn.execute(DELETE_TOKENS, target.tenant))
        else:
            facts = _count(await conn.execute(DELETE_AGENT_FACTS, *args, target.agent_id))
            await conn.execute(STRIP_AGENT, *args, target.agent_id, events)
    if target.scope is not None and target.scope not in scopes:
        scopes.append(target.scope)
    return ErasedRows(len(events), facts, workspaces, tokens, scopes)


async def erase_redis(client: RedisClient, *, prefix: str, target: ErasureTarget, scopes: list[Scope]) -> int:
    """Delete the cached copies: recent sets, dedup keys and workspace contexts of the scopes (every key of
    the tenant for a whole tenant), and the tenant's cached event count. Returns the keys deleted."""
    tenant = target.tenant
    if target.scope is None and target.agent_id is None:
        patterns = [f"{prefix}:{{{tenant}:*"]
    else:
        patterns = [f"{prefix}:{{{tenant}:{s.type}:{s.id}}}:*" for s in scopes]
    deleted = 0
    try:
        for pattern in patterns:
            keys = [key async for key in client.scan_iter(match=pattern, count=500)]
            for start in range(0, len(keys), 500):
                deleted += int(await client.delete(*keys[start : start + 500]))
        deleted += int(await client.delete(f"{prefix}:{{{tenant}}}:event-count"))
    except REDIS_ERRORS as exc:
        raise StoreUnavailable(
            f"Redis is unavailable ({type(exc).__name__}): PostgreSQL is erased, the cache is not; run the same "
            "erase again once Redis is back"
        ) from exc
    return deleted


async def erase_qdrant(client: AsyncQdrantClient, target: ErasureTarget) -> int:
    """Delete the target's facts from every facts collection (each model's); returns how many."""
    conditions: list[models.Condition] = [match("tenant_id", target.tenant)]
    if target.scope is not None:
        conditions += [match("scope_type", target.scope.type), match("scope_id", target.scope.id)]
    if target.agent_id is not None:
        conditions.append(models.FieldCondition(key="source_agents", match=models.MatchAny(any=[target.agent_id])))
    selector = models.Filter(must=conditions)
    deleted = 0
    try:
        names = [c.name for c in (await client.get_collections()).collections]
        for name in [n for n in names if n.startswith(f"{COLLECTION_PREFIX}__")]:
            offset = None
            while True:
                points, offset = await client.scroll(name, scroll_filter=selector, limit=256, offset=offset)
                gone, kept = [], []
                for point in points:
                    agents = list((point.payload or {}).get("source_agents", []))
                    if target.agent_id is None or set(agents) <= {target.agent_id}:
                        gone.append(point.id)
                    else:
                        kept.append((point.id, [a for a in agents if a != target.agent_id]))
                if gone:
                    await client.delete(name, points_selector=models.PointIdsList(points=gone), wait=True)
                for point_id, agents in kept:
                    await client.set_payload(name, {"source_agents": agents}, points=[point_id], wait=True)
                deleted += len(gone)
                if offset is None:
                    break
    except Exception as exc:  # the client raises many transport types; none may leak an address
        raise StoreUnavailable(
            f"Qdrant is unavailable ({type(exc).__name__}): PostgreSQL is erased, the Qdrant facts are not; run the "
            "same erase again once Qdrant is back"
        ) from exc
    return deleted
