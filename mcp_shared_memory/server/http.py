"""Streamable HTTP transport: stateful sessions, bearer tokens verified against PostgreSQL, /healthz, /metrics, /ui,
behind the guard of ``http_guard`` (Host/Origin, failed-authentication limit and audit, 503 on a store
outage, the end of a revoked or expired token's streams and sessions)."""

from __future__ import annotations

import hmac
import logging
from typing import Any

from mcp.server.auth.provider import AccessToken, TokenVerifier
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import Message, Scope

from .. import metrics
from ..errors import InvalidInput, StoreUnavailable
from ..runtime import Runtime
from ..settings import Settings
from ..stores.audit import AuditEntry
from .app import build_server
from .http_guard import AllowedPeers, AuthFailureLimiter, HttpGuard, TokenWatch
from .state import CLAIM_PRINCIPAL, ServerLifespan
from .ui import register_ui

log = logging.getLogger(__name__)


class DatabaseTokenVerifier(TokenVerifier):
    """Bearer tokens created with ``mcp-shared-memory token create``; identity comes from the token.

    ``StoreUnavailable`` propagates (``HttpGuard`` answers 503): returning None would answer 401, which
    tells the client its token is bad."""

    def __init__(self, lifespan: ServerLifespan) -> None:
        self.lifespan = lifespan

    async def verify_token(self, token: str) -> AccessToken | None:
        state = self.lifespan.state
        if state is None:
            raise StoreUnavailable("the server is starting; retry shortly")
        record = await state.runtime.tokens.verify(token)
        if record is None:
            return None
        try:
            principal = record.principal()
        except InvalidInput as exc:  # stored before grants were checked this strictly: refused, not a 500
            log.warning("token %s has grants this version refuses (%s); create a new token", record.id, exc.message)
            return None
        return AccessToken(
            token=token,
            client_id=record.id,
            scopes=["mcp"],
            subject=f"{record.tenant_id}/{record.agent_id}",
            expires_at=int(record.expires_at.timestamp()) if record.expires_at else None,
            claims={CLAIM_PRINCIPAL: principal},
        )


def metrics_route(mcp: MCPServer[Any], settings: Settings) -> None:
    """``GET /metrics`` (Prometheus text format) for a scraper sending ``MSM_METRICS_TOKEN`` as its bearer
    token; without that setting the route answers 404. The metrics are the process's, across tenants, so a
    tenant's token does not open them. A wrong token counts as a failed authentication (``HttpGuard``)."""
    secret = settings.metrics_token.get_secret_value().encode() if settings.metrics_token else None

    @mcp.custom_route("/metrics", methods=["GET"], include_in_schema=False)  # type: ignore[untyped-decorator]
    async def prometheus(request: Request) -> Response:
        if secret is None:
            return PlainTextResponse("metrics are off: set MSM_METRICS_TOKEN\n", status_code=404)
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), secret):
            return PlainTextResponse(
                "send MSM_METRICS_TOKEN as a bearer token\n", status_code=401, headers={"WWW-Authenticate": "Bearer"}
            )
        return Response(metrics.exposition(), media_type=metrics.CONTENT_TYPE_LATEST)


def create_http_app(settings: Settings, *, runtime: Runtime | None = None) -> Starlette:
    """The Streamable HTTP app for ``settings.host``/``port`` (``public_url`` when behind a proxy). With
    ``runtime`` given (tests, embedding) the app uses it instead of opening its own."""
    host, port, public_url = settings.host, settings.port, settings.public_url
    watch = TokenWatch()
    lifespan = ServerLifespan(settings, local_principal=None, runtime=runtime, token_watch=watch)
    base_url = (public_url or f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}").rstrip("/")
    mcp = build_server(
        lifespan,
        token_verifier=DatabaseTokenVerifier(lifespan),
        auth=AuthSettings(
            issuer_url=base_url,  # type: ignore[arg-type]
            resource_server_url=f"{base_url}/mcp",  # type: ignore[arg-type]
            required_scopes=["mcp"],
            validate_token_resource=False,
        ),
    )

    # the SDK's custom_route has no return annotation
    @mcp.custom_route("/healthz", methods=["GET"], include_in_schema=False)  # type: ignore[untyped-decorator]
    async def healthz(_: Request) -> JSONResponse:
        state = lifespan.state
        if state is None:
            return JSONResponse({"status": "starting"}, status_code=503)
        health = await state.runtime.health()
        checks: dict[str, Any] = {
            "postgres": "ok" if health.postgres else "unavailable",
            "redis": "ok" if health.redis else "unavailable (degraded: PostgreSQL only)",
        }
        return JSONResponse(
            {"status": "ok" if health.ok else "unavailable", **checks}, status_code=200 if health.ok else 503
        )

    metrics_route(mcp, settings)
    if settings.ui:
        register_ui(mcp, lifespan)
    peers = AllowedPeers.from_settings(settings)
    # The SDK checks /mcp only, case-sensitively; the guard checks every route but /healthz, first.
    security = TransportSecuritySettings(allowed_hosts=list(peers.hosts), allowed_origins=list(peers.origins))
    app = mcp.streamable_http_app(host=host, transport_security=security)

    def record_failure(address: str, latency_ms: float) -> None:
        state = lifespan.state
        if state is not None and state.runtime.audit is not None:
            state.runtime.audit.record(AuditEntry.unauthenticated(address, latency_ms=latency_ms))

    async def end_session(scope: Scope) -> None:
        """End the request's MCP session as the client's DELETE would (the scope still carries the
        identity the authentication middleware verified when the request arrived)."""
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-length", b"content-type")]

        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def discard(_: Message) -> None:
            pass

        await mcp.session_manager.handle_request({**scope, "method": "DELETE", "headers": headers}, receive, discard)

    # Outermost of the app's middleware, so it wraps the SDK's authentication middleware.
    app.add_middleware(
        HttpGuard, peers=peers, limiter=AuthFailureLimiter(settings.auth_failures_per_minute), watch=watch,
        record_failure=record_failure, end_session=end_session,
    )  # fmt: skip
    return app
