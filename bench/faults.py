"""``python -m bench --only faults``: the fault harness of tests/faults run longer (each fault several
times), printing per fault: writes acknowledged, lost, duplicated, and recovery times (p50 / max).
Real processes only: two HTTP replicas, the embedded PostgreSQL, a private Redis (see tests/faults)."""

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
    v = result.verdict
    print(
        f"\nfaults: {v.acked} writes acknowledged, {len(v.lost)} lost, {len(v.duplicated)} duplicated, "
        f"{len(v.out_of_order)} out of order; subscribers caught up: {result.caught_up}"
    )
    print(
        "| fault | times | acked during | recovery p50 / max | notifications back p50 / max | failed write p50 / max |"
    )
    print("|---|---|---|---|---|---|")
    for name in NEMESIS:
        runs = [f for f in result.faults if f.name == name]
        print(
            f"| {name} | {len(runs)} | {sum(f.acked_during for f in runs)} "
            f"| {p50_max([f.recovered for f in runs if f.recovered is not None])} "
            f"| {p50_max([n for f in runs for n in f.notified])} "
            f"| {p50_max([d for f in runs for d in f.failed_calls])} |"
        )
