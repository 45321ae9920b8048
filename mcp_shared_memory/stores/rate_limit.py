"""Per-caller rate limits: a token bucket per key in Redis, so every replica draws from the same bucket.

The bucket refills continuously at ``per_minute / 60`` tokens a second up to ``burst``; a call takes
``cost`` tokens or, when too few are left, takes none and is told how long to wait. The clock is Redis's
(``TIME``), so replicas with skewed clocks still agree. A limiter must never stop service: while Redis
fails, calls pass unlimited (logged once per outage).

A process leases a few tokens beyond its call's (a tenth of the burst, none below 10) and spends them on
the caller's next calls without asking Redis, for at most ``LEASE_SECONDS``: one EVALSHA per several calls
instead of per call. Leased tokens have left the shared bucket, so no replica ever lets more through than
the bucket holds; what a lease did not spend goes back with the process's next request for that caller.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import cast

from ..errors import RateLimited
from .redis_client import REDIS_ERRORS, RedisBreaker, RedisClient

log = logging.getLogger(__name__)

# KEYS: bucket. ARGV: burst (capacity), refill per second, cost, extra tokens wanted (a lease), tokens given
# back (an unspent lease). Returns {seconds to wait ('0': allowed), tokens leased beyond the cost} as strings:
# Lua numbers would reach the client truncated to integers.
TAKE = """
local burst = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate + tonumber(ARGV[5]))
local wait = 0
local leased = 0
if tokens >= cost then
  tokens = tokens - cost
  leased = math.max(0, math.min(tonumber(ARGV[4]), math.floor(tokens)))
  tokens = tokens - leased
else
  wait = (cost - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {tostring(wait), tostring(leased)}
"""
# How long a process may spend a lease before asking Redis again (then it gives back what is left).
LEASE_SECONDS = 1.0
# Callers with a lease held per process (the oldest is dropped past it; its tokens refill in Redis).
MAX_LEASES = 10_000


@dataclass(slots=True)
class Lease:
    tokens: float
    until: float


class RedisRateLimiter:
    def __init__(self, client: RedisClient, *, prefix: str, per_minute: int, burst: int, breaker: RedisBreaker) -> None:
        self._prefix = prefix
        self.per_minute = per_minute
        self.burst = burst
        self._rate = per_minute / 60
        self._breaker = breaker
        self._take = client.register_script(TAKE)
        self._lease_size = burst // 10
        self._leases: dict[str, Lease] = {}
        # After a failure the limiter skips Redis this long (as the other Redis users do after theirs).
        self._skip_until = 0.0
        self._failing = False

    def key(self, tenant: str, caller: str) -> str:
        """One bucket per tenant and caller (``token:<id>`` or ``agent:<id>``); identifiers hold no ':'."""
        return f"{self._prefix}:{{{tenant}}}:rate:{caller}"

    async def take(self, tenant: str, caller: str, *, cost: int = 1) -> None:
        """Take ``cost`` tokens from the caller's bucket, or raise ``RateLimited`` saying when to retry."""
        now = time.monotonic()
        if not self._breaker.closed or now < self._skip_until:
            return
        key = self.key(tenant, caller)
        lease = self._leases.pop(key, None)
        if lease is not None and lease.tokens >= cost and now < lease.until:
            lease.tokens -= cost
            self._leases[key] = lease
            return
        unspent = lease.tokens if lease is not None else 0.0
        cost = min(cost, self.burst)  # a call dearer than a full bucket would never pass
        try:
            args = [self.burst, self._rate, cost, self._lease_size, unspent]
            wait, leased = (float(v) for v in cast(list[str], await self._take(keys=[key], args=args)))
        except REDIS_ERRORS as exc:
            self._skip_until = time.monotonic() + self._breaker.seconds
            if not self._failing:
                self._failing = True
                log.warning("rate limits are not enforced while Redis fails (%s)", type(exc).__name__)
            return
        if leased > 0:
            self._leases[key] = Lease(tokens=leased, until=now + LEASE_SECONDS)
            if len(self._leases) > MAX_LEASES:
                self._leases.pop(next(iter(self._leases)))
        if self._failing:
            self._failing = False
            log.warning("Redis answers again: rate limits are enforced")
        if wait > 0:
            retry_after = max(1, math.ceil(wait))
            raise RateLimited(
                f"rate limit reached for this caller ({self.per_minute} calls a minute, bursts of {self.burst}): "
                f"retry after {retry_after} s",
                retry_after=retry_after,
            )
