"""Numbered ``.sql`` migrations, applied in order, once, under an advisory lock.

They live in the project's top-level ``sql/`` and ship inside the wheel as ``mcp_shared_memory/sql/`` (see
``[tool.setuptools.package-dir]`` in pyproject.toml)."""

from __future__ import annotations

import logging
import re
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import asyncpg

from ..errors import ConfigError

log = logging.getLogger(__name__)

MIN_POSTGRES = 140000  # server_version_num
MIN_PGVECTOR = (0, 8)
VERSIONS = """
SELECT current_setting('server_version_num')::int AS server,
       current_setting('server_version') AS server_name,
       (SELECT extversion FROM pg_extension WHERE extname = 'vector') AS installed,
       (SELECT default_version FROM pg_available_extensions WHERE name = 'vector') AS available
"""

MIGRATION_FILE = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
# Arbitrary constant: serialises concurrent first starts of several processes.
MIGRATION_LOCK_ID = 7_340_001

CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS msm_schema_migrations (
  version    INTEGER PRIMARY KEY,
  name       TEXT NOT NULL,
  applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""


def migrations_dir() -> Traversable:
    """The directory of the ``.sql`` files: ``mcp_shared_memory/sql/`` in an installed wheel, else the ``sql/``
    of the source checkout the package is imported from (an editable install maps the package to the
    checkout, where ``sql/`` sits beside it and not inside it)."""
    package = resources.files("mcp_shared_memory")
    packaged = package.joinpath("sql")
    if packaged.is_dir():
        return packaged
    if isinstance(package, Path):
        checkout = package.parent
        if (checkout / "pyproject.toml").is_file() and (checkout / "sql").is_dir():
            return checkout / "sql"
    raise FileNotFoundError(f"no migrations: neither {packaged} nor a source checkout's sql/ beside {package}")


def available_migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration, in order."""
    found = []
    for entry in migrations_dir().iterdir():
        match = MIGRATION_FILE.match(entry.name)
        if match:
            found.append((int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    return sorted(found)


def version_problem(server: int, server_name: str, installed: str | None, available: str | None) -> str | None:
    """What keeps this PostgreSQL from holding the schema (None: nothing): PostgreSQL 14 or later with
    pgvector 0.8 or later, installed or installable."""
    if server < MIN_POSTGRES:
        return f"PostgreSQL {server_name} is too old: mcp-shared-memory needs PostgreSQL 14 or later"
    if installed is not None and _version(installed) < MIN_PGVECTOR:
        fix = (
            "run ALTER EXTENSION vector UPDATE as its owner"
            if available is not None and _version(available) >= MIN_PGVECTOR
            else "upgrade the server's pgvector package, then run ALTER EXTENSION vector UPDATE"
        )
        return f"pgvector {installed} is too old: mcp-shared-memory needs pgvector 0.8 or later ({fix})"
    if installed is None and available is None:
        return (
            "pgvector is not installed on this PostgreSQL server: install pgvector 0.8 or later (e.g. the "
            "postgresql-<major>-pgvector package, or the pgvector/pgvector image)"
        )
    if installed is None and available is not None and _version(available) < MIN_PGVECTOR:
        return f"pgvector {available} is too old: mcp-shared-memory needs pgvector 0.8 or later"
    return None


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


async def check_versions(conn: asyncpg.Connection) -> None:
    """Refuse, with what to do, a PostgreSQL or pgvector the migrations would fail on halfway."""
    row = await conn.fetchrow(VERSIONS)
    assert row is not None
    problem = version_problem(row["server"], row["server_name"], row["installed"], row["available"])
    if problem is not None:
        raise ConfigError(problem)


async def apply_migrations(conn: asyncpg.Connection) -> list[str]:
    """Apply the migrations this database lacks; returns the names applied. Safe to run concurrently."""
    applied_now: list[str] = []
    await check_versions(conn)
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
    try:
        await conn.execute(CREATE_LEDGER)
        done = {r["version"] for r in await conn.fetch("SELECT version FROM msm_schema_migrations")}
        for version, name, sql in available_migrations():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO msm_schema_migrations (version, name) VALUES ($1, $2)", version, name)
            log.info("applied migration %03d_%s", version, name)
            applied_now.append(f"{version:03d}_{name}")
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
    return applied_now


async def pending_migrations(conn: asyncpg.Connection) -> list[str]:
    exists = await conn.fetchval("SELECT to_regclass('msm_schema_migrations') IS NOT NULL")
    done = set()
    if exists:
        done = {r["version"] for r in await conn.fetch("SELECT version FROM msm_schema_migrations")}
    return [f"{v:03d}_{n}" for v, n, _ in available_migrations() if v not in done]
