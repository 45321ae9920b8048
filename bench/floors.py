"""Floors, each measured once per run: the SDK's trivial round trip (stdio, HTTP), a raw INSERT of one
event row, a raw Redis pipeline, one local embedding (single and batched) and a raw pub/sub round trip."""

from __future__ import annotations

import hashlib
import json
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import asyncpg
import numpy as np
import redis.asyncio as aioredis

from mcp_shared_memory.stores.episodic import EVENT_COLUMNS
from mcp_shared_memory.stores.postgres import init_connection

from .procs import check, http_client, stdio_client_for, trivial_http_server, trivial_params
from .stats import Summary, latency_metric, time_calls
from .text import Sentences

if TYPE_CHECKING:
    from mcp_shared_memory.embeddings import Embedder
    from mcp_shared_memory.embeddings.local import OnnxEmbedder

    from .context import Bench

SECTION = "floors"
BATCH = 32

# The floor of one durable write: a plain INSERT of an event row returning its columns, as the package's
# first version wrote events. Its write today also takes the scope's lock and queues the event in the
# outbox; the floor leaves that out on purpose (that is overhead to be measured, not part of the floor).
INSERT_EVENT = f"""
INSERT INTO shared_episodic_memories
  (tenant_id, scope_type, scope_id, agent_id, agent_type, event_type, role, content, content_hash,
   embedding, embedding_model, importance, metadata, idempotency_key)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
ON CONFLICT ON CONSTRAINT shared_ep_idempotency DO NOTHING
RETURNING {EVENT_COLUMNS}
"""

# name -> description shown in the table
FLOOR_NAMES = {
    "sdk:stdio:auto": "SDK trivial tool, stdio, modern",
    "sdk:stdio:legacy": "SDK trivial tool, stdio, legacy",
    "sdk:http:auto": "SDK trivial tool, HTTP, modern",
    "sdk:http:legacy": "SDK trivial tool, HTTP, legacy",
    "pg_insert": "raw asyncpg INSERT (event row + 384-d vector)",
    "redis_pipeline": "raw Redis pipeline LPUSH/LTRIM/EXPIRE/PUBLISH",
    "embed_single": "one local embedding of an event sentence (OnnxEmbedder.embed)",
    "embed_query": "one local embedding of a short query (OnnxEmbedder.embed)",
    "embed_query_service": "one embedding of a short query through the shared embedding service (unix socket)",
    "embed_batch": "local embedding, batch of 32 (value: sentences/s)",
    "pubsub": "raw Redis pub/sub round trip (publish -> other connection)",
}


def query_embedding_floor(embedder: Embedder) -> str:
    """The floor id of one query embedding as ``embedder`` computes it: through the machine's embedding
    service (the default) or in process (``MSM_EMBEDDING_SERVICE=off``, or the service's fallback)."""
    from mcp_shared_memory.embeddings.local_service import LocalServiceEmbedder

    through_service = isinstance(embedder, LocalServiceEmbedder) and not embedder.in_process
    return "embed_query_service" if through_service else "embed_query"


def unit_vector(rng: np.random.Generator, dim: int = 384) -> np.ndarray:
    v = rng.standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


async def connect_pg(url: str) -> asyncpg.Connection:
    """A raw connection with the package's codecs (pgvector, jsonb as JSON)."""
    conn = await asyncpg.connect(url, timeout=15)
    await init_connection(conn)
    return conn


