"""Builds the MCP server: tools, resources, per-connection binding and live notifications."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import anyio
from mcp import MCPError
from mcp.server.auth.provider import TokenVerifier
from mcp.server.auth.settings import AuthSettings
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.types import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    CallToolResult,
    CompleteRequestParams,
    CompleteResult,
    EmptyResult,
    SetLevelRequestParams,
    SubscribeRequestParams,
    SubscriptionsListenRequestParams,
    TextContent,
    UnsubscribeRequestParams,
)
from pydantic import BaseModel, ValidationError

from .. import __version__, metrics
from ..errors import AccessDenied, InvalidInput, LimitExceeded, NotFound, SharedMemoryError
from ..models import Principal, Scope
from ..stores.audit import AuditEntry
from ..stores.messages import Topic
from . import client_logging, limits, sdk_adapter
from .completions import Completer
from .notifications import LISTEN_PRINCIPAL, LegacySession
from .resources import register_resources
from .state import AppState, ServerLifespan
from .tools import TOOL_FAILURE, register_tools
from .uris import ParsedUri, parse_uri

INSTRUCTIONS = """Shared memory for a team of agents. Before starting, read the `shared_context` prompt or call
get_recent_shared; search_shared finds what other agents wrote; write_event records what you learned
(importance >= 0.6 reaches the other agents' context). Workspaces scope memory to one task."""

LEGACY_KEY = "msm_registered"
AUDITED = frozenset({"tools/call", "resources/read", "resources/subscribe", "subscriptions/listen"})
TOOL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
LISTEN_TARGETS = 10
# Requests a server answers before its backends are open (stdio opens them behind its first answers).
ANSWERED_BEFORE_BACKENDS = frozenset(
    {
        "initialize",
        "server/discover",
        "ping",
        "tools/list",
        "prompts/list",
        "resources/templates/list",
        "logging/setLevel",
        "notifications/cancelled",
        "notifications/progress",
        "notifications/roots/list_changed",
    }
)


def not_ready(ctx: ServerRequestContext[AppState, Any], failure: SharedMemoryError) -> HandlerResult:
    """What a request that needs the backends gets when they are not open: a tool call an error result the
    agent reads, any other request an error; a notification is dropped."""
    if ctx.method == "tools/call":
        return CallToolResult(content=[TextContent(type="text", text=failure.message)], is_error=True)
    if ctx.request_id is None:
        return None
    raise MCPError(INTERNAL_ERROR, failure.message)


def authorize_uri(principal: Principal, uri: str) -> ParsedUri:
    """A connection may watch only URIs of its own tenant and allowed scopes."""
    parsed = parse_uri(uri)
    if parsed is None or parsed.tenant != principal.tenant:
        raise InvalidInput(f"cannot subscribe to {uri}: not a resource of this connection's tenant")
    if parsed.scope is not None:
        principal.resolve_scope(parsed.scope)
    return parsed


async def authorize_membership(state: AppState, principal: Principal, parsed: ParsedUri) -> None:
    """An existing workspace's URIs are watched by its members only (``AccessDenied``). The hub checks
    each notification as well, since rosters change and a workspace may be created after the subscription."""
    if parsed.scope is not None and parsed.scope.type == "workspace":
        with suppress(NotFound):
            await state.memory.get_workspace(principal, parsed.scope.id)


def audit_target(method: str, params: dict[str, Any]) -> tuple[str, str | None]:
    """(target, scope) of a request: a tool's name or a resource's URI, and the scope it names. No other
    argument is read, and a string that is not a well-formed name, scope or URI is not recorded."""
    if method == "tools/call":
        name = params.get("name")
        arguments = params.get("arguments")
        arguments = arguments if isinstance(arguments, dict) else {}
        scope = arguments.get("scope")
        if scope is None and isinstance(workspace := arguments.get("workspace_id"), str):
            scope = f"workspace:{workspace}"
        return (name if isinstance(name, str) and TOOL_NAME.match(name) else "<invalid>"), valid_scope(scope)
    if method == "subscriptions/listen":
        notifications = params.get("notifications")
        uris = notifications.get("resourceSubscriptions") if isinstance(notifications, dict) else None
        parsed = [str(u) for u in uris if isinstance(u, str) and parse_uri(u)] if isinstance(uris, list) else []
        more = f" +{len(parsed) - LISTEN_TARGETS} more" if len(parsed) > LISTEN_TARGETS else ""
        return " ".join(parsed[:LISTEN_TARGETS]) + more or "<no resources>", None
    uri = params.get("uri")
    found = parse_uri(uri) if isinstance(uri, str) else None
    if found is None:
        return "<invalid uri>", None
    return str(uri), str(found.scope) if found.scope is not None else None


def valid_scope(scope: object) -> str | None:
    if not isinstance(scope, str):
        return None
    try:
        return str(Scope.parse(scope))
    except InvalidInput:
        return None


def audit_outcome(result: HandlerResult) -> tuple[str, int | None]:
    """("ok" or "ToolError", the length of the first list in the structured result, if any)."""
    data = result.model_dump(by_alias=True) if isinstance(result, BaseModel) else result
    if not isinstance(data, dict):
        return "ok", None
    if data.get("isError"):
        return "ToolError", None
    structured = data.get("structuredContent")
    if isinstance(structured, dict):
        for value in structured.values():
            if isinstance(value, list):
                return "ok", len(value)
    return "ok", None


def is_error(result: HandlerResult) -> bool:
    """Whether a tool call's result is an error result (read without serialising the result)."""
    if isinstance(result, dict):
        return bool(result.get("isError"))
    return bool(getattr(result, "is_error", False))


class CountedSession:
    """A legacy session as the notification hub sees it, counting what it sends."""

    def __init__(self, session: LegacySession) -> None:
        self._session = session

    async def send_resource_updated(self, uri: str) -> None:
        await self._session.send_resource_updated(uri)
        metrics.notifications_sent.labels("resource_updated").inc()

    async def send_resource_list_changed(self) -> None:
        await self._session.send_resource_list_changed()
        metrics.notifications_sent.labels("list_changed").inc()


def topic_of(parsed: ParsedUri) -> Topic:
    """The bus topic whose messages change a resource: a scope's events, or the tenant's workspaces."""
    return Topic(parsed.tenant, parsed.scope if parsed.kind == "recent" else None)


def build_server(
    lifespan_owner: ServerLifespan,
    *,
    token_verifier: TokenVerifier | None = None,
    auth: AuthSettings | None = None,
) -> MCPServer[AppState]:
    @asynccontextmanager
    async def lifespan(_: MCPServer[AppState]) -> AsyncIterator[AppState]:
        async with lifespan_owner.open() as state:
            yield state

    async def binding(ctx: ServerRequestContext[AppState, Any], call_next: CallNext) -> HandlerResult:
        if ctx.method not in ANSWERED_BEFORE_BACKENDS:
            try:
                await ctx.lifespan_context.until_ready()
            except SharedMemoryError as exc:
                return not_ready(ctx, exc)
        if ctx.method == "notifications/initialized":
            await register_legacy_connection(ctx)
        if ctx.method == "subscriptions/listen":
            return await guarded_listen(ctx, call_next)
        if ctx.request_id is None:
            return await call_next(ctx)
        # What the server logs while serving this request reaches its client too (client_logging.py).
        with client_logging.capture() as told:
            try:
                result = await measured(ctx, call_next)
            except Exception:
                await client_logging.deliver(ctx, told)
                raise
            await client_logging.deliver(ctx, told)
            return result

    async def measured(ctx: ServerRequestContext[AppState, Any], call_next: CallNext) -> HandlerResult:
        """The request, audited (tool calls, reads, subscriptions) and timed for the metrics (tool calls)."""
        if ctx.method not in AUDITED:
            return await call_next(ctx)
        started = time.perf_counter()
        failure: dict[str, str] = {}
        token = TOOL_FAILURE.set(failure)
        try:
            result = await call_next(ctx)
        except Exception as exc:
            finished(ctx, started, type(exc).__name__, result=None)
            raise
        finally:
            TOOL_FAILURE.reset(token)
        finished(ctx, started, failure.get("error"), result=result)
        return result

    def finished(
        ctx: ServerRequestContext[AppState, Any], started: float, error: str | None, *, result: HandlerResult
    ) -> None:
        """Record a request that ended: ``error`` names the exception it raised or the domain error its tool
        failed with (None: no domain error)."""
        if ctx.method == "tools/call":
            params = ctx.params if isinstance(ctx.params, dict) else {}
            name = params.get("name")
            outcome = error or ("ToolError" if result is None or is_error(result) else "ok")
            tool = name if isinstance(name, str) and name in tool_names else "<unknown>"
            metrics.observe_tool_call(tool, outcome, time.perf_counter() - started)
        if ctx.lifespan_context.runtime.audit is None:
            return
        if result is None:
            audit(ctx, started, error or "error", None)
            return
        outcome, count = audit_outcome(result)
        audit(ctx, started, (error or outcome) if outcome != "ok" else outcome, count)

    def audit(ctx: ServerRequestContext[AppState, Any], started: float, outcome: str, result_count: int | None) -> None:
        """Buffer the request's audit row (unauthenticated requests never reach a handler: not recorded)."""
        state = ctx.lifespan_context
        if state.runtime.audit is None:
            return
        try:
            principal = state.principal()
        except AccessDenied:
            return
        params = ctx.params if isinstance(ctx.params, dict) else {}
        target, scope = audit_target(ctx.method, params)
        state.runtime.audit.record(
            AuditEntry(
                tenant_id=principal.tenant, agent_id=principal.agent_id, agent_type=principal.agent_type,
                token_id=principal.token_id, method=ctx.method, target=target, scope=scope, outcome=outcome,
                result_count=result_count, latency_ms=(time.perf_counter() - started) * 1000,
                transport="stdio" if state.local_principal is not None else "http",
            )
        )  # fmt: skip

    async def register_legacy_connection(ctx: ServerRequestContext[AppState, Any]) -> None:
        """Legacy clients get list_changed when the workspaces they may read change."""
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
        state.hub.add_legacy_session(principal, key, CountedSession(ctx.session))
        await state.hub.acquire(Topic(principal.tenant))
        conn_state["msm_topics"] = [Topic(principal.tenant)]

        async def cleanup() -> None:
            state.hub.forget_connection(principal.tenant, key)
            for held in conn_state.get("msm_topics", []):
                await state.hub.release(held)

        sdk_adapter.on_connection_close(ctx, cleanup)

    async def guarded_listen(ctx: ServerRequestContext[AppState, Any], call_next: CallNext) -> HandlerResult:
        state = ctx.lifespan_context
        started = time.perf_counter()
        try:
            # Parsed exactly as the SDK's handler will parse it, so no spelling of the filter escapes the check.
            params = SubscriptionsListenRequestParams.model_validate(ctx.params or {})
        except ValidationError:
            return await call_next(ctx)  # the SDK rejects it with its own error
        try:
            uris = limits.listen_uris(
                params.notifications.resource_subscriptions or [], most=state.runtime.settings.max_listen_uris
            )
            principal = state.principal()
            parsed = [authorize_uri(principal, uri) for uri in uris]
            for each in parsed:
                await authorize_membership(state, principal, each)
        except (AccessDenied, InvalidInput, LimitExceeded) as exc:
            audit(ctx, started, type(exc).__name__, None)
            raise MCPError(INVALID_PARAMS, exc.message) from exc
        # Recorded when the stream opens (its handler returns only when the stream ends).
        audit(ctx, started, "ok", len(uris))
        wanted = {topic_of(p) for p in parsed}
        if params.notifications.resources_list_changed:
            wanted.add(Topic(principal.tenant))
        acquired: list[Topic] = []
        token = LISTEN_PRINCIPAL.set(principal)
        try:
            for topic in wanted:
                await state.hub.acquire(topic)
                acquired.append(topic)
            return await call_next(ctx)
        finally:
            LISTEN_PRINCIPAL.reset(token)
            # Shielded: a listen stream ends by being cancelled (the client went away, its token ended), and
            # a release cancelled at its first await would hold the bus subscription for good.
            with anyio.CancelScope(shield=True):
                for topic in acquired:
                    await state.hub.release(topic)

    mcp: MCPServer[AppState] = MCPServer(
        "mcp-shared-memory",
        version=__version__,
        instructions=INSTRUCTIONS,
        lifespan=lifespan,
        subscriptions=lifespan_owner.listeners,
        middleware=[binding],
        token_verifier=token_verifier,
        auth=auth,
        log_level="WARNING",
    )
    register_tools(mcp, lifespan_owner.settings)
    sdk_adapter.inline_output_schemas(mcp)
    register_resources(mcp)
    tool_names = frozenset(sdk_adapter.tool_names(mcp))
    prompts, templates = sdk_adapter.prompt_and_template_names(mcp)
    completer = Completer(prompts=prompts, templates=templates)

    async def on_complete(ctx: ServerRequestContext[AppState, Any], params: CompleteRequestParams) -> CompleteResult:
        return await completer.complete(ctx.lifespan_context, params)

    sdk_adapter.register_request_handler(mcp, "completion/complete", CompleteRequestParams, on_complete)
    sdk_adapter.register_request_handler(mcp, "logging/setLevel", SetLevelRequestParams, client_logging.set_level)
    client_logging.install()

    async def on_subscribe(ctx: ServerRequestContext[AppState, Any], params: SubscribeRequestParams) -> EmptyResult:
        state = ctx.lifespan_context
        uri = str(params.uri)
        key = sdk_adapter.connection_key(ctx)
        try:
            principal = state.principal()
            parsed = authorize_uri(principal, uri)
            await authorize_membership(state, principal, parsed)
            if not state.hub.has_legacy_subscription(uri, key):
                limits.room_for_subscription(
                    state.hub.legacy_subscription_count(key), most=state.runtime.settings.max_subscriptions
                )
        except (AccessDenied, InvalidInput, LimitExceeded) as exc:
            raise MCPError(INVALID_PARAMS, exc.message) from exc
        await register_legacy_connection(ctx)
        if not state.hub.has_legacy_subscription(uri, key):
            topic = topic_of(parsed)
            await state.hub.acquire(topic)
            sdk_adapter.connection_state(ctx).setdefault("msm_topics", []).append(topic)
            state.hub.add_legacy_subscription(uri, key)
        return EmptyResult()

    async def on_unsubscribe(ctx: ServerRequestContext[AppState, Any], params: UnsubscribeRequestParams) -> EmptyResult:
        state = ctx.lifespan_context
        uri = str(params.uri)
        key = sdk_adapter.connection_key(ctx)
        parsed = parse_uri(uri)
        if state.hub.remove_legacy_subscription(uri, key) and parsed is not None:
            topic = topic_of(parsed)
            held: list[Topic] = sdk_adapter.connection_state(ctx).get("msm_topics", [])
            if topic in held:
                held.remove(topic)
                await state.hub.release(topic)
        return EmptyResult()

    sdk_adapter.register_legacy_subscriptions(mcp, on_subscribe, on_unsubscribe)
    return mcp
