"""A pooled PostgreSQL connection as the stores see it, and driver errors translated around each driver call
(never around a caller's block)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Protocol

import anyio
import asyncpg

from ..errors import StoreUnavailable

# InternalClientError: seen in the first milliseconds after the server dies, mid-protocol.
DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError, TimeoutError)


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


class Lease:
    """A connection taken from the pool, and whether it may go back without a reset."""

    def __init__(self, conn: asyncpg.Connection, *, clean: bool) -> None:
        self.conn = conn
        self.pid = conn.get_server_pid()
        self.clean = clean


class PgConnection:
    """A pooled connection as the stores see it: every call translates driver errors."""

    def __init__(self, conn: asyncpg.Connection, lease: Lease | None = None) -> None:
        self._conn = conn
        self._lease = lease

    def session_restored(self) -> None:
        """The block has undone what it set on the session (a writer released its advisory lock): the
        connection goes back without a reset, keeping its tenant (see ``PostgresPool.tenant``), unless the
        block still ends with an error."""
        if self._lease is not None:
            self._lease.clean = True

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