def raw_redis(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(url, decode_responses=True, socket_timeout=5, socket_connect_timeout=5)


@asynccontextmanager
async def local_embedder() -> AsyncIterator[OnnxEmbedder]:
    """The package's OnnxEmbedder with the server's default settings (batch 32, threads = cores)."""
    from mcp_shared_memory.embeddings.local import OnnxEmbedder

    embedder = OnnxEmbedder()
    await embedder.open()
    try:
        yield embedder
    finally:
        await embedder.close()


@asynccontextmanager
async def service_embedder() -> AsyncIterator[Embedder]:
    """The client of an embedding service started for this floor in a temporary data dir."""
    from mcp_shared_memory.embeddings import create_embedder
    from mcp_shared_memory.settings import Settings

    with tempfile.TemporaryDirectory(prefix="msm-bench-embed-") as data_dir:
        embedder = create_embedder(Settings(data_dir=Path(data_dir), embedding_service="auto"))
        await embedder.open()
        try:
            yield embedder
        finally:
            await embedder.close()


async def measure_floor(bench: Bench, name: str) -> tuple[Summary, float | None]:
    """Measure one floor and record its row; returns (latency summary, value for rate floors)."""
    p = bench.profile
    value: float | None = None
    note = ""
    if name.startswith("sdk:"):
        _, transport, mode = name.split(":")
        samples = await sdk_round_trips(bench, transport, mode, p.floor_calls, p.warmup)
    elif name == "pg_insert":
        samples = await pg_inserts(bench, p.floor_calls, p.warmup)
    elif name == "redis_pipeline":
        samples = await redis_pipelines(bench, p.floor_calls, p.warmup)
    elif name == "embed_single":
        samples = await embed_singles(p.embed_calls, 5, query=False)
    elif name == "embed_query":
        samples = await embed_singles(p.embed_calls, 5, query=True)
    elif name == "embed_query_service":
        samples = await embed_singles(p.embed_calls, 5, query=True, service=True)
    elif name == "embed_batch":
        samples = await embed_batches(p.embed_batches, 2)
        value = BATCH * len(samples) / sum(samples)
        note = f"{value:.0f} sentences/s at batch {BATCH}"
    elif name == "pubsub":
        samples = await pubsub_round_trips(bench, p.floor_calls, p.warmup)
    else:
        raise KeyError(f"unknown floor {name}")
    summary = Summary.of(samples)
    metric = latency_metric(SECTION, FLOOR_NAMES[name], summary, note=note, floor_id=name)
    if value is not None:
        metric.value, metric.unit = value, "ms; sentences/s"
    bench.add(metric)
    return summary, value


async def sdk_round_trips(bench: Bench, transport: str, mode: str, n: int, warmup: int) -> list[float]:
    async def run(client: Any) -> list[float]:
        async def call(_: int) -> None:
            result = await client.call_tool("const", {})
            check(result, "const")

        return await time_calls(call, n, warmup=warmup)

    with anyio.fail_after(120):
        if transport == "stdio":
            async with stdio_client_for(trivial_params(), bench.errlog, mode=mode) as client:
                return await run(client)
        async with trivial_http_server(bench.errlog) as (url, _), http_client(url, mode=mode) as client:
            return await run(client)


def event_args(tenant: str, content: str, vector: np.ndarray) -> tuple[Any, ...]:
    """The INSERT's 14 parameters, as the package passes them."""
    digest = hashlib.sha256(content.encode()).hexdigest()[:32]
    return (
        tenant, "user", "floor", "floor-agent", "agent", "observation", None, content, digest,
        vector, "all-MiniLM-L6-v2", 0.5, {}, None,
    )  # fmt: skip


async def pg_inserts(bench: Bench, n: int, warmup: int) -> list[float]:
    rng = np.random.default_rng(1)
    words = Sentences(seed=11)
    tenant = bench.tenant("floor")
    conn = await connect_pg(bench.backends.database_url)
    try:

        async def insert(_: int) -> None:
            row = await conn.fetchrow(INSERT_EVENT, *event_args(tenant, words.next(), unit_vector(rng)))
            assert row is not None

        return await time_calls(insert, n, warmup=warmup)
    finally:
        await conn.close()


def event_json(content: str) -> str:
    """A payload the size of a cached event."""
    return json.dumps(
        {
            "id": str(uuid.uuid4()), "seq": 123456, "scope_type": "user", "scope_id": "alice",
            "agent_id": "agent-a", "agent_type": "research", "event_type": "observation", "role": None,
            "content": content, "importance": 0.7, "metadata": {}, "created_at": "2025-01-01T00:00:00Z",
        }
    )  # fmt: skip


async def redis_pipelines(bench: Bench, n: int, warmup: int) -> list[float]:
    client = raw_redis(bench.backends.redis_url)
    key = f"bench:{bench.run_id}:floor:recent"
    channel = f"bench:{bench.run_id}:floor:events"
    words = Sentences(seed=12)
    try:

        async def pipeline(_: int) -> None:
            payload = event_json(words.next())
            async with client.pipeline(transaction=False) as pipe:
                pipe.lpush(key, payload)
                pipe.ltrim(key, 0, 99)
                pipe.expire(key, 3600)
                pipe.publish(channel, payload)
                await pipe.execute()

        return await time_calls(pipeline, n, warmup=warmup)
    finally:
        await client.delete(key)
        await client.aclose()


async def embed_singles(n: int, warmup: int, *, query: bool, service: bool = False) -> list[float]:
    """Event-like sentences (~30 tokens, as written) or short questions (as searched); ``service``: through
    an embedding service of its own (what a stdio server asks), else in process."""
    words = Sentences(seed=13)
    async with service_embedder() if service else local_embedder() as embedder:

        async def embed(i: int) -> None:
            # a counter keeps queries distinct, like the unique sentences
            await embedder.embed(f"{words.query()} {i}" if query else words.next())

        return await time_calls(embed, n, warmup=warmup)


async def embed_batches(n: int, warmup: int) -> list[float]:
    words = Sentences(seed=14)
    async with local_embedder() as embedder:

        async def embed(_: int) -> None:
            vectors = await embedder.embed_many(words.batch(BATCH))
            assert len(vectors) == BATCH

        return await time_calls(embed, n, warmup=warmup, per_call=60)


async def pubsub_round_trips(bench: Bench, n: int, warmup: int) -> list[float]:
    publisher = raw_redis(bench.backends.redis_url)
    subscriber = raw_redis(bench.backends.redis_url)
    channel = f"bench:{bench.run_id}:floor:pubsub"
    pubsub = subscriber.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(channel)
    try:

        async def round_trip(i: int) -> None:
            await publisher.publish(channel, str(i))
            with anyio.fail_after(2.0):
                while True:  # None: nothing yet, or a subscribe confirmation (ignored)
                    message = await pubsub.get_message(timeout=1.0)
                    if message and message.get("type") == "message" and message.get("data") == str(i):
                        return

        return await time_calls(round_trip, n, warmup=warmup)
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await publisher.aclose()
        await subscriber.aclose()


async def run(bench: Bench) -> None:
    """The floors section: every floor, so the table has them all even when nothing else needs them."""
    names = ["pg_insert", "redis_pipeline", "pubsub", "embed_single", "embed_query", "embed_batch"]
    names += [f"sdk:{t}:{m}" for t in ("stdio", "http") for m in bench.profile.modes]
    for name in names:
        try:
            await bench.floor(name)
        except Exception as exc:
            bench.error(SECTION, name, exc)
