"""The workspace rules of ``SharedMemory``: durable workspaces created by an orchestrator, cached in Redis,
their changes announced on the bus. A part of ``SharedMemory`` (it inherits this), kept apart for size."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

import anyio

from . import validation as check
from .errors import AccessDenied, InvalidInput, NotFound, StoreUnavailable
from .event_filter import EventFilter
from .models import Principal, Scope, Workspace, WorkspaceSummary, role_at_least, validate_identifier

if TYPE_CHECKING:
    from .announcer import Announcer
    from .models import Event, WriteResult
    from .redaction import Redactor
    from .settings import Settings
    from .stores.cache import RedisCache
    from .stores.episodic import PostgresEpisodicStore
    from .stores.quota import TenantEventQuota
    from .stores.workspaces import PostgresWorkspaceStore

CLOSED_STATUSES = ("completed", "cancelled")


def is_member(principal: Principal, workspace: Workspace) -> bool:
    """The workspace's owner (its creator) or an agent on its roster."""
    return principal.agent_id == workspace.created_by or principal.agent_id in workspace.agents


def may_read_workspace(principal: Principal, workspace_id: str, owner: str, agents: Collection[str]) -> bool:
    """Whether ``principal`` reads the workspace, and so hears of it: a member (its owner or on its roster)
    holding a grant that reads it."""
    member = principal.agent_id == owner or principal.agent_id in agents
    return member and principal.may_use(Scope("workspace", workspace_id))


