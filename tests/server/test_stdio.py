"""Two stdio server processes (two agents) sharing memory through the real backends."""

from __future__ import annotations

import json

import anyio
import pytest
from mcp import Client, MCPError

from .mcp_clients import Inbox, legacy_subscribe, stdio_server

pytestmark = pytest.mark.anyio


@pytest.fixture
def tenant_id() -> str:
    import uuid

    return f"t{uuid.uuid4().hex[:10]}"


async def test_agent_b_is_notified_of_agent_as_write_and_reads_it(
    backend_env: dict[str, str], tenant_id: str, mode: str
) -> None:
    uri = f"memory://{tenant_id}/user/alice/recent"
    agent_a = stdio_server(backend_env, tenant=tenant_id, agent_id="agent-a", agent_type="research", scope="user:alice")
    agent_b = stdio_server(backend_env, tenant=tenant_id, agent_id="agent-b", agent_type="code", scope="user:alice")
    inbox = Inbox()
    async with Client(agent_a, mode=mode) as a, Client(agent_b, mode=mode, message_handler=inbox) as b:
        if mode == "legacy":
            await legacy_subscribe(b, uri)
            await a.call_tool("write_event", {"content": "The auth service uses OAuth2 PKCE", "importance": 0.8})
            await inbox.wait_for(lambda box: uri in box.updated)
        else:
            async with b.listen(resource_subscriptions=[uri]) as stream:
                await a.call_tool("write_event", {"content": "The auth service uses OAuth2 PKCE", "importance": 0.8})
                with anyio.fail_after(10):
                    event = await stream.__anext__()
                assert str(event.uri) == uri

        read = await b.read_resource(uri)
        events = json.loads(read.contents[0].text)["events"]
        assert [(e["agent_id"], e["content"]) for e in events] == [("agent-a", "The auth service uses OAuth2 PKCE")]
        recent = await b.call_tool("get_recent_shared", {"limit": 5})
        assert recent.structured_content["events"][0]["agent_type"] == "research"


async def test_workspace_creation_sends_list_changed(backend_env: dict[str, str], tenant_id: str, mode: str) -> None:
    orchestrator = stdio_server(backend_env, tenant=tenant_id, agent_id="orchestrator", scope="user:alice")
    worker = stdio_server(backend_env, tenant=tenant_id, agent_id="worker", scope="user:alice")
    inbox = Inbox()
    async with Client(orchestrator, mode=mode) as orch, Client(worker, mode=mode, message_handler=inbox) as w:
        if mode == "legacy":
            await w.list_tools()  # the connection is registered once initialized
            await anyio.sleep(0.2)
            created = await orch.call_tool("create_workspace", {"task": "Ship v2", "agents": ["worker"]})
            await inbox.wait_for(lambda box: box.list_changed >= 1)
        else:
            async with w.listen(resources_list_changed=True) as stream:
                created = await orch.call_tool("create_workspace", {"task": "Ship v2", "agents": ["worker"]})
                with anyio.fail_after(10):
                    await stream.__anext__()
        workspace_id = created.structured_content["id"]
        listed = json.loads((await w.read_resource(f"memory://{tenant_id}/workspaces")).contents[0].text)
        assert [ws["id"] for ws in listed["workspaces"]] == [workspace_id]
        prompt = await w.get_prompt("shared_context", {"scope": f"workspace:{workspace_id}"})
        assert "Workspace task: Ship v2" in prompt.messages[0].content.text


async def test_tenant_b_cannot_read_subscribe_or_hear_tenant_a(
    backend_env: dict[str, str], tenant_id: str, mode: str
) -> None:
    other = f"{tenant_id}-b"
    a_uri = f"memory://{tenant_id}/user/alice/recent"
    b_uri = f"memory://{other}/user/alice/recent"
    agent_a = stdio_server(backend_env, tenant=tenant_id, agent_id="agent-a", scope="user:alice")
    agent_b = stdio_server(backend_env, tenant=other, agent_id="agent-a", scope="user:alice", allowed_scopes="*")
    inbox = Inbox()
    async with Client(agent_a, mode=mode) as a, Client(agent_b, mode=mode, message_handler=inbox) as b:
        await a.call_tool("write_event", {"content": "tenant A secret plan", "importance": 0.9})
        workspace = (await a.call_tool("create_workspace", {"task": "tenant A task"})).structured_content

        with pytest.raises(MCPError):
            await b.read_resource(a_uri)
        with pytest.raises(MCPError):
            await b.read_resource(f"memory://{tenant_id}/workspace/{workspace['id']}/context")
        if mode == "legacy":
            with pytest.raises(MCPError):
                await legacy_subscribe(b, a_uri)
            await legacy_subscribe(b, b_uri)
        else:
            with pytest.raises(MCPError):
                async with b.listen(resource_subscriptions=[a_uri]):
                    pass
        for tool, args in [
            ("get_recent_shared", {"limit": 50}),
            ("search_shared", {"query": "secret plan", "min_similarity": -1}),
            ("get_agent_history", {"agent_id": "agent-a"}),
            ("search_facts", {"query": "secret", "min_similarity": -1}),
        ]:
            result = await b.call_tool(tool, args)
            assert not result.is_error
            assert "secret" not in json.dumps(result.structured_content)
        summary = await b.call_tool("get_workspace_summary", {"workspace_id": workspace["id"]})
        assert summary.is_error and "does not exist" in summary.content[0].text

        await a.call_tool("write_event", {"content": "another tenant A event", "importance": 0.9})
        await anyio.sleep(0.5)
        assert inbox.updated == []


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
    backend_env: dict[str, str], tenant_id: str, tool: str, args: dict, expected: str
) -> None:
    server = stdio_server(backend_env, tenant=tenant_id, agent_id="agent-a", scope="user:alice")
    async with Client(server) as client:
        result = await client.call_tool(tool, args)
        assert result.is_error
        message = result.content[0].text
        assert expected in message
        assert "Traceback" not in message
        recent = await client.call_tool("get_recent_shared", {"limit": 10, "scope": "user:alice"})
        assert recent.structured_content["events"] == []
        listed = json.loads((await client.read_resource(f"memory://{tenant_id}/workspaces")).contents[0].text)
        assert listed["workspaces"] == []


async def test_output_schemas_are_self_contained_and_match_results(backend_env: dict[str, str], tenant_id: str) -> None:
    """Clients validate every structured result: schemas carry no $ref (costly per item) and still hold."""
    import jsonschema

    server = stdio_server(backend_env, tenant=tenant_id, agent_id="agent-a", scope="user:alice")
    async with Client(server) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        await client.call_tool("write_event", {"content": "schema check", "role": None, "metadata": {"k": 1}})
        result = await client.call_tool("get_recent_shared", {"limit": 5})

    for tool in tools.values():
        assert tool.output_schema is not None and "$ref" not in json.dumps(tool.output_schema), tool.name
    jsonschema.validate(result.structured_content, tools["get_recent_shared"].output_schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(
            {"events": [{"seq": "x"}], "next_since_seq": None}, tools["get_recent_shared"].output_schema
        )
