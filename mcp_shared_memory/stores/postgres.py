"""The asyncpg pools of the PostgreSQL-backed stores: codecs, migrations, the embedding-model guard, row-level
security, and what a connection's use leaves on its session (a connection and its errors: ``pg_connection.py``).

A process has two pools. The application role's serves every request: its connections are subject to
row-level security (sql/012), and a store takes one with ``tenant(tenant)``, which sets the tenant the
policies compare with ``tenant_id``. The owner's pool applies migrations and does the few jobs that cross
tenants, each taken with ``cross_tenant()``, which the application role's pool refuses."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import asyncpg

from .. import vectors
from ..errors import ConfigError, StoreUnavailable
from .migrations import apply_migrations, pending_migrations
from .pg_connection import DRIVER_ERRORS, Lease, PgConnection, Record, translated, unavailable

__all__ = ["DRIVER_ERRORS", "PgConnection", "PostgresPool", "Record", "translated", "unavailable"]

log = logging.getLogger(__name__)

APP_ROLE = "msm_app"
# Session-level, on a connection taken from the pool: the reset when it goes back (RESET ALL) clears it, except
# after a block of plain reads (see ``PostgresPool.tenant``).
SET_TENANT = "SELECT set_config('msm.tenant', $1, false)"
# What asyncpg's own reset runs (and a rollback when a transaction was left open): session advisory locks (a
# scope writer's), cursors, LISTEN and settings (the tenant, plan_cache_mode) end with the use that took them.
RESET_SESSION = "SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL"
# Whether this session sees every tenant's rows: a superuser, BYPASSRLS, or (a member of) the tables' owner.
RLS_EXEMPT = """
SELECT r.rolsuper OR r.rolbypassrls OR pg_has_role(current_user, c.relowner, 'USAGE')
FROM pg_roles r, pg_class c
WHERE r.rolname = current_user AND c.oid = to_regclass('shared_episodic_memories')
"""

META_GET = "SELECT key, value FROM memory_meta WHERE key IN ('embedding_model', 'embedding_dimension')"
META_SET = """
INSERT INTO memory_meta (key, value) VALUES ('embedding_model', $1), ('embedding_dimension', $2)
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value
"""


async def init_connection(conn: asyncpg.Connection) -> None:
    """The package's codecs: pgvector's ``vector`` as ``vectors.Vector``, jsonb as JSON."""
    await conn.set_type_codec(
        "vector", schema="public", encoder=vectors.encode, decoder=vectors.decode, format="binary"
    )
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


class PostgresPool:
    """Owns a pool; the owner's migrates the schema before the pool's codecs need the ``vector`` type.

    ``app_role``: the pool serves requests and its sessions must be subject to row-level security. When
    the login is exempt (a superuser or the tables' owner, as when one URL is configured for everything)
    each connection assumes ``msm_app`` with ``SET ROLE``, and a separate application login is recommended.
    ``label`` names the DSN's setting in error messages (never the DSN itself)."""

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 4,
        timeout: float = 10.0,
        app_role: bool = False,
        label: str = "MSM_DATABASE_URL",
    ) -> None:
        self._dsn = dsn
        self._min_size = min_size
        self._max_size = max_size
        self._timeout = timeout
        self._app_role = app_role
        self._label = label
        self._assumed_role_logged = False
        self._pool: asyncpg.Pool | None = None
        # By server process id (the pool hands out proxies, its reset sees the connections): the tenant left
        # set on a connection that went back to the pool without a reset, and the connections going back now
        # with nothing of their use left on the session (their reset is skipped). Forgotten when a connection
        # closes, and for a new one.
        self._tenant_left: dict[int, str] = {}
        self._going_back_clean: set[int] = set()

    async def open(self, *, migrate: bool = True) -> None:
        try:
            if migrate:
                await self._apply_migrations()
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=min(self._min_size, self._max_size),
                max_size=self._max_size,
                init=self._init,
                reset=self._reset,
                timeout=self._timeout,
                command_timeout=self._timeout,
            )
        except asyncpg.UndefinedObjectError as exc:
            raise ConfigError(
                "the database has no pgvector extension: install pgvector >= 0.8 (e.g. the pgvector/pgvector "
                "image) or unset MSM_DATABASE_URL to use the embedded PostgreSQL"
            ) from exc
        except asyncpg.InvalidPasswordError as exc:
            raise ConfigError(f"PostgreSQL rejected the credentials in {self._label}") from exc
        except asyncpg.InvalidAuthorizationSpecificationError as exc:
            raise ConfigError(
                f"PostgreSQL refused the login of {self._label} (no such role, or it may not log in)"
            ) from exc
        except asyncpg.InsufficientPrivilegeError as exc:
            raise (self._not_owner(exc) if migrate else unavailable(exc)) from exc
        except DRIVER_ERRORS as exc:
            raise unavailable(exc) from exc

    async def _init(self, conn: asyncpg.Connection) -> None:
        """A new connection (whose server process id may be that of one closed before)."""
        pid = conn.get_server_pid()
        self._forget(pid)
        conn.add_termination_listener(lambda _: self._forget(pid))
        if self._app_role:
            await self._init_app_connection(conn)
        else:
            await init_connection(conn)

    async def _init_app_connection(self, conn: asyncpg.Connection) -> None:
        await init_connection(conn)
        if not await conn.fetchval(RLS_EXEMPT):
            return
        # The role survives asyncpg's RESET ALL between uses (PostgreSQL never resets it with RESET ALL).
        try:
            await conn.execute(f"SET ROLE {APP_ROLE}")
        except (asyncpg.InsufficientPrivilegeError, asyncpg.InvalidParameterValueError) as exc:
            raise ConfigError(
                f"{self._label} logs in as a role that bypasses row-level security and cannot SET ROLE "
                f"{APP_ROLE}: run `mcp-shared-memory migrate` as the tables' owner, or give the server a login "
                f"granted {APP_ROLE} in MSM_DATABASE_URL and the owner in MSM_DATABASE_OWNER_URL"
            ) from exc
        if await conn.fetchval(RLS_EXEMPT):
            raise ConfigError(
                f"the role {APP_ROLE} bypasses row-level security (a superuser, BYPASSRLS, or a member of the "
                f"tables' owner): make it an ordinary role (ALTER ROLE {APP_ROLE} NOSUPERUSER NOBYPASSRLS)"
            )
        if not self._assumed_role_logged:
            self._assumed_role_logged = True
            log.warning(
                "%s logs in as the tables' owner or a superuser: requests are served as %s (SET ROLE) so that "
                "row-level security applies; a separate application login is recommended (MSM_DATABASE_URL "
                "a login granted %s, MSM_DATABASE_OWNER_URL the owner)",
                self._label, APP_ROLE, APP_ROLE,
            )  # fmt: skip

    def _not_owner(self, exc: asyncpg.InsufficientPrivilegeError) -> ConfigError:
        log.error("applying the migrations was refused: %s", exc)  # with the server's hint
        return ConfigError(
            f"the role of {self._label} may not apply the migrations: they run as the tables' owner, which also "
            f"creates the role {APP_ROLE} once (set MSM_DATABASE_OWNER_URL to the owner, or have a role with "
            f"CREATEROLE run CREATE ROLE {APP_ROLE} NOLOGIN first)"
        )

    async def migrate(self) -> list[str]:
        """Apply the migrations this database lacks (on a connection of its own: the pool's codecs need
        the ``vector`` type the first migration creates); returns the names applied."""
        try:
            return await self._apply_migrations()
        except asyncpg.InsufficientPrivilegeError as exc:
            raise self._not_owner(exc) from exc
        except DRIVER_ERRORS as exc:
            raise unavailable(exc) from exc

    async def _apply_migrations(self) -> list[str]:
        conn = await asyncpg.connect(self._dsn, timeout=self._timeout)
        try:
            return await apply_migrations(conn)
        finally:
            await conn.close()

    async def pending_migrations(self) -> list[str]:
        with translated():
            conn = await asyncpg.connect(self._dsn, timeout=self._timeout)
            try:
                return await pending_migrations(conn)
            finally:
                await conn.close()

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    def usage(self) -> tuple[int, int, int]:
        """(open, idle, max) connections, for the metrics."""
        pool = self._open_pool
        return pool.get_size(), pool.get_idle_size(), self._max_size

    @property
    def _open_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreUnavailable("the PostgreSQL pool is not open")
        return self._pool

    def _require_owner(self) -> None:
        if self._app_role:
            raise RuntimeError("cross-tenant work runs on the owner's pool, never on the application role's")

    async def exempt_from_rls(self) -> bool:
        """Whether this pool's sessions see every tenant (as the owner's must, to work across tenants)."""
        async with self.connection() as conn:
            return bool(await conn.fetchval(RLS_EXEMPT))

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[PgConnection]:
        """A pooled connection for several statements, with no tenant set (on the application role's pool
        the tenant tables look empty). Only the acquisition and each call on it are translated; an error of
        the caller's own passes through unchanged."""
        async with self._acquired() as lease:
            if self._tenant_left.pop(lease.pid, None) is not None:
                with translated():
                    await lease.conn.execute(SET_TENANT, "")
            yield PgConnection(lease.conn)

    @asynccontextmanager
    async def tenant(self, tenant: str, *, reads_only: bool = False) -> AsyncIterator[PgConnection]:
        """A pooled connection on which row-level security shows and accepts ``tenant``'s rows only. Every
        request's query goes through here.

        By default the connection is reset when it goes back to the pool, which clears the tenant. With
        ``reads_only`` the caller runs plain reads only (no SET, no advisory lock, no transaction, no
        LISTEN), or it calls ``session_restored`` once it has undone what it set: the connection goes back
        without the reset's round trip and keeps the tenant, which the next user of the same tenant then
        need not set (one round trip each way less); anyone else sets or clears it first. An error in the
        block resets the connection all the same."""
        if not tenant:
            raise ValueError("a tenant is required")
        async with self._acquired(clean=reads_only) as lease:
            if self._tenant_left.pop(lease.pid, None) != tenant:
                with translated():
                    await lease.conn.execute(SET_TENANT, tenant)
            self._tenant_left[lease.pid] = tenant  # what the connection holds, if it goes back clean
            yield PgConnection(lease.conn, lease)

    @asynccontextmanager
    async def _acquired(self, *, clean: bool = False) -> AsyncIterator[Lease]:
        pool = self._open_pool
        with translated():
            conn = await pool.acquire()
        lease = Lease(conn, clean=clean)
        failed = True
        try:
            yield lease
            failed = False
        finally:
            if lease.clean and not failed:
                self._going_back_clean.add(lease.pid)
            else:
                self._tenant_left.pop(lease.pid, None)
            with anyio.CancelScope(shield=True):
                try:
                    await pool.release(conn)
                except DRIVER_ERRORS as exc:
                    log.debug("dropping a broken PostgreSQL connection (%s)", type(exc).__name__)

    def _forget(self, pid: int) -> None:
        self._tenant_left.pop(pid, None)
        self._going_back_clean.discard(pid)

    async def _reset(self, conn: asyncpg.Connection) -> None:
        """The pool's reset of a connection going back (``connection``, ``tenant``)."""
        pid = conn.get_server_pid()
        if pid in self._going_back_clean:
            self._going_back_clean.discard(pid)
            return
        self._tenant_left.pop(pid, None)
        if conn.is_in_transaction():
            await conn.execute("ROLLBACK")
        await conn.execute(RESET_SESSION)

    @asynccontextmanager
    async def cross_tenant(self) -> AsyncIterator[PgConnection]:
        """A pooled connection of the owner's pool for work across tenants (outbox sweep, embedding
        back-fill, lexeme fill, consolidation's scope list, re-embedding, the audit copy and expiry, token
        look-ups): refused on the application role's pool."""
        self._require_owner()
        async with self.connection() as conn:
            yield conn

    # single statements with no tenant: the owner's pool only

    async def fetch(self, query: str, *args: Any) -> list[Record]:
        self._require_owner()
        with translated():
            return list(await self._open_pool.fetch(query, *args))

    async def fetchrow(self, query: str, *args: Any) -> Record | None:
        self._require_owner()
        with translated():
            row: Record | None = await self._open_pool.fetchrow(query, *args)
        return row

    async def fetchval(self, query: str, *args: Any) -> Any:
        self._require_owner()
        with translated():
            return await self._open_pool.fetchval(query, *args)

    async def execute(self, query: str, *args: Any) -> str:
        self._require_owner()
        with translated():
            return str(await self._open_pool.execute(query, *args))

    async def ping(self) -> bool:
        try:
            async with self.connection() as conn:
                await conn.fetchval("SELECT 1")
        except StoreUnavailable:
            return False
        return True

    # the embedding-model guard

    async def ensure_embedding_model(self, model_id: str, dimension: int) -> None:
        """Record the model on first use; refuse to mix vectors of another model or dimension."""
        async with self.cross_tenant() as conn, conn.transaction():
            await conn.execute("LOCK TABLE memory_meta IN SHARE ROW EXCLUSIVE MODE")
            meta = {r["key"]: r["value"] for r in await conn.fetch(META_GET)}
            if not meta:
                await conn.execute(META_SET, model_id, str(dimension))
                return
        if meta.get("embedding_model") != model_id or meta.get("embedding_dimension") != str(dimension):
            raise ConfigError(
                f"this database holds {meta.get('embedding_model')} vectors "
                f"({meta.get('embedding_dimension')} dims) but the server is configured for {model_id} "
                f"({dimension} dims): configure the original model, or run "
                "`mcp-shared-memory reembed` to re-embed everything with the new one"
            )

    async def set_embedding_model(self, model_id: str, dimension: int) -> None:
        await self.execute(META_SET, model_id, str(dimension))
