"""Percentiles, timing helpers and the Metric record every section produces."""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import anyio


@dataclass(frozen=True)
class Summary:
    """Latency distribution of ``n`` samples, in milliseconds."""

    n: int
    p50: float
    p99: float
    mean: float
    min: float
    max: float

    @classmethod
    def of(cls, seconds: list[float]) -> Summary:
        if not seconds:
            raise ValueError("no samples")
        ms = sorted(s * 1000.0 for s in seconds)
        return cls(
            n=len(ms),
            p50=percentile(ms, 50),
            p99=percentile(ms, 99),
            mean=sum(ms) / len(ms),
            min=ms[0],
            max=ms[-1],
        )

    def plus(self, other: Summary) -> Summary:
        """A composed floor: p50s and p99s added (the p99 sum is a pessimistic bound)."""
        return Summary(
            n=min(self.n, other.n),
            p50=self.p50 + other.p50,
            p99=self.p99 + other.p99,
            mean=self.mean + other.mean,
            min=self.min + other.min,
            max=self.max + other.max,
        )


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        raise ValueError("no samples")
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def compose(parts: list[Summary | None]) -> Summary | None:
    """The sum of floors (None if any part is missing)."""
    if not parts or any(p is None for p in parts):
        return None
    total = parts[0]
    assert total is not None
    for part in parts[1:]:
        assert part is not None
        total = total.plus(part)
    return total


@dataclass
class Metric:
    """One row of the result table.

    Latencies: ``p50``/``p99`` in ms, ``floor_p50``/``floor_p99`` the floor's, ratios = value / floor.
    Rates and counts: ``value`` (and ``floor_value``), ratio = value / floor_value.
    """

    section: str
    name: str
    unit: str = "ms"
    n: int = 0
    p50: float | None = None
    p99: float | None = None
    value: float | None = None
    floor: str | None = None
    floor_p50: float | None = None
    floor_p99: float | None = None
    floor_value: float | None = None
    ratio_p50: float | None = None
    ratio_p99: float | None = None
    target: str | None = None
    ok: bool | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def latency_metric(
    section: str,
    name: str,
    summary: Summary,
    *,
    floor: Summary | None = None,
    floor_name: str | None = None,
    max_ratio: float | None = None,
    note: str = "",
    **extra: Any,
) -> Metric:
    """A latency row; with ``max_ratio`` the target is ``p50 / floor p50 <= max_ratio``."""
    metric = Metric(section=section, name=name, n=summary.n, p50=summary.p50, p99=summary.p99, note=note)
    metric.extra = {"mean": summary.mean, "min": summary.min, "max": summary.max, **extra}
    if floor is not None:
        metric.floor = floor_name
        metric.floor_p50, metric.floor_p99 = floor.p50, floor.p99
        metric.ratio_p50 = summary.p50 / floor.p50 if floor.p50 > 0 else None
        metric.ratio_p99 = summary.p99 / floor.p99 if floor.p99 > 0 else None
        if max_ratio is not None and metric.ratio_p50 is not None:
            metric.target = f"ratio<={max_ratio:g}"
            metric.ok = metric.ratio_p50 <= max_ratio
    return metric


async def time_calls(
    fn: Callable[[int], Awaitable[Any]], n: int, *, warmup: int = 0, per_call: float = 30.0
) -> list[float]:
    """Run ``fn(i)`` sequentially ``warmup + n`` times; returns the ``n`` measured durations (s)."""
    for i in range(warmup):
        with anyio.fail_after(per_call):
            await fn(-1 - i)
    samples: list[float] = []
    for i in range(n):
        with anyio.fail_after(per_call):
            start = time.perf_counter()
            await fn(i)
            samples.append(time.perf_counter() - start)
    return samples
