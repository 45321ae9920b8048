"""Retrieval quality and latency of ``search_shared`` on two generated corpora (``bench/corpora``).

Each corpus goes into a tenant of its own through ``SharedMemory.write_event`` (embedded and indexed like
any write; a bounded number of concurrent writers, in timeline order, so the embedder coalesces). Then
every question is asked in each mode with the default settings (``limit=10``, the default similarity
floor, fusion and recency): evidence recall@5 / @10 (the share of a question's evidence events in the
top k) and hit@5 (at least one in the top 5), per question type and overall. Latency of
``search_shared`` per mode is set against floors timed on the same questions in the same loop: the query
embedding (``connections.embedder.embed``) and minimal raw SQL on a connection of the bench's own: the
vector k-NN, the full-text candidates, and both in one statement, each as deep as the package reads
them (``ranking.candidates_per_ranking``), without filters or fusion.

Nothing here knows which corpus it runs: no per-corpus setting reaches the search.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
import asyncpg

from mcp_shared_memory.models import Event, Principal, Scope
from mcp_shared_memory.ranking import candidates_per_ranking

from .corpora import KINDS, Corpus, Question, conversations, fleet
from .floors import connect_pg
from .stats import Metric, Summary, compose, latency_metric

if TYPE_CHECKING:
    from mcp_shared_memory.runtime import Connections, Runtime

    from .context import Bench

SECTION = "retrieval"
READER = "retrieval-bench"  # asks every question; owns the corpus's workspaces
MODES = ("semantic", "lexical", "hybrid")
LIMIT = 10
WRITERS = 48  # concurrent write_event calls while loading
WARMUP = 10
TARGET_RECALL_5 = 0.62  # issue 9's goal for hybrid with default settings
TARGET_RECALL_10 = 0.70
TARGET_GAIN = 1.4  # hybrid recall@5 over semantic-only
MAX_HYBRID_RATIO = 1.3  # hybrid search_shared p50 over (embed query + raw hybrid SQL)
# The floors: each ranking's candidates in a minimal statement ($1-$3 tenant and scope, $4 the vector or
# the question, $5 how many).
RAW_KNN = """
SELECT id FROM shared_episodic_memories
WHERE tenant_id = $1 AND scope_type = $2 AND scope_id = $3
ORDER BY embedding <=> $4 LIMIT $5
"""
RAW_LEXICAL = """
SELECT id FROM shared_episodic_memories, msm_query($4) q, msm_scoped_query($1, $2, $3, $4) sq
WHERE tenant_id = $1 AND scope_type = $2 AND scope_id = $3 AND scoped_lexemes @@ sq
ORDER BY ts_rank(lexemes, q, 1) DESC LIMIT $5
"""
RAW_HYBRID = """
WITH v AS (SELECT id FROM shared_episodic_memories
           WHERE tenant_id = $1 AND scope_type = $2 AND scope_id = $3
           ORDER BY embedding <=> $4 LIMIT $6),
l AS (SELECT id FROM shared_episodic_memories, msm_query($5) q, msm_scoped_query($1, $2, $3, $5) sq
      WHERE tenant_id = $1 AND scope_type = $2 AND scope_id = $3 AND scoped_lexemes @@ sq
      ORDER BY ts_rank(lexemes, q, 1) DESC LIMIT $6)
SELECT id FROM v UNION SELECT id FROM l
"""
LOAD_CHECK = """
SELECT count(*) AS events, count(*) FILTER (WHERE embedding IS NULL) AS unembedded
FROM shared_episodic_memories WHERE tenant_id = $1
"""
# Loaded events whose tsvector the trigger did not fill (the column is the lexical search's index).
NO_LEXEMES = "SELECT count(*) FROM shared_episodic_memories WHERE tenant_id = $1 AND scoped_lexemes IS NULL"
HAS_LEXEMES = """
SELECT EXISTS (SELECT 1 FROM information_schema.columns
               WHERE table_name = 'shared_episodic_memories' AND column_name = 'scoped_lexemes')
