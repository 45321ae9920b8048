"""Durable workspaces in PostgreSQL (Redis only caches them: a workspace never vanishes with a TTL)."""

from __future__ import annotations

from typing import Any

from ..models import Workspace
from .postgres import PostgresPool, Record

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

# $4: only workspaces this agent owns or is on the roster of (the limit applies to those).
LIST_WORKSPACES = f"""
SELECT {WORKSPACE_COLUMNS} FROM workspaces
WHERE tenant_id = $1 AND ($2::text IS NULL OR status = $2)
  AND ($4::text IS NULL OR created_by = $4 OR $4 = ANY(agents))
ORDER BY created_at DESC LIMIT $3
"""


def row_to_workspace(row: Record) -> Workspace:
    return Workspace(**dict(row))


class PostgresWorkspaceStore:
    def __init__(self, db: PostgresPool) -> None:
        self._db = db

    async def create(
        self, tenant: str, workspace_id: str, *, task: str, agents: list[str], context: dict[str, Any], created_by: str
    ) -> Workspace:
        row = await self._db.fetchrow(INSERT_WORKSPACE, tenant, workspace_id, task, agents, context, created_by)
        assert row is not None
        return row_to_workspace(row)

    async def get(self, tenant: str, workspace_id: str) -> Workspace | None:
        row = await self._db.fetchrow(SELECT_WORKSPACE, tenant, workspace_id)
        return row_to_workspace(row) if row else None

    async def update(
        self,
        tenant: str,
        workspace_id: str,
        *,
        status: str | None,
        context_patch: dict[str, Any] | None,
        agents: list[str] | None,
    ) -> Workspace | None:
        row = await self._db.fetchrow(UPDATE_WORKSPACE, tenant, workspace_id, status, context_patch, agents)
        return row_to_workspace(row) if row else None

    async def list(self, tenant: str, *, status: str | None, limit: int, member: str | None = None) -> list[Workspace]:
        rows = await self._db.fetch(LIST_WORKSPACES, tenant, status, limit, member)
        return [row_to_workspace(r) for r in rows]
