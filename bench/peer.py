"""The reference MCP memory server (npm ``@modelcontextprotocol/server-memory``) beside ours, through the
same SDK client over stdio: write and search latency at 1k / 10k stored memories, and whether writes from
4 concurrent processes sharing one store all survive."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import numpy as np
from mcp import Client, StdioServerParameters

from .context import MODEL_ID
from .floors import unit_vector
from .procs import check, clean_env, serve_params, stdio_client_for
from .stats import Metric, Summary, latency_metric, time_calls
from .text import COMPONENTS, Sentences

if TYPE_CHECKING:
    from .context import Bench

SECTION = "peer"
PACKAGE = "@modelcontextprotocol/server-memory"
REQUIRED_TOOLS = {"create_entities", "add_observations", "search_nodes", "read_graph"}
SCOPE = "user:alice"


def peer_params(memory_file: Path) -> StdioServerParameters:
    npx = shutil.which("npx")
    if npx is None:
        raise RuntimeError("npx not found: install Node.js to run the peer comparison")
    env = clean_env()
    env["MEMORY_FILE_PATH"] = str(memory_file)
    return StdioServerParameters(command=npx, args=["-y", PACKAGE], env=env)


def entity(name: str, text: str) -> dict[str, Any]:
    return {"name": name, "entityType": "observation", "observations": [text]}


def write_peer_store(path: Path, n: int, words: Sentences) -> None:
    """The peer's own JSONL format, pre-populated directly (its create_entities rewrites the whole file)."""
    with path.open("w") as f:
        f.write("\n".join(json.dumps({"type": "entity", **entity(f"memory-{i}", words.next())}) for i in range(n)))


async def run(bench: Bench) -> None:
    root = bench.backends.data_dir / "peer"
    root.mkdir(exist_ok=True)
    try:
        with anyio.fail_after(300):  # the first npx run may download the package
            async with stdio_client_for(peer_params(root / "probe.jsonl"), bench.errlog) as client:
                tools = sorted(t.name for t in (await client.list_tools()).tools)
        bench.data["peer_tools"] = tools
        if missing := REQUIRED_TOOLS - set(tools):
            raise RuntimeError(f"peer server lacks tools {sorted(missing)} (has {tools})")
    except Exception as exc:
        bench.error(SECTION, "peer server", exc)
        return
    trivial = await bench.try_floor(SECTION, "sdk:stdio:auto")
    for size in bench.profile.peer_sizes:
        try:
            with anyio.fail_after(900):
                await latencies(bench, root, size, trivial)
        except Exception as exc:
            bench.error(SECTION, f"{size} memories", exc)
    try:
        with anyio.fail_after(900):
            await concurrent_writers(bench, root)
    except Exception as exc:
        bench.error(SECTION, "concurrent writers", exc)


async def latencies(bench: Bench, root: Path, size: int, trivial: Summary | None) -> None:
    p = bench.profile
    words = Sentences(seed=51)
    queries = list(COMPONENTS)
    store = root / f"peer-{size}.jsonl"
    write_peer_store(store, size, words)
    counter = iter(range(10**9))

    async def timed(client: Client, name: str, args: Callable[[], dict[str, Any]]) -> list[float]:
        async def call(_: int) -> None:
            check(await client.call_tool(name, args()), name)

        return await time_calls(call, p.peer_calls, warmup=5, per_call=p.call_timeout)

    async with stdio_client_for(peer_params(store), bench.errlog) as client:
        peer_write = await timed(
            client, "create_entities", lambda: {"entities": [entity(f"new-{next(counter)}", words.next())]}
        )
        peer_search = await timed(client, "search_nodes", lambda: {"query": queries[next(counter) % len(queries)]})

    tenant = bench.tenant(f"peer{size}")
    await populate(bench, tenant, size, words)
    env = bench.backends.server_env(tenant=tenant, agent_id="agent-a", scope=SCOPE)
    async with stdio_client_for(serve_params(env), bench.errlog) as client:
        ours_write = await timed(client, "write_event", lambda: {"content": words.next(), "importance": 0.7})
        ours_search = await timed(client, "search_shared", lambda: {"query": words.query(), "limit": 10})

    def add(name: str, samples: list[float], versus: list[float] | None = None) -> None:
        summary = Summary.of(samples)
        note = ""
        if versus:
            other = Summary.of(versus)
            note = f"peer/ours p50 = {other.p50 / summary.p50:.2f}x"
        bench.add(latency_metric(SECTION, name, summary, floor=trivial, floor_name="SDK stdio trivial", note=note))

    add(f"{size} memories: peer create_entities (1 entity)", peer_write)
    add(f"{size} memories: ours write_event", ours_write, peer_write)
    add(f"{size} memories: peer search_nodes (substring, all matches)", peer_search)
    add(f"{size} memories: ours search_shared (semantic, top 10)", ours_search, peer_search)