"""


@dataclass
class Outcome:
    """What one mode returned for one question."""

    recall5: float
    recall10: float
    hit5: bool
    ranks: list[int | None]  # 1-based rank of each evidence event in the top 10, or None


@dataclass
class Timings:
    embed: list[float] = field(default_factory=list)
    raw: dict[str, list[float]] = field(default_factory=dict)  # mode -> its raw SQL floor
    search: dict[str, list[float]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # a raw floor that failed (the schema moved on)


async def run(bench: Bench) -> None:
    from mcp_shared_memory.runtime import open_runtime

    corpora = [fleet.build(), conversations.build()]
    async with (
        bench.backends.connections() as connections,
        open_runtime(bench.backends.settings(), connections=connections) as runtime,
    ):
        modes = supported_modes(runtime)
        if modes != MODES:
            bench.error(SECTION, "modes", RuntimeError("search_shared takes no `mode`: measured semantic only"))
        for corpus in corpora:
            try:
                with anyio.fail_after(1800):
                    await measure(bench, connections, runtime, corpus, modes)
            except Exception as exc:
                bench.error(SECTION, corpus.name, exc)


def supported_modes(runtime: Runtime) -> tuple[str, ...]:
    return MODES if "mode" in inspect.signature(runtime.memory.search_shared).parameters else ("semantic",)


async def measure(
    bench: Bench, connections: Connections, runtime: Runtime, corpus: Corpus, modes: tuple[str, ...]
) -> None:
    print(f"    {corpus.name}: {corpus.describe()}", file=sys.stderr, flush=True)
    tenant = bench.tenant(f"rt-{corpus.name}")
    corpus = await with_workspaces(runtime, tenant, corpus)
    started = time.perf_counter()
    ids, seqs = await load(runtime, tenant, corpus)
    seconds = time.perf_counter() - started
    check = await load_check(bench, tenant)
    bench.add(
        Metric(
            section=SECTION,
            name=f"{corpus.name}: load {len(ids)} events (write_event, {WRITERS} writers)",
            unit="events/s",
            n=len(ids),
            value=len(ids) / seconds,
            note=f"{seconds:.1f} s; {check}; {out_of_order(corpus, seqs)} written out of timeline order",
            extra={"seconds": seconds},
        )
    )
    questions = corpus.questions  # all of them in --quick and --full: both corpora take about 90 s
    conn = await connect_pg(bench.backends.database_url)
    try:
        timings, outcomes = await evaluate(conn, connections, runtime, tenant, questions, ids, modes)
    finally:
        await conn.close()
    report(bench, corpus, questions, outcomes, modes)
    latency(bench, corpus, timings, modes)


async def load(runtime: Runtime, tenant: str, corpus: Corpus) -> tuple[dict[str, uuid.UUID], dict[str, int]]:
    """Writes every event in timeline order with ``WRITERS`` concurrent writers; returns the event id and
    seq of each key."""
    ids: dict[str, uuid.UUID] = {}
    seqs: dict[str, int] = {}
    principals: dict[tuple[str, str, str], Principal] = {}
    pending = iter(corpus.docs)  # shared: each writer takes the next event, so the order holds within WRITERS

    async def writer() -> None:
        for doc in pending:
            who = (doc.agent_id, doc.agent_type, doc.scope)
            if who not in principals:
                principals[who] = Principal(tenant, doc.agent_id, doc.agent_type, allowed_scopes=(doc.scope,))
            result = await runtime.memory.write_event(
                principals[who], doc.content, event_type=doc.event_type, importance=doc.importance,
                metadata=doc.metadata, scope=doc.scope,
            )  # fmt: skip
            if result.status != "written" or result.event is None:
                raise RuntimeError(f"event {doc.key} was {result.status}, not written")
            ids[doc.key], seqs[doc.key] = result.event.id, result.event.seq

    async with anyio.create_task_group() as tg:
        for _ in range(WRITERS):
            tg.start_soon(writer)
    return ids, seqs


async def with_workspaces(runtime: Runtime, tenant: str, corpus: Corpus) -> Corpus:
    """The corpus with each ``workspace:<name>`` scope replaced by a workspace created for it (owned by the
    bench's reader, its writers on the roster), as an orchestrator would set it up."""
    rosters: dict[str, list[str]] = {}
    for doc in corpus.docs:
        if doc.scope.startswith("workspace:"):
            rosters.setdefault(doc.scope, []).append(doc.agent_id)
    owner = Principal(tenant, READER, "orchestrator")
    created: dict[str, str] = {}
    for scope, agents in rosters.items():
        workspace = await runtime.memory.create_workspace(
            owner, f"retrieval corpus {scope}", list(dict.fromkeys(agents))
        )
        created[scope] = f"workspace:{workspace.id}"
    return dataclasses.replace(
        corpus,
        docs=[dataclasses.replace(d, scope=created.get(d.scope, d.scope)) for d in corpus.docs],
        questions=[dataclasses.replace(q, scope=created.get(q.scope, q.scope)) for q in corpus.questions],
    )


def out_of_order(corpus: Corpus, seqs: dict[str, int]) -> int:
    """Events whose seq is below that of an event before them in their scope's timeline."""
    newest: dict[str, int] = {}
    late = 0
    for doc in corpus.docs:
        late += seqs[doc.key] < newest.get(doc.scope, -1)
        newest[doc.scope] = max(newest.get(doc.scope, -1), seqs[doc.key])
    return late


async def load_check(bench: Bench, tenant: str) -> str:
    """Rows, vectors and lexemes of the tenant, read back on a raw connection of the bench's own."""
    conn = await connect_pg(bench.backends.database_url)
    try:
        row = await conn.fetchrow(LOAD_CHECK, tenant)
        lexemes = "no lexemes column"
        if await conn.fetchval(HAS_LEXEMES):
            lexemes = f"{await conn.fetchval(NO_LEXEMES, tenant)} without lexemes"
    finally:
        await conn.close()
    return f"{row['events']} rows read back, {row['unembedded']} without a vector, {lexemes}"


async def evaluate(
    raw: asyncpg.Connection,
    connections: Connections,
    runtime: Runtime,
    tenant: str,
    questions: list[Question],
    ids: dict[str, uuid.UUID],
    modes: tuple[str, ...],
) -> tuple[Timings, dict[str, list[Outcome]]]:
    """Each question: the embedding and raw SQL floors, then ``search_shared`` in every mode (rotating the
    order, so no mode always runs on warmer caches)."""
    memory, embedder = runtime.memory, connections.embedder
    depth = candidates_per_ranking(LIMIT)
    readers: dict[str, Principal] = {}
    timings = Timings(raw={m: [] for m in MODES}, search={m: [] for m in modes})
    outcomes: dict[str, list[Outcome]] = {m: [] for m in modes}

    async def search(q: Question, mode: str) -> list[Event]:
        if q.scope not in readers:
            readers[q.scope] = Principal(tenant, READER, allowed_scopes=(q.scope,))
        if modes == ("semantic",):
            return await memory.search_shared(readers[q.scope], q.text, scope=q.scope, limit=LIMIT)
        return await memory.search_shared(readers[q.scope], q.text, scope=q.scope, limit=LIMIT, mode=mode)

    for q in questions[:WARMUP]:
        for mode in modes:
            await search(q, mode)
    for i, q in enumerate(questions):
        start = time.perf_counter()
        vector = await embedder.embed(q.text)
        timings.embed.append(time.perf_counter() - start)
        scope = Scope.parse(q.scope)
        where = (tenant, scope.type, scope.id)
        for mode, sql, args in (
            ("semantic", RAW_KNN, (*where, vector, depth)),
            ("lexical", RAW_LEXICAL, (*where, q.text, depth)),
            ("hybrid", RAW_HYBRID, (*where, vector, q.text, depth)),
        ):
            if mode in timings.failed:
                continue
            start = time.perf_counter()
            try:
                await raw.fetch(sql, *args)
            except asyncpg.PostgresError as exc:
                timings.failed[mode] = f"{type(exc).__name__}: {exc}"
                continue
            timings.raw[mode].append(time.perf_counter() - start)
        evidence = [ids[key] for key in q.evidence]
        for mode in modes[i % len(modes) :] + modes[: i % len(modes)]:
            start = time.perf_counter()
            hits = await search(q, mode)
            timings.search[mode].append(time.perf_counter() - start)
            outcomes[mode].append(score(evidence, [h.id for h in hits]))
    return timings, outcomes


def score(evidence: list[uuid.UUID], got: list[uuid.UUID]) -> Outcome:
    ranks = [got.index(e) + 1 if e in got else None for e in evidence]
    found5 = sum(1 for r in ranks if r is not None and r <= 5)
    found10 = sum(1 for r in ranks if r is not None)
    return Outcome(found5 / len(evidence), found10 / len(evidence), found5 > 0, ranks)


def aggregate(outcomes: list[Outcome]) -> dict[str, float]:
    n = len(outcomes)
    return {
        "n": n,
        "recall@5": sum(o.recall5 for o in outcomes) / n,
        "recall@10": sum(o.recall10 for o in outcomes) / n,
        "hit@5": sum(o.hit5 for o in outcomes) / n,
    }


def report(
    bench: Bench, corpus: Corpus, questions: list[Question], outcomes: dict[str, list[Outcome]], modes: tuple[str, ...]
) -> None:
    groups: list[tuple[str, list[int]]] = [("all", list(range(len(questions))))]
    groups += [(k, [i for i, q in enumerate(questions) if q.kind == k]) for k in KINDS]
    table: dict[str, dict[str, dict[str, float]]] = {}
    for mode in modes:
        table[mode] = {kind: aggregate([outcomes[mode][i] for i in idx]) for kind, idx in groups if idx}
    for mode in modes:
        for kind, figures in table[mode].items():
            metric = Metric(
                section=SECTION,
                name=f"{corpus.name} {mode} {kind}: evidence recall@5",
                unit="recall@5",
                n=int(figures["n"]),
                value=figures["recall@5"],
                note=f"recall@10 {figures['recall@10']:.3f}; hit@5 {figures['hit@5']:.3f}",
                extra=dict(figures),
            )
            baseline = table.get("semantic", {}).get(kind)
            if mode != "semantic" and baseline and baseline["recall@5"] > 0:
                metric.floor, metric.floor_value = "semantic recall@5", baseline["recall@5"]
                metric.ratio_p50 = figures["recall@5"] / baseline["recall@5"]
            if mode == "hybrid" and kind == "all":
                metric.target = f">={TARGET_RECALL_5:g}, x>={TARGET_GAIN:g}"
                metric.ok = figures["recall@5"] >= TARGET_RECALL_5 and (metric.ratio_p50 or 0) >= TARGET_GAIN
                metric.note += (
                    f" (target >= {TARGET_RECALL_10:g}: {'yes' if figures['recall@10'] >= TARGET_RECALL_10 else 'NO'})"
                )
            bench.add(metric)
    bench.data.setdefault(SECTION, {})[corpus.name] = {
        "corpus": {"events": len(corpus.docs), "questions": len(corpus.questions), "asked": len(questions)},
        "figures": table,
        "questions": [
            {"key": q.key, "kind": q.kind, "scope": q.scope, "text": q.text, "evidence": len(q.evidence),
             "ranks": {m: outcomes[m][i].ranks for m in modes}}
            for i, q in enumerate(questions)
        ],
    }  # fmt: skip
    print(matrix(corpus.name, table), file=sys.stderr, flush=True)


def matrix(name: str, table: dict[str, dict[str, dict[str, float]]]) -> str:
    """recall@5 / recall@10 / hit@5 per mode (rows) and question type (columns), for the log."""
    kinds = ["all", *KINDS]
    lines = [f"    {name}: recall@5 / recall@10 / hit@5", "    " + f"{'':10}" + "".join(f"{k:>20}" for k in kinds)]
    for mode, row in table.items():
        cells = [
            f"{row[k]['recall@5']:.2f}/{row[k]['recall@10']:.2f}/{row[k]['hit@5']:.2f}" if k in row else "-"
            for k in kinds
        ]
        lines.append("    " + f"{mode:10}" + "".join(f"{c:>20}" for c in cells))
    return "\n".join(lines)


def latency(bench: Bench, corpus: Corpus, timings: Timings, modes: tuple[str, ...]) -> None:
    embed = Summary.of(timings.embed)
    for mode, error in timings.failed.items():
        bench.error(SECTION, f"{corpus.name}: raw {mode} SQL floor", RuntimeError(error))
    raw = {mode: Summary.of(samples) for mode, samples in timings.raw.items() if mode not in timings.failed}
    bench.add(latency_metric(SECTION, f"{corpus.name}: query embedding (floor)", embed))
    for mode, summary in raw.items():
        bench.add(
            latency_metric(SECTION, f"{corpus.name}: raw {mode} SQL, {LIMIT} results' candidates (floor)", summary)
        )
    for mode in modes:
        # lexical search embeds nothing: its floor is the SQL alone
        parts = [raw.get(mode)] if mode == "lexical" else [embed, raw.get(mode)]
        name = f"raw {mode} SQL" if mode == "lexical" else f"embed query + raw {mode} SQL"
        bench.add(
            latency_metric(
                SECTION, f"{corpus.name}: search_shared {mode}", Summary.of(timings.search[mode]),
                floor=compose(parts), floor_name=name, max_ratio=MAX_HYBRID_RATIO if mode == "hybrid" else None,
            )
        )  # fmt: skip
