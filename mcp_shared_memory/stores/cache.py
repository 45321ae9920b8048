"""Redis (or Valkey) as a cache: the recent-events set, the dedup window and the workspace cache.

Redis is a cache, never the source of truth: every method here either degrades to "miss" or logs and
returns when Redis fails, and callers fall back to PostgreSQL.

Recent events of a scope live in a sorted set scored by ``seq`` (the total order of the log). The same
set holds a *floor* member (``~floor:<n>`` at score -inf); ``recent.py`` says what it proves. Writers add
unconditionally; a reader that finds no floor refills from PostgreSQL. Keeping the floor inside the set
means expiry or eviction takes both at once, so a lost cache is rebuilt instead of read as an empty
scope, and an event committed while a reader refills is never lost. This module only moves members in
and out; whether they answer a query is decided in ``recent.py``.

A floor holds only on the node whose memory saw every write since it was proven. Replication is
asynchronous: a replica promoted after its master died (Redis Cluster, Sentinel), or a server restarted
from its last snapshot, may lack writes the old memory acknowledged, and later writes would land above
that gap. So each scope has a *witness* key: the node that held the set when a cold read started the
refill, named by its run id (new at every start) and replication id (new at every promotion). A floor
is believed only where the witness names the node running the script; elsewhere the scripts drop it,
and the next read rebuilds the set from PostgreSQL. Losing either key only costs a rebuild. Scripts read
the node's identity from ``INFO`` (about 13 µs of Redis CPU a call); older versions ignore the witness.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, cast

import anyio

from .. import metrics
from ..models import Event, Scope, Workspace
from ..recent import MemberRange
from .redis_client import REDIS_ERRORS, UNDER_LOCK_SECONDS, RedisBreaker, RedisClient

log = logging.getLogger(__name__)

FLOOR_PREFIX = "~floor:"

# The identity of the node running a script ('' when the Redis user may not run INFO), and the floor
# member the set proves on this node: a floor the witness does not vouch for is dropped.
FLOOR_ON_THIS_NODE = """
local function node_identity()
  local server = redis.pcall('INFO', 'server')
  local replication = redis.pcall('INFO', 'replication')
  if type(server) ~= 'string' or type(replication) ~= 'string' then return '' end
  local run = string.match(server, 'run_id:(%x+)')
  local replid = string.match(replication, 'master_replid:(%x+)')
  if not run or not replid then return '' end
  return string.sub(run, 1, 16) .. '.' .. string.sub(replid, 1, 16)
end
local node = node_identity()
-- held: the witness names this node.
local function own_floor(recent, witness)
  local floors = redis.call('ZRANGEBYSCORE', recent, '-inf', '-inf')
  if redis.call('GET', witness) == node then return true, floors[1] end
  if #floors > 0 then redis.call('ZREMRANGEBYSCORE', recent, '-inf', '-inf') end
  return false, nil
end
"""

# KEYS: recent zset, witness, dedup key (only when there is one: a placeholder key would hash to another
# cluster slot). ARGV: seq, event json, max, ttl, dedup value. Returns 0 when the node's identity is unknown.
RECORD_EVENT = (
    FLOOR_ON_THIS_NODE
    + """
local held, floor = own_floor(KEYS[1], KEYS[2])
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
local count = redis.call('ZCOUNT', KEYS[1], '(0', '+inf')
local max = tonumber(ARGV[3])
if count > max then
  local first = floor and 1 or 0
  redis.call('ZREMRANGEBYRANK', KEYS[1], first, first + count - max - 1)
  if floor then
    local lowest = redis.call('ZRANGEBYSCORE', KEYS[1], '(0', '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
    local raised = tonumber(lowest[2]) - 1
    if raised > tonumber(string.sub(floor, 8)) then
      redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '-inf')
      redis.call('ZADD', KEYS[1], '-inf', '~floor:' .. string.format('%d', raised))
    end
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
if held then redis.call('EXPIRE', KEYS[2], ARGV[4]) end
if #KEYS > 2 then redis.call('SET', KEYS[3], ARGV[5], 'XX', 'KEEPTTL') end
if node == '' then return 0 end
return 1
"""
)

# KEYS: recent zset, witness. ARGV: ttl, 'after' or 'newest', after seq, count (-1: all).
# Returns {floor member, members}, or {false} when cold, having named this node in the witness.
# One script, since the floor must be checked where the members are read (redis-py's cluster pipeline
# refuses EVALSHA, and a second round trip would cost more than passing the members through Lua).
READ_RECENT = (
    FLOOR_ON_THIS_NODE
    + """
local held, floor = own_floor(KEYS[1], KEYS[2])
if not floor then
  if not held then redis.call('SET', KEYS[2], node, 'EX', ARGV[1]) end
  return {false}
end
if ARGV[2] == 'after' then
  return {floor, redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[3], '+inf', 'LIMIT', 0, ARGV[4])}
