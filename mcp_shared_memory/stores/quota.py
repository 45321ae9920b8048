"""The optional per-tenant event quota (``MSM_TENANT_QUOTA_EVENTS``).

A write checks the tenant's event count against the quota. Counting the log on every write would cost a
scan of the tenant's index entries, so the count is cached in Redis (shared by the replicas), recounted
from PostgreSQL when the cached copy expires (every ``REFRESH_SECONDS``) and raised by each write in
between. While Redis fails, each process keeps its own copy the same way. The quota is soft: writes in
flight at the same moment may pass it by as many as run concurrently.
"""

from __future__ import annotations

import logging
import time
from typing import cast

from ..errors import QuotaExceeded
from .postgres import PostgresPool
from .redis_client import REDIS_ERRORS, RedisBreaker, RedisClient

log = logging.getLogger(__name__)

REFRESH_SECONDS = 60
LOCAL_TENANTS = 10_000  # copies kept while Redis fails

COUNT_TENANT_EVENTS = "SELECT count(*) FROM shared_episodic_memories WHERE tenant_id = $1"

# KEYS: cached count. ARGV: events added. A count that is not cached stays so (the next check recounts).
ADD = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('INCRBY', KEYS[1], ARGV[1]) end
return false
"""


class TenantEventQuota:
    def __init__(
        self, db: PostgresPool, client: RedisClient, *, prefix: str, limit: int | None, breaker: RedisBreaker
    ) -> None:
        """``limit`` None: no quota (every call returns at once)."""
        self._db = db
        self._redis = client
        self._prefix = prefix
        self.limit = limit
        self._breaker = breaker
        self._add = client.register_script(ADD)
        # tenant -> (count, monotonic expiry): this process's copy, used while Redis fails.
        self._local: dict[str, tuple[int, float]] = {}

    def _key(self, tenant: str) -> str:
        return f"{self._prefix}:{{{tenant}}}:event-count"

    async def check(self, tenant: str) -> None:
        """Raise ``QuotaExceeded`` when the tenant's log already holds its quota of events."""
        if self.limit is None:
            return
        count = await self.count(tenant)
        if count >= self.limit:
            raise QuotaExceeded(
                f"this tenant's storage quota is full ({count} of {self.limit} events): nothing was written; "
                "ask the operator to raise MSM_TENANT_QUOTA_EVENTS"
            )

    async def count(self, tenant: str) -> int:
        """The tenant's event count: the cached copy, else a recount from PostgreSQL (then cached)."""
        if self._breaker.closed:
            try:
                cached = cast(str | None, await self._redis.get(self._key(tenant)))  # decoded
            except REDIS_ERRORS as exc:
                self._breaker.trip("quota count", exc)
            else:
                if cached is not None:
                    return int(cached)
                count = await self._recount(tenant)
                try:
                    await self._redis.set(self._key(tenant), count, ex=REFRESH_SECONDS, nx=True)
                except REDIS_ERRORS as exc:
                    self._breaker.trip("quota count", exc)
                return count
        local = self._local.get(tenant)
        if local is not None and local[1] > time.monotonic():
            return local[0]
        count = await self._recount(tenant)
        if len(self._local) >= LOCAL_TENANTS:
            self._local.clear()
        self._local[tenant] = (count, time.monotonic() + REFRESH_SECONDS)
        return count

    async def added(self, tenant: str, events: int = 1) -> None:
        """Count events just written into the cached copies (never raises: the write is durable)."""
        if self.limit is None:
            return
        if (local := self._local.get(tenant)) is not None:
            self._local[tenant] = (local[0] + events, local[1])
        if not self._breaker.closed:
            return
        try:
            await self._add(keys=[self._key(tenant)], args=[events])
        except REDIS_ERRORS as exc:
            self._breaker.trip("quota count", exc)

    async def _recount(self, tenant: str) -> int:
        async with self._db.tenant(tenant) as conn:
            return int(await conn.fetchval(COUNT_TENANT_EVENTS, tenant))
