"""The composition root: opens every store in an AsyncExitStack and closes them in reverse.
Used alike by the MCP lifespan, the CLI and the tests."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import anyio
import anyio.to_thread

from .embeddings import Embedder, create_embedder
from .memory import SharedMemory
from .settings import Settings
from .stores.cache import RedisCache, connect_redis
from .stores.episodic import PostgresEpisodicStore
from .stores.facts import FactsStore
from .stores.facts_pg import PgVectorFactsStore
from .stores.postgres import PostgresPool

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackendUrls:
    database_url: str
    redis_url: str


@asynccontextmanager
async def backend_urls(settings: Settings) -> AsyncIterator[BackendUrls]:
    """The configured URLs, starting embedded PostgreSQL / Valkey for whichever is not configured."""
    database_url = settings.database_url.get_secret_value() if settings.database_url else None
    redis_url = settings.redis_url.get_secret_value() if settings.redis_url else None
    if database_url and redis_url:
        yield BackendUrls(database_url, redis_url)
        return
    from .embedded import start_embedded

    backends = await anyio.to_thread.run_sync(
        lambda: start_embedded(settings.data_dir, postgres=database_url is None, redis=redis_url is None)
    )
    try:
        yield BackendUrls(database_url or backends.database_url or "", redis_url or backends.redis_url or "")
    finally:
        await anyio.to_thread.run_sync(backends.release)


def create_facts_store(settings: Settings, db: PostgresPool, embedder: Embedder) -> FactsStore:
    if settings.qdrant_url:
        from .stores.facts_qdrant import QdrantFactsStore

        return QdrantFactsStore.from_settings(settings, model_id=embedder.model_id, dimension=embedder.dimension)
    return PgVectorFactsStore(db, model_id=embedder.model_id)


@asynccontextmanager
async def open_database(settings: Settings, *, migrate: bool = True) -> AsyncIterator[PostgresPool]:
    """Only PostgreSQL (migrated): for the CLI's migrate and token commands."""
    async with backend_urls(settings) as urls:
        db = PostgresPool(urls.database_url, min_size=1, max_size=2, timeout=settings.db_timeout)
        await db.open(migrate=migrate)
        try:
            yield db
        finally:
            await db.close()


@asynccontextmanager
async def open_memory(
    settings: Settings | None = None, *, migrate: bool = True, check_model: bool = True
) -> AsyncIterator[SharedMemory]:
    """Open PostgreSQL, Redis, the embedder and the facts store; yield the ``SharedMemory``.
    ``check_model=False`` skips the embedding-model guard (for ``reembed`` only)."""
    settings = settings or Settings()
    started = time.perf_counter()
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

        redis_client = connect_redis(urls.redis_url, timeout=settings.redis_timeout)
        cache = RedisCache(
            redis_client, prefix=settings.redis_prefix, recent_max=settings.recent_max,
            recent_ttl=settings.recent_ttl,
        )  # fmt: skip
        stack.push_async_callback(cache.close)
        if not await cache.ping():
            log.warning("Redis is not reachable: serving from PostgreSQL until it is")

        episodic = PostgresEpisodicStore(db)
        if check_model:
            await episodic.ensure_embedding_model(embedder.model_id, embedder.dimension)

        facts = create_facts_store(settings, db, embedder)
        await facts.open()
        stack.push_async_callback(facts.close)

        memory = SharedMemory(settings=settings, episodic=episodic, cache=cache, embedder=embedder, facts=facts)
        log.info("shared memory ready in %.0f ms", (time.perf_counter() - started) * 1000)
        yield memory
