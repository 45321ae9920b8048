"""The audit trail in PostgreSQL: one row per tool call, resource read, subscription or listen.

It works on the owner's pool: a batch holds several tenants' rows (and PostgreSQL refuses COPY where row-level
security applies), and the operator reads and expires the trail across tenants.

Recording never waits for the database: rows are buffered in memory and copied in batches by a
background task (``run``), which flushes what is left when it is cancelled. The buffer is bounded: when
PostgreSQL cannot keep up, the oldest rows are dropped with a warning rather than slowing the agents.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import anyio
import anyio.abc
from pydantic import BaseModel

from ..errors import StoreUnavailable

if TYPE_CHECKING:
    from .postgres import PostgresPool

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 0.5
FLUSH_BATCH = 100
BUFFER_MAX = 10_000

QUERY = """
SELECT id, at, tenant_id, agent_id, agent_type, token_id, method, target, scope, outcome, result_count,
       latency_ms, transport
FROM audit_log
WHERE ($1::text IS NULL OR tenant_id = $1)
  AND ($2::text IS NULL OR agent_id = $2)
  AND ($3::text IS NULL OR target = $3)
  AND ($4::text IS NULL OR outcome = $4 OR ($4 = 'error' AND outcome <> 'ok'))
  AND ($5::timestamptz IS NULL OR at >= $5)
  AND ($6::timestamptz IS NULL OR at < $6)
ORDER BY at DESC, id DESC
LIMIT $7
"""
DELETE_OLDER = "DELETE FROM audit_log WHERE at < $1"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audited request. ``target`` is a tool's name or a resource's URI, never an argument's value (for
    a refused token, the client's address)."""

    tenant_id: str
    agent_id: str
    agent_type: str
    token_id: str | None
    method: str
    target: str
    scope: str | None
    outcome: str  # "ok" or the error's class name
    result_count: int | None
    latency_ms: float
    transport: str
    at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @classmethod
    def unauthenticated(cls, address: str, *, latency_ms: float) -> AuditEntry:
        """An HTTP request whose bearer token was refused: no tenant or agent is known, the target is the
        client's address (never the token)."""
        return cls(
            tenant_id="", agent_id="", agent_type="", token_id=None, method="authenticate", target=address,
            scope=None, outcome="unauthenticated", result_count=None, latency_ms=latency_ms, transport="http",
        )  # fmt: skip

    def row(self) -> tuple[object, ...]:
        # Not dataclasses.astuple: it deep-copies every value, which costs more than the COPY itself.
        return tuple(getattr(self, name) for name in COLUMNS)


COLUMNS = tuple(f.name for f in fields(AuditEntry))


class AuditRecord(BaseModel):
    id: int
    at: datetime
    tenant_id: str
    agent_id: str
    agent_type: str
    token_id: str | None
    method: str
    target: str
    scope: str | None
    outcome: str
    result_count: int | None
    latency_ms: float
    transport: str


class PostgresAuditLog:
    def __init__(
        self,
        db: PostgresPool,
        *,
        flush_interval: float = FLUSH_INTERVAL,
        flush_batch: int = FLUSH_BATCH,
        buffer_max: int = BUFFER_MAX,
    ) -> None:
        self._db = db
        self._flush_interval = flush_interval
        self._flush_batch = flush_batch
        self._buffer: deque[AuditEntry] = deque(maxlen=buffer_max)
        self._wake = anyio.Event()
        self._dropped = 0
        self._flush_lock = anyio.Lock()

    def record(self, entry: AuditEntry) -> None:
        """Buffer one row (never blocks); the background task writes it within ``flush_interval``."""
        if len(self._buffer) == self._buffer.maxlen:
            if not self._dropped:
                log.warning("the audit buffer is full (PostgreSQL is slow or down): dropping the oldest rows")
            self._dropped += 1
        self._buffer.append(entry)
        if len(self._buffer) >= self._flush_batch:
            self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._buffer)

    async def flush(self) -> int:
        """Write every buffered row; returns how many were written. On a database error the batch goes
        back to the buffer (as far as it has room) and the error is raised."""
        written = 0
        async with self._flush_lock:
            # Only the rows buffered now: chasing the rows recorded during the COPY would copy them one by one.
            remaining = len(self._buffer)
            while remaining > 0 and self._buffer:
                batch = [
                    self._buffer.popleft() for _ in range(min(len(self._buffer), remaining, 10 * self._flush_batch))
                ]
                remaining -= len(batch)
                try:
                    async with self._db.cross_tenant() as conn:
                        await conn.copy_records("audit_log", [e.row() for e in batch], columns=COLUMNS)
                except StoreUnavailable:
                    room = (self._buffer.maxlen or 0) - len(self._buffer)
                    self._buffer.extendleft(reversed(batch[-room:] if room > 0 else []))
                    raise
                written += len(batch)
        if self._dropped:
            log.warning("%d audit rows were dropped while the buffer was full", self._dropped)
            self._dropped = 0
        return written

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Flush every ``flush_interval`` seconds, or sooner when a batch is full, until cancelled; then
        flush what is left. Never raises on a database error (the rows wait in the buffer)."""
        task_status.started()
        try:
            while True:
                with anyio.move_on_after(self._flush_interval):
                    await self._wake.wait()
                self._wake = anyio.Event()
                await self._flush_quietly()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await self._flush_quietly()

    async def _flush_quietly(self) -> None:
        try:
            await self.flush()
        except StoreUnavailable as exc:
            log.warning("audit rows not written yet: %s", exc.message)

    async def query(
        self,
        *,
        tenant: str | None = None,
        agent: str | None = None,
        target: str | None = None,
        outcome: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
    ) -> list[AuditRecord]:
        """Newest first. ``outcome="error"`` matches every outcome but ``ok``."""
        async with self._db.cross_tenant() as conn:
            rows = await conn.fetch(QUERY, tenant, agent, target, outcome, since, until, limit)
        return [AuditRecord(**dict(r)) for r in rows]

    async def delete_older_than(self, days: float) -> int:
        """Retention: delete rows older than ``days``; returns how many."""
        async with self._db.cross_tenant() as conn:
            status = await conn.execute(DELETE_OLDER, datetime.now(UTC) - timedelta(days=days))
        return int(status.split()[-1])
