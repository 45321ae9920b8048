"""The data of the ``large`` section, built once and cached between runs.

Two databases in an embedded PostgreSQL of their own under the cache dir (``MSM_BENCH_CACHE``, default
``~/.cache/mcp-shared-memory-bench``): 100k events with a 10k-event scope, and 1M events with a 100k-event
scope. The large scope's events are real texts (the ``fleet`` corpus generated with one seed after another
until there are enough distinct events) with their real MiniLM embeddings, so the recall of the quantized
first pass is measured on the vectors it will meet: clustered, anisotropic, with near-duplicates, which
random or Gaussian-noise vectors are not. Questions are the corpus's own. The other 90 % of the rows are
small scopes (100 events each, 100 tenants) of generated sentences with random unit vectors: they are never
searched for recall, only make the table, its indexes and the buffer cache as big as at that scale. They are
written interleaved with the large scope (10 % of every COPY batch), as a busy scope is written among
others, so its events are spread over the table's pages as they would be.

A database is reused when its key matches: the dataset version, the sizes, the texts, the model and every
migration's text (a changed schema is rebuilt, never measured on stale data). Delete the cache dir to force
a rebuild. Build times are recorded in the database and reported with every run.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import anyio
import anyio.to_thread
import asyncpg
import numpy as np
import platformdirs

from mcp_shared_memory.stores.bulk import EventRow, copy_events
from mcp_shared_memory.stores.migrations import available_migrations

from .context import MODEL_ID
from .corpora import Doc, fleet
from .floors import local_embedder
from .text import Sentences

if TYPE_CHECKING:
    from mcp_shared_memory.settings import Settings

DATASET_VERSION = 1
SCOPE_TENANT = "large"
SCOPE_ID = "large"
MID_TENANT = "mid"
FILLER_TENANTS = 100
FILLER_SCOPE_ROWS = 100
CHUNK = 20_000
SCOPE_SHARE = 0.10
EMBED_BATCH = 256

MARKER = """
CREATE TABLE IF NOT EXISTS bench_dataset (
  key TEXT PRIMARY KEY, rows BIGINT NOT NULL, build_seconds DOUBLE PRECISION NOT NULL,
  built_at TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True)
class Case:
    label: str
    rows: int
    scope_rows: int
    # scopes of these sizes (the large scope's first events, in tenant MID_TENANT): where the exact scan
    # and the two passes cross
    mid_scopes: tuple[int, ...] = ()

    @property
    def database(self) -> str:
        return f"bench_large_{self.label.lower()}"


CASES = (Case("100k", 100_000, 10_000, (1000, 2000, 5000)), Case("1M", 1_000_000, 100_000))


@dataclass(frozen=True)
class Corpus:
    """The large scope's events (in write order) and the questions asked of them."""

    docs: list[Doc]
    questions: list[str]
    seeds_for: dict[int, int]  # scope rows -> how many seeds' docs they span (questions come from those)
    question_seed: list[int]


@dataclass(frozen=True)
class Built:
    rows: int
    seconds: float
    built_at: str
    cached: bool


def cache_dir() -> Path:
    return Path(os.environ.get("MSM_BENCH_CACHE") or platformdirs.user_cache_dir("mcp-shared-memory-bench"))


def corpus(rows: int) -> Corpus:
    """``rows`` distinct fleet events, seed after seed, and every question of those seeds."""
    docs: list[Doc] = []
    seen: set[str] = set()
    questions: list[str] = []
    question_seed: list[int] = []
    seeds_for: dict[int, int] = {}
    seed = 0
    while len(docs) < rows:
        built = fleet.build(seed)
        for doc in built.docs:
            if doc.content not in seen:
                seen.add(doc.content)
                docs.append(doc)
        questions += [q.text for q in built.questions]
        question_seed += [seed] * len(built.questions)
        seed += 1
        for case in CASES:
            if case.scope_rows not in seeds_for and len(docs) >= case.scope_rows:
                seeds_for[case.scope_rows] = seed
    return Corpus(docs[:rows], questions, seeds_for, question_seed)


