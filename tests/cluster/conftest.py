"""A real Redis Cluster for the suite's cluster tests: 6 nodes (3 masters, 3 replicas) of Debian's
redis-server on loopback ports, built once per session with ``redis-cli --cluster create`` and removed
afterwards. Runtimes on it share the session's PostgreSQL and model; ``backdoor`` is a cluster client of
the test's own."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio.cluster import RedisCluster

from mcp_shared_memory.stores.redis_client import connect_redis

from ..redis_server import REDIS_CLI, REDIS_SERVER, RedisClusterProcesses, redis_cluster


@pytest.fixture(scope="session")
async def cluster() -> AsyncIterator[RedisClusterProcesses]:
    if REDIS_SERVER is None or REDIS_CLI is None:
        pytest.skip("Redis Cluster tests need Debian's redis-server and redis-cli (apt-get install redis-server)")
    async with redis_cluster() as started:
        yield started


@pytest.fixture
async def backdoor(cluster: RedisClusterProcesses) -> AsyncIterator[RedisCluster]:
    """A cluster client of the test's own, to look at what the server stored."""
    opened = connect_redis(cluster.url, timeout=1)
    assert isinstance(opened, RedisCluster)
    await opened.initialize()
    yield opened
    await opened.aclose()
