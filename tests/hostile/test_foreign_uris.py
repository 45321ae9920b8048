"""Other tenants' and other users' resources: an agent of another tenant, or of another user of the same
tenant who is no member of a workspace, names their URIs in resources/read, resources/subscribe (2025-era
clients), subscriptions/listen (2026) and the shared_context prompt. Each is "not found" and carries no
content, and no notification ever arrives for them."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from mcp import Client, MCPError

from mcp_shared_memory.models import Principal

from ..server.mcp_clients import Inbox, legacy_subscribe, watch
from .conftest import Connect, assert_clear_error

pytestmark = pytest.mark.anyio

CANARY = "canary-of-tenant-a-5c1e"


@dataclass
class Planted:
    """Tenant A's resources: alice's user scope and a workspace of alice and her coder."""

    user_recent: str
    workspace_recent: str
    workspace_context: str
    workspaces: str
    workspace_id: str


async def plant(client: Client, tenant: str) -> Planted:
    await client.call_tool("write_event", {"content": f"{CANARY} user event", "importance": 0.9})
    created = await client.call_tool(
        "create_workspace", {"task": f"{CANARY} task", "agents": ["code-1"], "context": {"secret": CANARY}}
    )
    workspace_id = created.structured_content["id"]
    await client.call_tool(
        "write_event", {"content": f"{CANARY} workspace event", "importance": 0.9, "scope": f"workspace:{workspace_id}"}
    )
    return Planted(
        user_recent=f"memory://{tenant}/user/alice/recent",
        workspace_recent=f"memory://{tenant}/workspace/{workspace_id}/recent",
        workspace_context=f"memory://{tenant}/workspace/{workspace_id}/context",
        workspaces=f"memory://{tenant}/workspaces",
        workspace_id=workspace_id,
    )


async def subscribe(client: Client, mode: str, uri: str) -> None:
    """Subscribe in the client's protocol generation (a listen stream is opened and closed again)."""
    if mode == "legacy":
        await legacy_subscribe(client, uri)
    else:
        async with client.listen(resource_subscriptions=[uri]):
            pass


def assert_not_found(error: MCPError) -> None:
    assert CANARY not in json.dumps([error.message, error.data])
    assert_clear_error(error.message, expect=r"not found|not a resource of|not allowed|not a member")


@pytest.mark.parametrize("intruder", ["another tenant", "another user"])
async def test_foreign_resources_are_not_found_to_read_subscribe_listen_or_prompt(
    connect: Connect, alice: Principal, bob: Principal, other_tenant: Principal, intruder: str, mode: str
) -> None:
    outsider = other_tenant if intruder == "another tenant" else bob
    async with connect(alice) as a, connect(outsider, mode) as b:
        planted = await plant(a, alice.tenant)
        foreign = [planted.user_recent, planted.workspace_recent, planted.workspace_context]
        if intruder == "another tenant":
            foreign.append(planted.workspaces)
        for uri in foreign:
            with pytest.raises(MCPError) as read:
                await b.read_resource(uri)
            assert_not_found(read.value)
        # Membership is checked for reads; for subscriptions another user is refused only its user scope
        # here (see test_a_non_member_cannot_watch_a_workspace).
        watched = foreign if intruder == "another tenant" else [planted.user_recent]
        for uri in watched:
            with pytest.raises(MCPError) as subscribed:
                await subscribe(b, mode, uri)
            assert_not_found(subscribed.value)
        for scope in ("user:alice", f"workspace:{planted.workspace_id}"):
            if intruder == "another tenant" and scope == "user:alice":
                continue  # tenant B's own user alice
            with pytest.raises(MCPError) as prompt:
                await b.get_prompt("shared_context", {"scope": scope})
            assert CANARY not in prompt.value.message
        own_list = await b.read_resource(f"memory://{outsider.tenant}/workspaces")
    assert CANARY not in own_list.contents[0].text


@pytest.mark.parametrize("intruder", ["another tenant", "another user"])
async def test_no_notification_for_a_foreign_resource_ever_arrives(
    connect: Connect, alice: Principal, bob: Principal, other_tenant: Principal, intruder: str, mode: str
) -> None:
    outsider = other_tenant if intruder == "another tenant" else bob
    own = f"memory://{outsider.tenant}/user/{outsider.default_scope.id}/recent"
    inbox = Inbox()
    async with connect(alice) as a, connect(outsider, mode, inbox) as b:
        planted = await plant(a, alice.tenant)
        async with watch(b, mode, inbox, [own], list_changed=True):
            await a.call_tool("write_event", {"content": "more", "importance": 0.9})
            await a.call_tool("write_event", {"content": "more", "scope": f"workspace:{planted.workspace_id}"})
            await a.call_tool("update_workspace", {"workspace_id": planted.workspace_id, "context": {"k": "v"}})
            await a.call_tool("create_workspace", {"task": "another one"})
            # The outsider's own write is delivered after all of the above (one bus, in order).
            await b.call_tool("write_event", {"content": "the outsider's own", "importance": 0.9})
            await inbox.wait_for(lambda box: own in box.updated)
    foreign = {planted.user_recent, planted.workspace_recent, planted.workspace_context}
    assert not foreign & set(inbox.updated)
    if intruder == "another tenant":
        assert inbox.updated == [own]
        assert inbox.list_changed == 0


async def test_a_non_member_cannot_watch_a_workspace(
    connect: Connect, alice: Principal, bob: Principal, mode: str
) -> None:
    inbox = Inbox()
    async with connect(alice) as a, connect(bob, mode, inbox) as b:
        planted = await plant(a, alice.tenant)
        refused = []
        for uri in (planted.workspace_recent, planted.workspace_context):
            try:
                await subscribe(b, mode, uri)
            except MCPError as exc:
                assert_not_found(exc)
                refused.append(uri)
        own = f"memory://{alice.tenant}/user/bob/recent"
        accepted = [uri for uri in (planted.workspace_recent, planted.workspace_context) if uri not in refused]
        async with watch(b, mode, inbox, [own, *accepted]):
            await a.call_tool("write_event", {"content": "more", "scope": f"workspace:{planted.workspace_id}"})
            await a.call_tool("update_workspace", {"workspace_id": planted.workspace_id, "context": {"k": "v"}})
            await b.call_tool("write_event", {"content": "bob's own", "importance": 0.9})
            await inbox.wait_for(lambda box: own in box.updated)
    assert inbox.updated == [own]
    assert refused == [planted.workspace_recent, planted.workspace_context]


async def test_a_member_removed_from_the_roster_stops_hearing_the_workspace(
    connect: Connect, alice: Principal, alice_coder: Principal, mode: str
) -> None:
    inbox = Inbox()
    async with connect(alice) as a, connect(alice_coder, mode, inbox) as coder:
        planted = await plant(a, alice.tenant)
        own = f"memory://{alice.tenant}/user/alice/recent"
        async with watch(coder, mode, inbox, [own, planted.workspace_recent]):
            await a.call_tool(
                "write_event", {"content": "while a member", "scope": f"workspace:{planted.workspace_id}"}
            )
            await inbox.wait_for(lambda box: planted.workspace_recent in box.updated)
            await a.call_tool("update_workspace", {"workspace_id": planted.workspace_id, "agents": []})
            inbox.updated.clear()
            await a.call_tool("write_event", {"content": "after removal", "scope": f"workspace:{planted.workspace_id}"})
            await a.call_tool("write_event", {"content": "the user scope", "importance": 0.9})
            await inbox.wait_for(lambda box: own in box.updated)
    assert inbox.updated == [own]
