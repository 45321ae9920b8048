"""Bearer tokens for the HTTP transport, stored as SHA-256 digests in PostgreSQL (shown once)."""

from __future__ import annotations

import hashlib
import secrets
import time
from datetime import UTC, datetime

from pydantic import BaseModel

from ..errors import InvalidInput, NotFound
from ..models import Grant, Principal, Scope, validate_identifier
from .postgres import PostgresPool

TOKEN_PREFIX = "msm_"
TOKEN_COLUMNS = (
    "id, tenant_id, agent_id, agent_type, allowed_scopes, default_scope, description, created_at, "
    "expires_at, revoked_at"
)
INSERT = f"""
INSERT INTO api_tokens (id, token_sha256, tenant_id, agent_id, agent_type, allowed_scopes, default_scope,
                        description, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
RETURNING {TOKEN_COLUMNS}
"""
SELECT_VALID = f"""
SELECT {TOKEN_COLUMNS} FROM api_tokens
WHERE token_sha256 = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())
"""
LIST = f"""
SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE ($1::text IS NULL OR tenant_id = $1) ORDER BY created_at
"""
REVOKE = "UPDATE api_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL"
# Revocation reaches every replica within this many seconds.
VERIFY_CACHE_SECONDS = 5.0


class TokenRecord(BaseModel):
    id: str
    tenant_id: str
    agent_id: str
    agent_type: str
    allowed_scopes: list[str]
    default_scope: str | None
    description: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    def expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= datetime.now(UTC)

    def principal(self) -> Principal:
        """The token's identity and grants (``Grant``); ``InvalidInput`` for grants stored before they were
        checked this strictly (fnmatch patterns such as ``user:a?c``)."""
        return Principal(
            tenant=self.tenant_id,
            agent_id=self.agent_id,
            agent_type=self.agent_type,
            allowed_scopes=tuple(self.allowed_scopes),
            default_scope=Scope.parse(self.default_scope) if self.default_scope else None,
            token_id=self.id,
        )


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class PostgresTokenStore:
    def __init__(self, db: PostgresPool) -> None:
        self._db = db
        self._verified: dict[str, tuple[float, TokenRecord | None]] = {}

    async def create(
        self,
        *,
        tenant: str,
        agent_id: str,
        agent_type: str = "agent",
        allowed_scopes: list[str],
        default_scope: str | None = None,
        description: str = "",
        expires_at: datetime | None = None,
    ) -> tuple[str, TokenRecord]:
        """Returns (token, record). The token itself is not stored and cannot be shown again.
        ``allowed_scopes`` are grants (``Grant``: ``user:alice=r``, ``workspace:*``), stored canonically."""
        validate_identifier(tenant, "tenant")
        if not allowed_scopes:
            raise InvalidInput("a token needs at least one grant, e.g. 'user:alice', 'user:alice=r' or 'workspace:*'")
        allowed_scopes = [str(Grant.parse(text)) for text in allowed_scopes]
        if default_scope is not None:
            Scope.parse(default_scope)
        if expires_at is not None and expires_at <= datetime.now(UTC):
            raise InvalidInput("expires_at is in the past: give a later time, or none for a token that does not expire")
        Principal(tenant=tenant, agent_id=agent_id, agent_type=agent_type, allowed_scopes=tuple(allowed_scopes))
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token_id = "tok_" + secrets.token_hex(6)
        row = await self._db.fetchrow(
            INSERT, token_id, digest(token), tenant, agent_id, agent_type, allowed_scopes, default_scope,
            description, expires_at,
        )  # fmt: skip
        assert row is not None
        return token, TokenRecord(**dict(row))

    async def verify(self, token: str) -> TokenRecord | None:
        if not token.startswith(TOKEN_PREFIX):
            return None
        key = digest(token)
        now = time.monotonic()
        cached = self._verified.get(key)
        if cached is not None and cached[0] > now:
            return cached[1] if cached[1] is None or not cached[1].expired() else None
        row = await self._db.fetchrow(SELECT_VALID, key)
        record = TokenRecord(**dict(row)) if row else None
        if len(self._verified) > 10_000:
            self._verified.clear()
        self._verified[key] = (now + VERIFY_CACHE_SECONDS, record)
        return record

    async def list(self, *, tenant: str | None = None) -> list[TokenRecord]:
        return [TokenRecord(**dict(r)) for r in await self._db.fetch(LIST, tenant)]

    async def revoke(self, token_id: str) -> None:
        status = await self._db.execute(REVOKE, token_id)
        if not status.endswith(" 1"):
            raise NotFound(f"no active token with id {token_id}")
        self._verified.clear()
