"""Write throughput of 1, 4, 16 concurrent agents (separate connections: separate stdio server processes,
or separate sessions to one HTTP server), and how soon every acknowledged event is searchable by meaning
(writes are embedded after commit, by the servers' embedding queues) against the embedder's batched rate."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
import asyncpg
import psutil
from mcp import Client

from .floors import connect_pg
from .procs import check, http_client, our_http_server, serve_params, stdio_client_for
from .stats import Metric, Summary
from .text import Sentences
from .tokens import create_tokens

if TYPE_CHECKING:
    from .context import Bench

SECTION = "throughput"
SCOPE = "user:alice"
TARGET_WRITE_P99_MS = 20.0
# Every event searchable by meaning within (events still waiting at the last acknowledgement / the
# embedder's batched rate) + 1 s: the backlog drains at the batched rate.
DRAIN_SLACK_SECONDS = 1.0
WAITING = "SELECT count(*) FROM shared_episodic_memories WHERE tenant_id = $1 AND embedding IS NULL"
Connect = Callable[[int], AbstractAsyncContextManager[Client]]


class CpuMeter:
    """CPU used during the race, as shares of the machine: this (client) process, our server processes,
    our embedded PostgreSQL/Valkey, and everything else (other load on the machine shows up there)."""

    def __init__(self, data_dir: str) -> None:
        me = psutil.Process()
        backends: list[psutil.Process] = []
        for proc in psutil.process_iter(["name", "cmdline"]):
            if data_dir in " ".join(proc.info["cmdline"] or []):
                backends.append(proc)
                if proc.info["name"] == "postgres":
                    backends += proc.children(recursive=True)
        ids = {p.pid for p in backends}
        self.groups = {
            "client": [me],
            "servers": [p for p in me.children(recursive=True) if p.pid not in ids],
            "backends": backends,
        }
        self.start = (self._group_times(), self._busy(), time.perf_counter())

    def _group_times(self) -> dict[str, float]:
        out = {}
        for name, procs in self.groups.items():
            total = 0.0
            for proc in procs:
                try:
                    t = proc.cpu_times()
                    total += t.user + t.system
                except psutil.Error:
                    pass
            out[name] = total
        return out

    @staticmethod
    def _busy() -> float:
        t = psutil.cpu_times()
        return float(t.user + t.system + getattr(t, "nice", 0.0) + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0))

    def shares(self) -> dict[str, float]:
        groups, busy, wall = self._group_times(), self._busy(), time.perf_counter()
        capacity = (wall - self.start[2]) * (psutil.cpu_count() or 1)
        shares = {name: (groups[name] - self.start[0][name]) / capacity for name in groups}
        used = busy - self.start[1]
        shares["other"] = max(0.0, used / capacity - sum(shares.values()))
        shares["idle"] = max(0.0, 1 - used / capacity)
        return shares


@dataclass
class Race:
    agents: int
    ready: int = 0
    all_ready: anyio.Event = field(default_factory=anyio.Event)
    go: anyio.Event = field(default_factory=anyio.Event)
    start: float = 0.0
    deadline: float = 0.0
    latencies: list[float] = field(default_factory=list)
    last_done: float = 0.0
    finished: int = 0
    all_finished: anyio.Event = field(default_factory=anyio.Event)
    # The agents stay connected (their servers running their embedding queues) until this is set.
    release: anyio.Event = field(default_factory=anyio.Event)


async def run(bench: Bench) -> None:
    await bench.try_floor(SECTION, "embed_batch")
    for agents in bench.profile.concurrency:
        tenant = bench.tenant(f"tp-s{agents}")

        def stdio(i: int, tenant: str = tenant) -> AbstractAsyncContextManager[Client]:
            env = bench.backends.server_env(tenant=tenant, agent_id=f"w{i}", scope=SCOPE)
            return stdio_client_for(serve_params(env), bench.errlog)

        await measure(bench, "stdio processes", agents, stdio, tenant)
    try:
        async with our_http_server(bench.backends.server_env(), bench.errlog) as (url, _):
            for agents in bench.profile.concurrency:
                tenant = bench.tenant(f"tp-h{agents}")
                ids = [f"w{i}" for i in range(agents)]
                tokens = await create_tokens(bench.backends, tenant, ids, SCOPE)

                def http(i: int, tokens: dict[str, str] = tokens) -> AbstractAsyncContextManager[Client]:
                    return http_client(url, tokens[f"w{i}"])

                await measure(bench, "HTTP sessions, 1 server", agents, http, tenant)
    except Exception as exc:
        bench.error(SECTION, "http server", exc)


async def measure(bench: Bench, kind: str, agents: int, connect: Connect, tenant: str) -> None:
    race = Race(agents)
    seconds = bench.profile.throughput_seconds
    db = await connect_pg(bench.backends.database_url)
    try:
        with anyio.fail_after(240 + seconds):
            async with anyio.create_task_group() as tg:
                for i in range(agents):
                    tg.start_soon(agent, i, connect, race)
                with anyio.fail_after(180):
                    await race.all_ready.wait()
                meter = CpuMeter(str(bench.backends.data_dir))
                race.start = time.perf_counter()
                race.deadline = race.start + seconds
                race.go.set()
                await race.all_finished.wait()
                cpu = meter.shares()
                waiting = int(await db.fetchval(WAITING, tenant))
                drained = await searchable(db, tenant) - race.last_done
                race.release.set()
    except Exception as exc:
        bench.error(SECTION, f"{kind} x{agents}", exc)
        return
    finally:
        await db.close()
    elapsed = race.last_done - race.start
    rate = len(race.latencies) / elapsed
    summary = Summary.of(race.latencies)
    metric = Metric(
        section=SECTION, name=f"{kind}: {agents} agent{'s' if agents > 1 else ''} write_event",
        extra={"cpu": cpu},
        unit="writes/s", n=summary.n, p50=summary.p50, p99=summary.p99, value=rate,
        note=f"{rate:.0f} writes/s over {elapsed:.1f} s; CPU share of {psutil.cpu_count()} cores: "
        + ", ".join(f"{k} {v:.0%}" for k, v in cpu.items()),
    )  # fmt: skip
    if agents == max(bench.profile.concurrency):
        metric.target, metric.ok = f"p99<={TARGET_WRITE_P99_MS:g} ms", summary.p99 <= TARGET_WRITE_P99_MS / 1000
    bench.add(metric)
    if await bench.try_floor(SECTION, "embed_batch") is None:
        return
    batched = await bench.floor_value("embed_batch")
    bound = waiting / batched + DRAIN_SLACK_SECONDS
    bench.add(
        Metric(
            section=SECTION, name=f"{kind}: {agents} agent{'s' if agents > 1 else ''}, all searchable by meaning",
            unit="s", value=drained, floor="waiting / embedder batched rate + 1 s", floor_value=bound,
            ratio_p50=drained / bound, target="<=1", ok=drained <= bound,
            note=f"{waiting} events waited at the last acknowledgement; all embedded {drained:.2f} s after it "
            f"(batched rate {batched:.0f} sentences/s)",
        )
    )  # fmt: skip


async def searchable(db: asyncpg.Connection, tenant: str) -> float:
    """When the tenant's last waiting event got its vector (polled every 10 ms)."""
    while await db.fetchval(WAITING, tenant):  # noqa: ASYNC110 - state of other processes, in PostgreSQL
        await anyio.sleep(0.01)
    return time.perf_counter()


async def agent(i: int, connect: Connect, race: Race) -> None:
    words = Sentences(seed=100 + i)
    async with connect(i) as client:
        for _ in range(3):
            check(await client.call_tool("write_event", {"content": words.next(), "importance": 0.7}), "write_event")
        race.ready += 1
        if race.ready == race.agents:
            race.all_ready.set()
        await race.go.wait()
        while time.perf_counter() < race.deadline:
            start = time.perf_counter()
            with anyio.fail_after(60):
                result = await client.call_tool("write_event", {"content": words.next(), "importance": 0.7})
            done = time.perf_counter()
            check(result, "write_event")
            race.latencies.append(done - start)
            race.last_done = max(race.last_done, done)
        race.finished += 1
        if race.finished == race.agents:
            race.all_finished.set()
        await race.release.wait()
