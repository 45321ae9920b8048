"""Bulk loading of events with COPY, for seeding a store (benchmarks, imports), never for serving.

Rows loaded here bypass ``SharedMemory`` and the scope writer: no validation beyond the table's
constraints, no dedup, no outbox, so neither the recent cache nor subscribers hear of them. Load scopes
nobody is using. PostgreSQL refuses COPY where row-level security applies: it runs on the owner's pool.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import NamedTuple

from ..vectors import Vector
from .postgres import PostgresPool

TABLE = "shared_episodic_memories"
ANALYZE = "ANALYZE shared_episodic_memories"


class EventRow(NamedTuple):
    """One event as COPY writes it; ``seq``, ``metadata`` and ``created_at`` take their defaults. The
    caller chooses ``id`` (so it knows the ids without reading them back)."""

    id: uuid.UUID
    tenant_id: str
    scope_type: str
    scope_id: str
    agent_id: str
    agent_type: str
    event_type: str
    content: str
    content_hash: str
    embedding: Vector | None
    embedding_model: str | None
    importance: float


async def copy_events(db: PostgresPool, rows: Sequence[EventRow]) -> int:
    """Append ``rows`` with one COPY on one pooled connection (all or none); returns the rows copied."""
    if not rows:
        return 0
    async with db.cross_tenant() as conn:
        return await conn.copy_records(TABLE, rows, columns=EventRow._fields)


async def analyze_events(db: PostgresPool) -> None:
    """Refresh the planner's statistics after a large load (autovacuum would, but later)."""
    await db.execute(ANALYZE)
