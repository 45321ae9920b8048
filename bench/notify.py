"""Notification latency: agent A's write_event returns -> agent B (another stdio server process,
subscribed to the scope's recent URI) receives ``resources/updated``. Legacy subscribe and modern listen.

The server publishes to Redis before it answers A, so B is often notified *before* A's call returns:
the "after return" figure clamps those at 0 (and counts them); "from call start" is reported beside it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import anyio
import mcp.types as types

from .procs import check, legacy_subscribe, serve_params, stdio_client_for
from .stats import Metric, Summary, latency_metric
from .text import Sentences

if TYPE_CHECKING:
    from mcp import Client

    from .context import Bench

SECTION = "notify"
TARGET_P50_MS = 3.0
TARGET_P99_MS = 15.0
Timing = tuple[float, float, float]  # (A's call start, A's call return, B's receipt), perf_counter seconds


class Arrivals:
    """Receive times (perf_counter) of ``resources/updated`` for one URI."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.times: list[float] = []
        self._event = anyio.Event()

    def record(self, uri: str) -> None:
        if uri == self.uri:
            self.times.append(time.perf_counter())
            self._event.set()

    async def legacy_handler(self, message: Any) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            self.record(str(message.params.uri))

    async def wait_count(self, count: int, seconds: float = 5.0) -> float:
        """The receive time of the ``count``-th notification, waiting up to ``seconds`` for it."""
        with anyio.fail_after(seconds):
            while len(self.times) < count:
                self._event = anyio.Event()
                await self._event.wait()
        return self.times[count - 1]


async def run(bench: Bench) -> None:
    await bench.try_floor(SECTION, "pubsub")
    for mode in ("legacy", "auto"):
        try:
            with anyio.fail_after(300):
                record(bench, mode, await measure(bench, mode))
        except Exception as exc:
            bench.error(SECTION, mode, exc)


async def measure(bench: Bench, mode: str) -> list[Timing]:
    tenant = bench.tenant(f"ntf-{mode[0]}")
    uri = f"memory://{tenant}/user/alice/recent"
    env_a = bench.backends.server_env(tenant=tenant, agent_id="agent-a", scope="user:alice")
    env_b = bench.backends.server_env(tenant=tenant, agent_id="agent-b", scope="user:alice")
    arrivals = Arrivals(uri)
    handler = arrivals.legacy_handler if mode == "legacy" else None
    async with (
        stdio_client_for(serve_params(env_a), bench.errlog, mode=mode) as a,
        stdio_client_for(serve_params(env_b), bench.errlog, mode=mode, message_handler=handler) as b,
    ):
        if mode == "legacy":
            await legacy_subscribe(b, uri)
            return await write_and_wait(bench, a, arrivals)
        async with b.listen(resource_subscriptions=[uri]) as stream, anyio.create_task_group() as tg:

            async def pump() -> None:
                async for event in stream:
                    arrivals.record(str(getattr(event, "uri", "")))

            tg.start_soon(pump)
            timings = await write_and_wait(bench, a, arrivals)
            tg.cancel_scope.cancel()
        return timings


async def write_and_wait(bench: Bench, a: Client, arrivals: Arrivals) -> list[Timing]:
    words = Sentences(seed=31)
    timings = []
    warmup = min(10, bench.profile.warmup)
    for i in range(warmup + bench.profile.notify_calls):
        before = len(arrivals.times)
        start = time.perf_counter()
        check(await a.call_tool("write_event", {"content": words.next(), "importance": 0.8}), "write_event")
        returned = time.perf_counter()
        if i < warmup:  # the subscription may still be settling: tolerate a missed notification
            with anyio.move_on_after(1.0):
                await arrivals.wait_count(before + 1)
            continue
        received = await arrivals.wait_count(before + 1)
        timings.append((start, returned, received))
    return timings


def record(bench: Bench, mode: str, timings: list[Timing]) -> None:
    label = "legacy subscribe" if mode == "legacy" else "modern listen"
    after_return = [max(0.0, received - returned) for _, returned, received in timings]
    from_start = [received - start for start, _, received in timings]
    early = sum(1 for _, returned, received in timings if received < returned)
    write = Summary.of([returned - start for start, returned, _ in timings])
    summary = Summary.of(after_return)
    signed = sorted((received - returned) * 1000 for _, returned, received in timings)
    note = (
        f"{early}/{len(timings)} arrived before A's call returned (clamped to 0; the server publishes before "
        f"it answers); unclamped receipt - return: p50 {signed[len(signed) // 2]:+.2f} ms, "
        f"max {signed[-1]:+.2f} ms"
    )
    metric = latency_metric(SECTION, f"{label}: A returns -> B notified", summary, note=note, early=early)
    metric.target = f"p50<={TARGET_P50_MS:g}ms p99<={TARGET_P99_MS:g}ms"
    metric.ok = summary.p50 <= TARGET_P50_MS and summary.p99 <= TARGET_P99_MS
    attach_pubsub_floor(bench, metric)
    bench.add(metric)
    bench.add(
        latency_metric(
            SECTION,
            f"{label}: A call start -> B notified",
            Summary.of(from_start),
            floor=write,
            floor_name="A's write_event round trip (same calls)",
            note="ratio < 1: B hears of the write before A gets its answer",
        )
    )


def attach_pubsub_floor(bench: Bench, metric: Metric) -> None:
    floor = bench.measured("pubsub")
    if floor is None or metric.p50 is None or metric.p99 is None:
        return
    metric.floor, metric.floor_p50, metric.floor_p99 = "raw Redis pub/sub round trip", floor.p50, floor.p99
    metric.ratio_p50 = metric.p50 / floor.p50 if floor.p50 else None
    metric.ratio_p99 = metric.p99 / floor.p99 if floor.p99 else None
