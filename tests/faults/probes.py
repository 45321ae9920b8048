"""What the checker reads besides the agents' answers, straight from the backends: PostgreSQL's rows, the
recent-events set in Redis, every message published on the scope's bus channel (a tap on the real Redis,
not through a server), and the servers' log."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import asyncpg
import redis.asyncio as aioredis

FLOOR_PREFIX = "~floor:"  # the recent set's floor member (stores/cache.py)
# What a probe may meet while a backend restarts: the caller looks again.
UNREACHABLE = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, aioredis.RedisError)


@dataclass(frozen=True)
class Row:
    id: str
    seq: int
    key: str
    embedded: bool


async def stored(database_url: str, tenant: str) -> list[Row]:
    """Every event of ``tenant``, by seq."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT id, seq, idempotency_key, embedding IS NOT NULL AS embedded FROM shared_episodic_memories "
            "WHERE tenant_id = $1 ORDER BY seq",
            tenant,
        )
    finally:
        await conn.close()
    return [Row(str(r["id"]), r["seq"], r["idempotency_key"], r["embedded"]) for r in rows]


@dataclass
class CacheView:
    """The recent set: its floor (None: not cached) and its events as (id, seq)."""

    floor: int | None
    events: list[tuple[str, int]]


async def cached(redis_url: str, key: str) -> CacheView:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=2)
    try:
        members: list[str] = await client.zrangebyscore(key, "-inf", "+inf")  # type: ignore[assignment]
    finally:
        await client.aclose()
    floors = [int(m.removeprefix(FLOOR_PREFIX)) for m in members if m.startswith(FLOOR_PREFIX)]
    events = [(e["id"], e["seq"]) for m in members if not m.startswith(FLOOR_PREFIX) for e in [json.loads(m)]]
    return CacheView(floor=floors[0] if floors else None, events=events)


@dataclass
class CacheVerdict:
    phantoms: list[tuple[str, int]]  # cached, but not what PostgreSQL committed at that seq
    missing: list[int]  # committed above the floor, not cached (a stale list)
    cold: bool  # no floor: the servers answer from PostgreSQL and refill it
    held: int = 0  # events cached

    @property
    def ok(self) -> bool:
        return not self.phantoms and not self.missing


async def compare_cache(database_url: str, redis_url: str, tenant: str, key: str) -> CacheVerdict:
    """The recent set against PostgreSQL. The set claims every event above its floor: PostgreSQL's rows
    read before it must all be there (but the newest, which its writer may be caching right now: writers of
    a scope are serialised from INSERT to cache update), and what it holds must have been committed (rows
    read after it)."""
    before = await stored(database_url, tenant)
    view = await cached(redis_url, key)
    after = {(r.id, r.seq) for r in await stored(database_url, tenant)}
    if view.floor is None:
        return CacheVerdict([e for e in view.events if e not in after], missing=[], cold=True, held=len(view.events))
    held = {seq for _, seq in view.events}
    newest = before[-1].seq if before else 0
    missing = [r.seq for r in before if r.seq > view.floor and r.seq not in held and r.seq != newest]
    return CacheVerdict([e for e in view.events if e not in after], missing, cold=False, held=len(view.events))


@dataclass
class BusTap:
    """Every (event id, seq) published on one channel while the tap was connected; reconnects through
    Redis outages."""

    redis_url: str
    channel: str
    seen: list[tuple[str, int]] = field(default_factory=list)

    async def run(self, stop: anyio.Event) -> None:
        while not stop.is_set():
            client = aioredis.Redis.from_url(self.redis_url, decode_responses=True, socket_timeout=1)
            try:
                async with client.pubsub() as pubsub:
                    await pubsub.subscribe(self.channel)
                    while not stop.is_set():
                        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
                        if message is not None:
                            payload = json.loads(message["data"])
                            self.seen.append((payload["event_id"], int(payload["seq"])))
            except (aioredis.RedisError, OSError):
                await anyio.sleep(0.05)
            finally:
                await client.aclose()


def log_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def log_lines(path: Path, since: int, needle: str) -> list[str]:
    """Lines of the servers' log written after byte ``since`` that contain ``needle``."""
    with open(path, "rb") as f:
        f.seek(since)
        text = f.read().decode(errors="replace")
    return [line for line in text.splitlines() if needle in line]
