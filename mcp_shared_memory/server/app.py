"""Builds the MCP server: tools, resources, per-connection binding and live notifications."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from mcp import MCPError
from mcp.server.auth.provider import TokenVerifier
from mcp.server.auth.settings import AuthSettings
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.types import (
    INVALID_PARAMS,
    EmptyResult,
    SubscribeRequestParams,
    SubscriptionsListenRequestParams,
    UnsubscribeRequestParams,
)
from pydantic import ValidationError

from .. import __version__
from ..errors import AccessDenied, InvalidInput
from ..models import Principal
from . import sdk_adapter
from .notifications import LISTEN_TENANT
from .resources import register_resources
from .state import AppState, ServerRuntime
from .tools import register_tools
from .uris import ParsedUri, parse_uri

INSTRUCTIONS = """Shared memory for a team of agents. Before starting, read the `shared_context` prompt or call
get_recent_shared; search_shared finds what other agents wrote; write_event records what you learned
(importance >= 0.6 reaches the other agents' context). Workspaces scope memory to one task."""

LEGACY_KEY = "msm_registered"


def authorize_uri(principal: Principal, uri: str) -> ParsedUri:
    """A connection may watch only URIs of its own tenant and allowed scopes."""
    parsed = parse_uri(uri)
    if parsed is None or parsed.tenant != principal.tenant:
        raise InvalidInput(f"cannot subscribe to {uri}: not a resource of this connection's tenant")
    if parsed.scope is not None:
        principal.resolve_scope(parsed.scope)
    return parsed


def build_server(
    runtime: ServerRuntime,
    *,
    token_verifier: TokenVerifier | None = None,
    auth: AuthSettings | None = None,
) -> MCPServer[AppState]:
    @asynccontextmanager
    async def lifespan(_: MCPServer[AppState]) -> AsyncIterator[AppState]:
        async with runtime.open() as state:
            yield state

    async def binding(ctx: ServerRequestContext[AppState, Any], call_next: CallNext) -> HandlerResult:
        if ctx.method == "notifications/initialized":
            await register_legacy_connection(ctx)
        if ctx.method == "subscriptions/listen":
            return await guarded_listen(ctx, call_next)
        return await call_next(ctx)

    async def register_legacy_connection(ctx: ServerRequestContext[AppState, Any]) -> None:
        """Legacy clients get list_changed when their tenant gains a workspace."""
        state = ctx.lifespan_context
        try:
            principal = state.principal()
        except AccessDenied:
            return
        conn_state = sdk_adapter.connection_state(ctx)
        if conn_state.get(LEGACY_KEY):
            return
        conn_state[LEGACY_KEY] = True
        key = sdk_adapter.connection_key(ctx)
        state.hub.add_legacy_session(principal.tenant, key, ctx.session)
        channel = await state.hub.acquire(principal.tenant, None)
        conn_state["msm_channels"] = [channel]

        async def cleanup() -> None:
            state.hub.forget_connection(principal.tenant, key)
            for held in conn_state.get("msm_channels", []):
                await state.hub.release(held)

        sdk_adapter.on_connection_close(ctx, cleanup)

    async def guarded_listen(ctx: ServerRequestContext[AppState, Any], call_next: CallNext) -> HandlerResult:
        state = ctx.lifespan_context
        try:
            # Parsed exactly as the SDK's handler will parse it, so no spelling of the filter escapes the check.
            params = SubscriptionsListenRequestParams.model_validate(ctx.params or {})
        except ValidationError:
            return await call_next(ctx)  # the SDK rejects it with its own error
        uris = list(params.notifications.resource_subscriptions or [])
        try:
            principal = state.principal()
            parsed = [authorize_uri(principal, uri) for uri in uris]
        except (AccessDenied, InvalidInput) as exc:
            raise MCPError(INVALID_PARAMS, exc.message) from exc
        wanted = {(p.tenant, p.scope if p.kind == "recent" else None) for p in parsed}
        if params.notifications.resources_list_changed:
            wanted.add((principal.tenant, None))
        acquired = []
        token = LISTEN_TENANT.set(principal.tenant)
        try:
            for tenant, scope in wanted:
                acquired.append(await state.hub.acquire(tenant, scope))
            return await call_next(ctx)
        finally:
            LISTEN_TENANT.reset(token)
            for channel in acquired:
                await state.hub.release(channel)

    mcp: MCPServer[AppState] = MCPServer(
        "mcp-shared-memory",
        version=__version__,
        instructions=INSTRUCTIONS,
        lifespan=lifespan,
        subscriptions=runtime.bus,
        middleware=[binding],
        token_verifier=token_verifier,
        auth=auth,
        log_level="WARNING",
    )
    register_tools(mcp)
    sdk_adapter.inline_output_schemas(mcp)
    register_resources(mcp)

    async def on_subscribe(ctx: ServerRequestContext[AppState, Any], params: SubscribeRequestParams) -> EmptyResult:
        state = ctx.lifespan_context
        uri = str(params.uri)
        try:
            principal = state.principal()
            parsed = authorize_uri(principal, uri)
        except (AccessDenied, InvalidInput) as exc:
            raise MCPError(INVALID_PARAMS, exc.message) from exc
        await register_legacy_connection(ctx)
        key = sdk_adapter.connection_key(ctx)
        if not state.hub.has_legacy_subscription(uri, key):
            channel = await state.hub.acquire(parsed.tenant, parsed.scope if parsed.kind == "recent" else None)
            sdk_adapter.connection_state(ctx).setdefault("msm_channels", []).append(channel)
            state.hub.add_legacy_subscription(uri, key, ctx.session)
        return EmptyResult()

    async def on_unsubscribe(ctx: ServerRequestContext[AppState, Any], params: UnsubscribeRequestParams) -> EmptyResult:
        state = ctx.lifespan_context
        uri = str(params.uri)
        key = sdk_adapter.connection_key(ctx)
        if state.hub.remove_legacy_subscription(uri, key):
            channel = state.hub.channel_for_uri(uri)
            held: list[str] = sdk_adapter.connection_state(ctx).get("msm_channels", [])
            if channel in held:
                held.remove(channel)
                await state.hub.release(channel)
        return EmptyResult()

    sdk_adapter.register_legacy_subscriptions(mcp, on_subscribe, on_unsubscribe)
    return mcp
