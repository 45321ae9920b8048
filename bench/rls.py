"""What row-level security costs a write, a read and a search.

Writes (the scope's lock, the INSERT with its outbox row, the dequeue) and recent reads are the store's
calls, with no Redis; searches are ``SharedMemory.search_shared`` with the default settings, each question
embedded once beforehand, so only PostgreSQL is measured. Each runs three ways, one call of each in turn
(so load on the machine moves them alike; the median of the paired ratios is the steadiest figure): on the
owner's pool with no tenant set (the code before row-level security: the floor), on the owner's pool with
the tenant set (the extra round trip alone: the owner is exempt from the policies), and on the application
role's pool (the round trip and the policies). The application role comes from ``open_connections`` on the
bench's one login, so it is msm_app after ``SET ROLE``: per query the same as a login of its own. Data:
``SCOPE_EVENTS`` events in the measured scope, as many in the same scope of each of ``OTHER_TENANTS`` other
tenants (the policies must tell them apart), and a scope of ``LARGE_SCOPE_EVENTS``; sentences, random unit
vectors.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import replace
from statistics import median
from typing import TYPE_CHECKING, Any

import anyio
import numpy as np

from mcp_shared_memory.models import NewEvent, Principal, Scope, SearchMode
from mcp_shared_memory.runtime import Runtime, open_runtime
from mcp_shared_memory.stores.bulk import EventRow, analyze_events, copy_events
from mcp_shared_memory.stores.episodic import PostgresEpisodicStore

from .context import MODEL_ID
from .floors import unit_vector
from .stats import Summary, latency_metric, time_calls
from .text import Sentences

if TYPE_CHECKING:
    from mcp_shared_memory.stores.postgres import PgConnection, PostgresPool

    from .context import Bench

SECTION = "rls"
SCOPE = Scope("user", "alice")
SCOPE_EVENTS = 2_000
# Where full-text conditions need the GIN index: under a policy they may use it only because migration 012
# marks @@ LEAKPROOF (where the owner is a superuser, as here); else they read every event of the scope.
LARGE_SCOPE = Scope("user", "large")
LARGE_SCOPE_EVENTS = 20_000
OTHER_TENANTS = 9
PATHS = {
    "before": "before RLS (owner, no tenant)",
    "tenant": "owner + set tenant",
    "rls": "msm_app: set tenant + policies",
}


class WithoutTenant:
    """The owner's pool as the stores used it before row-level security: ``tenant()`` sets nothing."""

    def __init__(self, db: PostgresPool) -> None:
        self._db = db

    def tenant(self, tenant: str, *, reads_only: bool = False) -> AbstractAsyncContextManager[PgConnection]:
        return self._db.connection()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


async def run(bench: Bench) -> None:
    async with bench.backends.connections() as opened:
        assert opened.tenant_db is not None
        connections = replace(opened, embedder=CachedQueries(opened.embedder))
        tenant = bench.tenant("rls")
        await seed(connections.db, tenant, bench.tenant("rls-other"))
        before = WithoutTenant(connections.db)
        pools: dict[str, Any] = {"before": before, "tenant": connections.db, "rls": connections.tenant_db}
        settings = bench.backends.settings(redis_prefix=f"bench-{bench.run_id}-rls", audit=False)
        async with AsyncExitStack() as stack:
            serving = {
                "before": replace(connections, db=before, tenant_db=None),
                "tenant": replace(connections, tenant_db=None),
                "rls": connections,
            }
            runtimes: dict[str, Runtime] = {}
            for path, on in serving.items():
                runtimes[path] = await stack.enter_async_context(open_runtime(settings, connections=on))
            operations = {name: await make(pools, runtimes, tenant) for name, make in OPERATIONS.items()}
            samples: dict[tuple[str, str], list[float]] = {}
            for operation, by_path in operations.items():
                for call in by_path.values():
                    await time_calls(call, 0, warmup=3)
                for i in range(CALLS.get(operation, bench.profile.floor_calls)):
                    for path, call in by_path.items():
                        with anyio.fail_after(30):
                            started = time.perf_counter()
                            await call(i)
                            samples.setdefault((operation, path), []).append(time.perf_counter() - started)
        report(bench, samples)


async def seed(owner: PostgresPool, tenant: str, others: str) -> None:
    rng = np.random.default_rng(7)
    words = Sentences(seed=21)

    def row(tenant_id: str, scope: Scope, i: int) -> EventRow:
        text = words.next()
        return EventRow(
            id=uuid.uuid4(), tenant_id=tenant_id, scope_type=scope.type, scope_id=scope.id, agent_id=f"agent-{i % 4}",
            agent_type="agent", event_type="observation", content=text,
            content_hash=hashlib.sha256(text.encode()).hexdigest(), embedding=unit_vector(rng),
            embedding_model=MODEL_ID, importance=0.5,
        )  # fmt: skip

    tenants = [tenant] + [f"{others}-{i}" for i in range(OTHER_TENANTS)]
    rows = [row(t, SCOPE, i) for t in tenants for i in range(SCOPE_EVENTS)]
    rows += [row(tenant, LARGE_SCOPE, i) for i in range(LARGE_SCOPE_EVENTS)]
    for start in range(0, len(rows), 5_000):
        await copy_events(owner, rows[start : start + 5_000])
    await analyze_events(owner)


