"""The whole system under faults, real processes only: 16 agents and 2 subscribers on two HTTP replicas
over the embedded PostgreSQL and a private Redis, while the nemesis SIGKILLs Redis, the postmaster and a
replica mid-write. Nothing acknowledged is lost or stored twice, seq only grows, subscribers catch up,
writes fail fast while PostgreSQL is down, and notifications resume within 2 s of Redis's return."""

from __future__ import annotations

import pytest

from .checker import p50_max
from .cluster import cluster
from .nemesis import NEMESIS, run

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300)]


async def test_no_acknowledged_write_is_lost_or_duplicated_under_each_fault() -> None:
    async with cluster() as c:
        result = await run(c, list(NEMESIS))
    v = result.verdict
    for f in result.faults:
        print(
            f"{f.name}: recovered {f.recovered:.2f} s, notified {p50_max(f.notified)}, failed {p50_max(f.failed_calls)}"
        )
    print(f"acked {v.acked}, stored {v.stored}, statuses {dict(result.ledger.statuses)}")
    assert v.acked > 100
    assert v.ok, v
    assert result.caught_up  # since_seq paging from 0 returns every stored event, in order
    by_name = {f.name: f for f in result.faults}
    assert all(d < 2.0 for d in by_name["postgres postmaster SIGKILL (embedded)"].failed_calls)
    redis = by_name["redis SIGKILL + restart"]
    assert len(redis.notified) == 2 and max(redis.notified) < 2.0, redis.notified  # every subscriber, within 2 s
    assert result.ledger.statuses["replayed"] + result.ledger.statuses["written"] == v.acked
