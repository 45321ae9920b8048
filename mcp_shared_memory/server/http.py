"""Streamable HTTP transport: stateful sessions, bearer tokens verified against PostgreSQL, /healthz."""

from __future__ import annotations

import logging
from typing import Any

from mcp.server.auth.provider import AccessToken, TokenVerifier
from mcp.server.auth.settings import AuthSettings
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse

from ..errors import SharedMemoryError
from ..settings import Settings
from .app import build_server
from .state import CLAIM_PRINCIPAL, ServerLifespan

log = logging.getLogger(__name__)


class DatabaseTokenVerifier(TokenVerifier):
    """Bearer tokens created with ``mcp-shared-memory token create``; identity comes from the token."""

    def __init__(self, lifespan: ServerLifespan) -> None:
        self.lifespan = lifespan

    async def verify_token(self, token: str) -> AccessToken | None:
        state = self.lifespan.state
        if state is None:
            return None
        try:
            record = await state.runtime.tokens.verify(token)
        except SharedMemoryError as exc:
            log.warning("token verification unavailable: %s", exc.message)
            return None
        if record is None:
            return None
        return AccessToken(
            token=token,
            client_id=record.id,
            scopes=["mcp"],
            subject=f"{record.tenant_id}/{record.agent_id}",
            expires_at=int(record.expires_at.timestamp()) if record.expires_at else None,
            claims={CLAIM_PRINCIPAL: record.principal()},
        )


def create_http_app(settings: Settings) -> Starlette:
    """The Streamable HTTP app for ``settings.host``/``port`` (``public_url`` when behind a proxy)."""
    host, port, public_url = settings.host, settings.port, settings.public_url
    lifespan = ServerLifespan(settings, local_principal=None)
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

    security = None
    if host in ("0.0.0.0", "::") or public_url:
        # Behind a proxy / in a container the Host header is the public name, not loopback.
        security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
    return mcp.streamable_http_app(host=host, transport_security=security)
