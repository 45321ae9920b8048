"""The composition root: opens everything a process needs in an ``AsyncExitStack`` and closes it in
reverse. Used alike by the MCP lifespan, the HTTP app, the CLI, the benchmarks and the tests.

Two layers, so tests can share connections and still isolate each test:
- ``open_connections``: the backends (embedded ones started if not configured), the PostgreSQL pool
  (migrated, model-checked), the Redis client and the embedder — the expensive part;
- ``open_runtime``: the stores, the memory, the bus, tokens and maintenance on top of connections
  (its own or given ones) — cheap, and keyed by ``Settings.redis_prefix``.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import anyio
import anyio.to_thread
import redis.asyncio as aioredis

from .announcer import Announcer
from .consolidation import Consolidator
from .embeddings import Embedder, create_embedder
from .maintenance import Maintenance
from .memory import SharedMemory
from .settings import Settings
from .stores.audit import PostgresAuditLog
from .stores.bus import RedisBus
from .stores.cache import RedisCache
from .stores.episodic import PostgresEpisodicStore
from .stores.event_search import PostgresEventSearch
from .stores.facts import FactsStore
from .stores.facts_pg import PgVectorFactsStore
from .stores.postgres import PostgresPool
from .stores.redis_client import RedisBreaker, connect_redis
from .stores.tokens import PostgresTokenStore
from .stores.workspaces import PostgresWorkspaceStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackendUrls:
    database_url: str
    redis_url: str


@asynccontextmanager
async def backend_urls(settings: Settings, *, redis: bool = True) -> AsyncIterator[BackendUrls]:
    """The configured URLs, starting embedded PostgreSQL / Valkey for whichever is not configured
    (Valkey only when ``redis``)."""
    database_url = settings.database_url.get_secret_value() if settings.database_url else None
    redis_url = settings.redis_url.get_secret_value() if settings.redis_url else None
    if database_url and (redis_url or not redis):
        yield BackendUrls(database_url, redis_url or "")
        return
    from .embedded import start_embedded

    backends = await anyio.to_thread.run_sync(
        lambda: start_embedded(settings.data_dir, postgres=database_url is None, redis=redis and redis_url is None)
    )
    try:
        yield BackendUrls(database_url or backends.database_url or "", redis_url or backends.redis_url or "")
    finally:
        await anyio.to_thread.run_sync(backends.release)


@dataclass(frozen=True)
class Connections:
    """The expensive, shareable part of a runtime."""

    db: PostgresPool
    redis: aioredis.Redis
    embedder: Embedder


@asynccontextmanager
async def open_connections(
    settings: Settings, *, migrate: bool = True, check_model: bool = True
) -> AsyncIterator[Connections]:
    """``check_model=False`` skips the embedding-model guard (for ``reembed`` only)."""
    async with AsyncExitStack() as stack:
        embedder = create_embedder(settings)
        urls: BackendUrls | None = None

        async def open_backends() -> None:
            nonlocal urls
            urls = await stack.enter_async_context(backend_urls(settings))

        # A model whose dimension is known loads in the background (the first embeds wait for it), so the
        # server answers sooner; others load while the databases start.
        async with anyio.create_task_group() as tg:
            tg.start_soon(functools.partial(embedder.open, wait=not embedder.dimension_is_static))
            tg.start_soon(open_backends)
        stack.push_async_callback(embedder.close)
        assert urls is not None

        db = PostgresPool(
            urls.database_url, min_size=settings.db_pool_min, max_size=settings.db_pool_max,
            timeout=settings.db_timeout,
        )  # fmt: skip
        await db.open(migrate=migrate)
        stack.push_async_callback(db.close)
        if check_model:
            await db.ensure_embedding_model(embedder.model_id, embedder.dimension)

        redis_client = connect_redis(urls.redis_url, timeout=settings.redis_timeout)
        stack.push_async_callback(redis_client.aclose)
        yield Connections(db=db, redis=redis_client, embedder=embedder)


def create_facts_store(settings: Settings, db: PostgresPool, embedder: Embedder) -> FactsStore:
    if settings.qdrant_url:
        from .stores.facts_qdrant import QdrantFactsStore

        return QdrantFactsStore.from_settings(settings, model_id=embedder.model_id, dimension=embedder.dimension)
    return PgVectorFactsStore(db, model_id=embedder.model_id)


@dataclass(frozen=True)
class Health:
    postgres: bool
    redis: bool

    @property
    def ok(self) -> bool:
        """PostgreSQL is the truth; without Redis the server still serves (degraded)."""
        return self.postgres


class Runtime:
    """Everything a process serves with. Only this module and ``stores/`` see pools and clients."""

    def __init__(
        self,
        *,
        settings: Settings,
        connections: Connections,
        memory: SharedMemory,
        bus: RedisBus,
        tokens: PostgresTokenStore,
        maintenance: Maintenance,
        facts: FactsStore,
        audit: PostgresAuditLog | None = None,
    ) -> None:
        self.settings = settings
        self._connections = connections
        self.memory = memory
        self.bus = bus
        self.tokens = tokens
        self.maintenance = maintenance
        self._facts = facts
        # None when MSM_AUDIT=false
        self.audit = audit

    async def health(self) -> Health:
        redis_ok = True
        try:
            await self._connections.redis.ping()
        except Exception:
            redis_ok = False
        return Health(postgres=await self._connections.db.ping(), redis=redis_ok)

    async def reembed(self) -> tuple[int, int, int]:
        """Re-embed every event and fact with the configured model: (events cleared, embedded, facts)."""
        db, embedder = self._connections.db, self._connections.embedder
        cleared = await PostgresEpisodicStore(db).clear_embeddings()
        await db.set_embedding_model(embedder.model_id, embedder.dimension)
        embedded = await self.maintenance.embed_missing()
        facts = await self._facts.reembed(embedder.embed_many)
        return cleared, embedded, facts


@asynccontextmanager
async def open_runtime(
    settings: Settings | None = None,
    *,
    connections: Connections | None = None,
    migrate: bool = True,
    check_model: bool = True,
    background: bool = False,
    facts: FactsStore | None = None,
) -> AsyncIterator[Runtime]:
    """Open a runtime (on ``connections`` when given, else on its own). The bus reader always runs;
    ``background`` also runs maintenance (outbox sweep, embedding back-fill, consolidation). ``facts``
    replaces the configured facts store (opened and closed here)."""
    settings = settings or Settings()
    started = time.perf_counter()
    async with AsyncExitStack() as stack:
        if connections is None:
            connections = await stack.enter_async_context(
                open_connections(settings, migrate=migrate, check_model=check_model)
            )
        db, embedder = connections.db, connections.embedder
        breaker = RedisBreaker(settings.redis_breaker_seconds)
        cache = RedisCache(
            connections.redis, prefix=settings.redis_prefix, recent_max=settings.recent_max,
            recent_ttl=settings.recent_ttl, breaker=breaker,
        )  # fmt: skip
        if not await cache.ping():
            log.warning("Redis is not reachable: serving from PostgreSQL until it is")
        bus = RedisBus(connections.redis, prefix=settings.redis_prefix, breaker=breaker)
        stack.push_async_callback(bus.close)
        facts = facts or create_facts_store(settings, db, embedder)
        await facts.open()
        stack.push_async_callback(facts.close)

        episodic = PostgresEpisodicStore(db)
        announcer = Announcer(cache, bus, workspace_ttl=settings.workspace_cache_ttl)
        search = PostgresEventSearch(db, lexical_rank=settings.search_lexical_rank)
        memory = SharedMemory(
            settings=settings, episodic=episodic, search=search, workspaces=PostgresWorkspaceStore(db), cache=cache,
            announcer=announcer, embedder=embedder, facts=facts,
        )  # fmt: skip
        consolidator = Consolidator(
            settings=settings, episodic=episodic, facts=facts, embedder=embedder,
            extractor=Consolidator.extractor_for(settings),
        )  # fmt: skip
        audit = PostgresAuditLog(db) if settings.audit else None
        maintenance = Maintenance(
            settings=settings, episodic=episodic, announcer=announcer, embedder=embedder, consolidator=consolidator,
            audit=audit,
        )  # fmt: skip
        runtime = Runtime(
            settings=settings, connections=connections, memory=memory, bus=bus, tokens=PostgresTokenStore(db),
            maintenance=maintenance, facts=facts, audit=audit,
        )  # fmt: skip

        tasks = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(tasks.cancel_scope.cancel)
        await tasks.start(bus.run)
        if audit is not None:
            await tasks.start(audit.run)
        if background:
            await tasks.start(maintenance.run)
        log.info("shared memory ready in %.0f ms", (time.perf_counter() - started) * 1000)
        yield runtime


@dataclass(frozen=True)
class AdminRuntime:
    """PostgreSQL only, for commands that need neither Redis nor the model (migrate, tokens)."""

    tokens: PostgresTokenStore
    applied_migrations: list[str]
    episodic: PostgresEpisodicStore
    audit: PostgresAuditLog


@asynccontextmanager
async def open_admin(settings: Settings) -> AsyncIterator[AdminRuntime]:
    """Migrates the database, then opens the pool (the pool's codecs need the migrated schema)."""
    async with backend_urls(settings, redis=False) as urls:
        db = PostgresPool(urls.database_url, min_size=1, max_size=2, timeout=settings.db_timeout)
        applied = await db.migrate()
        await db.open(migrate=False)
        try:
            yield AdminRuntime(
                tokens=PostgresTokenStore(db), applied_migrations=applied, episodic=PostgresEpisodicStore(db),
                audit=PostgresAuditLog(db),
            )  # fmt: skip
        finally:
            await db.close()


@asynccontextmanager
async def open_memory(settings: Settings | None = None) -> AsyncIterator[SharedMemory]:
    """The Python API: a ``SharedMemory`` on its own runtime (no background maintenance)."""
    async with open_runtime(settings) as runtime:
        yield runtime.memory