Call = Callable[[int], Awaitable[None]]


async def writes(pools: dict[str, Any], _: dict[str, Runtime], tenant: str) -> dict[str, Call]:
    """A write as SharedMemory makes it, without Redis: the scope's lock, the INSERT with its outbox row,
    the dequeue. Each path writes to a scope of its own."""
    rng = np.random.default_rng(8)
    words = Sentences(seed=22)

    def write(path: str, pool: Any) -> Call:
        store, scope = PostgresEpisodicStore(pool), Scope("user", f"writer-{path}")

        async def call(_: int) -> None:
            text = words.next()
            new = NewEvent(
                agent_id="writer", agent_type="agent", event_type="observation", role=None, content=text,
                content_hash=hashlib.sha256(text.encode()).hexdigest(), embedding=unit_vector(rng),
                embedding_model=MODEL_ID, importance=0.5, metadata={}, idempotency_key=None,
            )  # fmt: skip
            async with store.writer(tenant, scope) as writer:
                assert writer is not None
                writer.published([(await writer.append(new)).event])

        return call

    return {path: write(path, pool) for path, pool in pools.items()}


async def recents(pools: dict[str, Any], _: dict[str, Runtime], tenant: str) -> dict[str, Call]:
    def recent(pool: Any) -> Call:
        store = PostgresEpisodicStore(pool)

        async def call(_: int) -> None:
            assert len(await store.recent(tenant, SCOPE, limit=20)) == 20

        return call

    return {path: recent(pool) for path, pool in pools.items()}


class CachedQueries:
    """The session's embedder, each question embedded once: the searches measure PostgreSQL, not the model."""

    def __init__(self, embedder: Any) -> None:
        self._embedder = embedder
        self._vectors: dict[str, Any] = {}

    async def embed(self, text: str, *, urgent: bool = False) -> Any:
        if text not in self._vectors:
            self._vectors[text] = await self._embedder.embed(text, urgent=urgent)
        return self._vectors[text]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._embedder, name)


async def searches(
    runtimes: dict[str, Runtime], tenant: str, *, scope: Scope = SCOPE, mode: SearchMode = "hybrid"
) -> dict[str, Call]:
    """``SharedMemory.search_shared`` with the default settings (its questions embedded beforehand)."""
    words = Sentences(seed=23)
    questions = [words.query() for _ in range(16)]
    principal = Principal(tenant=tenant, agent_id="searcher", allowed_scopes=(f"user:{scope.id}",))

    def search(runtime: Runtime) -> Call:
        async def call(i: int) -> None:
            await runtime.memory.search_shared(principal, questions[i % len(questions)], scope=scope, mode=mode)

        return call

    calls = {path: search(runtime) for path, runtime in runtimes.items()}
    for i in range(len(questions)):  # embeds every question once, outside the measured calls
        await calls["tenant"](i)
    return calls


OPERATIONS: dict[str, Callable[[dict[str, Any], dict[str, Runtime], str], Awaitable[dict[str, Call]]]] = {
    "write": writes,
    "recent": recents,
    f"search {SCOPE_EVENTS // 1000}k": lambda _, runtimes, tenant: searches(runtimes, tenant),
    f"search {SCOPE_EVENTS // 1000}k lexical": lambda _, runtimes, tenant: searches(runtimes, tenant, mode="lexical"),
    f"search {LARGE_SCOPE_EVENTS // 1000}k": lambda _, runtimes, tenant: searches(runtimes, tenant, scope=LARGE_SCOPE),
    f"search {LARGE_SCOPE_EVENTS // 1000}k lexical": lambda _, runtimes, tenant: searches(
        runtimes, tenant, scope=LARGE_SCOPE, mode="lexical"
    ),
}
# Fewer calls where one costs tens of milliseconds.
CALLS = {name: 60 for name in OPERATIONS if name.startswith(f"search {LARGE_SCOPE_EVENTS // 1000}k")}


def report(bench: Bench, samples: dict[tuple[str, str], list[float]]) -> None:
    """Each path against the floor: p50 and p99 ratios in the table, and in the note the median of the
    paired ratios (call i of the path over call i of the floor, made one after the other)."""
    ratios: dict[str, dict[str, dict[str, float]]] = {}
    for operation in OPERATIONS:
        floor_samples = samples[(operation, "before")]
        floor = Summary.of(floor_samples)
        for path, label in PATHS.items():
            summary = Summary.of(samples[(operation, path)])
            name = f"{operation}: {label}"
            if path == "before":
                bench.add(latency_metric(SECTION, name, summary))
                continue
            paired = median([a / b for a, b in zip(samples[(operation, path)], floor_samples, strict=True)])
            metric = latency_metric(
                SECTION, name, summary, floor=floor, floor_name=f"{operation} before RLS",
                note=f"paired median x{paired:.3f}",
            )  # fmt: skip
            bench.add(metric)
            ratios.setdefault(operation, {})[path] = {
                "p50": round(summary.p50 / floor.p50, 3),
                "paired": round(paired, 3),
            }
    bench.data["rls"] = {"ratios": ratios, "scope_events": SCOPE_EVENTS, "other_tenants": OTHER_TENANTS}
