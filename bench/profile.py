"""How much work each run does: ``--quick`` (a couple of minutes) or ``--full``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    name: str
    floor_calls: int  # sequential calls per floor
    calls: int  # sequential calls per server tool / transport / mode
    warmup: int
    embed_calls: int  # single embeddings
    embed_batches: int  # batches of 32
    facts: int  # facts stored before search_facts
    notify_calls: int
    throughput_seconds: float
    concurrency: tuple[int, ...]
    scale_sizes: tuple[int, ...]
    scale_queries: int
    startup_repeats: int
    cold_repeats: int
    peer_sizes: tuple[int, ...]
    peer_calls: int
    peer_writers: int
    peer_writes_each: int
    modes: tuple[str, ...]  # client protocol modes: "auto" (2026 modern) and/or "legacy" (2025 handshake)
    call_timeout: float = 30.0


QUICK = Profile(
    name="quick",
    floor_calls=300,
    calls=200,
    warmup=20,
    embed_calls=100,
    embed_batches=8,
    facts=40,
    notify_calls=100,
    throughput_seconds=3.0,
    concurrency=(1, 4, 16),
    scale_sizes=(10_000,),
    scale_queries=100,
    startup_repeats=3,
    cold_repeats=1,
    peer_sizes=(1_000,),
    peer_calls=50,
    peer_writers=4,
    peer_writes_each=40,
    modes=("auto",),
)

FULL = Profile(
    name="full",
    floor_calls=1000,
    calls=1000,
    warmup=50,
    embed_calls=300,
    embed_batches=30,
    facts=200,
    notify_calls=500,
    throughput_seconds=10.0,
    concurrency=(1, 4, 16),
    scale_sizes=(10_000, 100_000, 1_000_000),
    scale_queries=300,
    startup_repeats=5,
    cold_repeats=3,
    peer_sizes=(1_000, 10_000),
    peer_calls=200,
    peer_writers=4,
    peer_writes_each=200,
    modes=("auto", "legacy"),
)

PROFILES = {"quick": QUICK, "full": FULL}