end
return {floor, redis.call('ZREVRANGEBYSCORE', KEYS[1], '+inf', '(0', 'LIMIT', 0, ARGV[4])}
"""
)

# KEYS: recent zset, witness. ARGV: floor, ttl, max, then score/member pairs. The floor is set only on the
# node the cold read named: a set that has moved since may lack a write made after the reader's query.
REFILL = (
    FLOOR_ON_THIS_NODE
    + """
local held, current = own_floor(KEYS[1], KEYS[2])
local floor = tonumber(ARGV[1])
if current then
  if tonumber(string.sub(current, 8)) < floor then floor = tonumber(string.sub(current, 8)) end
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
if held then
  redis.call('ZADD', KEYS[1], '-inf', '~floor:' .. string.format('%d', floor))
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return floor
"""
)


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


@dataclass(frozen=True, slots=True)
class DedupHit:
    """The write that claimed a content first in the dedup window: its agent, and its event once committed."""

    agent_id: str | None
    event_id: str | None

    @classmethod
    def parse(cls, value: str | None) -> DedupHit:
        # "<agent id> <event id or 'pending'>"; a value without the agent was claimed by an older version.
        agent, _, event = (value or "pending").rpartition(" ")
        return cls(agent or None, None if event == "pending" else event)


class CacheMiss(Enum):
    COLD = "cold"  # not cached: refill from PostgreSQL
    UNAVAILABLE = "unavailable"  # Redis is failing: ask PostgreSQL


@dataclass(frozen=True, slots=True)
class CachedRecent:
    """What the recent set holds for a query: its floor and the members asked for, newest first."""

    floor: int
    events: list[Event]


class RedisKeys:
    """Key names. Identifiers are validated (no ':'), and a scope's keys share one hash tag."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def _tag(self, tenant: str, scope: Scope) -> str:
        return f"{self.prefix}:{{{tenant}:{scope.type}:{scope.id}}}"

    def recent(self, tenant: str, scope: Scope) -> str:
        return f"{self._tag(tenant, scope)}:recent"

    def recent_witness(self, tenant: str, scope: Scope) -> str:
        return f"{self._tag(tenant, scope)}:recent:witness"

    def dedup(self, tenant: str, scope: Scope, content_hash: str) -> str:
        return f"{self._tag(tenant, scope)}:dedup:{content_hash}"

    def workspace(self, tenant: str, workspace_id: str) -> str:
        return f"{self._tag(tenant, Scope('workspace', workspace_id))}:context"


