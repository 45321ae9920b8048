"""What ``mcp-shared-memory doctor`` reads from the backends: versions, the recorded model, backlogs.

Read-only, as the owner (the counts cross tenants). Each function translates its driver's errors
into ``StoreUnavailable`` with a message free of addresses and credentials.
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import asyncpg
from qdrant_client import AsyncQdrantClient

from ..errors import ConfigError, StoreUnavailable
from .postgres import DRIVER_ERRORS, translated, unavailable
from .qdrant_points import COLLECTION_PREFIX
from .redis_client import REDIS_ERRORS, RedisClient

POSTGRES = """
SELECT current_setting('server_version') AS server,
       (SELECT extversion FROM pg_extension WHERE extname = 'vector') AS pgvector,
       (SELECT value FROM memory_meta WHERE key = 'embedding_model') AS model,
       (SELECT value FROM memory_meta WHERE key = 'embedding_dimension') AS dimension
"""
# Failed embeddings: a reason recorded (sql/018, when present) or a retry deferred past the lease.
HAS_EMBEDDING_ERROR = """
SELECT EXISTS (SELECT FROM information_schema.columns
               WHERE table_name = 'shared_episodic_memories' AND column_name = 'embedding_error')
"""
PENDING = """
SELECT count(*) AS pending,
       count(*) FILTER (WHERE embedding_retry_at > now() + interval '5 minutes') AS failed
FROM shared_episodic_memories WHERE embedding IS NULL
"""
PENDING_WITH_ERROR = """
SELECT count(*) AS pending,
       count(*) FILTER (WHERE embedding_error IS NOT NULL OR embedding_retry_at > now() + interval '5 minutes')
         AS failed
FROM shared_episodic_memories WHERE embedding IS NULL
"""
OUTBOX = """
SELECT count(*) AS queued, COALESCE(EXTRACT(EPOCH FROM now() - min(queued_at)), 0)::float8 AS oldest_seconds
FROM msm_cache_outbox
"""
# Events written before the full-text index was keyed by scope (sql/020), not filled yet by the back-fill:
# search still finds them, through a slower fallback.
UNINDEXED = "SELECT count(*) FROM shared_episodic_memories WHERE scoped_lexemes IS NULL"
SCOPED_LEXEMES = "020_scoped_lexemes"
APPLIED = "SELECT version, name FROM msm_schema_migrations ORDER BY version"
LEDGER_EXISTS = "SELECT to_regclass('msm_schema_migrations') IS NOT NULL"


@dataclass(frozen=True, slots=True)
class PostgresFacts:
    server_version: str
    pgvector_version: str | None
    recorded_model: str | None
    recorded_dimension: int | None
    pending_embeddings: int
    failed_embeddings: int
    outbox_queued: int
    outbox_oldest_seconds: float
    unindexed_events: int
    applied_migrations: list[str]


async def postgres_facts(dsn: str, *, connect_timeout: float, label: str) -> PostgresFacts:
    """Read on a connection of its own, without the pool's codecs: the database may not be migrated yet."""
    try:
        conn = await asyncpg.connect(dsn, timeout=connect_timeout)
    except asyncpg.InvalidPasswordError as exc:
        raise ConfigError(f"PostgreSQL rejected the credentials in {label}") from exc
    except asyncpg.InvalidAuthorizationSpecificationError as exc:
        raise ConfigError(f"PostgreSQL refused the login of {label} (no such role, or it may not log in)") from exc
    except DRIVER_ERRORS as exc:
        raise unavailable(exc) from exc
    try:
        with translated():
            return await _read(conn)
    finally:
        with suppress(*DRIVER_ERRORS):
            await conn.close()


async def _read(conn: asyncpg.Connection) -> PostgresFacts:
    applied: list[str] = []
    if await conn.fetchval(LEDGER_EXISTS):
        applied = [f"{r['version']:03d}_{r['name']}" for r in await conn.fetch(APPLIED)]
    if "001_episodic" not in applied:  # an empty database: nothing else to read yet
        version = str(await conn.fetchval("SELECT current_setting('server_version')"))
        return PostgresFacts(version, None, None, None, 0, 0, 0, 0.0, 0, applied)
    row = await conn.fetchrow(POSTGRES)
    with_error = bool(await conn.fetchval(HAS_EMBEDDING_ERROR))
    pending = await conn.fetchrow(PENDING_WITH_ERROR if with_error else PENDING)
    outbox = await conn.fetchrow(OUTBOX)
    unindexed = int(await conn.fetchval(UNINDEXED)) if SCOPED_LEXEMES in applied else 0
    assert row is not None and pending is not None and outbox is not None
    dimension = row["dimension"]
    return PostgresFacts(
        server_version=str(row["server"]), pgvector_version=row["pgvector"], recorded_model=row["model"],
        recorded_dimension=int(dimension) if dimension else None, pending_embeddings=int(pending["pending"]),
        failed_embeddings=int(pending["failed"]), outbox_queued=int(outbox["queued"]),
        outbox_oldest_seconds=float(outbox["oldest_seconds"]), unindexed_events=unindexed,
        applied_migrations=applied,
    )  # fmt: skip


async def redis_facts(client: RedisClient) -> dict[str, Any]:
    """Server name and version, mode (standalone, cluster, sentinel) and replication role."""
    try:
        info: dict[str, Any] = await client.info()
    except REDIS_ERRORS as exc:
        raise StoreUnavailable(f"Redis is unavailable ({type(exc).__name__})") from exc
    server = "valkey" if info.get("server_name") == "valkey" or "valkey_version" in info else "redis"
    return {
        "server": server,
        "version": str(info.get("valkey_version") or info.get("redis_version") or "unknown"),
        "mode": str(info.get("redis_mode") or info.get("server_mode") or "standalone"),
        "role": str(info.get("role", "unknown")),
        "used_memory": str(info.get("used_memory_human", "")),
    }


async def qdrant_facts(client: AsyncQdrantClient) -> dict[str, Any]:
    """The facts collections (one per model and dimension) and their point counts."""
    try:
        collections = [c.name for c in (await client.get_collections()).collections]
        ours = sorted(c for c in collections if c.startswith(f"{COLLECTION_PREFIX}__"))
        counts = {c: (await client.count(c, exact=True)).count for c in ours}
    except Exception as exc:  # the client raises many transport types; none may leak an address
        raise StoreUnavailable(f"Qdrant is unavailable ({type(exc).__name__})") from exc
    return {"collections": counts}
