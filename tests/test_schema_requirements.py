"""The migrations refuse, with what to do, a PostgreSQL or pgvector they would fail on halfway (pgvector
0.6 lacks ``binary_quantize`` for ``vector``: migration 013 stopped with "PostgreSQL is unavailable, retry
later", measured on PostgreSQL 16.2 with pgvector 0.6.2)."""

from __future__ import annotations

import pytest

from mcp_shared_memory.runtime import Connections
from mcp_shared_memory.stores.migrations import check_versions, version_problem


@pytest.mark.parametrize(
    ("server", "installed", "available", "expected"),
    [
        (180001, "0.8.1", "0.8.1", None),
        (140010, None, "0.8.0", None),  # created by the first migration
        (170002, "0.6.2", "0.6.2", "pgvector 0.6.2 is too old: mcp-shared-memory needs pgvector 0.8 or later "
         "(upgrade the server's pgvector package, then run ALTER EXTENSION vector UPDATE)"),
        (170002, "0.7.4", "0.8.0", "pgvector 0.7.4 is too old: mcp-shared-memory needs pgvector 0.8 or later "
         "(run ALTER EXTENSION vector UPDATE as its owner)"),
        (160002, None, "0.6.2", "pgvector 0.6.2 is too old: mcp-shared-memory needs pgvector 0.8 or later"),
        (160002, None, None, "pgvector is not installed on this PostgreSQL server: install pgvector 0.8 or later "
         "(e.g. the postgresql-<major>-pgvector package, or the pgvector/pgvector image)"),
        (130015, "0.8.0", "0.8.0", "PostgreSQL v is too old: mcp-shared-memory needs PostgreSQL 14 or later"),
        (180001, "0.10.0", "0.10.0", None),  # compared as numbers, not as text
    ],
)  # fmt: skip
def test_what_the_schema_needs_is_checked_before_any_migration(
    server: int, installed: str | None, available: str | None, expected: str | None
) -> None:
    assert version_problem(server, "v", installed, available) == expected


@pytest.mark.anyio
async def test_the_test_database_meets_the_requirements(connections: Connections) -> None:
    async with connections.db.cross_tenant() as conn:
        await check_versions(conn)