async def populate(bench: Bench, tenant: str, n: int, words: Sentences) -> None:
    """``n`` events in the scope, with real sentences and random unit vectors (exact search cost does not
    depend on the values), copied in bulk before our server starts."""
    from mcp_shared_memory.models import Scope
    from mcp_shared_memory.stores.bulk import EventRow, copy_events

    rng = np.random.default_rng(5)
    scope = Scope.parse(SCOPE)
    rows = []
    for i in range(n):
        row = EventRow(
            id=uuid.uuid4(), tenant_id=tenant, scope_type=scope.type, scope_id=scope.id, agent_id=f"agent-{i % 4}",
            agent_type="agent", event_type="observation", content=words.next(), content_hash=f"h{i}",
            embedding=unit_vector(rng), embedding_model=MODEL_ID, importance=0.5,
        )  # fmt: skip
        rows.append(row)
    async with bench.backends.connections() as connections:
        await copy_events(connections.db, rows)


async def count_events(bench: Bench, tenant: str) -> int:
    from mcp_shared_memory.models import Scope
    from mcp_shared_memory.stores.episodic import PostgresEpisodicStore

    async with bench.backends.connections() as connections:
        return await PostgresEpisodicStore(connections.db).count(tenant, Scope.parse(SCOPE))


class Barrier:
    """Writers connect first (npx and our servers take a while to start), then all write at once."""

    def __init__(self, parties: int) -> None:
        self.parties = parties
        self.arrived = 0
        self.go = anyio.Event()

    async def wait(self) -> None:
        self.arrived += 1
        if self.arrived == self.parties:
            self.go.set()
        with anyio.fail_after(180):
            await self.go.wait()


async def write_concurrently(
    writers: int, each: int, connect: Callable[[int], Any], call: Callable[[Client, int, int], Awaitable[Any]]
) -> int:
    """``writers`` clients, connected first, each making ``each`` calls at once; returns failed calls."""
    barrier = Barrier(writers)
    failed = 0

    async def writer(w: int) -> None:
        nonlocal failed
        async with connect(w) as client:
            await barrier.wait()
            for k in range(each):
                try:
                    result = await call(client, w, k)
                    failed += bool(result.is_error)
                except Exception:
                    failed += 1

    async with anyio.create_task_group() as tg:
        for w in range(writers):
            tg.start_soon(writer, w)
    return failed


async def concurrent_writers(bench: Bench, root: Path) -> None:
    writers, each = bench.profile.peer_writers, bench.profile.peer_writes_each
    store = root / "peer-concurrent.jsonl"
    words = Sentences(seed=60)
    failures = {}

    async def peer_call(client: Client, w: int, k: int) -> Any:
        return await client.call_tool("create_entities", {"entities": [entity(f"p{w}-{k}", words.next())]})

    failures["peer"] = await write_concurrently(
        writers, each, lambda _: stdio_client_for(peer_params(store), bench.errlog), peer_call
    )
    async with stdio_client_for(peer_params(store), bench.errlog) as client:
        graph = await client.call_tool("read_graph", {})
    content = graph.structured_content or json.loads(graph.content[0].text)  # type: ignore[union-attr]
    peer_count = len(content.get("entities", []))

    tenant = bench.tenant("peerconc")

    def our_server(w: int) -> Any:
        env = bench.backends.server_env(tenant=tenant, agent_id=f"w{w}", scope=SCOPE)
        return stdio_client_for(serve_params(env), bench.errlog)

    async def our_call(client: Client, w: int, k: int) -> Any:
        return await client.call_tool("write_event", {"content": words.next()})

    failures["ours"] = await write_concurrently(writers, each, our_server, our_call)
    ours_count = await count_events(bench, tenant)

    written = writers * each
    for who, count in (
        ("peer, 4 processes on one MEMORY_FILE_PATH", peer_count),
        ("ours, 4 stdio server processes", ours_count),
    ):
        key = "peer" if who.startswith("peer") else "ours"
        bench.add(
            Metric(
                section=SECTION,
                name=f"concurrent writes kept: {who}",
                unit="count",
                n=written,
                value=count,
                floor="written",
                floor_value=written,
                ratio_p50=count / written,
                target="all survive",
                ok=count == written,
                note=f"{count}/{written} survive; {failures[key]} calls failed",
            )
        )