class WorkspaceRules:
    settings: Settings
    _episodic: PostgresEpisodicStore
    _workspaces: PostgresWorkspaceStore
    _cache: RedisCache
    _announcer: Announcer
    _redactor: Redactor
    _quota: TenantEventQuota

    if TYPE_CHECKING:

        async def write_event(
            self, principal: Principal, content: str, *, event_type: str = ..., importance: float = ...,
            scope: str | Scope | None = ..., dedup: bool = ...,
        ) -> WriteResult: ...  # fmt: skip

        async def _recent(
            self, tenant: str, scope: Scope, wanted: EventFilter, limit: int, min_importance: float,
            since_seq: int | None,
        ) -> list[Event]: ...  # fmt: skip

    async def create_workspace(
        self,
        principal: Principal,
        task: str,
        agents: list[str] | None = None,
        *,
        context: dict[str, Any] | None = None,
    ) -> Workspace:
        """Create a durable workspace (orchestrator) and record a ``workspace_created`` event in it."""
        check.text(task, "task", max_chars=check.MAX_TASK_CHARS)
        roster = list(dict.fromkeys(agents or []))
        if len(roster) > check.MAX_AGENTS:
            raise InvalidInput(f"at most {check.MAX_AGENTS} agents per workspace")
        for agent in roster:
            validate_identifier(agent, "agent id in agents")
        context = check.metadata(context)
        task, context = self._redactor.text(task), self._redactor.value(context)
        workspace_id = str(uuid.uuid4())
        scope = Scope("workspace", workspace_id)
        if not principal.can_create_workspaces:
            raise AccessDenied("this connection may not create workspaces; ask the orchestrator to create one")
        if not role_at_least(principal.role_for_every("workspace"), "write"):
            raise AccessDenied(
                "creating a workspace needs the write role on every workspace (a grant such as 'workspace:*'); "
                "ask the orchestrator to create one"
            )
        await self._quota.check(principal.tenant)  # its first event would be refused
        workspace = await self._workspaces.create(
            principal.tenant, workspace_id, task=task, agents=roster, context=context,
            created_by=principal.agent_id,
        )  # fmt: skip
        roster_text = f" Agents: {', '.join(roster)}." if roster else ""
        try:
            await self.write_event(
                principal, f"Workspace created for task: {task}.{roster_text}", event_type="workspace_created",
                importance=0.9, scope=scope, dedup=False,
            )  # fmt: skip
        except BaseException:
            # Nobody knows of it yet: undo, so a retry does not leave a twin without its first event.
            with anyio.CancelScope(shield=True), contextlib.suppress(StoreUnavailable):
                await self._workspaces.delete(principal.tenant, workspace_id)
                await self._cache.drop_workspace(principal.tenant, workspace_id)
            raise
        await self._announcer.workspace(principal.tenant, workspace, created=True)
        return workspace

    async def get_workspace(self, principal: Principal, workspace_id: str) -> Workspace:
        """The workspace, for its owner and its members."""
        validate_identifier(workspace_id, "workspace_id")
        scope = principal.resolve_scope(Scope("workspace", workspace_id))
        workspace = await self._workspace_access(principal, scope, write=False)
        assert workspace is not None
        return workspace

    async def _workspace_access(
        self, principal: Principal, scope: Scope, *, write: bool, manage: bool = False
    ) -> Workspace | None:
        """The workspace behind ``scope`` if the caller may use it (None for a scope that is no workspace).

        Its creator owns it and its roster are members: both read and write its events and facts (as far as
        their grants go); its owner, or a connection with the admin role on it (member or not), changes it
        (``manage``). Writes into a completed or cancelled workspace are refused. The scope must already have
        passed ``principal.resolve_scope`` with the role the call needs."""
        if scope.type != "workspace":
            return None
        # A change is checked against PostgreSQL (rare, and never against a stale roster); reads and
        # writes of events and facts against the cached copy, to spare the write path a round trip.
        workspace = await self._load_workspace(principal.tenant, scope.id, cached=not manage)
        if manage and principal.role_for(scope) == "admin":
            return workspace
        if not is_member(principal, workspace):
            raise AccessDenied(
                f"agent {principal.agent_id} is not a member of workspace {scope.id}: "
                "ask its owner to add it to the workspace's agents"
            )
        if manage and principal.agent_id != workspace.created_by:
            raise AccessDenied(
                f"only the workspace's owner ({workspace.created_by}) or a connection with the admin role on "
                f"{scope} (a grant such as '{scope}=rwa') may change workspace {scope.id}"
            )
        if write and workspace.status in CLOSED_STATUSES:
            raise InvalidInput(
                f"workspace {scope.id} is {workspace.status}: nothing more can be written to it; "
                "its owner may reopen it (update_workspace status='active') or create a new workspace"
            )
        return workspace

    async def _load_workspace(self, tenant: str, workspace_id: str, *, cached: bool = True) -> Workspace:
        """The workspace from the Redis cache, else from PostgreSQL (then cached); with ``cached=False``
        from PostgreSQL only (the change that follows refreshes the cache)."""
        hit = await self._cache.get_workspace(tenant, workspace_id) if cached else None
        if hit is not None:
            return hit
        workspace = await self._workspaces.get(tenant, workspace_id)
        if workspace is None:
            raise NotFound(
                f"workspace {workspace_id} does not exist in this tenant: create it with create_workspace first"
            )
        if cached:
            await self._cache.put_workspace(tenant, workspace, ttl=self.settings.workspace_cache_ttl)
        return workspace

    async def workspace_audience(self, tenant: str, workspace_id: str) -> tuple[str, list[str]] | None:
        """(owner, roster) of a workspace, for the notification hub to decide who hears of it (with
        ``may_read_workspace``); None when it does not exist. No caller to check: nothing else is returned."""
        try:
            workspace = await self._load_workspace(tenant, workspace_id)
        except NotFound:
            return None
        return workspace.created_by, workspace.agents

    async def get_workspace_summary(
        self, principal: Principal, workspace_id: str, *, limit: int = 50
    ) -> WorkspaceSummary:
        check.bounded_int(limit, "limit", low=1, high=check.MAX_LIMIT)
        workspace = await self.get_workspace(principal, workspace_id)  # the access check, once
        scope = Scope("workspace", workspace_id)
        recent = await self._recent(principal.tenant, scope, EventFilter(), limit, 0.0, None)
        count = await self._episodic.count(principal.tenant, scope)
        return WorkspaceSummary(workspace=workspace, recent_events=recent, event_count=count)

    async def update_workspace(
        self,
        principal: Principal,
        workspace_id: str,
        *,
        status: str | None = None,
        context: dict[str, Any] | None = None,
        agents: list[str] | None = None,
    ) -> Workspace:
        """Change status, merge keys into the context, or replace the agent roster (its owner, or the admin
        role on it). Agents added to or removed from the roster are notified (``Announcer.workspace``)."""
        validate_identifier(workspace_id, "workspace_id")
        scope = principal.resolve_scope(Scope("workspace", workspace_id), need="write")
        if status is None and context is None and agents is None:
            raise InvalidInput("nothing to update: pass status, context or agents")
        if status is not None:
            check.status(status)
        if context is not None:
            context = self._redactor.value(check.metadata(context))
        if agents is not None:
            for agent in agents:
                validate_identifier(agent, "agent id in agents")
        before = await self._workspace_access(principal, scope, write=False, manage=True)
        workspace = await self._workspaces.update(
            principal.tenant, workspace_id, status=status, context_patch=context, agents=agents,
            max_context_bytes=self.settings.max_workspace_context_bytes,
        )  # fmt: skip
        if workspace is None:
            raise NotFound(f"workspace {workspace_id} does not exist in this tenant")
        await self._announcer.workspace(principal.tenant, workspace, created=False, before=before)
        return workspace

    async def list_workspaces(
        self, principal: Principal, *, status: str | None = None, limit: int = 50
    ) -> list[Workspace]:
        if status is not None:
            check.status(status)
        check.bounded_int(limit, "limit", low=1, high=check.MAX_LIMIT)
        found = await self._workspaces.list(principal.tenant, status=status, limit=limit, member=principal.agent_id)
        return [w for w in found if principal.may_use(Scope("workspace", w.id)) and is_member(principal, w)]
