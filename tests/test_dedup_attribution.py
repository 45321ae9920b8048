"""A write dropped as a duplicate says whose write was kept: the dedup key holds the agent with the event,
from the moment it is claimed (a concurrent write) to the end of the window."""

from __future__ import annotations

import pytest
from mcp import Client

from mcp_shared_memory.memory import SharedMemory
from mcp_shared_memory.models import Principal, Scope, content_hash
from mcp_shared_memory.runtime import Runtime
from mcp_shared_memory.stores.cache import DedupHit, RedisCache
from mcp_shared_memory.stores.redis_client import RedisBreaker

from .conftest import Backdoor
from .server.mcp_clients import in_process_server

pytestmark = pytest.mark.anyio

ALICE = Scope("user", "alice")


def cache_of(backdoor: Backdoor) -> RedisCache:
    return RedisCache(
        backdoor.redis, prefix=backdoor.keys.prefix, recent_max=100, recent_ttl=60, breaker=RedisBreaker(0)
    )


async def test_a_duplicate_of_another_agents_write_names_that_agent(
    memory: SharedMemory, alice: Principal, alice_coder: Principal
) -> None:
    first = await memory.write_event(alice, "The staging database is read-only until 18:00")
    again = await memory.write_event(alice_coder, "The staging database is read-only until 18:00")

    assert (again.status, again.event_id, again.original_agent_id) == ("deduplicated", first.event_id, "research-1")
    assert first.original_agent_id is None


async def test_a_duplicate_of_a_write_still_in_flight_names_its_agent(
    memory: SharedMemory, backdoor: Backdoor, alice: Principal
) -> None:
    content = "Deploys are frozen for the release"
    claimed = await cache_of(backdoor).claim_dedup(alice.tenant, ALICE, content_hash(content), 30, agent_id="ops-7")
    assert claimed is None  # ops-7's write holds the claim and has not committed yet

    dropped = await memory.write_event(alice, content)

    assert (dropped.status, dropped.event_id, dropped.original_agent_id) == ("deduplicated", None, "ops-7")


def test_a_dedup_value_of_an_older_version_names_nobody() -> None:
    assert DedupHit.parse("pending") == DedupHit(None, None)
    event_id = "0b0f9d3e-6a8e-4c4e-9d1e-1f7c1a2b3c4d"
    assert DedupHit.parse(event_id) == DedupHit(None, event_id)
    assert DedupHit.parse("code-1 pending") == DedupHit("code-1", None)


async def test_the_write_event_tool_says_whose_write_was_kept(
    runtime: Runtime, alice: Principal, alice_coder: Principal
) -> None:
    async with Client(in_process_server(runtime, alice)) as a, Client(in_process_server(runtime, alice_coder)) as b:
        first = await a.call_tool("write_event", {"content": "CI is red on main"})
        again = await b.call_tool("write_event", {"content": "CI is red on main"})

    assert again.structured_content["status"] == "deduplicated"
    assert again.structured_content["original_agent_id"] == "research-1"
    assert again.structured_content["event_id"] == first.structured_content["event_id"]
    text = again.content[0].text
    assert "research-1" in text and "duplicate" in text
