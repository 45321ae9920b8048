"""Search latency and recall@10 against exact brute force (numpy) at 10k / 100k / 1M events.

Data: 100 tenants, a large scope holding ~10 % of all rows (tenant 000, ``user:large``) and many small
scopes of ~100 rows. Vectors are synthetic but shaped like sentence embeddings: 240 cluster centres are
real MiniLM embeddings of generated topic sentences; each row is ``normalize(centre + noise)`` (cosine to
its centre ~0.7), each small scope drawing from 6 topics. Queries are real embeddings of generated
questions about a scope's topics. Rows go in with COPY (``stores.bulk.copy_events`` on the pool of the
package's ``Connections``), with ids and vectors the bench draws from per-batch seeds, so the exact top 10
is computed from regenerated vectors and nothing is read back. Queries go through
``SharedMemory.search_shared`` (embeds the query), ``PostgresEventSearch.candidates`` (vector given) and a
minimal raw SQL k-NN on a raw connection of the bench's own (the floor).
"""

from __future__ import annotations

import hashlib
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
import asyncpg
import numpy as np

from mcp_shared_memory.event_filter import EventFilter
from mcp_shared_memory.stores.bulk import EventRow, analyze_events, copy_events
from mcp_shared_memory.stores.event_search import PostgresEventSearch

from .context import MODEL_ID
from .floors import connect_pg, query_embedding_floor
from .stats import Metric, Summary, compose, latency_metric
from .text import COMPONENTS, QUESTIONS, topic_sentence

if TYPE_CHECKING:
    from mcp_shared_memory.embeddings import Embedder
    from mcp_shared_memory.memory import SharedMemory
    from mcp_shared_memory.stores.postgres import PostgresPool

    from .context import Bench

SECTION = "scale"
TENANTS = 100
SMALL_ROWS = 100
LARGE_SHARE = 0.10
TOPICS = 240
TOPICS_PER_SCOPE = 6
NOISE = 1.0  # |noise| relative to the unit centre: cosine(row, centre) ~ 1/sqrt(1 + NOISE^2)
CHUNK = 20_000
TARGET_RECALL = 0.99
RAW_KNN = """
SELECT id FROM shared_episodic_memories
WHERE tenant_id = $1 AND scope_type = 'user' AND scope_id = $2
ORDER BY embedding <=> $3 LIMIT 10
"""
# The floor of hybrid search: both candidate lists (30 each, as the server reads them for limit 10) in
# one minimal statement, without filters or fusion.
RAW_HYBRID = """
WITH v AS (SELECT id FROM shared_episodic_memories
           WHERE tenant_id = $1 AND scope_type = 'user' AND scope_id = $2
           ORDER BY embedding <=> $3 LIMIT 30),
l AS (SELECT id FROM shared_episodic_memories, msm_query($4) AS q(q), msm_scoped_query($1, 'user', $2, $4) AS sq(sq)
      WHERE tenant_id = $1 AND scope_type = 'user' AND scope_id = $2 AND scoped_lexemes @@ sq.sq
      ORDER BY ts_rank(lexemes, q, 1) DESC LIMIT 30)
SELECT id FROM v UNION SELECT id FROM l
"""


@dataclass(frozen=True)
class Batch:
    """Rows ``start .. start + count`` of a scope, drawn from ``seed`` (regenerated for the exact search)."""

    seed: int
    start: int
    count: int


@dataclass
class ScopeInfo:
    tenant: str
    scope_id: str
    topics: np.ndarray
    rows: int = 0
    batches: list[Batch] = field(default_factory=list)


