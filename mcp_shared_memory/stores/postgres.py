"""The asyncpg pool shared by every PostgreSQL-backed store: codecs, migrations, the embedding-model
guard, and driver errors translated around each driver call (never around a caller's block)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Protocol

import anyio
import asyncpg
from pgvector.asyncpg import register_vector

from ..errors import ConfigError, StoreUnavailable
from .migrations import apply_migrations, pending_migrations

log = logging.getLogger(__name__)

# InternalClientError: seen in the first milliseconds after the server dies, mid-protocol.
DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError, TimeoutError)

META_GET = "SELECT key, value FROM memory_meta WHERE key IN ('embedding_model', 'embedding_dimension')"
META_SET = """
INSERT INTO memory_meta (key, value) VALUES ('embedding_model', $1), ('embedding_dimension', $2)
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value
"""


class Record(Protocol):
    """The part of an ``asyncpg.Record`` the stores use (asyncpg ships no type hints): columns by name,
    and ``dict(row)``."""

    def __getitem__(self, key: str, /) -> Any: ...

    def keys(self) -> Iterable[str]: ...


def unavailable(exc: BaseException) -> StoreUnavailable:
    """A safe message: the exception class only, never the DSN or server text that may echo it."""
    return StoreUnavailable(
        f"PostgreSQL is unavailable ({type(exc).__name__}); the operation was not applied, retry later"
    )


@contextmanager
def translated() -> Iterator[None]:
    """Wrap exactly one driver call: its errors become ``StoreUnavailable``."""
    try:
        yield
    except DRIVER_ERRORS as exc:
        raise unavailable(exc) from exc


async def _init_connection(conn: asyncpg.Connection) -> None:
    await register_vector(conn)
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


class PgConnection:
    """A pooled connection as the stores see it: every call translates driver errors."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def fetch(self, query: str, *args: Any) -> list[Record]:
        with translated():
            return list(await self._conn.fetch(query, *args))

    async def fetchrow(self, query: str, *args: Any) -> Record | None:
        with translated():
            row: Record | None = await self._conn.fetchrow(query, *args)
        return row

    async def fetchval(self, query: str, *args: Any) -> Any:
        with translated():
            return await self._conn.fetchval(query, *args)

    async def execute(self, query: str, *args: Any) -> str:
        with translated():
            return str(await self._conn.execute(query, *args))

    async def executemany(self, query: str, args: list[tuple[Any, ...]]) -> None:
        with translated():
            await self._conn.executemany(query, args)

    async def copy_records(self, table: str, records: Sequence[tuple[Any, ...]], *, columns: Sequence[str]) -> int:
        """COPY ``records`` into ``table`` (all or none); returns the rows copied."""
        with translated():
            status = await self._conn.copy_records_to_table(table, records=records, columns=list(columns))
        return int(str(status).split()[-1])

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        tx = self._conn.transaction()
        with translated():
            await tx.start()
        try:
            yield
        except BaseException:
            with anyio.CancelScope(shield=True), translated():
                await tx.rollback()
            raise
        with translated():
            await tx.commit()


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
                await self._apply_migrations()
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

    async def migrate(self) -> list[str]:
        """Apply the migrations this database lacks (on a connection of its own: the pool's codecs need
        the ``vector`` type the first migration creates); returns the names applied."""
        with translated():
            return await self._apply_migrations()

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

    @property
    def _open_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreUnavailable("the PostgreSQL pool is not open")
        return self._pool

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[PgConnection]:
        """A pooled connection for several statements. Only the acquisition and each call on it are
        translated; an error of the caller's own passes through unchanged."""
        pool = self._open_pool
        with translated():
            conn = await pool.acquire()
        try:
            yield PgConnection(conn)
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await pool.release(conn)
                except DRIVER_ERRORS as exc:
                    log.debug("dropping a broken PostgreSQL connection (%s)", type(exc).__name__)

    async def fetch(self, query: str, *args: Any) -> list[Record]:
        with translated():
            return list(await self._open_pool.fetch(query, *args))

    async def fetchrow(self, query: str, *args: Any) -> Record | None:
        with translated():
            row: Record | None = await self._open_pool.fetchrow(query, *args)
        return row

    async def fetchval(self, query: str, *args: Any) -> Any:
        with translated():
            return await self._open_pool.fetchval(query, *args)

    async def execute(self, query: str, *args: Any) -> str:
        with translated():
            return str(await self._open_pool.execute(query, *args))

    async def ping(self) -> bool:
        try:
            await self.fetchval("SELECT 1")
        except StoreUnavailable:
            return False
        return True

    # the embedding-model guard

    async def ensure_embedding_model(self, model_id: str, dimension: int) -> None:
        """Record the model on first use; refuse to mix vectors of another model or dimension."""
        async with self.connection() as conn, conn.transaction():
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
