"""The nemesis and one run: 16 agents (12 on two HTTP replicas, 4 on a stdio ``serve`` process each) and 2
subscribers while faults are injected one at a time or together (Redis SIGKILLed or stopped, the embedded
postmaster SIGKILLed, a replica SIGKILLed mid-write, the shared embedding service SIGKILLed or stopped),
then the checker. After each fault: how fast service and notifications came back, whether the recent
cache matches PostgreSQL again, how long until every event written so far is embedded. Shared by
tests/faults and bench/faults.py."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio

from ..conftest import fresh_id
from ..server.mcp_clients import http_client
from . import probes
from .checker import Ledger, Verdict, check
from .cluster import Cluster
from .workload import Agent, Connect, Subscriber, catch_up, over_http

AGENTS = 16
STDIO_AGENTS = 4  # a stdio server process each; the others share the HTTP replicas
SCOPE = "user:alice"
OUTAGE = 3.0  # how long a stopped Redis or embedding service stays stopped
PREFIX = "msm"  # the servers' Redis key prefix (the default)


@dataclass
class Fault:
    name: str
    began: float = 0.0
    healed: float = 0.0  # when the nemesis undid the fault (restarted or resumed what it broke)
    acked_during: int = 0  # writes acknowledged while the fault was being injected (Redis down: many)
    writes_during: list[float] = field(default_factory=list)  # how long each of those writes took
    recovered: float | None = None  # seconds from the fault until a write acknowledged once it was over
    notified: list[float] = field(default_factory=list)  # per subscriber: first notification after recovery
    failed_calls: list[float] = field(default_factory=list)  # how long each failing write took to fail
    cache_ok: float | None = None  # seconds from the heal until the recent set matched PostgreSQL
    cache_wrong: list[str] = field(default_factory=list)  # what it still got wrong if it never did
    embedded: float | None = None  # seconds from the heal until every event written by then had a vector
    bus_log_lines: int = 0  # pub/sub lines the servers logged meanwhile (once per outage, not every retry)
    newest_acked: int = 0  # the highest seq acknowledged once the fault was over


@dataclass
class Run:
    ledger: Ledger
    verdict: Verdict
    faults: list[Fault]
    caught_up: bool
    phantoms: list[tuple[str, int]]  # published on the bus but never committed


async def _first_ack_after(ledger: Ledger, moment: float, seconds: float = 30, *, count: int | None = None) -> float:
    """Seconds from ``moment`` until an ack beyond the first ``count`` (default: those so far)."""
    count = len(ledger.acked) if count is None else count
    with anyio.fail_after(seconds):
        while len(ledger.acked) <= count:  # noqa: ASYNC110 - the agents' progress, polled
            await anyio.sleep(0.01)
    return time.monotonic() - moment


async def kill_redis(c: Cluster) -> None:
    await c.redis.kill()
    await anyio.sleep(1.0)  # an outage, as long as a restart takes
    await c.redis.start()


async def stop_redis(c: Cluster) -> None:
    pid = await c.redis_pid()
    os.kill(pid, signal.SIGSTOP)  # a Redis that hangs: connections open, nothing answered
    try:
        await anyio.sleep(OUTAGE)
    finally:
        os.kill(pid, signal.SIGCONT)


async def kill_postmaster(c: Cluster) -> None:
    os.kill(c.postmaster_pid, signal.SIGKILL)  # the servers' supervisors restart it


async def kill_replica(c: Cluster) -> None:
    c.replicas[0].kill()  # mid-write: its agents reconnect to the other replica and retry the same key
    await c.replicas[0].start()


async def kill_embedding_service(c: Cluster) -> None:
    os.kill(c.embedding_service_pid, signal.SIGKILL)  # a client restarts it on its next request


async def stop_embedding_service(c: Cluster) -> None:
    pid = c.embedding_service_pid
    os.kill(pid, signal.SIGSTOP)  # a model that accepts requests and never answers
    try:
        await anyio.sleep(OUTAGE)
    finally:
        os.kill(pid, signal.SIGCONT)


async def everything_at_once(c: Cluster) -> None:
    """Redis, the embedding service and a replica SIGKILLed together; Redis and the replica restarted."""
    await c.redis.kill()
    os.kill(c.embedding_service_pid, signal.SIGKILL)
    c.replicas[1].kill()
    await anyio.sleep(1.0)
    await c.redis.start()
    await c.replicas[1].start()


NEMESIS: dict[str, Callable[[Cluster], Awaitable[None]]] = {
    "redis SIGKILL + restart": kill_redis,
    f"redis stopped {OUTAGE:.0f} s (SIGSTOP)": stop_redis,
    "postgres postmaster SIGKILL (embedded)": kill_postmaster,
    "replica SIGKILL mid-write": kill_replica,
    "embedding service SIGKILL": kill_embedding_service,
    f"embedding service stopped {OUTAGE:.0f} s (SIGSTOP)": stop_embedding_service,
    "combined: redis + embedding service + replica SIGKILL": everything_at_once,
}


async def _notified(subscribers: list[Subscriber], moment: float, seconds: float = 5) -> list[float]:
    """Per subscriber, seconds from ``moment`` to its first notification after it (waits up to ``seconds``)."""
    with anyio.move_on_after(seconds):
        while any(s.first_after(moment) is None for s in subscribers):  # noqa: ASYNC110 - arrivals, polled
            await anyio.sleep(0.02)
    return [n for s in subscribers if (n := s.first_after(moment)) is not None]


async def _cache_matches(c: Cluster, tenant: str, fault: Fault, seconds: float = 15) -> None:
    """Wait until the recent set holds exactly what PostgreSQL committed above its floor."""
    key = f"{PREFIX}:{{{tenant}:{SCOPE}}}:recent"
    verdict: probes.CacheVerdict | None = None
    with anyio.move_on_after(seconds):
        while True:
            try:
                verdict = await probes.compare_cache(c.database_url, c.redis.url, tenant, key)
            except probes.UNREACHABLE:
                verdict = None
            if verdict is not None and verdict.ok and not verdict.cold:
                fault.cache_ok = time.monotonic() - fault.healed
                return
            await anyio.sleep(0.05)
    fault.cache_wrong = [repr(verdict)[:500]]


async def _all_embedded(c: Cluster, tenant: str, fault: Fault, seconds: float = 30) -> None:
    """Wait until every event acknowledged up to the first write after the heal has its vector."""
    newest = fault.newest_acked
    with anyio.move_on_after(seconds):
        while True:
            try:
                rows = await probes.stored(c.database_url, tenant)
            except probes.UNREACHABLE:
                rows = [probes.Row("", 0, "", embedded=False)]
            if all(r.embedded for r in rows if r.seq <= newest):
                fault.embedded = time.monotonic() - fault.healed
                return
            await anyio.sleep(0.05)


def _over_stdio(c: Cluster, tenant: str, agent_id: str) -> Connect:
    return lambda attempt: c.stdio_client(tenant, agent_id, SCOPE)


async def run(c: Cluster, faults: list[str], *, settle: float = 1.5) -> Run:
    tenant = fresh_id("faults")
    tokens = []
    for i in range(AGENTS - STDIO_AGENTS):
        token, _ = await c.runtime.tokens.create(
            tenant=tenant, agent_id=f"agent{i}", allowed_scopes=[SCOPE], default_scope=SCOPE
        )
        tokens.append(token)
    urls = [r.url for r in c.replicas]
    ledger = Ledger()
    agents = [
        Agent(f"agent{i}", over_http(urls[i % 2 :] + urls[: i % 2], tokens[i]), ledger) for i in range(len(tokens))
    ]
    agents += [Agent(f"agent{i}", _over_stdio(c, tenant, f"agent{i}"), ledger) for i in range(len(tokens), AGENTS)]
    uri = f"memory://{tenant}/user/alice/recent"
    subscribers = [Subscriber(tokens[i], urls[i % 2 :] + urls[: i % 2], uri) for i in range(2)]
    tap = probes.BusTap(c.redis.url, f"{PREFIX}:events:{tenant}:{SCOPE}")
    done: list[Fault] = []
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(tap.run, stop)
        for s in subscribers:
            tg.start_soon(s.run, stop)
        for a in agents:
            tg.start_soon(a.run, stop)
        try:
            await _first_ack_after(ledger, time.monotonic(), seconds=60)
        except TimeoutError:
            raise AssertionError(f"no write acknowledged; failures: {ledger.failures[:5]}") from None
        for name in faults:
            await anyio.sleep(settle)
            fault = Fault(name, began=time.monotonic())
            failures_before, acks_before = len(ledger.failures), len(ledger.acked)
            log_mark = probes.log_size(c.log_path)
            await NEMESIS[name](c)
            fault.healed = time.monotonic()
            fault.acked_during = len(ledger.acked) - acks_before
            fault.writes_during = ledger.write_times(fault.began, fault.healed)
            fault.recovered = await _first_ack_after(ledger, fault.began, count=len(ledger.acked))
            fault.newest_acked = max(ledger.acked.values())  # one written after the fault, at least
            fault.notified = await _notified(subscribers, fault.healed)
            async with anyio.create_task_group() as checks:
                checks.start_soon(_cache_matches, c, tenant, fault)
                checks.start_soon(_all_embedded, c, tenant, fault)
            fault.failed_calls = [d for _, d, _ in ledger.failures[failures_before:]]
            fault.bus_log_lines = len(probes.log_lines(c.log_path, log_mark, "pub/sub"))
            done.append(fault)
        await anyio.sleep(settle)
        stop.set()
    rows = await probes.stored(c.database_url, tenant)
    async with http_client(urls[1], tokens[0], "auto") as client:
        caught = await catch_up(client)
    committed = {(r.id, r.seq) for r in rows}
    return Run(
        ledger,
        check(ledger, [(r.key, r.seq) for r in rows]),
        done,
        caught_up=caught == [r.seq for r in rows],
        phantoms=[e for e in tap.seen if e not in committed],
    )
