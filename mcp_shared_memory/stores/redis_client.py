"""The Redis (or Valkey) client shared by the cache and the bus, and the breaker they share."""

from __future__ import annotations

import logging
import time

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

REDIS_ERRORS = (RedisError, OSError, TimeoutError)


def connect_redis(url: str, *, timeout: float) -> aioredis.Redis:
    """A client with timeouts we chose: one quick retry, no multi-second backoff on a dead server.

    The retry must be the asyncio ``Retry``: handed the synchronous one, the asyncio client never awaits
    its reconnect, and a pub/sub connection stays dead after a Redis restart until the next health check.
    """
    return aioredis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1),
        health_check_interval=30,
    )


class RedisBreaker:
    """After a failure, Redis is skipped for ``seconds`` (``MSM_REDIS_BREAKER_SECONDS``): callers fall back
    to PostgreSQL at once instead of each waiting for its own timeout while Redis is down."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._down_until = 0.0

    @property
    def closed(self) -> bool:
        """True when Redis may be tried."""
        return time.monotonic() >= self._down_until

    def trip(self, what: str, exc: BaseException) -> None:
        self._down_until = time.monotonic() + self.seconds
        log.warning("Redis %s failed (%s); falling back to PostgreSQL", what, type(exc).__name__)

    def reset(self) -> None:
        self._down_until = 0.0
