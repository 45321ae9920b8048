"""The asyncpg pool shared by every PostgreSQL-backed store, with codecs and error translation."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from pgvector.asyncpg import register_vector

from ..errors import ConfigError, StoreUnavailable
from .migrations import apply_migrations

log = logging.getLogger(__name__)

DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


def unavailable(exc: BaseException) -> StoreUnavailable:
    """A safe message: the exception class only, never the DSN or server text that may echo it."""
    return StoreUnavailable(
        f"PostgreSQL is unavailable ({type(exc).__name__}); the operation was not applied, retry later"
    )


async def _init_connection(conn: asyncpg.Connection) -> None:
    await register_vector(conn)
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


class PostgresPool:
    """Owns the pool; migrates the schema before the pool's codecs need the ``vector`` type."""

    def __init__(self, dsn: str, *, min_size: int = 1, max_size: int = 4, timeout: float = 10.0) -> None:
        self._dsn = dsn
        self._min_size = min_size
        self._max_size = max_size
        self._timeout = timeout
        self._pool: asyncpg.Pool | None = None

    async def open(self, *, migrate: bool = True) -> None:
        try:
            if migrate:
                conn = await asyncpg.connect(self._dsn, timeout=self._timeout)
                try:
                    await apply_migrations(conn)
                finally:
                    await conn.close()
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=min(self._min_size, self._max_size),
                max_size=self._max_size,
                init=_init_connection,
                timeout=self._timeout,
                command_timeout=self._timeout,
            )
        except asyncpg.UndefinedObjectError as exc:
            raise ConfigError(
                "the database has no pgvector extension: install pgvector >= 0.8 (e.g. the pgvector/pgvector "
                "image) or unset MSM_DATABASE_URL to use the embedded PostgreSQL"
            ) from exc
        except asyncpg.InvalidPasswordError as exc:
            raise ConfigError("PostgreSQL rejected the credentials in MSM_DATABASE_URL") from exc
        except DRIVER_ERRORS as exc:
            raise unavailable(exc) from exc

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreUnavailable("the PostgreSQL pool is not open")
        return self._pool

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        try:
            async with self.pool.acquire() as conn:
                yield conn
        except DRIVER_ERRORS as exc:
            raise unavailable(exc) from exc

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        try:
            return await self.pool.fetch(query, *args)
        except DRIVER_ERRORS as exc:
            raise unavailable(exc) from exc

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        try:
            return await self.pool.fetchrow(query, *args)
        except DRIVER_ERRORS as exc:
            raise unavailable(exc) from exc

    async def fetchval(self, query: str, *args: Any) -> Any:
        try:
            return await self.pool.fetchval(query, *args)
        except DRIVER_ERRORS as exc:
            raise unavailable(exc) from exc

    async def execute(self, query: str, *args: Any) -> str:
        try:
            return await self.pool.execute(query, *args)
        except DRIVER_ERRORS as exc:
            raise unavailable(exc) from exc
