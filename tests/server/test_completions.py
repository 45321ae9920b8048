"""completion/complete offers only what the caller may read: its own tenant, the user scopes its grants
name, the workspaces it is a member of and granted, and the agents and event types of a scope it reads.
Another tenant's scopes and workspaces, and a workspace of its own tenant it is not a member of, never
appear, in either protocol generation."""

from __future__ import annotations

import pytest
from mcp import Client
from mcp.types import PromptReference, ResourceTemplateReference

from mcp_shared_memory.memory import SharedMemory
from mcp_shared_memory.models import Principal, Scope
from mcp_shared_memory.server.uris import CONTEXT_TEMPLATE, RECENT_TEMPLATE

from .conftest import Connect

pytestmark = pytest.mark.anyio

PROMPT = PromptReference(type="ref/prompt", name="shared_context")
RECENT = ResourceTemplateReference(type="ref/resource", uri=RECENT_TEMPLATE)
CONTEXT = ResourceTemplateReference(type="ref/resource", uri=CONTEXT_TEMPLATE)


async def values(
    client: Client,
    ref: PromptReference | ResourceTemplateReference,
    name: str,
    value: str = "",
    context: dict[str, str] | None = None,
) -> list[str]:
    result = await client.complete(ref, {"name": name, "value": value}, context)
    return result.completion.values


@pytest.fixture
def orchestrator(alice: Principal) -> Principal:
    return Principal(tenant=alice.tenant, agent_id="orchestrator", allowed_scopes=("*",))


async def test_completions_list_only_what_the_caller_reads(
    connect: Connect, memory: SharedMemory, alice: Principal, orchestrator: Principal, other_tenant: Principal,
    mode: str,
) -> None:  # fmt: skip
    joined = await memory.create_workspace(orchestrator, "task alice works on", [alice.agent_id, "code-1"])
    hidden = await memory.create_workspace(orchestrator, "task without alice", ["code-1"])
    foreign = await memory.create_workspace(other_tenant, "other tenant's task", [other_tenant.agent_id])
    coder = Principal(tenant=alice.tenant, agent_id="code-1", allowed_scopes=("workspace:*",))
    await memory.write_event(coder, "schema migrated", event_type="decision", scope=f"workspace:{joined.id}")
    await memory.write_event(coder, "hidden one's note", event_type="secret_type", scope=f"workspace:{hidden.id}")
    await memory.write_event(other_tenant, "foreign note", event_type="foreign_type", scope="user:alice")

    async with connect(alice, mode) as client:
        scopes = await values(client, PROMPT, "scope")
        assert scopes == sorted(["user:alice", f"workspace:{joined.id}"])
        assert await values(client, PROMPT, "scope", "work") == [f"workspace:{joined.id}"]
        assert await values(client, CONTEXT, "workspace_id") == [joined.id]
        assert await values(client, RECENT, "tenant") == [alice.tenant]
        assert await values(client, RECENT, "scope_type") == ["user", "workspace"]
        assert await values(client, RECENT, "scope_id", context={"scope_type": "workspace"}) == [joined.id]
        assert await values(client, RECENT, "scope_id", context={"scope_type": "user"}) == ["alice"]

        in_joined = {"scope_type": "workspace", "scope_id": joined.id}
        assert await values(client, RECENT, "agent_id", context=in_joined) == sorted(["code-1", "orchestrator"])
        assert "decision" in await values(client, RECENT, "event_type", context=in_joined)
        # A workspace alice is not a member of, and another tenant's: nothing, and no error saying why.
        for scope in (f"workspace:{hidden.id}", f"workspace:{foreign.id}", "user:bob"):
            assert await values(client, PROMPT, "agent_id", context={"scope": scope}) == []
            assert await values(client, PROMPT, "event_type", context={"scope": scope}) == []
        # Her own user scope holds nothing of the other tenant's (same user id, same agent id).
        assert await values(client, PROMPT, "event_type", context={"scope": "user:alice"}) == []

        everything = [
            *await values(client, PROMPT, "scope"),
            *await values(client, CONTEXT, "workspace_id"),
            *await values(client, RECENT, "scope_id", context={"scope_type": "workspace"}),
        ]
        assert hidden.id not in str(everything) and foreign.id not in str(everything)
        # A prompt or template this server does not have: an empty answer (what the conformance suite asks).
        assert await values(client, PromptReference(type="ref/prompt", name="nope"), "scope") == []


async def test_grants_bound_completions_even_for_a_roster_member(
    connect: Connect, memory: SharedMemory, alice: Principal, orchestrator: Principal, mode: str
) -> None:
    """On the roster, but holding no grant that reads workspaces: no workspace is offered."""
    reader = Principal(
        tenant=alice.tenant, agent_id="reader-1", allowed_scopes=("user:alice=r", "user:team-*"),
        default_scope=Scope("user", "alice"),
    )  # fmt: skip
    workspace = await memory.create_workspace(orchestrator, "task", [reader.agent_id])
    async with connect(reader, mode) as client:
        assert await values(client, PROMPT, "scope") == ["user:alice"]  # a wildcard grant names no user
        assert await values(client, CONTEXT, "workspace_id") == []
        assert await values(client, RECENT, "scope_type") == ["user"]
        assert await values(client, PROMPT, "agent_id", context={"scope": f"workspace:{workspace.id}"}) == []


async def test_the_server_declares_completions_and_logging(connect: Connect, alice: Principal) -> None:
    async with connect(alice, "legacy") as client:
        capabilities = client.session.initialize_result.capabilities  # type: ignore[union-attr]
        assert capabilities.completions is not None and capabilities.logging is not None
