"""Limits over MCP: the response size cap (tool results and resource reads), subscriptions per session and
resources per listen stream, the per-caller rate limit shared by replicas, and the domain limits as tool
errors. Each limit, once hit, is a clear error that changed nothing."""

from __future__ import annotations

import json
import warnings
from collections.abc import AsyncIterator
from typing import Any

import pytest
from mcp import Client, MCPError

from mcp_shared_memory.models import Principal, Scope
from mcp_shared_memory.runtime import Connections, Runtime, open_runtime
from mcp_shared_memory.server.tools import WRITE_TOOLS
from mcp_shared_memory.settings import Settings
from mcp_shared_memory.stores.bulk import copy_events
from mcp_shared_memory.validation import MAX_LIMIT

from ..conftest import event_rows, isolated
from ..faults import faulty_redis_runtime
from .conftest import Connect
from .mcp_clients import in_process_server, legacy_subscribe

pytestmark = pytest.mark.anyio

MIB = 1_048_576
# Every character costs several bytes once escaped (twice over in the text block): the worst case for size.
HOSTILE = '"\\\x01\u2028\U0001f600'


def wire_size(result: Any) -> int:
    return len(result.model_dump_json(by_alias=True, exclude_none=True).encode())


async def bulk_events(connections: Connections, tenant: str, scope: Scope, count: int, *, chars: int) -> None:
    """``count`` events of ``chars`` characters each, copied straight into the log (no embedding needed)."""
    body = (HOSTILE * (chars // len(HOSTILE) + 1))[:chars]
    rows = event_rows(tenant, scope, [f"{i:04d}{body[4:]}" for i in range(count)], importance=0.9, agent_id="bulk")
    assert await copy_events(connections.db, rows) == count


async def test_recent_events_at_the_largest_limit_are_cut_to_the_response_cap(
    runtime: Runtime, connections: Connections, alice: Principal
) -> None:
    await bulk_events(connections, alice.tenant, Scope("user", "alice"), MAX_LIMIT, chars=32_000)
    async with Client(in_process_server(runtime, alice)) as client:
        newest = await client.call_tool("get_recent_shared", {"limit": MAX_LIMIT})
        assert not newest.is_error, newest.content[0].text
        assert wire_size(newest) <= MIB
        kept = newest.structured_content["events"]
        assert newest.structured_content["truncated"] is True and 0 < len(kept) < MAX_LIMIT
        assert newest.content[0].text.startswith(f"Truncated to the first {len(kept)} of {MAX_LIMIT} events")
        assert "lower limit" in newest.content[0].text.splitlines()[0]
        assert kept[0]["content"].startswith(f"{MAX_LIMIT - 1:04d}")  # the newest are the ones kept

        # Oldest first with since_seq, page by page: each page fits, and the next starts where it stopped.
        first = await client.call_tool("get_recent_shared", {"limit": MAX_LIMIT, "since_seq": 0})
        second = await client.call_tool(
            "get_recent_shared", {"limit": MAX_LIMIT, "since_seq": first.structured_content["next_since_seq"]}
        )
    pages = [first.structured_content["events"], second.structured_content["events"]]
    assert all(wire_size(page) <= MIB for page in (first, second))
    assert first.structured_content["next_since_seq"] == pages[0][-1]["seq"]
    numbers = [int(e["content"][:4]) for e in pages[0] + pages[1]]
    assert numbers == list(range(len(numbers)))


async def test_a_resource_read_is_cut_to_the_response_cap(
    runtime: Runtime, connections: Connections, alice: Principal
) -> None:
    await bulk_events(connections, alice.tenant, Scope("user", "alice"), 50, chars=32_000)
    async with Client(in_process_server(runtime, alice)) as client:
        read = await client.read_resource(f"memory://{alice.tenant}/user/alice/recent")
    assert wire_size(read) <= MIB
    body = json.loads(read.contents[0].text)
    assert body["truncated"] is True and 0 < len(body["events"]) < 50


@pytest.fixture
async def tight(settings: Settings, connections: Connections) -> AsyncIterator[Runtime]:
    """Small caps: 2 subscriptions a session, 2 resources a listen stream, a quota of 2 events."""
    changed = isolated(settings, max_subscriptions=2, max_listen_uris=2, tenant_quota_events=2)
    async with open_runtime(changed, connections=connections) as opened:
        yield opened


async def test_subscriptions_beyond_the_session_cap_are_refused(tight: Runtime, alice: Principal) -> None:
    uris = [f"memory://{alice.tenant}/user/alice/recent", f"memory://{alice.tenant}/workspaces"]
    third = f"memory://{alice.tenant}/workspace/w1/context"
    async with Client(in_process_server(tight, alice), mode="legacy") as client:
        for uri in uris:
            await legacy_subscribe(client, uri)
        await legacy_subscribe(client, uris[0])  # holding it already takes no more room
        with pytest.raises(MCPError, match="already holds 2 subscriptions"):
            await legacy_subscribe(client, third)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            await client.unsubscribe_resource(uris[1])
        await legacy_subscribe(client, third)


async def test_a_listen_stream_over_the_uri_cap_is_refused(tight: Runtime, alice: Principal) -> None:
    recent, workspaces = f"memory://{alice.tenant}/user/alice/recent", f"memory://{alice.tenant}/workspaces"
    async with Client(in_process_server(tight, alice)) as client:
        with pytest.raises(MCPError, match="at most 2 resources, not 3"):
            async with client.listen(resource_subscriptions=[recent, workspaces, f"{workspaces}x"]):
                pass
        async with client.listen(resource_subscriptions=[recent, workspaces, recent]):  # 2 distinct
            pass


async def test_domain_limits_are_tool_errors_that_change_nothing(tight: Runtime, alice: Principal) -> None:
    async with Client(in_process_server(tight, alice)) as client:
        created = await client.call_tool("create_workspace", {"task": "limits", "context": {"a": "x" * 10_000}})
        workspace_id = created.structured_content["id"]
        for i in range(7):
            patched = await client.call_tool(
                "update_workspace", {"workspace_id": workspace_id, "context": {f"k{i}": "y" * 10_000}}
            )
            if patched.is_error:
                break
        assert patched.is_error and "MSM_MAX_WORKSPACE_CONTEXT_BYTES" in patched.content[0].text
        context = json.loads((await client.read_resource(f"memory://{alice.tenant}/workspace/{workspace_id}/context"))
                             .contents[0].text)["context"]  # fmt: skip
        assert f"k{i}" not in context

        # The workspace's creation event used 1 of the quota's 2 events.
        assert not (await client.call_tool("write_event", {"content": "the second event"})).is_error
        refused = await client.call_tool("write_event", {"content": "past the quota"})
        assert refused.is_error and "MSM_TENANT_QUOTA_EVENTS" in refused.content[0].text
        recent = await client.call_tool("get_recent_shared", {"limit": 10})
        assert [e["content"] for e in recent.structured_content["events"]] == ["the second event"]


async def test_the_rate_limit_spans_two_replicas_and_says_when_to_retry(
    settings: Settings, connections: Connections, alice: Principal
) -> None:
    """Two server processes on one Redis (as replicas behind a load balancer): one bucket per caller. A write
    costs 2 of the burst of 3, a read 1."""
    common = isolated(settings, rate_limit_per_minute=1, rate_limit_burst=3)
    bob = Principal(
        tenant=alice.tenant, agent_id="bob", allowed_scopes=("user:alice",), default_scope=alice.default_scope
    )
    async with (
        open_runtime(common, connections=connections) as one,
        open_runtime(common, connections=connections) as two,
        Client(in_process_server(one, alice)) as a,
        Client(in_process_server(two, alice)) as b,
        Client(in_process_server(two, bob)) as other,
    ):
        assert not (await a.call_tool("write_event", {"content": "costs two"})).is_error
        assert not (await b.call_tool("get_recent_shared", {"limit": 5})).is_error
        for client, tool, args in [(a, "get_recent_shared", {"limit": 5}), (b, "write_event", {"content": "no"})]:
            limited = await client.call_tool(tool, args)
            assert limited.is_error
            assert "rate limit reached" in limited.content[0].text and "retry after" in limited.content[0].text
        assert not (await other.call_tool("get_recent_shared", {"limit": 5})).is_error  # a bucket of its own
        events = (await other.call_tool("get_recent_shared", {"limit": 5})).structured_content["events"]
        assert [e["content"] for e in events] == ["costs two"]


async def test_tool_calls_are_served_while_redis_is_down(
    settings: Settings, connections: Connections, alice: Principal
) -> None:
    changed = isolated(settings, rate_limit_per_minute=1, rate_limit_burst=1)
    async with faulty_redis_runtime(changed, connections) as faulty:
        faulty.proxy.cut()
        async with Client(in_process_server(faulty.runtime, alice)) as client:
            for i in range(3):
                written = await client.call_tool("write_event", {"content": f"written without Redis {i}"})
                assert not written.is_error, written.content[0].text
            recent = await client.call_tool("get_recent_shared", {"limit": 10})
    assert not recent.is_error and len(recent.structured_content["events"]) == 3


async def test_the_json_text_of_a_cut_list_is_its_structured_content(
    settings: Settings, connections: Connections, alice: Principal
) -> None:
    changed = isolated(settings, result_format="json", max_response_bytes=65_536)
    async with open_runtime(changed, connections=connections) as runtime:
        await bulk_events(connections, alice.tenant, Scope("user", "alice"), 30, chars=4_000)
        async with Client(in_process_server(runtime, alice)) as client:
            found = await client.call_tool("get_agent_history", {"agent_id": "bulk", "limit": 30})
    assert not found.is_error and wire_size(found) <= 65_536
    assert found.structured_content["truncated"] is True and 0 < len(found.structured_content["events"]) < 30
    assert json.loads(found.content[0].text) == found.structured_content


async def test_every_tool_that_changes_something_is_rate_limited_as_a_write(connect: Connect, alice: Principal) -> None:
    async with connect(alice) as client:
        tools = (await client.list_tools()).tools
    writes = {t.name for t in tools if not (t.annotations and t.annotations.read_only_hint)}
    assert writes == WRITE_TOOLS
