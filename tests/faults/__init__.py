"""Fault injection with real components: a Redis behind a proxy that can be cut or stalled (and a
private Redis process that can be SIGKILLed), and an embedder that can be switched off or made to
reject some texts while the real model does the rest."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio

from mcp_shared_memory.embeddings import Embedder
from mcp_shared_memory.errors import EmbeddingUnavailable
from mcp_shared_memory.runtime import Connections, Runtime, open_runtime
from mcp_shared_memory.settings import Settings
from mcp_shared_memory.stores.postgres import PostgresPool
from mcp_shared_memory.stores.redis_client import connect_redis
from mcp_shared_memory.vectors import Vector

from ..redis_server import RedisProcess, redis_process
from ..tcp_proxy import FaultyProxy, faulty_proxy


async def eventually(check: Callable[[], Awaitable[object]], *, seconds: float = 10) -> None:
    """Wait until ``check()`` is truthy: for state only another process or PostgreSQL can show (a row
    committed, a lock held), which no event in this process announces."""
    with anyio.fail_after(seconds):
        while not await check():  # noqa: ASYNC110 - polling state outside this process
            await anyio.sleep(0.01)


class FaultyEmbedder(Embedder):
    """The real model behind a switch: ``down`` fails every call (an outage), ``rejects`` fails the
    calls containing a matching text (an endpoint refusing one input)."""

    dimension_is_static = True

    def __init__(self, model: Embedder) -> None:
        super().__init__(batch_size=model.batch_size)
        self._model = model
        self.model_id = model.model_id
        self.dimension = model.dimension
        self.down = False
        self.hangs = False  # an endpoint that accepts the request and never answers
        self.rejects: Callable[[str], bool] = lambda text: False

    async def _embed_batch(self, texts: list[str]) -> list[Vector]:
        if self.hangs:
            await anyio.sleep_forever()
        if self.down:
            raise EmbeddingUnavailable("The embedding endpoint is unreachable (test outage); retry later.")
        if any(self.rejects(t) for t in texts):
            raise EmbeddingUnavailable("The embedding endpoint rejected the input (HTTP 400)")
        return await self._model.embed_many(texts)


@asynccontextmanager
async def faulty_embedder_runtime(
    settings: Settings, connections: Connections
) -> AsyncIterator[tuple[Runtime, FaultyEmbedder]]:
    """A runtime whose embedder is a ``FaultyEmbedder`` over the session's model."""
    embedder = FaultyEmbedder(connections.embedder)
    async with embedder:
        faulty = Connections(db=connections.db, redis=connections.redis, embedder=embedder)
        async with open_runtime(settings, connections=faulty) as runtime:
            yield runtime, embedder


@dataclass
class FaultyRedis:
    server: RedisProcess
    proxy: FaultyProxy
    runtime: Runtime


@asynccontextmanager
async def faulty_redis_runtime(
    settings: Settings, connections: Connections, *, redis_timeout: float = 0.5
) -> AsyncIterator[FaultyRedis]:
    """A runtime on a private Redis reached through a fault-injecting proxy (PostgreSQL and the model
    are the session's)."""
    async with redis_process() as server, faulty_proxy("127.0.0.1", server.port) as proxy:
        client = connect_redis(proxy.url(), timeout=redis_timeout)
        try:
            faulty = Connections(db=connections.db, redis=client, embedder=connections.embedder)
            changed = settings.model_copy(update={"redis_timeout": redis_timeout})
            async with open_runtime(changed, connections=faulty) as rt:
                yield FaultyRedis(server=server, proxy=proxy, runtime=rt)
        finally:
            await client.aclose()


def postgres_target(dsn: str) -> tuple[tuple[str, int | None], str]:
    """Where ``dsn`` connects ((socket path, None) or (host, port)) and the DSN with that replaced by a
    ``{proxy}`` placeholder for the proxy's port."""
    parts = urlsplit(dsn)
    query = dict(parse_qsl(parts.query))
    host = query.pop("host", None) or parts.hostname or "localhost"
    port = int(query.pop("port", None) or parts.port or 5432)
    user = parts.username or ""
    auth = f"{user}:{parts.password}@" if parts.password else (f"{user}@" if user else "")
    proxied = urlunsplit((parts.scheme, f"{auth}127.0.0.1:{{proxy}}", parts.path, urlencode(query), ""))
    if host.startswith("/"):
        return (f"{host}/.s.PGSQL.{port}", None), proxied
    return (host, port), proxied


@dataclass
class FaultyPostgres:
    proxy: FaultyProxy
    runtime: Runtime


@asynccontextmanager
async def faulty_postgres_runtime(settings: Settings, connections: Connections) -> AsyncIterator[FaultyPostgres]:
    """A runtime whose PostgreSQL pools (the owner's and the application role's) connect through one
    fault-injecting proxy."""
    assert settings.database_url is not None
    owner_url = settings.database_owner_url or settings.database_url
    (host, port), proxied = postgres_target(settings.database_url.get_secret_value())
    _, owner_proxied = postgres_target(owner_url.get_secret_value())
    async with faulty_proxy(host, port) as proxy:
        db = PostgresPool(owner_proxied.format(proxy=proxy.port), min_size=1, max_size=2, timeout=2.0)
        tenant_db = PostgresPool(proxied.format(proxy=proxy.port), min_size=1, max_size=4, timeout=2.0, app_role=True)
        await db.open(migrate=False)
        await tenant_db.open(migrate=False)
        try:
            faulty = Connections(db=db, redis=connections.redis, embedder=connections.embedder, tenant_db=tenant_db)
            async with open_runtime(settings, connections=faulty) as runtime:
                yield FaultyPostgres(proxy=proxy, runtime=runtime)
        finally:
            await tenant_db.close()
            await db.close()
