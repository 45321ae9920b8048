"""``python -m bench --only faults``: the fault harness of tests/faults run longer (each fault several
times), printing per fault: writes acknowledged meanwhile and how long they took, lost and duplicated
writes, and recovery times (p50 / max). Real processes only: two HTTP replicas and four stdio servers, the
embedded PostgreSQL, a private Redis and the shared embedding service (see tests/faults)."""

from __future__ import annotations

from tests.faults.checker import p50_max
from tests.faults.cluster import cluster
from tests.faults.nemesis import NEMESIS
from tests.faults.nemesis import run as run_nemesis

from .context import Bench

ROUNDS = 5


async def run(bench: Bench) -> None:
    del bench  # its own backends: the faults would disturb the shared ones
    async with cluster() as c:
        result = await run_nemesis(c, [name for _ in range(ROUNDS) for name in NEMESIS])
    v, ledger = result.verdict, result.ledger
    print(
        f"\nfaults: {v.acked} writes acknowledged, {len(v.lost)} lost, {len(v.duplicated)} duplicated, "
        f"{len(v.out_of_order)} out of order, {ledger.statuses['replayed']} retries answered `replayed`; "
        f"subscribers caught up: {result.caught_up}; published but not committed: {len(result.phantoms)}; "
        f"searches {ledger.searches}, said degraded {len(ledger.degraded)}, missed silently "
        f"{len(ledger.silent_misses)}"
    )
    print(
        "| fault | times | acked during | writes during p50 / max | failed write p50 / max | service back "
        "p50 / max | notifications back | cache = PostgreSQL after | all embedded after | pub/sub log lines |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in NEMESIS:
        runs = [f for f in result.faults if f.name == name]
        print(
            f"| {name} | {len(runs)} | {sum(f.acked_during for f in runs)} "
            f"| {p50_max([d for f in runs for d in f.writes_during])} "
            f"| {p50_max([d for f in runs for d in f.failed_calls])} "
            f"| {p50_max([f.recovered for f in runs if f.recovered is not None])} "
            f"| {p50_max([n for f in runs for n in f.notified])} "
            f"| {p50_max([f.cache_ok for f in runs if f.cache_ok is not None])} "
            f"({sum(f.cache_ok is None for f in runs)} never) "
            f"| {p50_max([f.embedded for f in runs if f.embedded is not None])} "
            f"({sum(f.embedded is None for f in runs)} never) "
            f"| {max(f.bus_log_lines for f in runs)} |"
        )
