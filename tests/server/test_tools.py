"""MCP tools over an in-process client and the real stores: bad input, output schemas, configured limits."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import jsonschema
import pytest
from mcp import Client

from mcp_shared_memory.models import Principal
from mcp_shared_memory.runtime import Connections, Runtime, open_runtime
from mcp_shared_memory.settings import Settings

from ..conftest import isolated
from .conftest import Connect
from .mcp_clients import in_process_server

pytestmark = pytest.mark.anyio


async def assert_nothing_written(client: Client, tenant: str) -> None:
    recent = await client.call_tool("get_recent_shared", {"limit": 10, "scope": "user:alice"})
    assert recent.structured_content["events"] == []
    listed = json.loads((await client.read_resource(f"memory://{tenant}/workspaces")).contents[0].text)
    assert listed["workspaces"] == []


@pytest.mark.parametrize(
    ("tool", "args", "expected"),
    [
        ("write_event", {"content": "x" * 40_000}, "32000"),
        ("write_event", {"content": "ok", "importance": 1.5}, "less than or equal to 1"),
        ("write_event", {"content": "ok", "scope": "user:bob"}, "not allowed"),
        ("write_event", {"content": "ok", "scope": "team:alice"}, "unknown scope type"),
        ("write_event", {"content": "ok", "scope": "user:alice:recent"}, "invalid user id"),
        ("write_event", {"content": "ok", "event_type": "DROP TABLE"}, "invalid event_type"),
        ("get_agent_history", {"agent_id": "a b"}, "invalid agent_id"),
        ("create_workspace", {"task": "t", "agents": ["ok", "bad:id"]}, "invalid agent id"),
        ("update_workspace", {"workspace_id": "missing-ws", "status": "completed"}, "does not exist"),
        ("update_workspace", {"workspace_id": "x", "status": "finished"}, "Input should be"),
        ("forget_fact", {"fact_id": "not-a-uuid"}, "expected a UUID"),
    ],
)
async def test_bad_tool_input_is_a_clear_error_and_writes_nothing(
    connect: Connect, alice: Principal, tool: str, args: dict, expected: str
) -> None:
    async with connect(alice) as client:
        result = await client.call_tool(tool, args)
        assert result.is_error
        message = result.content[0].text
        assert expected in message
        assert "Traceback" not in message
        await assert_nothing_written(client, alice.tenant)


async def test_output_schemas_are_self_contained_and_match_results(connect: Connect, alice: Principal) -> None:
    """Clients validate every structured result: schemas carry no $ref (costly per item) and still hold."""
    async with connect(alice) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        await client.call_tool("write_event", {"content": "schema check", "role": None, "metadata": {"k": 1}})
        result = await client.call_tool("get_recent_shared", {"limit": 5})

    for tool in tools.values():
        assert tool.output_schema is not None and "$ref" not in json.dumps(tool.output_schema), tool.name
    jsonschema.validate(result.structured_content, tools["get_recent_shared"].output_schema)
    for field, wrong in (("seq", "x"), ("importance", "high"), ("content", None)):
        forged = json.loads(json.dumps(result.structured_content))
        forged["events"][0][field] = wrong
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(forged, tools["get_recent_shared"].output_schema)
    no_scope = {k: v for k, v in result.structured_content.items() if k != "scope"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(no_scope, tools["get_recent_shared"].output_schema)


@pytest.fixture
async def long_content_runtime(settings: Settings, connections: Connections) -> AsyncIterator[Runtime]:
    """A runtime configured as with ``MSM_MAX_CONTENT_CHARS=50000``."""
    async with open_runtime(isolated(settings, max_content_chars=50_000), connections=connections) as opened:
        yield opened


async def test_content_length_follows_the_configured_limit(long_content_runtime: Runtime, alice: Principal) -> None:
    """Regression: the tool schema hard-coded 32 000 characters whatever MSM_MAX_CONTENT_CHARS said."""
    async with Client(in_process_server(long_content_runtime, alice)) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert tools["write_event"].input_schema["properties"]["content"]["maxLength"] == 50_000

        too_long = await client.call_tool("write_event", {"content": "y" * 50_001})
        assert too_long.is_error
        assert "50000" in too_long.content[0].text and "Traceback" not in too_long.content[0].text
        await assert_nothing_written(client, alice.tenant)

        content = "x" * 39_999 + "!"
        written = await client.call_tool("write_event", {"content": content})
        assert not written.is_error, written.content[0].text
        assert written.structured_content["status"] == "written"
        recent = await client.call_tool("get_recent_shared", {"limit": 5})
        assert [e["content"] for e in recent.structured_content["events"]] == [content]
