"""The nemesis and one run: 16 agents and 2 subscribers over two HTTP replicas while faults are injected
one at a time (Redis SIGKILLed then restarted, the embedded postmaster SIGKILLed, a replica SIGKILLed
mid-write), then the checker. Shared by tests/faults and bench/faults.py."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio
import asyncpg

from ..conftest import fresh_id
from ..server.mcp_clients import http_client
from .checker import Ledger, Verdict, check
from .cluster import Cluster
from .workload import Agent, Subscriber, catch_up

AGENTS = 16
SCOPE = "user:alice"


@dataclass
class Fault:
    name: str
    began: float = 0.0
    acked_during: int = 0  # writes acknowledged while the fault was being injected (Redis down: many)
    recovered: float | None = None  # seconds from the fault until a write acknowledged once it was over
    notified: list[float] = field(default_factory=list)  # per subscriber: first notification after recovery
    failed_calls: list[float] = field(default_factory=list)  # how long each failing write took to fail


@dataclass
class Run:
    ledger: Ledger
    verdict: Verdict
    faults: list[Fault]
    caught_up: bool


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


async def kill_postmaster(c: Cluster) -> None:
    os.kill(c.postmaster_pid, signal.SIGKILL)  # the servers' supervisors restart it


async def kill_replica(c: Cluster) -> None:
    c.replicas[0].kill()  # mid-write: its agents reconnect to the other replica and retry the same key
    await c.replicas[0].start()


NEMESIS: dict[str, Callable[[Cluster], Awaitable[None]]] = {
    "redis SIGKILL + restart": kill_redis,
    "postgres postmaster SIGKILL (embedded)": kill_postmaster,
    "replica SIGKILL mid-write": kill_replica,
}


async def run(c: Cluster, faults: list[str], *, settle: float = 1.5) -> Run:
    tenant = fresh_id("faults")
    tokens = []
    for i in range(AGENTS):
        token, _ = await c.runtime.tokens.create(
            tenant=tenant, agent_id=f"agent{i}", allowed_scopes=[SCOPE], default_scope=SCOPE
        )
        tokens.append(token)
    urls = [r.url for r in c.replicas]
    ledger = Ledger()
    agents = [Agent(f"agent{i}", tokens[i], urls[i % 2 :] + urls[: i % 2], ledger) for i in range(AGENTS)]
    uri = f"memory://{tenant}/user/alice/recent"
    subscribers = [Subscriber(tokens[i], urls[i % 2 :] + urls[: i % 2], uri) for i in range(2)]
    done: list[Fault] = []
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
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
            await NEMESIS[name](c)
            fault.acked_during = len(ledger.acked) - acks_before
            fault.recovered = await _first_ack_after(ledger, fault.began, count=len(ledger.acked))
            back = time.monotonic()
            await anyio.sleep(2.5)
            fault.notified = [n for s in subscribers if (n := s.first_after(back)) is not None]
            fault.failed_calls = [d for _, d, _ in ledger.failures[failures_before:]]
            done.append(fault)
        await anyio.sleep(settle)
        stop.set()
    rows = await _stored(c, tenant)
    async with http_client(urls[1], tokens[0], "auto") as client:
        caught = await catch_up(client)
    return Run(ledger, check(ledger, rows), done, caught_up=caught == sorted(seq for _, seq in rows))


async def _stored(c: Cluster, tenant: str) -> list[tuple[str, int]]:
    """(idempotency key, seq) of every event of the run's scope, straight from PostgreSQL."""
    assert c.backends.database_url is not None
    conn = await asyncpg.connect(c.backends.database_url)
    try:
        rows = await conn.fetch(
            "SELECT idempotency_key, seq FROM shared_episodic_memories WHERE tenant_id = $1 ORDER BY seq", tenant
        )
    finally:
        await conn.close()
    return [(r["idempotency_key"], r["seq"]) for r in rows]
