"""Redaction: the per-event cost of ``Redactor.event`` (content + metadata) on typical agent events with and
without secrets, PII off and on, against a floor that serialises the same event once (``str.encode`` of the
content + ``json.dumps`` of the metadata: work every write does anyway). Pure CPU: no backend is used."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mcp_shared_memory.redaction import Redactor

from .stats import Summary, latency_metric
from .text import Sentences

if TYPE_CHECKING:
    from .context import Bench

SECTION = "redaction"
BUDGET_US = 300.0  # the write path's budget for redaction (issue 10)
WARMUP = 200

Event = tuple[str, dict[str, Any]]


def clean_events(n: int, *, sentences: int = 1) -> list[Event]:
    words = Sentences(seed=31)
    return [
        (" ".join(words.next() for _ in range(sentences)), {"component": "billing", "tags": ["deploy", "ops"]})
        for _ in range(n)
    ]


def secret_events(n: int) -> list[Event]:
    words = Sentences(seed=32)
    events = []
    for i in range(n):
        content = (
            f"{words.next()} Deployed with AKIAIOSFODNN7EXAMPL{i % 10}X using "
            f"postgres://svc:pw{i}x@db.internal/app; Authorization: Bearer tok{i:08d}abcdef"
        )
        events.append((content, {"env": {"DATABASE_URL": f"redis://:s{i}@cache:6379/0"}, "step": i}))
    return events


def pii_events(n: int) -> list[Event]:
    words = Sentences(seed=33)
    return [
        (f"{words.next()} Customer jane{i}@example.com called +44 20 7946 {i % 10000:04d}.", {"ticket": i})
        for i in range(n)
    ]


def time_each(fn: Callable[[str, dict[str, Any]], object], events: list[Event]) -> list[float]:
    """Seconds per call, each event once (after a warm-up over the first events)."""
    for content, metadata in events[:WARMUP]:
        fn(content, metadata)
    samples = []
    clock = time.perf_counter
    for content, metadata in events:
        start = clock()
        fn(content, metadata)
        samples.append(clock() - start)
    return samples


def serialise(content: str, metadata: dict[str, Any]) -> object:
    return content.encode(), json.dumps(metadata)


def us(summary: Summary) -> str:
    return f"p50 {summary.p50 * 1000:.1f} µs, p99 {summary.p99 * 1000:.1f} µs"


async def run(bench: Bench) -> None:
    n = 20_000 if bench.profile.name == "full" else 5_000
    secrets_only, with_pii = Redactor(), Redactor(pii=True)
    long, longest = clean_events(n // 5, sentences=30), clean_events(200, sentences=230)
    # (name, redactor, events, held to the budget): the budget is for typical events; long ones are reported
    cases: list[tuple[str, Redactor, list[Event], bool]] = [
        ("clean event (~140 chars), secrets on", secrets_only, clean_events(n), True),
        ("clean event, secrets + PII on", with_pii, clean_events(n), True),
        ("event with 4 secrets in content + metadata", secrets_only, secret_events(n), True),
        ("event with e-mail + phone, PII on", with_pii, pii_events(n), True),
        ("clean long event (~4 KB), secrets on", secrets_only, long, False),
        ("clean long event (~4 KB), secrets + PII on", with_pii, long, False),
        ("clean max event (32,000 chars), secrets on", secrets_only, longest, False),
        ("clean max event (32,000 chars), secrets + PII on", with_pii, longest, False),
    ]
    for name, redactor, events, budgeted in cases:
        try:
            floor = Summary.of(time_each(serialise, events))
            summary = Summary.of(time_each(redactor.event, events))
            metric = latency_metric(
                SECTION, name, summary, floor=floor, floor_name="str.encode + json.dumps",
                note=f"{us(summary)} (floor {us(floor)})", p50_us=summary.p50 * 1000, p99_us=summary.p99 * 1000,
            )  # fmt: skip
            if budgeted:
                metric.target = f"p99<={BUDGET_US:g}µs"
                metric.ok = summary.p99 * 1000 <= BUDGET_US
            bench.add(metric)
        except Exception as exc:
            bench.error(SECTION, name, exc)
