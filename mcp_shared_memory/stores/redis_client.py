"""The Redis (or Valkey) client shared by the cache and the bus, and the breaker they share.

``MSM_REDIS_URL`` names one server (``redis://``, ``rediss://``, ``unix://``) or a Redis Cluster
(``redis+cluster://`` or ``rediss+cluster://``, with more seed nodes after commas:
``redis+cluster://user:pass@10.0.0.1:7000,10.0.0.2:7000``); a cluster gets redis-py's asyncio cluster
client, which follows slot moves and failovers. Every key of a scope carries one hash tag, so each
command and script touches a single slot either way.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError

from ..errors import ConfigError

log = logging.getLogger(__name__)

# RedisClusterException (a slot not covered during a failover, ...) is not a RedisError.
REDIS_ERRORS = (RedisError, RedisClusterException, OSError, TimeoutError)

RedisClient: TypeAlias = aioredis.Redis | RedisCluster
# The longest a writer holding its scope's lock waits for Redis to take its event (cache, then bus). Past
# it the event stays in the outbox and is announced later: every writer of the scope waits for this one.
UNDER_LOCK_SECONDS = 0.5

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def connect_redis(url: str, *, timeout: float) -> RedisClient:
    """A client with timeouts we chose: one quick retry, no multi-second backoff on a dead server.

    The retry must be the asyncio ``Retry``: handed the synchronous one, the asyncio client never awaits
    its reconnect, and a pub/sub connection stays dead after a Redis restart until the next health check.
    On a cluster the retry is the cluster client's: once, after re-reading the slot map.
    """
    if (cluster := _cluster_url(url)) is not None:
        node_url, seeds = cluster
        try:
            client = RedisCluster.from_url(
                node_url,
                startup_nodes=[ClusterNode(host, port) for host, port in seeds],
                decode_responses=True,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=_retry_once(),
                health_check_interval=30,
            )
        except (RedisClusterException, ValueError) as exc:
            raise ConfigError(f"MSM_REDIS_URL names a Redis Cluster but is not usable: {exc}") from None
        _use_closed_safe_connections(client)
        return client
    plain = aioredis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=_retry_once(),
        health_check_interval=30,
    )
    pool = plain.connection_pool
    pool.connection_class = closed_safe(pool.connection_class)
    return plain


def closed_safe(connection_class: type[AbstractConnection]) -> type[AbstractConnection]:
    """``connection_class`` whose writes raise ``ConnectionError`` when the connection was closed under them.

    redis-py's asyncio client leaks the transport's internals instead (``'NoneType' object has no
    attribute 'writelines'``, ``'NoneType' object is not callable``: redis/redis-py#4287) when another
    task disconnects a connection between its connected check and its write, as the cluster client does
    to every connection of a node it drops on a failover. Not a ``RedisError``, that escaped every
    fallback: a write already committed failed for its agent. As ``ConnectionError`` it is retried by
    the client (on a cluster, after re-reading the slot map) and otherwise falls back to PostgreSQL."""
    if issubclass(connection_class, _ClosedSafe):
        return connection_class
    return type(f"ClosedSafe{connection_class.__name__}", (_ClosedSafe, connection_class), {})


class _ClosedSafe(AbstractConnection):
    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        try:
            await super().send_packed_command(command, check_health)
        except (AttributeError, TypeError) as exc:
            if not _inside_transport(exc):
                raise
            raise RedisConnectionError("Redis connection closed while a command was being sent") from None


def _inside_transport(exc: BaseException) -> bool:
    """The error was raised on a ``None`` left by a closed connection, inside redis-py or asyncio."""
    if "NoneType" not in str(exc):
        return False
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = tb.tb_frame.f_code.co_filename if tb is not None else ""
    return any(part in where for part in (f"{os.sep}redis{os.sep}", f"{os.sep}asyncio{os.sep}"))


def _use_closed_safe_connections(cluster: RedisCluster) -> None:
    """The cluster client builds its nodes' connections from ``connection_kwargs`` (the nodes it
    discovers later too) and its seed nodes already hold a class: both get the closed-safe one."""
    kwargs = cluster.nodes_manager.connection_kwargs
    kwargs["connection_class"] = closed_safe(kwargs.get("connection_class", aioredis.Connection))
    for node in cluster.nodes_manager.startup_nodes.values():
        node.connection_class = closed_safe(node.connection_class)  # type: ignore[assignment]


def _retry_once() -> Retry:
    """One immediate retry after a dropped connection, never after a timeout: a Redis that hangs would
    make every call wait twice its timeout."""
    return Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))


def is_cluster_url(url: str) -> bool:
    return url.partition("://")[0].lower() in CLUSTER_SCHEMES


def _cluster_url(url: str) -> tuple[str, list[tuple[str, int]]] | None:
    """``redis+cluster://[auth@]host:port[,host:port...][/0][?options]`` as a plain URL of the first
    seed (what redis-py parses) and the other seeds."""
    scheme, _, rest = url.partition("://")
    plain = CLUSTER_SCHEMES.get(scheme.lower())
    if plain is None:
        return None
    end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    auth, at, hosts = authority.rpartition("@")
    first, *others = hosts.split(",")
    seeds = []
    for seed in others:
        host, _, port = seed.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError("MSM_REDIS_URL: each seed node of a cluster is host:port")
        seeds.append((host.strip("[]"), int(port)))
    return f"{plain}://{auth}{at}{first}{tail}", seeds


def node_client(cluster: RedisCluster, node: ClusterNode) -> aioredis.Redis:
    """A plain client to one node of ``cluster``, with the cluster's connection settings (credentials,
    TLS, timeouts): the bus holds one pub/sub connection per shard through it."""
    kwargs: dict[str, Any] = dict(cluster.get_connection_kwargs())
    kwargs.pop("response_callbacks", None)
    kwargs.pop("max_connections", None)
    kwargs["connection_class"] = closed_safe(kwargs.get("connection_class", aioredis.Connection))
    pool = aioredis.ConnectionPool(host=node.host, port=node.port, **kwargs)
    return aioredis.Redis(connection_pool=pool)


class RedisBreaker:
    """After a failure, Redis is skipped for ``seconds`` (``MSM_REDIS_BREAKER_SECONDS``): callers fall back
    to PostgreSQL at once instead of each waiting for its own timeout while Redis is down. With a ``probe``
    (a PING), Redis is tried again only once a probe in the background has succeeded, so no caller (a
    writer holding its scope's lock) waits for a Redis that still hangs."""

    def __init__(self, seconds: float, *, probe: Callable[[], Awaitable[object]] | None = None) -> None:
        self.seconds = seconds
        self._probe = probe
        self._down_until = 0.0
        self._probing: asyncio.Task[None] | None = None

    @property
    def closed(self) -> bool:
        """True when Redis may be tried."""
        return time.monotonic() >= self._down_until and self._probing is None

    def trip(self, what: str, exc: BaseException) -> None:
        self._down_until = time.monotonic() + self.seconds
        log.warning("Redis %s failed (%s); falling back to PostgreSQL", what, type(exc).__name__)
        if self._probe is not None and self.seconds > 0 and self._probing is None:
            self._probing = asyncio.get_running_loop().create_task(self._probe_until_up(self._probe))

    def reset(self) -> None:
        self._down_until = 0.0

    def close(self) -> None:
        if self._probing is not None:
            self._probing.cancel()
            self._probing = None

    async def _probe_until_up(self, probe: Callable[[], Awaitable[object]]) -> None:
        try:
            while True:
                await asyncio.sleep(max(self._down_until - time.monotonic(), 0.0))
                try:
                    async with asyncio.timeout(max(self.seconds, 0.1)):
                        await probe()
                except Exception:
                    self._down_until = time.monotonic() + self.seconds
                    continue
                self._down_until = 0.0
                return
        finally:
            self._probing = None
