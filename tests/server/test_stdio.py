"""The stdio transport: two agents, each its own `mcp-shared-memory serve` process bound by its
environment, sharing memory through the real backends. (The protocol itself is tested in-process.)"""

from __future__ import annotations

import json
import uuid

import pytest
from mcp import Client

from .mcp_clients import Inbox, stdio_server, watch

pytestmark = pytest.mark.anyio


async def test_agent_b_is_notified_of_agent_as_write_and_reads_it(backend_env: dict[str, str], mode: str) -> None:
    tenant_id = f"t{uuid.uuid4().hex[:10]}"
    uri = f"memory://{tenant_id}/user/alice/recent"
    agent_a = stdio_server(backend_env, tenant=tenant_id, agent_id="agent-a", agent_type="research", scope="user:alice")
    agent_b = stdio_server(backend_env, tenant=tenant_id, agent_id="agent-b", agent_type="code", scope="user:alice")
    inbox = Inbox()
    async with (
        Client(agent_a, mode=mode) as a,
        Client(agent_b, mode=mode, message_handler=inbox) as b,
        watch(b, mode, inbox, [uri]),
    ):
        await a.call_tool("write_event", {"content": "The auth service uses OAuth2 PKCE", "importance": 0.8})
        await inbox.wait_for(lambda box: uri in box.updated)

        read = await b.read_resource(uri)
        events = json.loads(read.contents[0].text)["events"]
        assert [(e["agent_id"], e["content"]) for e in events] == [("agent-a", "The auth service uses OAuth2 PKCE")]
        recent = await b.call_tool("get_recent_shared", {"limit": 5})
        assert recent.structured_content["events"][0]["agent_type"] == "research"
