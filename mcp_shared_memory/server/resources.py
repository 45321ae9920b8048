"""MCP resources and the shared_context prompt. URIs carry the tenant; reading another tenant's URI
looks exactly like reading one that does not exist. Reads obey the response size limit as tool results do:
a list is cut to what fits (``"truncated": true``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, cast

from mcp import MCPError
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError
from mcp.types import INTERNAL_ERROR, INVALID_PARAMS
from pydantic import BaseModel

from ..errors import AccessDenied, EmbeddingUnavailable, NotFound, SharedMemoryError, StoreUnavailable
from ..models import Principal, Scope, ScopeType
from .limits import ResponseBudget, json_size
from .state import AppState
from .uris import CONTEXT_TEMPLATE, RECENT_TEMPLATE, WORKSPACES_TEMPLATE

RESOURCE_EVENTS = 50


def _principal_for(ctx: Context[Any], tenant: str, uri: str) -> tuple[AppState, Principal]:
    state: AppState = ctx.request_context.lifespan_context
    try:
        principal = state.principal()
    except AccessDenied as exc:
        raise ResourceError(exc.message) from exc
    if principal.tenant != tenant:
        raise ResourceNotFoundError(f"resource {uri} not found")
    return state, principal


def _translate(exc: SharedMemoryError, uri: str) -> ResourceError:
    if isinstance(exc, NotFound | AccessDenied):
        return ResourceNotFoundError(f"resource {uri} not found")
    return ResourceError(exc.message)


def _listing(state: AppState, key: str, items: Sequence[BaseModel]) -> str:
    """``{key: [...items], "truncated": bool}``, cut to the items that fit the response size limit."""

    def build(kept: Sequence[BaseModel]) -> str:
        return json.dumps({key: [i.model_dump(mode="json") for i in kept], "truncated": len(kept) < len(items)})

    return ResponseBudget(state.runtime.settings.max_response_bytes).fit(items, build, json_size, noun=key)


def register_resources(mcp: MCPServer[Any]) -> None:
    @mcp.resource(
        RECENT_TEMPLATE,
        name="recent_shared_events",
        description="Recent events of a scope at or above the shared-importance floor, newest first (JSON)",
        mime_type="application/json",
    )
    async def recent(tenant: str, scope_type: str, scope_id: str, ctx: Context[Any]) -> str:
        uri = f"memory://{tenant}/{scope_type}/{scope_id}/recent"
        state, principal = _principal_for(ctx, tenant, uri)
        try:
            events = await state.memory.shared_context_events(
                principal,
                scope=Scope(cast(ScopeType, scope_type), scope_id),  # Scope rejects an unknown type
                max_events=RESOURCE_EVENTS,
            )
            return _listing(state, "events", events)
        except SharedMemoryError as exc:
            raise _translate(exc, uri) from exc

    @mcp.resource(
        CONTEXT_TEMPLATE,
        name="workspace_context",
        description="A workspace: task, agents, status and structured context (JSON)",
        mime_type="application/json",
    )
    async def workspace_context(tenant: str, workspace_id: str, ctx: Context[Any]) -> str:
        uri = f"memory://{tenant}/workspace/{workspace_id}/context"
        state, principal = _principal_for(ctx, tenant, uri)
        try:
            workspace = await state.memory.get_workspace(principal, workspace_id)
            text = workspace.model_dump_json()
            ResponseBudget(state.runtime.settings.max_response_bytes).check(json_size(text), "this workspace")
        except SharedMemoryError as exc:
            raise _translate(exc, uri) from exc
        return text

    @mcp.resource(
        WORKSPACES_TEMPLATE,
        name="workspaces",
        description="The tenant's workspaces this connection may use, newest first (JSON)",
        mime_type="application/json",
    )
    async def workspaces(tenant: str, ctx: Context[Any]) -> str:
        uri = f"memory://{tenant}/workspaces"
        state, principal = _principal_for(ctx, tenant, uri)
        try:
            found = await state.memory.list_workspaces(principal, limit=200)
            return _listing(state, "workspaces", found)
        except SharedMemoryError as exc:
            raise _translate(exc, uri) from exc

    @mcp.prompt(
        name="shared_context",
        description="Shared memory to inject at task start: workspace task, important recent events, relevant facts",
    )
    async def shared_context(ctx: Context[Any], scope: str | None = None, query: str | None = None) -> str:
        state: AppState = ctx.request_context.lifespan_context
        try:
            return await state.memory.get_task_context(state.principal(), scope=scope or None, query=query or None)
        except SharedMemoryError as exc:
            # An MCPError passes through the SDK with its message (anything else becomes "Error rendering
            # prompt", logged with a traceback an agent could trigger at will).
            unavailable = isinstance(exc, StoreUnavailable | EmbeddingUnavailable)
            raise MCPError(INTERNAL_ERROR if unavailable else INVALID_PARAMS, exc.message) from exc
