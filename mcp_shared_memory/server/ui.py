"""The live timeline page of the HTTP transport: ``GET /ui`` (a static page, no build step) and the JSON and
server-sent-event endpoints under ``/ui/api/`` it calls with the same bearer tokens as MCP.

A browser sends no ``Authorization`` header on a navigation or an ``EventSource``, so the page itself is
public (it holds no data) and asks for the token, which it keeps in ``sessionStorage`` and sends as a header
on every ``fetch``, the live stream included (a ``fetch`` read as ``text/event-stream``): a token never
appears in a URL, so never in a log. The API reads through ``SharedMemory`` with the token's principal, so
the page sees exactly what the tools would show that token; its calls count against the token's rate limit
and are audited (method ``ui/<endpoint>``). ``HttpGuard`` applies as to ``/mcp``: Host/Origin checks,
refused tokens counted and audited, 503 while the token store is down, and a stream of a token revoked or
expired meanwhile ends."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.mcpserver import MCPServer
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..errors import (
    AccessDenied,
    EmbeddingUnavailable,
    InvalidInput,
    NotFound,
    RateLimited,
    SharedMemoryError,
    StoreUnavailable,
)
from ..event_filter import EventFilter
from ..models import Event, Principal, Scope, Workspace
from ..stores.audit import AuditEntry
from ..stores.messages import BusMessage, EventWritten, Topic, WorkspaceChanged
from .state import CLAIM_PRINCIPAL, AppState, ServerLifespan
from .tools import caller_of

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("ui_static")
FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
         "app.css": "text/css; charset=utf-8"}  # fmt: skip
# The page runs only its own script: even a rendering mistake could not run a script from event content.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
API_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
# A stream with nothing to say still sends a comment this often (proxies close idle connections), and
# reads the log then: a bus message lost while Redis reconnected is caught up within this long.
HEARTBEAT_SECONDS = 15.0
PAGE_EVENTS = 100  # events per read of the log (the first screen, each catch-up page)
MAX_LIMIT = 200
EVENT_FIELDS = {"id", "seq", "created_at", "agent_id", "agent_type", "event_type", "role", "importance", "content",
                "similarity", "lexical", "score"}  # fmt: skip
STATUS = {InvalidInput: 400, AccessDenied: 403, NotFound: 404, RateLimited: 429, StoreUnavailable: 503,
          EmbeddingUnavailable: 503}  # fmt: skip

Endpoint = Callable[[Request, AppState, Principal], Awaitable[tuple[Response, int | None]]]


def register_ui(mcp: MCPServer[Any], lifespan: ServerLifespan) -> None:
    """Add ``/ui`` (the page and its files) and ``/ui/api/*`` to the HTTP app of ``mcp``."""
    for name, media_type in FILES.items():
        path = "/ui" if name == "index.html" else f"/ui/{name}"
        mcp.custom_route(path, methods=["GET"], include_in_schema=False)(static_file(name, media_type))
    api = {"me": me, "events": events, "search": search, "workspace": workspace, "stream": stream}
    for name, endpoint in api.items():
        route = f"/ui/api/{name}"
        mcp.custom_route(route, methods=["GET"], include_in_schema=False)(api_endpoint(lifespan, name, endpoint))


def static_file(name: str, media_type: str) -> Callable[[Request], Awaitable[Response]]:
    body = (STATIC / name).read_bytes()

    async def serve(_: Request) -> Response:
        return Response(body, media_type=media_type, headers=PAGE_HEADERS)

    return serve


def api_endpoint(lifespan: ServerLifespan, name: str, endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    """The boundary of every API call: the token's principal, its rate limit, domain errors as JSON with a
    status (never a traceback), and the audit row."""

    async def handle(request: Request) -> Response:
        state = lifespan.state
        if state is None:
            return error(503, "the server is starting; retry shortly", retry_after=1)
        principal = principal_of(request)
        if principal is None:
            # A refused token answers 401 here too, so HttpGuard counts and audits it like one on /mcp.
            return error(401, "send a valid bearer token (mcp-shared-memory token create)", bearer=True)
        started = time.perf_counter()
        outcome, count, scope = "ok", None, request.query_params.get("scope")
        try:
            if state.runtime.rate_limiter is not None:
                await state.runtime.rate_limiter.take(principal.tenant, caller_of(principal))
            response, count = await endpoint(request, state, principal)
            return response
        except SharedMemoryError as exc:
            outcome = type(exc).__name__
            status = next((code for kind, code in STATUS.items() if isinstance(exc, kind)), 400)
            retry = exc.retry_after if isinstance(exc, RateLimited) else (5 if status == 503 else None)
            return error(status, exc.message, retry_after=retry)
        except Exception:
            outcome = "error"
            log.exception("the timeline page's %s request failed", name)
            return error(500, "the request failed on the server; its log says why")
        finally:
            if state.runtime.audit is not None:
                state.runtime.audit.record(
                    AuditEntry(
                        tenant_id=principal.tenant, agent_id=principal.agent_id, agent_type=principal.agent_type,
                        token_id=principal.token_id, method=f"ui/{name}", target=f"/ui/api/{name}",
                        scope=valid_scope(scope), outcome=outcome, result_count=count,
                        latency_ms=(time.perf_counter() - started) * 1000, transport="http",
                    )
                )  # fmt: skip

    return handle


def principal_of(request: Request) -> Principal | None:
    """The verified token's principal (the SDK's authentication middleware ran before), or None."""
    user = request.scope.get("user")
    if not isinstance(user, AuthenticatedUser) or "mcp" not in user.scopes:
        return None
    principal = (user.access_token.claims or {}).get(CLAIM_PRINCIPAL)
    return principal if isinstance(principal, Principal) else None


def error(status: int, message: str, *, retry_after: int | None = None, bearer: bool = False) -> JSONResponse:
    headers = dict(API_HEADERS)
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, retry_after))
    if bearer:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def ok(body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body, headers=API_HEADERS)


def valid_scope(text: str | None) -> str | None:
    try:
        return str(Scope.parse(text)) if text else None
    except InvalidInput:
        return None


# the API


def target_scope(request: Request, principal: Principal) -> Scope:
    """The ``scope`` parameter (default: the token's default scope), checked against the token's grants."""
    return principal.resolve_scope(request.query_params.get("scope") or None)


def filters_of(request: Request) -> EventFilter:
    """``agent`` and ``type`` (one value each, empty: any), validated as the tools' ``filters`` are."""
    agent, kind = request.query_params.get("agent"), request.query_params.get("type")
    return EventFilter.parse({"agent_ids": [agent] if agent else None, "event_types": [kind] if kind else None})


def int_param(request: Request, name: str, default: int, *, high: int) -> int:
    text = request.query_params.get(name)
    if text is None or text == "":
        return default
    if not text.isdigit() or not 0 <= int(text) <= high:
        raise InvalidInput(f"{name} must be a whole number from 0 to {high}")
    return int(text)


def event_json(event: Event) -> dict[str, Any]:
    return event.model_dump(mode="json", include=EVENT_FIELDS, exclude_none=True)


async def me(request: Request, state: AppState, principal: Principal) -> tuple[Response, int | None]:
    """Who the token is, what it may read, and the workspaces it is a member of."""
    workspaces = await state.memory.list_workspaces(principal, limit=MAX_LIMIT)
    return ok({
        "tenant": principal.tenant, "agent_id": principal.agent_id, "agent_type": principal.agent_type,
        "grants": [str(g) for g in principal.grants],
        "default_scope": str(principal.default_scope) if principal.default_scope else None,
        "workspaces": [{"id": w.id, "task": w.task, "status": w.status} for w in workspaces],
    }), len(workspaces)  # fmt: skip


async def events(request: Request, state: AppState, principal: Principal) -> tuple[Response, int | None]:
    """The scope's newest events (``limit``), newest first, narrowed by ``agent`` and ``type``."""
    scope = target_scope(request, principal)
    limit = int_param(request, "limit", PAGE_EVENTS, high=MAX_LIMIT)
    found = await state.memory.get_recent_shared(
        principal, scope=scope, limit=max(limit, 1), filters=filters_of(request)
    )
    return ok({"scope": str(scope), "events": [event_json(e) for e in found]}), len(found)


async def search(request: Request, state: AppState, principal: Principal) -> tuple[Response, int | None]:
    """Hybrid search of the scope for ``q``, best first, narrowed by ``agent`` and ``type``."""
    scope = target_scope(request, principal)
    limit = int_param(request, "limit", 20, high=MAX_LIMIT)
    hits = await state.memory.search_shared(
        principal, request.query_params.get("q", ""), scope=scope, limit=max(limit, 1), filters=filters_of(request)
    )
    body = {"scope": str(scope), "events": [event_json(e) for e in hits], "degraded": hits.degraded}
    return ok(body), len(hits)


async def workspace(request: Request, state: AppState, principal: Principal) -> tuple[Response, int | None]:
    """A workspace's task, status, owner, roster and event count (``id``), for its members."""
    summary = await state.memory.get_workspace_summary(principal, request.query_params.get("id", ""), limit=1)
    return ok({"workspace": workspace_json(summary.workspace), "event_count": summary.event_count}), None


def workspace_json(ws: Workspace) -> dict[str, Any]:
    return ws.model_dump(mode="json", include={"id", "task", "status", "agents", "created_by", "updated_at"})


async def stream(request: Request, state: AppState, principal: Principal) -> tuple[Response, int | None]:
    """``text/event-stream`` of the scope's events: ``ready``, then ``backlog`` (the newest ``limit``, or given
    ``since``, those after that seq: a reconnecting page misses nothing), then ``events`` as they are written
    (each a list, oldest first); ``workspace`` when the workspace changes; ``failed`` (then the end) when the
    token may no longer read the scope. Each read goes through the domain: a member taken off a roster stops
    hearing."""
    scope = target_scope(request, principal)
    wanted = filters_of(request)
    since = request.query_params.get("since")
    cursor = int_param(request, "since", 0, high=2**62) if since else None
    limit = int_param(request, "limit", PAGE_EVENTS, high=MAX_LIMIT)
    # Read before the response starts, so that a refused scope is a 403, not a stream.
    first = await state.memory.get_recent_shared(
        principal, scope=scope, limit=max(limit, 1), since_seq=cursor, filters=wanted
    )
    if cursor is None:
        first.reverse()
    cursor = max([e.seq for e in first], default=cursor or 0)
    feed = TimelineFeed(state, principal, scope, wanted, cursor)
    return StreamingResponse(
        feed.run(first), media_type="text/event-stream", headers={**API_HEADERS, "X-Accel-Buffering": "no"}
    ), len(first)


class TimelineFeed:
    """One page's live stream: woken by the bus for its scope (and its workspace's changes), it reads the log
    after its cursor through the domain; every ``HEARTBEAT_SECONDS`` it reads anyway and sends a comment."""

    def __init__(self, state: AppState, principal: Principal, scope: Scope, wanted: EventFilter, cursor: int) -> None:
        self.state, self.principal, self.scope, self.wanted, self.cursor = state, principal, scope, wanted, cursor
        self.topic = Topic(principal.tenant, scope)
        self._rang = anyio.Event()
        self._workspace_changed = False

    async def on_message(self, message: BusMessage) -> None:
        if message.tenant != self.principal.tenant:
            return
        if isinstance(message, EventWritten) and message.scope == self.scope:
            self._rang.set()
        elif isinstance(message, WorkspaceChanged) and self.scope == Scope("workspace", message.workspace_id):
            self._workspace_changed = True
            self._rang.set()

    async def run(self, first: list[Event]) -> AsyncIterator[bytes]:
        remove = self.state.runtime.bus.add_listener(self.on_message)
        try:
            await self.state.hub.acquire(self.topic)
            try:
                yield sse("ready", {"scope": str(self.scope), "cursor": self.cursor})
                if first:
                    yield sse("backlog", [event_json(e) for e in first])
                async for chunk in self._follow():
                    yield chunk
            finally:
                with anyio.CancelScope(shield=True):
                    await self.state.hub.release(self.topic)
        finally:
            remove()

    async def _follow(self) -> AsyncIterator[bytes]:
        while True:
            # Subscribed before this first read: nothing written meanwhile is missed.
            try:
                fresh = await self._read_after_cursor()
                changed, self._workspace_changed = self._workspace_changed, False
                if changed:
                    summary = await self.state.memory.get_workspace_summary(self.principal, self.scope.id, limit=1)
                    yield sse("workspace", {"workspace": workspace_json(summary.workspace),
                                            "event_count": summary.event_count})  # fmt: skip
            except (AccessDenied, NotFound, InvalidInput) as exc:
                yield sse("failed", {"error": exc.message})
                return
            except SharedMemoryError as exc:  # a store outage: say so, and read again at the next ring
                yield sse("notice", {"error": exc.message})
                fresh = []
            if fresh:
                yield sse("events", [event_json(e) for e in fresh])
            with anyio.move_on_after(HEARTBEAT_SECONDS) as idle:
                await self._rang.wait()
            self._rang = anyio.Event()
            if idle.cancelled_caught:
                yield b": keep-alive\n\n"

    async def _read_after_cursor(self) -> list[Event]:
        found: list[Event] = []
        while True:
            page = await self.state.memory.get_recent_shared(
                self.principal, scope=self.scope, limit=PAGE_EVENTS, since_seq=self.cursor, filters=self.wanted
            )
            found += page
            self.cursor = max([e.seq for e in page], default=self.cursor)
            if len(page) < PAGE_EVENTS or len(found) >= MAX_LIMIT:
                return found


def sse(kind: str, data: object) -> bytes:
    """One server-sent event; its JSON is on one line (JSON escapes every newline inside strings)."""
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
