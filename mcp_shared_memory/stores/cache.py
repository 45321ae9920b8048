"""Redis (or Valkey): the recent-events cache, the dedup window and the workspace cache.

Redis is a cache and a bus, never the source of truth: every method here either degrades to "miss"
or logs and returns when Redis fails, and callers fall back to PostgreSQL.

Recent events of a scope live in a sorted set scored by ``seq`` (the total order of the log). The same
set holds a *floor* member (``~floor:<n>`` at score -inf): every event of the scope with ``seq > n`` is in
the set, except those trimmed below the newest ``recent_max``. Writers add unconditionally; a reader that
finds no floor refills from PostgreSQL. Keeping the floor inside the set means expiry or eviction takes
both at once, so a lost cache is rebuilt instead of read as an empty scope; an event committed while a
reader refills is never lost; and ``since_seq`` cursors are served from the set.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence

import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from ..models import Event, Scope, Workspace

log = logging.getLogger(__name__)

REDIS_ERRORS = (RedisError, OSError, TimeoutError)
BREAKER_SECONDS = 2.0

FLOOR_PREFIX = "~floor:"

# KEYS: recent zset, dedup key ('' when none). ARGV: seq, event json, max, ttl, channel, event id
RECORD_EVENT = """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
local count = redis.call('ZCOUNT', KEYS[1], '(0', '+inf')
local max = tonumber(ARGV[3])
if count > max then
  local floors = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '-inf')
  local first = #floors
  redis.call('ZREMRANGEBYRANK', KEYS[1], first, first + count - max - 1)
  if first > 0 then
    local lowest = redis.call('ZRANGEBYSCORE', KEYS[1], '(0', '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
    local raised = tonumber(lowest[2]) - 1
    if raised > tonumber(string.sub(floors[1], 8)) then
      redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '-inf')
      redis.call('ZADD', KEYS[1], '-inf', '~floor:' .. string.format('%d', raised))
    end
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
if KEYS[2] ~= '' then redis.call('SET', KEYS[2], ARGV[6], 'XX', 'KEEPTTL') end
return redis.call('PUBLISH', ARGV[5], ARGV[2])
"""

# KEYS: recent zset. ARGV: floor, ttl, max, then score/member pairs.
REFILL = """
local floor = tonumber(ARGV[1])
local floors = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '-inf')
if #floors > 0 then
  local current = tonumber(string.sub(floors[1], 8))
  if current < floor then floor = current end
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '-inf')
end
for i = 4, #ARGV, 2 do redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1]) end
local count = redis.call('ZCOUNT', KEYS[1], '(0', '+inf')
local max = tonumber(ARGV[3])
if count > max then
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, count - max - 1)
  local lowest = redis.call('ZRANGEBYSCORE', KEYS[1], '(0', '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if tonumber(lowest[2]) - 1 > floor then floor = tonumber(lowest[2]) - 1 end
end
redis.call('ZADD', KEYS[1], '-inf', '~floor:' .. string.format('%d', floor))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return floor
"""


# KEYS: workspace key. ARGV: version (updated_at in microseconds), workspace json, ttl.
PUT_WORKSPACE_IF_NEWER = """
local current = redis.call('GET', KEYS[1])
if current then
  local sep = string.find(current, '|', 1, true)
  if sep and tonumber(string.sub(current, 1, sep - 1)) >= tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. ARGV[2], 'EX', ARGV[3])