class RedisCache:
    def __init__(
        self, client: RedisClient, *, prefix: str, recent_max: int, recent_ttl: int, breaker: RedisBreaker
    ) -> None:
        self._redis = client
        self._keys = RedisKeys(prefix)
        self._breaker = breaker
        self.recent_max = recent_max
        self.recent_ttl = recent_ttl
        self._record = client.register_script(RECORD_EVENT)
        self._read = client.register_script(READ_RECENT)
        self._refill = client.register_script(REFILL)
        self._warned_unknown_node = False
        self._put_workspace = client.register_script(PUT_WORKSPACE_IF_NEWER)
        # Scopes whose cache missed a write while Redis failed: invalidated on the next success.
        self._stale: set[tuple[str, Scope]] = set()

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except REDIS_ERRORS:
            return False

    def _recent_keys(self, tenant: str, scope: Scope) -> list[str]:
        return [self._keys.recent(tenant, scope), self._keys.recent_witness(tenant, scope)]

    async def _heal(self, tenant: str, scope: Scope) -> None:
        if (tenant, scope) in self._stale:
            await self._redis.zremrangebyscore(self._keys.recent(tenant, scope), "-inf", "-inf")
            self._stale.discard((tenant, scope))

    # dedup window

    async def claim_dedup(
        self, tenant: str, scope: Scope, content_hash: str, window: int, *, agent_id: str
    ) -> DedupHit | None:
        """None if this content is new in the window (claimed for ``agent_id``); else the earlier write."""
        if not self._breaker.closed:
            return None
        key = self._keys.dedup(tenant, scope, content_hash)
        try:
            if await self._redis.set(key, f"{agent_id} pending", nx=True, ex=window):
                return None
            # decode_responses=True (connect_redis): replies are str, which redis-py's annotations cannot express
            return DedupHit.parse(cast(str | None, await self._redis.get(key)))
        except REDIS_ERRORS as exc:
            self._breaker.trip("dedup check", exc)
            return None

    async def release_dedup(self, tenant: str, scope: Scope, content_hash: str) -> None:
        """The claimed write failed: let a retry through instead of dropping it as a duplicate."""
        try:
            await self._redis.delete(self._keys.dedup(tenant, scope, content_hash))
        except REDIS_ERRORS as exc:
            self._breaker.trip("dedup release", exc)

    # recent events

    async def record_event(self, tenant: str, event: Event, *, dedup_hash: str | None = None) -> bool:
        """Add a committed event to its scope's recent set. Never raises (the write is already durable);
        False when Redis is failing, so the event stays queued for a later attempt."""
        scope = event.scope
        if not self._breaker.closed:
            self._stale.add((tenant, scope))
            return False
        keys = [self._keys.recent(tenant, scope), self._keys.recent_witness(tenant, scope)]
        if dedup_hash:
            keys.append(self._keys.dedup(tenant, scope, dedup_hash))
        dedup_value = f"{event.agent_id} {event.id}"
        args: list[str | int] = [event.seq, event.model_dump_json(), self.recent_max, self.recent_ttl, dedup_value]
        try:
            with anyio.fail_after(UNDER_LOCK_SECONDS):
                await self._heal(tenant, scope)
                known_node = await self._record(keys=keys, args=args)
        except REDIS_ERRORS as exc:
            self._stale.add((tenant, scope))
            self._breaker.trip("recent-events update", exc)
            return False
        if not known_node and not self._warned_unknown_node:
            self._warned_unknown_node = True
            log.warning(
                "The Redis user may not run INFO: after a failover or a restart from disk, a scope's cached "
                "recent events can miss some until they expire (MSM_RECENT_TTL); grant it +info"
            )
        return True

    async def read_recent(self, tenant: str, scope: Scope, wanted: MemberRange) -> CachedRecent | CacheMiss:
        """The floor and the members in ``wanted``; ``CacheMiss.COLD`` when the scope is not cached,
        ``CacheMiss.UNAVAILABLE`` when Redis is failing."""
        if not self._breaker.closed:
            metrics.recent_cache_reads.labels("unavailable").inc()
            return CacheMiss.UNAVAILABLE
        after, count = wanted.after_seq, -1 if wanted.count is None else wanted.count
        args: list[str | int] = [self.recent_ttl, "newest" if after is None else "after", after or 0, count]
        try:
            await self._heal(tenant, scope)
            # [floor member, members], or [None] when cold (decoded: connect_redis sets decode_responses)
            reply: list[Any] = await self._read(keys=self._recent_keys(tenant, scope), args=args)
        except REDIS_ERRORS as exc:
            self._breaker.trip("recent read", exc)
            metrics.recent_cache_reads.labels("unavailable").inc()
            return CacheMiss.UNAVAILABLE
        if reply[0] is None:
            metrics.recent_cache_reads.labels("miss").inc()
            return CacheMiss.COLD
        metrics.recent_cache_reads.labels("hit").inc()
        floor: str = reply[0]
        events = [Event.model_validate_json(m) for m in reply[1]]
        if wanted.after_seq is not None:
            events.reverse()
        return CachedRecent(floor=int(floor.removeprefix(FLOOR_PREFIX)), events=events)

    async def refill(self, tenant: str, scope: Scope, newest: Sequence[Event], *, floor: int) -> None:
        """Load the newest events read from PostgreSQL, which prove ``floor`` (see ``recent.refill_floor``)."""
        if not self._breaker.closed:
            return
        args: list[str | int] = [floor, self.recent_ttl, self.recent_max]
        for event in newest:
            args += [event.seq, event.model_dump_json()]
        try:
            await self._refill(keys=self._recent_keys(tenant, scope), args=args)
        except REDIS_ERRORS as exc:
            self._breaker.trip("recent refill", exc)

    async def drop_recent(self, tenant: str, scope: Scope, seqs: Sequence[int]) -> None:
        """Events deleted from PostgreSQL (retracted, expired) leave the recent set; the floor stays true,
        since the set still holds every event of the log above it."""
        if not seqs:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for seq in seqs:
                    pipe.zremrangebyscore(self._keys.recent(tenant, scope), seq, seq)
                await pipe.execute()
        except REDIS_ERRORS as exc:
            # Best effort: when Redis fails here the member stays until the set expires (MSM_RECENT_TTL).
            self._breaker.trip("recent-events removal", exc)

    # workspaces

    async def get_workspace(self, tenant: str, workspace_id: str) -> Workspace | None:
        if not self._breaker.closed:
            return None
        try:
            raw = cast(str | None, await self._redis.get(self._keys.workspace(tenant, workspace_id)))  # decoded
        except REDIS_ERRORS as exc:
            self._breaker.trip("workspace read", exc)
            return None
        return Workspace.model_validate_json(raw.partition("|")[2]) if raw else None

    async def drop_workspace(self, tenant: str, workspace_id: str) -> None:
        try:
            await self._redis.delete(self._keys.workspace(tenant, workspace_id))
        except REDIS_ERRORS as exc:
            self._breaker.trip("workspace cache", exc)

    async def put_workspace(self, tenant: str, workspace: Workspace, *, ttl: int, force: bool = False) -> bool:
        """Cache a workspace read from PostgreSQL, unless a newer version is cached (writers and
        read-through fills race). ``force``: try even while the breaker is open (it just changed)."""
        if not self._breaker.closed and not force:
            return False
        version = int(workspace.updated_at.timestamp() * 1_000_000)
        try:
            await self._put_workspace(
                keys=[self._keys.workspace(tenant, workspace.id)], args=[version, workspace.model_dump_json(), ttl]
            )
        except REDIS_ERRORS as exc:
            self._breaker.trip("workspace cache", exc)
            return False
        return True
