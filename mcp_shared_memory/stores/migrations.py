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

log = logging.getLogger(__name__)

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


async def apply_migrations(conn: asyncpg.Connection) -> list[str]:
    """Apply the migrations this database lacks; returns the names applied. Safe to run concurrently."""
    applied_now: list[str] = []
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