@dataclass
class Dataset:
    prefix: str
    centers: np.ndarray
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(7))
    rows: int = 0
    small: list[ScopeInfo] = field(default_factory=list)
    large: ScopeInfo | None = None

    def tenant(self, k: int) -> str:
        return f"{self.prefix}{k % TENANTS:03d}"

    def plan(self, target: int) -> list[tuple[ScopeInfo, int]]:
        """(scope, rows to add) bringing the table to ``target`` scale rows."""
        if self.large is None:
            self.large = ScopeInfo(self.tenant(0), "large", np.arange(TOPICS))
        delta = target - self.rows
        large_rows = round(delta * LARGE_SHARE)
        small_rows = delta - large_rows
        plan = [(self.large, large_rows)]
        for _ in range(small_rows // SMALL_ROWS):
            k = len(self.small)
            scope = ScopeInfo(self.tenant(k), f"s{k}", self.rng.choice(TOPICS, TOPICS_PER_SCOPE, replace=False))
            self.small.append(scope)
            plan.append((scope, SMALL_ROWS))
        if small_rows % SMALL_ROWS and self.small:
            plan.append((self.small[-1], small_rows % SMALL_ROWS))
        return plan

    def draw(self, scope: ScopeInfo, batch: Batch) -> tuple[list[uuid.UUID], np.ndarray, np.ndarray]:
        """(ids, topics, unit vectors) of a batch: the same every time for the same seed."""
        rng = np.random.default_rng(batch.seed)
        topics = rng.choice(scope.topics, batch.count)
        noise = rng.standard_normal((batch.count, self.centers.shape[1]), dtype=np.float32)
        noise *= NOISE / np.sqrt(self.centers.shape[1])
        vectors = self.centers[topics] + noise
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        raw = rng.bytes(16 * batch.count)
        ids = [uuid.UUID(bytes=raw[16 * i : 16 * i + 16], version=4) for i in range(batch.count)]
        return ids, topics, vectors

    def records(self, scope: ScopeInfo, count: int) -> list[EventRow]:
        batch = Batch(int(self.rng.integers(2**63)), scope.rows, count)
        ids, topics, vectors = self.draw(scope, batch)
        out = []
        for i in range(count):
            content = f"{topic_sentence(int(topics[i]))} (row {batch.start + i} of {scope.scope_id})"
            digest = hashlib.sha256(content.encode()).hexdigest()[:32]
            row = EventRow(
                id=ids[i], tenant_id=scope.tenant, scope_type="user", scope_id=scope.scope_id,
                agent_id=f"agent-{i % 7}", agent_type="agent", event_type="observation", content=content,
                content_hash=digest, embedding=vectors[i], embedding_model=MODEL_ID, importance=0.5,
            )  # fmt: skip
            out.append(row)
        scope.batches.append(batch)
        scope.rows += count
        return out

    def vectors(self, scope: ScopeInfo) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of every row of the scope, regenerated: the exact search's input."""
        ids: list[uuid.UUID] = []
        parts = []
        for batch in scope.batches:
            batch_ids, _, batch_vectors = self.draw(scope, batch)
            ids += batch_ids
            parts.append(batch_vectors)
        return np.array(ids, dtype=object), np.concatenate(parts)


@dataclass(frozen=True)
class Subjects:
    """What a query is timed on: the floor's raw connection, the store (exact scan, and two passes whatever
    the scope's size), and the domain."""

    raw: asyncpg.Connection
    store: PostgresEventSearch
    two_pass: PostgresEventSearch
    memory: SharedMemory
    embedder: Embedder


async def run(bench: Bench) -> None:
    from mcp_shared_memory.runtime import open_runtime

    async with (
        bench.backends.connections() as connections,
        open_runtime(bench.backends.settings(), connections=connections) as runtime,
    ):
        texts = [topic_sentence(i) for i in range(TOPICS)]
        centers = np.stack(await connections.embedder.embed_many(texts)).astype(np.float32)
        data = Dataset(bench.tenant("sc"), centers)
        conn = await connect_pg(bench.backends.database_url)
        try:
            exact, two_pass = PostgresEventSearch(connections.db), PostgresEventSearch(connections.db, quantize_above=0)
            subjects = Subjects(conn, exact, two_pass, runtime.memory, connections.embedder)
            for size in bench.profile.scale_sizes:
                try:
                    with anyio.fail_after(3600):
                        await grow(bench, connections.db, data, size)
                        for cell in ("small", "large"):
                            await measure_cell(bench, subjects, data, size, cell)
                except Exception as exc:
                    bench.error(SECTION, f"{size} rows", exc)
                    break
        finally:
            await conn.close()


async def grow(bench: Bench, db: PostgresPool, data: Dataset, size: int) -> None:
    started = time.perf_counter()
    added = 0
    batch: list[EventRow] = []
    for scope, count in data.plan(size):
        batch += data.records(scope, count)
        if len(batch) >= CHUNK:
            added += await copy_events(db, batch)
            batch = []
    added += await copy_events(db, batch)
    await analyze_events(db)
    elapsed = time.perf_counter() - started
    data.rows = size
    note = f"{elapsed:.1f} s incl. vector generation and ANALYZE"
    bench.add(rate_metric(SECTION, f"{label(size)}: COPY {added} synthetic rows", added, elapsed, "rows/s", note))


def rate_metric(section: str, name: str, count: int, seconds: float, unit: str, note: str) -> Metric:
    """How many things a step did per second (rows loaded, texts embedded)."""
    return Metric(section=section, name=name, unit=unit, n=count, value=count / seconds, note=note)


def label(size: int) -> str:
    return f"{size // 1_000_000}M" if size >= 1_000_000 else f"{size // 1000}k"


async def measure_cell(bench: Bench, subjects: Subjects, data: Dataset, size: int, cell: str) -> None:
    from mcp_shared_memory.models import Principal, Scope

    rng = random.Random(size + (1 if cell == "large" else 0))
    scopes = [data.large] if cell == "large" else data.small
    assert scopes and scopes[0] is not None
    truth_cache: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    vector_cache: dict[str, np.ndarray] = {}
    raw_t: list[float] = []
    store_t: list[float] = []
    api_t: list[float] = []
    recalls: list[float] = []
    complete = 0
    raw_hybrid_t: list[float] = []
    hybrid_t: list[float] = []
    raw_recalls: list[float] = []
    two_pass_t: list[float] = []
    two_pass_recalls: list[float] = []
    for _ in range(bench.profile.scale_queries):
        scope = rng.choice(scopes)
        assert scope is not None
        topic = int(rng.choice(list(scope.topics)))
        query = rng.choice(QUESTIONS).format(c=COMPONENTS[topic % len(COMPONENTS)])
        if query not in vector_cache:
            vector_cache[query] = await subjects.embedder.embed(query)
        vector = vector_cache[query]
        key = (scope.tenant, scope.scope_id)
        if key not in truth_cache:
            truth_cache[key] = data.vectors(scope)
        ids, matrix = truth_cache[key]
        exact = {ids[i] for i in np.argsort(-(matrix @ vector))[:10]}
        principal = Principal(tenant=scope.tenant, agent_id="bench", default_scope=Scope("user", scope.scope_id))

        start = time.perf_counter()
        raw = await subjects.raw.fetch(RAW_KNN, scope.tenant, scope.scope_id, vector)
        raw_t.append(time.perf_counter() - start)

        found = {}
        for store, samples in ((subjects.store, store_t), (subjects.two_pass, two_pass_t)):
            start = time.perf_counter()
            found[store] = await store.candidates(
                scope.tenant, Scope("user", scope.scope_id), EventFilter(), vector=vector, query=None,
                model_id=MODEL_ID, per_ranking=10,
            )  # fmt: skip
            samples.append(time.perf_counter() - start)
        two_pass_recalls.append(len({e.id for e in found[subjects.two_pass]} & exact) / len(exact))

        start = time.perf_counter()
        events = await subjects.memory.search_shared(principal, query, limit=10, min_similarity=-1.0, mode="semantic")
        api_t.append(time.perf_counter() - start)

        start = time.perf_counter()
        await subjects.raw.fetch(RAW_HYBRID, scope.tenant, scope.scope_id, vector, query)
        raw_hybrid_t.append(time.perf_counter() - start)

        start = time.perf_counter()
        await subjects.memory.search_shared(principal, query, limit=10)
        hybrid_t.append(time.perf_counter() - start)

        got = {e.id for e in events}
        recalls.append(len(got & exact) / len(exact))
        raw_recalls.append(len({r["id"] for r in raw} & exact) / len(exact))
        complete += len(events) == min(10, len(ids))
    scope_rows = int(np.mean([s.rows for s in scopes if s is not None]))
    prefix = f"{label(size)} rows, {cell} scope (~{scope_rows} rows)"
    raw_s, store_s, api_s = Summary.of(raw_t), Summary.of(store_t), Summary.of(api_t)
    embed = await bench.try_floor(SECTION, query_embedding_floor(subjects.embedder))
    bench.add(latency_metric(SECTION, f"{prefix}: raw SQL k-NN (floor)", raw_s))
    bench.add(latency_metric(SECTION, f"{prefix}: store vector candidates", store_s, floor=raw_s, floor_name="raw SQL"))
    two_pass_recall = float(np.mean(two_pass_recalls))
    bench.add(
        latency_metric(
            SECTION,
            f"{prefix}: store vector candidates, two passes forced",
            Summary.of(two_pass_t),
            floor=store_s,
            floor_name="exact scan",
            note=f"recall@10 vs numpy exact {two_pass_recall:.3f} (min {min(two_pass_recalls):.2f})",
        )
    )
    bench.add(
        latency_metric(
            SECTION,
            f"{prefix}: search_shared semantic",
            api_s,
            floor=compose([embed, raw_s]),
            floor_name="embed query + raw SQL",
        )
    )
    raw_hybrid_s, hybrid_s = Summary.of(raw_hybrid_t), Summary.of(hybrid_t)
    bench.add(latency_metric(SECTION, f"{prefix}: raw hybrid SQL (floor)", raw_hybrid_s))
    bench.add(
        latency_metric(
            SECTION,
            f"{prefix}: search_shared hybrid",
            hybrid_s,
            floor=compose([embed, raw_hybrid_s]),
            floor_name="embed query + raw hybrid SQL",
            max_ratio=1.3,
        )
    )
    recall = float(np.mean(recalls))
    bench.add(
        Metric(
            section=SECTION,
            name=f"{prefix}: recall@10 vs numpy exact",
            unit="recall",
            n=len(recalls),
            value=recall,
            target=f">={TARGET_RECALL:g}",
            ok=recall >= TARGET_RECALL,
            note=f"min {min(recalls):.2f}; {complete}/{len(recalls)} complete; raw SQL recall "
            f"{float(np.mean(raw_recalls)):.3f}",
        )
    )
    bench.data.setdefault("scale", []).append(
        {
            "size": size,
            "cell": cell,
            "scope_rows": scope_rows,
            "recall": recall,
            "search_shared": {"p50": api_s.p50, "p99": api_s.p99},
            "episodic_search": {"p50": store_s.p50, "p99": store_s.p99},
            "raw_sql": {"p50": raw_s.p50, "p99": raw_s.p99},
        }
    )