def digest(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


async def embeddings(texts: list[str]) -> tuple[np.ndarray, float | None]:
    """The texts' embeddings, from the cache or computed now (then also the seconds it took)."""
    path = cache_dir() / f"embeddings-{digest(MODEL_ID, *texts)}.npy"
    if path.exists():
        return np.load(path), None
    started = time.perf_counter()
    parts = []
    async with local_embedder() as embedder:
        for i in range(0, len(texts), EMBED_BATCH):
            parts.append(np.stack(await embedder.embed_many(texts[i : i + EMBED_BATCH])).astype(np.float32))
    vectors = np.concatenate(parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors, time.perf_counter() - started


@asynccontextmanager
async def cluster() -> AsyncIterator[str]:
    """The cache's embedded PostgreSQL (started, or attached to); yields its owner's URL."""
    from mcp_shared_memory.embedded import start_embedded

    path = cache_dir() / "cluster"
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o755)  # as root, PostgreSQL runs as its own user, which must traverse this
    held = await anyio.to_thread.run_sync(lambda: start_embedded(path, postgres=True, redis=False))
    try:
        assert held.database_url is not None
        yield held.database_url
    finally:
        await anyio.to_thread.run_sync(held.release)


def database_url(cluster_url: str, database: str) -> str:
    parts = urlsplit(cluster_url)
    return urlunsplit(parts._replace(path=f"/{database}"))


def dataset_key(case: Case, texts: list[str]) -> str:
    migrations = [f"{v}:{name}:{sql}" for v, name, sql in available_migrations()]
    return digest(str(DATASET_VERSION), repr(case), MODEL_ID, *texts, *migrations)


async def ensure(cluster_url: str, case: Case, docs: list[Doc], vectors: np.ndarray, settings: Settings) -> Built:
    """The case's database, reused when its key matches, else (re)built: COPY, then VACUUM ANALYZE (the
    visibility map the index-only first pass relies on, as autovacuum leaves a table in steady state)."""
    key = dataset_key(case, [d.content for d in docs])
    admin = await asyncpg.connect(cluster_url)
    try:
        exists = await admin.fetchval("SELECT true FROM pg_database WHERE datname = $1", case.database)
        if exists:
            conn = await asyncpg.connect(database_url(cluster_url, case.database))
            try:
                await conn.execute(MARKER)
                row = await conn.fetchrow("SELECT * FROM bench_dataset WHERE key = $1", key)
            finally:
                await conn.close()
            if row is not None:
                return Built(row["rows"], row["build_seconds"], row["built_at"].isoformat(timespec="minutes"), True)
            await admin.execute(f'DROP DATABASE "{case.database}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{case.database}"')
    finally:
        await admin.close()
    started = time.perf_counter()
    rows = await load(case, docs, vectors, settings)
    conn = await asyncpg.connect(database_url(cluster_url, case.database))
    try:
        await conn.execute("VACUUM (ANALYZE) shared_episodic_memories", timeout=3600)
        seconds = time.perf_counter() - started
        await conn.execute(MARKER)
        await conn.execute(
            "INSERT INTO bench_dataset (key, rows, build_seconds) VALUES ($1, $2, $3)", key, rows, seconds
        )
    finally:
        await conn.close()
    return Built(rows, seconds, time.strftime("%Y-%m-%dT%H:%M"), False)


async def load(case: Case, docs: list[Doc], vectors: np.ndarray, settings: Settings) -> int:
    """COPY the case's rows (the schema migrated by ``open_connections``), the scope interleaved."""
    from mcp_shared_memory.runtime import open_connections

    rng = np.random.default_rng(11)
    sentences = Sentences(seed=17)
    searched = scope_events(docs[: case.scope_rows], vectors, SCOPE_TENANT, SCOPE_ID)
    for size in case.mid_scopes:
        searched += scope_events(docs[:size], vectors, MID_TENANT, f"m{size}")
    scope_rows = iter([searched[i] for i in rng.permutation(len(searched))])
    filler = filler_events(case.rows - len(searched), vectors.shape[1], rng, sentences)
    per_chunk = round(CHUNK * SCOPE_SHARE)
    copied = 0
    async with open_connections(settings) as connections:
        while copied < case.rows:
            batch = [row for _, row in zip(range(per_chunk), scope_rows, strict=False)]
            batch += [row for _, row in zip(range(CHUNK - len(batch)), filler, strict=False)]
            if not batch:
                break
            copied += await copy_events(connections.db, batch)
    return copied


def scope_events(docs: list[Doc], vectors: np.ndarray, tenant: str, scope_id: str) -> list[EventRow]:
    return [
        EventRow(
            id=uuid.uuid4(),
            tenant_id=tenant,
            scope_type="user",
            scope_id=scope_id,
            agent_id=doc.agent_id,
            agent_type=doc.agent_type,
            event_type=doc.event_type,
            content=doc.content,
            content_hash=hashlib.sha256(doc.content.encode()).hexdigest()[:32],
            embedding=vector,
            embedding_model=MODEL_ID,
            importance=doc.importance,
        )
        for doc, vector in zip(docs, vectors, strict=False)
    ]


def filler_events(count: int, dim: int, rng: np.random.Generator, sentences: Sentences) -> Iterator[EventRow]:
    """Small scopes of generated sentences with random unit vectors, drawn as they are written."""
    for k in range(count):
        scope = k // FILLER_SCOPE_ROWS
        vector = rng.standard_normal(dim, dtype=np.float32)
        content = sentences.next()
        yield EventRow(
            id=uuid.UUID(bytes=rng.bytes(16), version=4),
            tenant_id=f"t{scope % FILLER_TENANTS:03d}",
            scope_type="user",
            scope_id=f"s{scope}",
            agent_id=f"agent-{k % 7}",
            agent_type="agent",
            event_type="observation",
            content=content,
            content_hash=hashlib.sha256(content.encode()).hexdigest()[:32],
            embedding=vector / np.linalg.norm(vector),
            embedding_model=MODEL_ID,
            importance=0.5,
        )
