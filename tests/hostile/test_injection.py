"""Key and URI injection: every identifier an agent passes (scope, workspace and agent ids, event types,
filter values) and every resource URI, spelled with separators, globs, encodings, look-alikes and control
characters, is refused with a clear message and writes nothing; free-text keys (metadata keys,
idempotency keys) are data, stored verbatim and never parsed."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from mcp import Client, MCPError

from mcp_shared_memory.models import Principal

from ..conftest import Backdoor
from ..server.mcp_clients import legacy_subscribe
from .conftest import HOSTILE, Connect, assert_clear_error, snapshot

pytestmark = pytest.mark.anyio

# An identifier refused by the domain, or by the tool schema before it (its length limits).
REFUSED = r"invalid|unknown scope|at most|at least|should have|must be|not allowed"

Args = Callable[[str], dict[str, Any]]

IDENTIFIER_ARGUMENTS: dict[str, tuple[str, Args]] = {
    "write_event user scope": ("write_event", lambda v: {"content": "injected", "scope": f"user:{v}"}),
    "write_event workspace scope": ("write_event", lambda v: {"content": "injected", "scope": f"workspace:{v}"}),
    "write_event scope type": ("write_event", lambda v: {"content": "injected", "scope": f"{v}:alice"}),
    "write_event event_type": ("write_event", lambda v: {"content": "injected", "event_type": v}),
    "store_fact scope": ("store_fact", lambda v: {"fact": "injected fact", "scope": f"user:{v}"}),
    "get_recent_shared scope": ("get_recent_shared", lambda v: {"scope": f"user:{v}"}),
    "search_shared scope": ("search_shared", lambda v: {"query": "injected", "mode": "lexical", "scope": f"user:{v}"}),
    "search_facts scope": ("search_facts", lambda v: {"query": "injected", "scope": f"workspace:{v}"}),
    "get_agent_history agent_id": ("get_agent_history", lambda v: {"agent_id": v}),
    "get_workspace_summary workspace_id": ("get_workspace_summary", lambda v: {"workspace_id": v}),
    "update_workspace workspace_id": ("update_workspace", lambda v: {"workspace_id": v, "status": "paused"}),
    "create_workspace roster": ("create_workspace", lambda v: {"task": "injected task", "agents": ["code-1", v]}),
    "filters agent_ids": ("get_recent_shared", lambda v: {"filters": {"agent_ids": [v]}}),
    "filters agent_types": ("search_shared", lambda v: {"query": "x", "filters": {"agent_types": [v]}}),
    "filters event_types": ("get_agent_history", lambda v: {"agent_id": "research-1", "filters": {"event_types": [v]}}),
    "forget_fact scope": ("forget_fact", lambda v: {"fact_id": str(uuid.uuid4()), "scope": f"user:{v}"}),
}  # fmt: skip


async def refused(client: Client, tool: str, args: dict[str, Any]) -> str | None:
    """None when ``tool`` refused ``args`` with a clear error, else what went wrong."""
    result = await client.call_tool(tool, args)
    if not result.is_error:
        return f"accepted: {result.content[0].text[:120] if result.content else result.structured_content!r}"
    try:
        assert_clear_error(result.content[0].text, expect=REFUSED)
    except AssertionError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("argument", list(IDENTIFIER_ARGUMENTS))
async def test_a_hostile_identifier_is_refused_and_writes_nothing(
    connect: Connect, backdoor: Backdoor, alice: Principal, other_tenant: Principal, argument: str
) -> None:
    tool, build = IDENTIFIER_ARGUMENTS[argument]
    async with connect(alice) as client:
        workspace = (await client.call_tool("create_workspace", {"task": "the real one"})).structured_content
        before = await snapshot(backdoor, alice.tenant, other_tenant.tenant)
        problems = {}
        for name, value in HOSTILE.items():
            if (problem := await refused(client, tool, build(value))) is not None:
                problems[name] = problem
        after = await snapshot(backdoor, alice.tenant, other_tenant.tenant)
        summary = await client.call_tool("get_workspace_summary", {"workspace_id": workspace["id"]})
    assert problems == {}, json.dumps(problems, indent=1)
    assert after == before
    assert summary.structured_content["workspace"]["agents"] == []


async def test_a_hostile_roster_update_changes_nothing(connect: Connect, backdoor: Backdoor, alice: Principal) -> None:
    async with connect(alice) as client:
        created = await client.call_tool("create_workspace", {"task": "roster", "agents": ["code-1"]})
        workspace_id = created.structured_content["id"]
        before = await snapshot(backdoor, alice.tenant)
        problems = {
            name: problem
            for name, value in HOSTILE.items()
            if (problem := await refused(client, "update_workspace", {"workspace_id": workspace_id, "agents": [value]}))
        }
    assert problems == {}, json.dumps(problems, indent=1)
    assert await snapshot(backdoor, alice.tenant) == before


# Free text that is never an identifier: stored as given (no separator means anything), refused only when
# PostgreSQL could not store it (NUL) or when too long.
DATA_KEYS = {name: value for name, value in HOSTILE.items() if name not in ("NUL", "empty") and len(value) <= 200}


async def test_metadata_keys_and_idempotency_keys_are_data_kept_verbatim_in_their_scope(
    connect: Connect, backdoor: Backdoor, alice: Principal, alice_coder: Principal, other_tenant: Principal
) -> None:
    async with connect(alice) as a, connect(alice_coder) as coder:
        for i, (name, key) in enumerate(DATA_KEYS.items()):
            wrote = await a.call_tool(
                "write_event",
                {"content": f"data key {i}", "metadata": {key: name}, "idempotency_key": key, "role": key[:64] or None},
            )
            assert not wrote.is_error, (name, wrote.content[0].text)
            assert wrote.structured_content["status"] == "written"
        # Another agent's key, even one that reads like "<agent>:<key>", is not the same key.
        mine = await coder.call_tool("write_event", {"content": "coder's own", "idempotency_key": "research-1:alice"})
        theirs = await a.call_tool("write_event", {"content": "alice's own", "idempotency_key": "research-1:alice"})
        assert (mine.structured_content["status"], theirs.structured_content["status"]) == ("written", "written")
        recent = await a.call_tool("get_recent_shared", {"limit": 100})

    stored = {e["content"]: e for e in recent.structured_content["events"]}
    for i, (name, key) in enumerate(DATA_KEYS.items()):
        assert stored[f"data key {i}"]["metadata"] == {key: name}
    rows = await backdoor.db.fetch(
        "SELECT DISTINCT scope_type, scope_id FROM shared_episodic_memories WHERE tenant_id = $1", alice.tenant
    )
    assert [tuple(r) for r in rows] == [("user", "alice")]
    assert (await snapshot(backdoor, other_tenant.tenant)).events == 0


@pytest.mark.parametrize(
    ("where", "args"),
    [
        ("metadata key", {"content": "x", "metadata": {"k\x00": 1}}),
        ("metadata value", {"content": "x", "metadata": {"k": "v\x00"}}),
        ("nested metadata value", {"content": "x", "metadata": {"k": [{"deeper": "\x00"}]}}),
        ("idempotency key", {"content": "x", "idempotency_key": "key\x00"}),
        ("too long idempotency key", {"content": "x", "idempotency_key": "k" * 201}),
        ("role", {"content": "x", "role": "lead\x00"}),
        ("content", {"content": "before\x00after"}),
    ],
)
async def test_unstorable_free_text_is_refused_and_writes_nothing(
    connect: Connect, backdoor: Backdoor, alice: Principal, where: str, args: dict[str, Any]
) -> None:
    before = await snapshot(backdoor, alice.tenant)
    async with connect(alice) as client:
        result = await client.call_tool("write_event", args)
    assert result.is_error
    assert_clear_error(result.content[0].text, expect=r"NUL|at most|limit")
    assert await snapshot(backdoor, alice.tenant) == before


@pytest.mark.parametrize(
    "filters",
    [
        {"metadata": {"k\x00": "v"}},
        {"metadata": {"k": "v\x00"}},
        {"since": "0001-01-01T00:00:00+14:00"},
        {"until": "9999-12-31T23:59:59-14:00"},
    ],
    ids=["NUL in a metadata key", "NUL in a metadata value", "since before year 1 in UTC", "until after 9999 in UTC"],
)
async def test_unstorable_filters_are_invalid_input_not_an_outage(
    connect: Connect, alice: Principal, filters: dict[str, Any]
) -> None:
    calls = {"get_recent_shared": {}, "get_agent_history": {"agent_id": "research-1"}, "search_shared": {"query": "x"}}
    async with connect(alice) as client:
        results = {tool: await client.call_tool(tool, {**args, "filters": filters}) for tool, args in calls.items()}
    for result in results.values():
        assert result.is_error
        assert_clear_error(result.content[0].text, expect=r"must not contain NUL|out of range")


def hostile_uris(tenant: str, other: str) -> dict[str, str]:
    """Resource URIs of the caller's tenant (or pointing out of it) that name no resource."""
    base = f"memory://{tenant}"
    uris = {
        "trailing slash": f"{base}/user/alice/recent/",
        "query": f"{base}/user/alice/recent?tenant={other}",
        "fragment": f"{base}/user/alice/recent#x",
        "double slash": f"{base}//user/alice/recent",
        "dot-dot into another tenant": f"{base}/user/alice/../../{other}/user/alice/recent",
        "encoded path into another tenant": f"{base}%2F..%2F{other}/user/alice/recent",
        "tenant with a port": f"memory://{tenant}:80/user/alice/recent",
        "user info": f"memory://{other}@{tenant}/user/alice/recent",
        "no tenant": "memory:///user/alice/recent",
        "unknown scope type": f"{base}/team/alice/recent",
        "upper-case scope type": f"{base}/User/alice/recent",
        "workspace list with a suffix": f"{base}/workspaces/all",
        "trailing newline": f"{base}/user/alice/recent\n",
        "list with a trailing newline": f"{base}/workspaces\n",
        "other scheme": f"file://{tenant}/user/alice/recent",
    }
    for name, value in HOSTILE.items():
        if value in ("", "a" * 100_000):
            continue
        uris[f"{name} as scope id"] = f"{base}/user/{value}/recent"
        uris[f"{name} as workspace id"] = f"{base}/workspace/{value}/context"
        uris[f"{name} as tenant"] = f"memory://{value}/user/alice/recent"
    return uris


