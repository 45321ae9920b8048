"""Tenants never mix over MCP: another tenant's agent, with the same user, agent id and every scope
allowed, can neither read, subscribe to, nor hear what tenant A writes."""

from __future__ import annotations

import json

import pytest
from mcp import MCPError

from mcp_shared_memory.models import Principal

from .conftest import Connect
from .mcp_clients import Inbox, legacy_subscribe, watch

pytestmark = pytest.mark.anyio


async def test_tenant_b_cannot_read_subscribe_or_hear_tenant_a(
    connect: Connect, alice: Principal, other_tenant: Principal, mode: str
) -> None:
    a_uri = f"memory://{alice.tenant}/user/alice/recent"
    b_uri = f"memory://{other_tenant.tenant}/user/alice/recent"
    a_inbox, b_inbox = Inbox(), Inbox()
    async with connect(alice, mode, a_inbox) as a, connect(other_tenant, mode, b_inbox) as b:
        for foreign in (a_uri, f"memory://{alice.tenant}/workspaces"):
            with pytest.raises(MCPError):
                if mode == "legacy":
                    await legacy_subscribe(b, foreign)
                else:
                    async with b.listen(resource_subscriptions=[foreign]):
                        pass

        async with (
            watch(a, mode, a_inbox, [a_uri], list_changed=True),
            watch(b, mode, b_inbox, [b_uri], list_changed=True),
        ):
            await a.call_tool("write_event", {"content": "tenant A secret plan", "importance": 0.9})
            await a.call_tool("store_fact", {"fact": "tenant A secret fact"})
            workspace = (await a.call_tool("create_workspace", {"task": "tenant A task"})).structured_content

            with pytest.raises(MCPError):
                await b.read_resource(a_uri)
            with pytest.raises(MCPError):
                await b.read_resource(f"memory://{alice.tenant}/workspace/{workspace['id']}/context")
            for tool, args in [
                ("get_recent_shared", {"limit": 50}),
                ("search_shared", {"query": "secret plan", "min_similarity": -1}),
                ("get_agent_history", {"agent_id": alice.agent_id}),
                ("search_facts", {"query": "secret", "min_similarity": -1}),
            ]:
                result = await b.call_tool(tool, args)
                assert not result.is_error
                assert "secret" not in json.dumps(result.structured_content)
            summary = await b.call_tool("get_workspace_summary", {"workspace_id": workspace["id"]})
            assert summary.is_error and "does not exist" in summary.content[0].text

            # Tenant B's own write is notified after everything tenant A did: by then anything of A's
            # that leaked would have arrived first (one bus, delivered in order).
            await a.call_tool("write_event", {"content": "another tenant A event", "importance": 0.9})
            await b.call_tool("write_event", {"content": "tenant B event", "importance": 0.9})
            await a_inbox.wait_for(lambda box: a_uri in box.updated and box.list_changed >= 1)
            await b_inbox.wait_for(lambda box: b_uri in box.updated)
        assert b_inbox.updated == [b_uri]
        assert b_inbox.list_changed == 0