return 1
"""


def connect_redis(url: str, *, timeout: float) -> aioredis.Redis:
    """A client with timeouts we chose: one quick retry, no multi-second backoff on a dead server."""
    return aioredis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1),
        health_check_interval=30,
    )


def select_recent(
    newest: Sequence[Event], floor: int, *, limit: int, min_importance: float, since_seq: int | None
) -> list[Event] | None:
    """Answer a recent-events query from the newest events of a scope, all with ``seq > floor``
    (``floor == 0``: the whole scope). None when they cannot prove the answer complete."""
    matching = [e for e in newest if e.importance >= min_importance] if min_importance > 0 else list(newest)
    if since_seq is not None:
        if since_seq < floor:
            return None
        after = [e for e in matching if e.seq > since_seq]
        after.reverse()
        return after[:limit]
    if len(matching) >= limit or floor == 0:
        return matching[:limit]
    return None


class RedisKeys:
    """Key names. Identifiers are validated (no ':'), and a scope's keys share one hash tag."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def _tag(self, tenant: str, scope: Scope) -> str:
        return f"{self.prefix}:{{{tenant}:{scope.type}:{scope.id}}}"

    def recent(self, tenant: str, scope: Scope) -> str:
        return f"{self._tag(tenant, scope)}:recent"

    def dedup(self, tenant: str, scope: Scope, content_hash: str) -> str:
        return f"{self._tag(tenant, scope)}:dedup:{content_hash}"

    def workspace(self, tenant: str, workspace_id: str) -> str:
        return f"{self._tag(tenant, Scope('workspace', workspace_id))}:context"

    def events_channel(self, tenant: str, scope: Scope) -> str:
        return f"{self.prefix}:events:{tenant}:{scope.type}:{scope.id}"

    def workspaces_channel(self, tenant: str) -> str:
        return f"{self.prefix}:workspaces:{tenant}"