async def test_a_hostile_resource_uri_is_not_found_to_read_or_subscribe(
    connect: Connect, alice: Principal, other_tenant: Principal
) -> None:
    async with connect(alice, "legacy") as legacy, connect(alice) as modern, connect(other_tenant) as b:
        await b.call_tool("write_event", {"content": "tenant B canary 7f3a", "importance": 0.9})
        await legacy.call_tool("write_event", {"content": "alice canary 11d2", "importance": 0.9})
        problems: dict[str, str] = {}
        for name, uri in hostile_uris(alice.tenant, other_tenant.tenant).items():
            for action, attempt in [
                ("read", lambda uri=uri: modern.read_resource(uri)),
                ("subscribe", lambda uri=uri: legacy_subscribe(legacy, uri)),
                ("listen", lambda uri=uri: listen_once(modern, uri)),
            ]:
                try:
                    answer = await attempt()
                except MCPError as exc:
                    if "canary" in exc.message or "Traceback" in exc.message:
                        problems[f"{action} {name}"] = f"error carries content: {exc.message[:200]}"
                else:
                    problems[f"{action} {name}"] = f"accepted: {str(answer)[:200]}"
    assert problems == {}, json.dumps(problems, indent=1)


async def listen_once(client: Client, uri: str) -> str:
    async with client.listen(resource_subscriptions=[uri]):
        return "listening"


async def test_the_prompt_says_what_is_wrong_with_its_scope(connect: Connect, alice: Principal, mode: str) -> None:
    messages = {}
    async with connect(alice, mode) as client:
        for scope in ("user:bob", "user:alice:bob", "workspace:nope"):
            with pytest.raises(MCPError) as refused:
                await client.get_prompt("shared_context", {"scope": scope})
            messages[scope] = refused.value.message
    for scope, expected in [("user:bob", "not allowed"), ("user:alice:bob", "invalid user id"),
                            ("workspace:nope", "does not exist")]:  # fmt: skip
        assert_clear_error(messages[scope], expect=expected)
