"""Durable workspaces in PostgreSQL (Redis only caches them: a workspace never vanishes with a TTL)."""

from __future__ import annotations

from typing import Any

from ..errors import InvalidInput
from ..models import Workspace
from .postgres import PostgresPool, Record

WORKSPACE_COLUMNS = "id, task, agents, status, context, created_by, created_at, updated_at"

INSERT_WORKSPACE = f"""
INSERT INTO workspaces (tenant_id, id, task, agents, status, context, created_by)
VALUES ($1, $2, $3, $4, 'active', $5, $6)
RETURNING {WORKSPACE_COLUMNS}
"""

SELECT_WORKSPACE = f"SELECT {WORKSPACE_COLUMNS} FROM workspaces WHERE tenant_id = $1 AND id = $2"

# $6: the merged context's limit in bytes of JSON, checked in the statement itself: a concurrent patch
# re-evaluates the condition on the row it waited for, so two patches cannot both pass it.
UPDATE_WORKSPACE = f"""
UPDATE workspaces
SET status = COALESCE($3, status),
    context = CASE WHEN $4::jsonb IS NULL THEN context ELSE context || $4::jsonb END,
    agents = COALESCE($5, agents),
    updated_at = now()
WHERE tenant_id = $1 AND id = $2
  AND ($4::jsonb IS NULL OR octet_length((context || $4::jsonb)::text) <= $6)
RETURNING {WORKSPACE_COLUMNS}
"""
MERGED_CONTEXT_BYTES = """
SELECT octet_length((context || $3::jsonb)::text) FROM workspaces WHERE tenant_id = $1 AND id = $2
"""

# $4: only workspaces this agent owns or is on the roster of (the limit applies to those).
LIST_WORKSPACES = f"""
SELECT {WORKSPACE_COLUMNS} FROM workspaces
WHERE tenant_id = $1 AND ($2::text IS NULL OR status = $2)
  AND ($4::text IS NULL OR created_by = $4 OR $4 = ANY(agents))
ORDER BY created_at DESC LIMIT $3
"""

DELETE_WORKSPACE = "DELETE FROM workspaces WHERE tenant_id = $1 AND id = $2"


def row_to_workspace(row: Record) -> Workspace:
    return Workspace(**dict(row))


class PostgresWorkspaceStore:
    def __init__(self, db: PostgresPool) -> None:
        self._db = db

    async def create(
        self, tenant: str, workspace_id: str, *, task: str, agents: list[str], context: dict[str, Any], created_by: str
    ) -> Workspace:
        async with self._db.tenant(tenant) as conn:
            row = await conn.fetchrow(INSERT_WORKSPACE, tenant, workspace_id, task, agents, context, created_by)
        assert row is not None
        return row_to_workspace(row)

    async def delete(self, tenant: str, workspace_id: str) -> None:
        async with self._db.tenant(tenant) as conn:
            await conn.execute(DELETE_WORKSPACE, tenant, workspace_id)

    async def get(self, tenant: str, workspace_id: str) -> Workspace | None:
        async with self._db.tenant(tenant, reads_only=True) as conn:
            row = await conn.fetchrow(SELECT_WORKSPACE, tenant, workspace_id)
        return row_to_workspace(row) if row else None

    async def update(
        self,
        tenant: str,
        workspace_id: str,
        *,
        status: str | None,
        context_patch: dict[str, Any] | None,
        agents: list[str] | None,
        max_context_bytes: int,
    ) -> Workspace | None:
        """The updated workspace; None if it does not exist. A merged context over ``max_context_bytes``
        changes nothing (``InvalidInput``)."""
        async with self._db.tenant(tenant) as conn:
            for _ in range(3):
                row = await conn.fetchrow(
                    UPDATE_WORKSPACE, tenant, workspace_id, status, context_patch, agents, max_context_bytes
                )
                if row is not None or context_patch is None:
                    break
                merged = await conn.fetchval(MERGED_CONTEXT_BYTES, tenant, workspace_id, context_patch)
                if merged is None:
                    break  # no such workspace
                if merged > max_context_bytes:
                    raise InvalidInput(
                        f"the workspace's context would grow to {merged} bytes of JSON, over the limit of "
                        f"{max_context_bytes} (MSM_MAX_WORKSPACE_CONTEXT_BYTES): nothing was changed; overwrite "
                        "large keys with smaller values (null takes almost no room) and keep bulky material in events"
                    )
                # else a concurrent patch shrank the context in between: try again
        return row_to_workspace(row) if row else None

    async def list(self, tenant: str, *, status: str | None, limit: int, member: str | None = None) -> list[Workspace]:
        async with self._db.tenant(tenant) as conn:
            rows = await conn.fetch(LIST_WORKSPACES, tenant, status, limit, member)
        return [row_to_workspace(r) for r in rows]