class RedisCache:
    def __init__(self, client: aioredis.Redis, *, prefix: str, recent_max: int, recent_ttl: int) -> None:
        self.redis = client
        self.keys = RedisKeys(prefix)
        self.recent_max = recent_max
        self.recent_ttl = recent_ttl
        self._record = client.register_script(RECORD_EVENT)
        self._refill = client.register_script(REFILL)
        self._put_workspace = client.register_script(PUT_WORKSPACE_IF_NEWER)
        self._down_until = 0.0
        # Scopes whose cache missed a write while Redis failed: invalidated on the next success.
        self._stale: set[tuple[str, Scope]] = set()

    async def close(self) -> None:
        await self.redis.aclose()

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, what: str, exc: BaseException) -> None:
        self._down_until = time.monotonic() + BREAKER_SECONDS
        log.warning("Redis %s failed (%s); falling back to PostgreSQL", what, type(exc).__name__)

    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except REDIS_ERRORS:
            return False

    async def _heal(self, tenant: str, scope: Scope) -> None:
        if (tenant, scope) in self._stale:
            await self.redis.zremrangebyscore(self.keys.recent(tenant, scope), "-inf", "-inf")
            self._stale.discard((tenant, scope))

    # dedup window

    async def claim_dedup(self, tenant: str, scope: Scope, content_hash: str, window: int) -> str | None:
        """None if this content is new in the window (claimed); else the earlier event id or 'pending'."""
        if not self.available:
            return None
        key = self.keys.dedup(tenant, scope, content_hash)
        try:
            if await self.redis.set(key, "pending", nx=True, ex=window):
                return None
            return await self.redis.get(key) or "pending"
        except REDIS_ERRORS as exc:
            self._failed("dedup check", exc)
            return None

    async def release_dedup(self, tenant: str, scope: Scope, content_hash: str) -> None:
        """The claimed write failed: let a retry through instead of dropping it as a duplicate."""
        try:
            await self.redis.delete(self.keys.dedup(tenant, scope, content_hash))
        except REDIS_ERRORS as exc:
            self._failed("dedup release", exc)

    # recent events

    async def record_event(self, tenant: str, event: Event, *, dedup_hash: str | None) -> bool:
        """Cache and publish a committed event. Never raises (the write is already durable); False when
        Redis is failing, so the caller queues the event for ``republish``."""
        scope = event.scope
        if not self.available:
            self._stale.add((tenant, scope))
            return False
        keys = [self.keys.recent(tenant, scope), self.keys.dedup(tenant, scope, dedup_hash) if dedup_hash else ""]
        args = [
            event.seq, event.model_dump_json(), self.recent_max, self.recent_ttl,
            self.keys.events_channel(tenant, scope), str(event.id),
        ]  # fmt: skip
        try:
            await self._heal(tenant, scope)
            await self._record(keys=keys, args=args)
        except REDIS_ERRORS as exc:
            self._stale.add((tenant, scope))
            self._failed("event publish", exc)
            return False
        return True

    async def republish(self, tenant: str, event: Event) -> bool:
        """A late cache update and notification for an event whose first attempt failed."""
        return await self.record_event(tenant, event, dedup_hash=None)

    async def recent(
        self, tenant: str, scope: Scope, *, limit: int, min_importance: float, since_seq: int | None
    ) -> tuple[list[Event] | None, bool]:
        """(events, warm): events when the cache provably holds the answer, else None ("ask
        PostgreSQL"); warm is False when the scope is not cached at all and should be refilled."""
        if not self.available or limit > self.recent_max:
            return None, True
        recent_key = self.keys.recent(tenant, scope)
        try:
            await self._heal(tenant, scope)
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.zrangebyscore(recent_key, "-inf", "-inf")
                # Fetch only what can answer the query: an importance filter needs the whole set.
                if min_importance > 0:
                    pipe.zrevrangebyscore(recent_key, "+inf", "(0")
                elif since_seq is not None:
                    pipe.zrangebyscore(recent_key, f"({since_seq}", "+inf", start=0, num=limit)
                else:
                    pipe.zrevrangebyscore(recent_key, "+inf", "(0", start=0, num=limit)
                floors, members = await pipe.execute()
        except REDIS_ERRORS as exc:
            self._failed("recent read", exc)
            return None, True
        if not floors:
            return None, False
        events = [Event.model_validate_json(m) for m in members]
        if since_seq is not None and min_importance == 0:
            events.reverse()  # select_recent takes newest first
        floor = int(floors[0].removeprefix(FLOOR_PREFIX))
        answer = select_recent(events, floor, limit=limit, min_importance=min_importance, since_seq=since_seq)
        return answer, True

    async def refill(self, tenant: str, scope: Scope, newest: Sequence[Event], *, complete: bool) -> None:
        """Load the newest events read from PostgreSQL; ``complete`` when they are the whole scope."""
        if not self.available:
            return
        floor = 0 if complete or not newest else min(e.seq for e in newest) - 1
        args: list[str | int] = [floor, self.recent_ttl, self.recent_max]
        for event in newest:
            args += [event.seq, event.model_dump_json()]
        try:
            await self._refill(keys=[self.keys.recent(tenant, scope)], args=args)
        except REDIS_ERRORS as exc:
            self._failed("recent refill", exc)

    # workspaces

    async def get_workspace(self, tenant: str, workspace_id: str) -> Workspace | None:
        if not self.available:
            return None
        try:
            raw = await self.redis.get(self.keys.workspace(tenant, workspace_id))
        except REDIS_ERRORS as exc:
            self._failed("workspace read", exc)
            return None
        return Workspace.model_validate_json(raw.partition("|")[2]) if raw else None

    async def put_workspace(self, tenant: str, workspace: Workspace, *, ttl: int, changed: bool = False) -> None:
        """Cache a workspace read from PostgreSQL, unless a newer version is cached (writers and
        read-through fills race). ``changed``: it was just created or updated, so tell subscribers."""
        if not self.available and not changed:
            return
        version = int(workspace.updated_at.timestamp() * 1_000_000)
        try:
            await self._put_workspace(
                keys=[self.keys.workspace(tenant, workspace.id)], args=[version, workspace.model_dump_json(), ttl]
            )
            if changed:
                created = workspace.created_at == workspace.updated_at
                message = json.dumps({"workspace_id": workspace.id, "created": created})
                await self.redis.publish(self.keys.workspaces_channel(tenant), message)
        except REDIS_ERRORS as exc:
            self._failed("workspace cache", exc)
