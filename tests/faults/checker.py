"""The checker: what the agents were told (acknowledged writes) against what PostgreSQL holds."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Ledger:
    """What the workload saw: every acknowledged write (idempotency key → seq), failed calls and how long
    each took to fail, and the times service came back after each fault."""

    acked: dict[str, int] = field(default_factory=dict)
    statuses: Counter[str] = field(default_factory=Counter)
    writes: list[tuple[float, float]] = field(default_factory=list)  # (began, seconds) per acknowledged write
    failures: list[tuple[float, float, str]] = field(default_factory=list)  # (at, seconds, message)
    reads: int = 0
    read_failures: int = 0
    searches: int = 0
    degraded: list[float] = field(default_factory=list)  # when a search said it was degraded
    silent_misses: list[float] = field(default_factory=list)  # a search missed the last write, saying nothing

    def ack(self, key: str, seq: int, status: str, *, began: float, took: float) -> None:
        previous = self.acked.setdefault(key, seq)
        assert previous == seq, f"{key} acknowledged twice with different seqs ({previous}, {seq})"
        self.statuses[status] += 1
        self.writes.append((began, took))

    def searched(self, at: float, *, hit: bool, degraded: str | None) -> None:
        self.searches += 1
        if degraded:
            self.degraded.append(at)
        elif not hit:
            self.silent_misses.append(at)

    def write_times(self, start: float, end: float) -> list[float]:
        """How long the writes acknowledged between ``start`` and ``end`` took."""
        return [took for began, took in self.writes if start <= began <= end]


@dataclass
class Verdict:
    acked: int
    stored: int
    lost: list[str]
    duplicated: list[str]
    wrong_seq: list[str]
    out_of_order: list[str]  # an agent's later write stored before its earlier one

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.wrong_seq or self.out_of_order)


def check(ledger: Ledger, stored: list[tuple[str, int]]) -> Verdict:
    """``stored``: (idempotency key, seq) of every event of the run's scope, from PostgreSQL. Keys are
    ``<agent>-<n>``, written in n order by each agent."""
    counts = Counter(key for key, _ in stored)
    seq_of = dict(stored)
    by_agent: dict[str, list[tuple[int, int]]] = {}
    for key, seq in stored:
        agent, _, n = key.rpartition("-")
        by_agent.setdefault(agent, []).append((int(n), seq))
    out_of_order = [
        f"{agent}-{n}"
        for agent, writes in by_agent.items()
        for (_, a), (n, b) in zip(sorted(writes), sorted(writes)[1:], strict=False)
        if b <= a
    ]
    seqs = [seq for _, seq in stored]
    assert len(set(seqs)) == len(seqs), "two events share a seq"
    return Verdict(
        acked=len(ledger.acked),
        stored=len(stored),
        lost=sorted(k for k in ledger.acked if k not in seq_of),
        duplicated=sorted(k for k, c in counts.items() if c > 1),
        wrong_seq=sorted(k for k, s in ledger.acked.items() if k in seq_of and seq_of[k] != s),
        out_of_order=out_of_order,
    )


def p50_max(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} / {max(values):.2f} s"
