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
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import anyio
import anyio.to_thread

from . import metrics
from .announcer import Announcer
from .consolidation import Consolidator
from .embedding_queue import EmbeddingQueue
from .embeddings import Embedder, create_embedder
from .errors import ConfigError, sole_error
from .maintenance import Maintenance
from .memory import SharedMemory
from .settings import Settings
from .stores.audit import PostgresAuditLog
from .stores.bus import RedisBus
from .stores.cache import RedisCache
from .stores.embedding_backlog import PostgresEmbeddingBacklog
from .stores.episodic import PostgresEpisodicStore
from .stores.event_search import PostgresEventSearch
from .stores.facts import FactsStore
from .stores.facts_pg import PgVectorFactsStore
from .stores.postgres import PostgresPool
from .stores.quota import TenantEventQuota
from .stores.rate_limit import RedisRateLimiter
from .stores.redis_client import RedisBreaker, RedisClient, connect_redis
from .stores.tokens import PostgresTokenStore
from .stores.workspaces import PostgresWorkspaceStore

log = logging.getLogger(__name__)


# The owner's pool does the background work and the token look-ups; consolidation holds one connection
# for its scope lock while it reads and marks the scope's events on another.
OWNER_POOL_MAX = 3


@dataclass(frozen=True)
class BackendUrls:
    database_url: str  # serves requests: the application role (or the one login configured)
    redis_url: str
    owner_url: str | None = None  # the tables' owner: migrations and cross-tenant work (None: database_url)
    owner_label: str = "MSM_DATABASE_URL"  # the setting that names the owner, for messages

    @property
    def owner(self) -> str:
        return self.owner_url or self.database_url


@asynccontextmanager
async def backend_urls(settings: Settings, *, redis: bool = True) -> AsyncIterator[BackendUrls]:
    """The configured URLs, starting embedded PostgreSQL / Valkey for whichever is not configured
    (Valkey only when ``redis``). The embedded PostgreSQL gives both logins: its superuser as the owner,
    and the application role."""
    database_url = settings.database_url.get_secret_value() if settings.database_url else None
    owner_url = settings.database_owner_url.get_secret_value() if settings.database_owner_url else None
    redis_url = settings.redis_url.get_secret_value() if settings.redis_url else None
    if owner_url and not database_url:
        raise ConfigError(
            "MSM_DATABASE_OWNER_URL is set but MSM_DATABASE_URL is not: set both (the application role's login "
            "and the tables' owner), or neither for the embedded PostgreSQL"
        )
    label = "MSM_DATABASE_OWNER_URL" if owner_url else "MSM_DATABASE_URL"
    if database_url and (redis_url or not redis):
        yield BackendUrls(database_url, redis_url or "", owner_url, label)
        return
    from .embedded import start_embedded

    backends = await anyio.to_thread.run_sync(
        lambda: start_embedded(settings.data_dir, postgres=database_url is None, redis=redis and redis_url is None)
    )
    try:
        if database_url is None:
            database_url, owner_url = backends.app_database_url, backends.database_url
            label = "the embedded PostgreSQL"
        yield BackendUrls(database_url or "", redis_url or backends.redis_url or "", owner_url, label)
    finally:
        await anyio.to_thread.run_sync(backends.release)


@dataclass(frozen=True)
class Connections:
    """The expensive, shareable part of a runtime.

    ``db`` is the tables' owner's pool: migrations and the work that crosses tenants (the list is in
    ``PostgresPool.cross_tenant``). ``tenant_db`` serves every request as the application role, under
    row-level security; None (connections built by hand, in tests) serves requests from ``db``."""

    db: PostgresPool
    redis: RedisClient
    embedder: Embedder
    tenant_db: PostgresPool | None = None

    @property
    def requests_db(self) -> PostgresPool:
        return self.tenant_db or self.db


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
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(functools.partial(embedder.open, wait=not embedder.dimension_is_static))
                tg.start_soon(open_backends)
        except BaseExceptionGroup as group:
            raise sole_error(group) from None
        stack.push_async_callback(embedder.close)
        assert urls is not None

        db = await stack.enter_async_context(owner_pool(urls, settings, migrate=migrate))
        if check_model:
            await db.ensure_embedding_model(embedder.model_id, embedder.dimension)
        tenant_db = PostgresPool(
            urls.database_url, min_size=settings.db_pool_min, max_size=settings.db_pool_max,
            timeout=settings.db_timeout, app_role=True,
        )  # fmt: skip
        await tenant_db.open(migrate=False)
        stack.push_async_callback(tenant_db.close)

        redis_client = connect_redis(urls.redis_url, timeout=settings.redis_timeout)
        stack.push_async_callback(redis_client.aclose)
        yield Connections(db=db, redis=redis_client, embedder=embedder, tenant_db=tenant_db)


