"""A Redis that hangs (accepts connections, answers nothing) must not stall the writers of a busy scope.
Writers of a scope are serialised from INSERT to cache update, so a cache update that waits for Redis
makes every writer of the scope wait, in every server process: each process has its own breaker and
trips it on its own timeout. Three runtimes on one Redis stand for three server processes."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
import pytest

from mcp_shared_memory.models import Principal
from mcp_shared_memory.runtime import Connections, Runtime, open_runtime
from mcp_shared_memory.settings import Settings
from mcp_shared_memory.stores.redis_client import connect_redis

from ..conftest import isolated
from ..redis_server import redis_process
from ..tcp_proxy import FaultyProxy, faulty_proxy

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

PROCESSES = 3
REDIS_TIMEOUT = 0.5


@asynccontextmanager
async def servers(settings: Settings, connections: Connections) -> AsyncIterator[tuple[FaultyProxy, list[Runtime]]]:
    """``PROCESSES`` runtimes, each with its own Redis client and breaker, on one Redis behind a proxy."""
    changed = isolated(settings, redis_timeout=REDIS_TIMEOUT)
    async with redis_process() as redis, faulty_proxy("127.0.0.1", redis.port) as proxy, AsyncExitStack() as stack:
        runtimes = []
        for _ in range(PROCESSES):
            client = connect_redis(proxy.url(), timeout=REDIS_TIMEOUT)
            stack.push_async_callback(client.aclose)
            own = Connections(db=connections.db, redis=client, embedder=connections.embedder)
            runtimes.append(await stack.enter_async_context(open_runtime(changed, connections=own)))
        yield proxy, runtimes


async def test_writes_to_a_busy_scope_stay_fast_while_redis_hangs(
    settings: Settings, connections: Connections, alice: Principal
) -> None:
    async with servers(settings, connections) as (proxy, runtimes):
        for runtime in runtimes:
            await runtime.memory.write_event(alice, "before the hang")
        proxy.stall()
        took: list[float] = []
        hang_ends = time.monotonic() + 3.0

        async def writer(runtime: Runtime, name: str) -> None:
            n = 0
            while time.monotonic() < hang_ends:
                began = time.monotonic()
                await runtime.memory.write_event(alice, f"{name} write {n} while Redis hangs")
                took.append(time.monotonic() - began)
                n += 1

        async with anyio.create_task_group() as tg:
            for i, runtime in enumerate(runtimes):
                tg.start_soon(writer, runtime, f"process {i} writer a")
                tg.start_soon(writer, runtime, f"process {i} writer b")
        proxy.restore()
    assert len(took) > 20
    assert max(took) < 1.0, f"a write waited {max(took):.2f} s for a hanging Redis (of {len(took)})"
