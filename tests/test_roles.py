"""Grants carry a role: ``r`` reads, ``rw`` (or no suffix, as before roles) also writes, ``rwa`` also manages
workspaces. Patterns are exact scopes or prefixes ending in ``*``; anything fnmatch-like is refused when the
grant is parsed (token creation, the stdio binding), never silently matched."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace

import pytest
from mcp import Client

from mcp_shared_memory.errors import AccessDenied, ConfigError, InvalidInput
from mcp_shared_memory.memory import SharedMemory
from mcp_shared_memory.models import Grant, Principal, Scope
from mcp_shared_memory.runtime import Runtime
from mcp_shared_memory.server.state import stdio_principal
from mcp_shared_memory.settings import Settings

from .conftest import Backdoor
from .server.mcp_clients import in_process_server

pytestmark = pytest.mark.anyio

ALICE = Scope("user", "alice")


def reader(tenant: str, *grants: str, agent_id: str = "reader-1") -> Principal:
    return Principal(tenant=tenant, agent_id=agent_id, allowed_scopes=grants, default_scope=ALICE)


# Parsing


@pytest.mark.parametrize(
    ("text", "pattern", "role", "canonical"),
    [
        ("user:alice", "user:alice", "write", "user:alice"),
        ("user:alice=r", "user:alice", "read", "user:alice=r"),
        ("user:alice=read", "user:alice", "read", "user:alice=r"),
        ("workspace:*=rw", "workspace:*", "write", "workspace:*"),
        ("user:bob=rwa", "user:bob", "admin", "user:bob=rwa"),
        (" workspace:proj-* = admin ", "workspace:proj-*", "admin", "workspace:proj-*=rwa"),
        ("*=r", "*", "read", "*=r"),
        ("*", "*", "write", "*"),
    ],
)
def test_grants_parse_to_a_pattern_and_a_role(text: str, pattern: str, role: str, canonical: str) -> None:
    grant = Grant.parse(text)
    assert (grant.pattern, grant.role, str(grant)) == (pattern, role, canonical)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("user:a?c", "single '*'"),
        ("user:[ab]*", "single '*'"),
        ("user:*a*", "single '*'"),
        ("user:a*c", "single '*'"),
        ("user:alice=w", "role after '='"),
        ("user:alice=", "role after '='"),
        ("*=x", "role after '='"),
        ("team:alice", "'user:<id>'"),
        ("user:", "'user:<id>'"),
        ("alice", "'user:<id>'"),
        ("user*", "'user:<id>'"),
        ("user:al ice", "invalid user id in grant"),
    ],
)
def test_malformed_grants_are_refused_when_parsed(text: str, expected: str) -> None:
    with pytest.raises(InvalidInput, match=expected):
        Grant.parse(text)
    with pytest.raises(InvalidInput, match=expected):
        Principal(tenant="t", agent_id="a", allowed_scopes=(text,))


def test_a_prefix_matches_only_scopes_that_start_with_it() -> None:
    team = Principal(tenant="t", agent_id="a", allowed_scopes=("user:team-*=r", "workspace:*"))
    assert team.role_for(Scope("user", "team-1")) == "read"
    assert team.role_for(Scope("user", "teams")) is None
    assert team.role_for(Scope("workspace", "w1")) == "write"
    everything = Principal(tenant="t", agent_id="a", allowed_scopes=("*=r", "user:alice=rwa"))
    assert everything.role_for(Scope("user", "bob")) == "read"
    assert everything.role_for(ALICE) == "admin"  # the highest matching grant counts


def test_the_stdio_binding_takes_roles_and_refuses_glob_patterns(settings: Settings) -> None:
    bound = stdio_principal(settings.model_copy(update={"scope": "user:alice", "allowed_scopes": "user:alice=r, *=r"}))
    assert [str(g) for g in bound.grants] == ["user:alice=r", "*=r"]
    assert bound.role_for(ALICE) == "read"
    default = stdio_principal(settings.model_copy(update={"scope": "user:alice", "allowed_scopes": None}))
    assert (default.role_for(ALICE), default.role_for(Scope("workspace", "w"))) == ("write", "write")
    with pytest.raises(ConfigError, match=r"MSM_ALLOWED_SCOPES.*single '\*'"):
        stdio_principal(settings.model_copy(update={"allowed_scopes": "user:a?c"}))


async def test_tokens_store_canonical_grants_and_refuse_glob_patterns(runtime: Runtime, tenant: str) -> None:
    _, record = await runtime.tokens.create(
        tenant=tenant, agent_id="a", allowed_scopes=["user:alice=read", "workspace:*=rw", "user:bob"]
    )
    assert record.allowed_scopes == ["user:alice=r", "workspace:*", "user:bob"]
    principal = record.principal()
    assert (principal.role_for(ALICE), principal.role_for(Scope("workspace", "w"))) == ("read", "write")
    for bad in ("user:[ab]*", "user:a?c", "user:alice=x"):
        with pytest.raises(InvalidInput):
            await runtime.tokens.create(tenant=tenant, agent_id="a", allowed_scopes=[bad])
    assert len(await runtime.tokens.list(tenant=tenant)) == 1


# Read-only grants

WRITES: dict[str, Callable[[SharedMemory, Principal], Awaitable[object]]] = {
    "write_event": lambda m, p: m.write_event(p, "a read-only agent writes"),
    "publish_result": lambda m, p: m.publish_result(p, "a read-only result"),
    "store_fact": lambda m, p: m.store_fact(p, "Read-only agents write facts"),
    "forget_fact": lambda m, p: m.forget_fact(p, "00000000-0000-0000-0000-000000000000"),
}


@pytest.mark.parametrize("operation", list(WRITES), ids=list(WRITES))
async def test_a_read_only_grant_reads_but_every_write_is_refused_naming_the_role(
    memory: SharedMemory, backdoor: Backdoor, alice: Principal, tenant: str, operation: str
) -> None:
    await memory.write_event(alice, "The auth service uses OAuth2 PKCE", importance=0.9)
    await memory.store_fact(alice, "Auth uses PKCE")
    read_only = reader(tenant, "user:alice=r")

    with pytest.raises(AccessDenied, match=r"writing to scope user:alice needs the write role; .* has read"):
        await WRITES[operation](memory, read_only)

    assert [e.content for e in await memory.get_recent_shared(read_only)] == ["The auth service uses OAuth2 PKCE"]
    assert await memory.search_shared(read_only, "OAuth2 PKCE", min_similarity=-1)
    assert [f.fact for f in await memory.search_facts(read_only, "PKCE", min_similarity=-1)] == ["Auth uses PKCE"]
    assert await memory.get_agent_history(read_only, "research-1")
    assert "OAuth2 PKCE" in await memory.get_task_context(read_only)
    assert await backdoor.episodic.count(tenant, ALICE) == 1


async def test_a_read_only_workspace_member_reads_it_but_cannot_write_or_create_workspaces(
    memory: SharedMemory, backdoor: Backdoor, alice: Principal, tenant: str
) -> None:
    workspace = await memory.create_workspace(alice, "Ship v2", ["reader-1"])
    scope = f"workspace:{workspace.id}"
    member = reader(tenant, "user:alice=r", "workspace:*=r")

    assert (await memory.get_workspace_summary(member, workspace.id)).event_count == 1
    assert [w.id for w in await memory.list_workspaces(member)] == [workspace.id]
    with pytest.raises(AccessDenied, match="needs the write role"):
        await memory.write_event(member, "a reader writes", scope=scope)
    with pytest.raises(AccessDenied, match="needs the write role"):
        await memory.update_workspace(member, workspace.id, status="paused")
    with pytest.raises(AccessDenied, match="write role on every workspace"):
        await memory.create_workspace(member, "A reader's workspace")
    # A write grant on some workspaces only does not cover a new one either.
    with pytest.raises(AccessDenied, match="write role on every workspace"):
        await memory.create_workspace(reader(tenant, "workspace:proj-*=rw"), "Prefix-only workspace")
    assert await backdoor.episodic.count(tenant, Scope("workspace", workspace.id)) == 1
    assert len(await backdoor.workspaces.list(tenant, status=None, limit=10)) == 1


async def test_grants_combine_a_write_grant_on_one_workspace_among_read_grants(
    memory: SharedMemory, alice: Principal, tenant: str
) -> None:
    first = await memory.create_workspace(alice, "first", ["reader-1"])
    second = await memory.create_workspace(alice, "second", ["reader-1"])
    member = reader(tenant, "workspace:*=r", f"workspace:{second.id}=rw")

    assert (await memory.write_event(member, "allowed here", scope=f"workspace:{second.id}")).status == "written"
    with pytest.raises(AccessDenied, match="needs the write role"):
        await memory.write_event(member, "not here", scope=f"workspace:{first.id}")


# Managing workspaces


async def test_the_owner_needs_a_write_grant_to_change_its_workspace(
    memory: SharedMemory, alice: Principal, tenant: str
) -> None:
    workspace = await memory.create_workspace(alice, "Owned", ["code-1"])
    owner_read_only = replace(alice, allowed_scopes=("user:alice", "workspace:*=r"))

    with pytest.raises(AccessDenied, match="needs the write role; this connection has read"):
        await memory.update_workspace(owner_read_only, workspace.id, status="paused")
    assert (await memory.update_workspace(alice, workspace.id, status="paused")).status == "paused"


@pytest.mark.parametrize("grant", ["workspace:*=rwa", "workspace:{id}=admin"])
async def test_an_admin_grant_manages_a_workspace_it_is_no_member_of_without_reading_it(
    memory: SharedMemory, alice: Principal, tenant: str, grant: str
) -> None:
    workspace = await memory.create_workspace(alice, "Supervised", ["code-1"])
    supervisor = reader(tenant, grant.format(id=workspace.id), agent_id="supervisor")

    paused = await memory.update_workspace(supervisor, workspace.id, status="paused", agents=["code-1", "code-2"])
    assert (paused.status, paused.agents) == ("paused", ["code-1", "code-2"])
    with pytest.raises(AccessDenied, match="not a member"):
        await memory.get_recent_shared(supervisor, scope=f"workspace:{workspace.id}")
    with pytest.raises(AccessDenied, match="not a member"):
        await memory.write_event(supervisor, "the supervisor writes", scope=f"workspace:{workspace.id}")
    assert (await memory.get_workspace(alice, workspace.id)).status == "paused"


async def test_an_admin_grant_on_another_workspace_manages_nothing_here(
    memory: SharedMemory, alice: Principal, tenant: str
) -> None:
    workspace = await memory.create_workspace(alice, "Not yours", ["supervisor"])
    supervisor = reader(tenant, "workspace:*=rw", "workspace:other=rwa", agent_id="supervisor")

    with pytest.raises(AccessDenied, match=r"owner .*or a connection with the admin role"):
        await memory.update_workspace(supervisor, workspace.id, status="cancelled")


# Over MCP: the tool result names the missing role


async def test_a_read_only_connection_gets_the_missing_role_as_the_tool_error(runtime: Runtime, tenant: str) -> None:
    read_only = reader(tenant, "user:alice=r")
    async with Client(in_process_server(runtime, read_only)) as client:
        denied = await client.call_tool("write_event", {"content": "x"})
        recent = await client.call_tool("get_recent_shared", {})

    assert denied.is_error and "needs the write role" in denied.content[0].text
    assert not recent.is_error