@asynccontextmanager
async def owner_pool(urls: BackendUrls, settings: Settings, *, migrate: bool = True) -> AsyncIterator[PostgresPool]:
    """The owner's pool, the schema migrated first; refused when its login is under row-level security (it
    would see no tenant's rows)."""
    db = PostgresPool(urls.owner, max_size=OWNER_POOL_MAX, timeout=settings.db_timeout, label=urls.owner_label)
    await db.open(migrate=migrate)
    try:
        if not await db.exempt_from_rls():
            raise ConfigError(
                f"{urls.owner_label} logs in as a role under row-level security, which can neither apply the "
                "migrations nor do the work across tenants: set MSM_DATABASE_OWNER_URL to the tables' owner"
            )
        yield db
    finally:
        await db.close()


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
        rate_limiter: RedisRateLimiter | None = None,
        embeddings: EmbeddingQueue,
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
        # None when MSM_RATE_LIMIT_PER_MINUTE=0
        self.rate_limiter = rate_limiter
        self.embeddings = embeddings

    async def health(self) -> Health:
        redis_ok = True
        try:
            await self._connections.redis.ping()
        except Exception:
            redis_ok = False
        return Health(postgres=await self._connections.requests_db.ping(), redis=redis_ok)

    async def reembed(self, progress: Callable[[int], object] | None = None) -> tuple[int, int, int]:
        """Re-embed every event and fact with the configured model: (events cleared, embedded, facts)."""
        db, embedder = self._connections.db, self._connections.embedder
        cleared = await PostgresEmbeddingBacklog(db).clear()
        await db.set_embedding_model(embedder.model_id, embedder.dimension)
        embedded = await self.embeddings.drain(progress)
        facts = self._facts
        if isinstance(facts, PgVectorFactsStore):  # it serves requests: every tenant's facts need the owner
            facts = PgVectorFactsStore(db, model_id=embedder.model_id)
        return cleared, embedded, await facts.reembed(embedder.embed_many)


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
        # Requests are served from the application role's pool; the owner's does the background work.
        db, owner, embedder = connections.requests_db, connections.db, connections.embedder
        breaker = RedisBreaker(settings.redis_breaker_seconds, probe=connections.redis.ping)
        stack.callback(breaker.close)
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
        search = PostgresEventSearch(
            db, lexical_rank=settings.search_lexical_rank, quantize_above=settings.search_quantize_above
        )
        quota = TenantEventQuota(
            db, connections.redis, prefix=settings.redis_prefix, limit=settings.tenant_quota_events, breaker=breaker
        )
        embeddings = EmbeddingQueue(
            backlog=PostgresEmbeddingBacklog(owner), scoped=PostgresEmbeddingBacklog(db), embedder=embedder,
            catch_up_timeout=settings.embedding_catch_up_seconds,
        )  # fmt: skip
        memory = SharedMemory(
            settings=settings, episodic=episodic, search=search, workspaces=PostgresWorkspaceStore(db), cache=cache,
            announcer=announcer, embedder=embedder, facts=facts, quota=quota, embeddings=embeddings,
        )  # fmt: skip
        upkeep = PostgresEpisodicStore(owner)
        consolidator = Consolidator(
            settings=settings, episodic=upkeep, facts=facts, embedder=embedder,
            extractor=Consolidator.extractor_for(settings),
        )  # fmt: skip
        audit = PostgresAuditLog(owner) if settings.audit else None
        maintenance = Maintenance(
            settings=settings, episodic=upkeep, announcer=announcer, consolidator=consolidator, audit=audit
        )
        rate_limiter = None
        if settings.rate_limit_per_minute:
            rate_limiter = RedisRateLimiter(
                connections.redis, prefix=settings.redis_prefix, per_minute=settings.rate_limit_per_minute,
                burst=settings.rate_limit_burst, breaker=breaker,
            )  # fmt: skip
        runtime = Runtime(
            settings=settings, connections=connections, memory=memory, bus=bus, tokens=PostgresTokenStore(owner),
            maintenance=maintenance, facts=facts, audit=audit, rate_limiter=rate_limiter, embeddings=embeddings,
        )  # fmt: skip

        tasks = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(tasks.cancel_scope.cancel)
        metrics.watch_pool("requests", db.usage)
        metrics.watch_pool("owner", owner.usage)
        await tasks.start(bus.run)
        await tasks.start(embeddings.run)  # every process: its writes are acknowledged before they are embedded
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
    """Migrates the database as the tables' owner, then opens the owner's pool (its codecs need the
    migrated schema)."""
    async with backend_urls(settings, redis=False) as urls:
        db = PostgresPool(urls.owner, min_size=1, max_size=2, timeout=settings.db_timeout, label=urls.owner_label)
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
