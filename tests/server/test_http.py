"""Two HTTP replicas of one deployment, bearer tokens from the database, notifications across them."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import anyio
import httpx2
import pytest

from .mcp_clients import Inbox, free_port, http_client, http_server, legacy_subscribe, server_env

pytestmark = pytest.mark.anyio


async def cli(backend_env: dict[str, str], *args: str) -> str:
    done = await anyio.run_process([sys.executable, "-m", "mcp_shared_memory", *args], env=server_env(backend_env))
    return done.stdout.decode().strip()


async def create_token(backend_env: dict[str, str], *args: str) -> str:
    return await cli(backend_env, "token", "create", *args)


@pytest.fixture(scope="module")
def replicas(backend_env: dict[str, str]) -> Iterator[tuple[str, str]]:
    with http_server(backend_env, free_port()) as first, http_server(backend_env, free_port()) as second:
        yield first, second


@pytest.fixture
def tenant_id() -> str:
    import uuid

    return f"t{uuid.uuid4().hex[:10]}"


async def test_replica_two_notifies_what_replica_one_wrote(
    backend_env: dict[str, str], replicas: tuple[str, str], tenant_id: str, mode: str
) -> None:
    first, second = replicas
    token_a = await create_token(backend_env, "--tenant", tenant_id, "--agent-id", "agent-a", "--scope", "user:alice")
    token_b = await create_token(backend_env, "--tenant", tenant_id, "--agent-id", "agent-b", "--scope", "user:alice")
    uri = f"memory://{tenant_id}/user/alice/recent"
    inbox = Inbox()
    async with http_client(first, token_a, mode) as a, http_client(second, token_b, mode, inbox) as b:
        if mode == "legacy":
            await legacy_subscribe(b, uri)
            await a.call_tool("write_event", {"content": "replica one write", "importance": 0.7})
            await inbox.wait_for(lambda box: uri in box.updated)
        else:
            async with b.listen(resource_subscriptions=[uri]) as stream:
                await a.call_tool("write_event", {"content": "replica one write", "importance": 0.7})
                with anyio.fail_after(10):
                    event = await stream.__anext__()
                assert str(event.uri) == uri
        events = json.loads((await b.read_resource(uri)).contents[0].text)["events"]
        assert [(e["agent_id"], e["content"]) for e in events] == [("agent-a", "replica one write")]


async def test_identity_comes_from_the_token_and_tenants_stay_apart(
    backend_env: dict[str, str], replicas: tuple[str, str], tenant_id: str, mode: str
) -> None:
    first, _ = replicas
    token_a = await create_token(backend_env, "--tenant", tenant_id, "--agent-id", "agent-a", "--scope", "user:alice")
    token_b = await create_token(backend_env, "--tenant", f"{tenant_id}-b", "--agent-id", "agent-a", "--scope", "*",
                           "--default-scope", "user:alice")  # fmt: skip
    async with http_client(first, token_a, mode) as a, http_client(first, token_b, mode) as b:
        written = await a.call_tool("write_event", {"content": "tenant A only"})
        assert written.structured_content["scope"] == "user:alice"
        denied = await a.call_tool("write_event", {"content": "x", "scope": "user:bob"})
        assert denied.is_error and "not allowed" in denied.content[0].text
        seen_by_b = await b.call_tool("get_recent_shared", {"limit": 50})
        assert seen_by_b.structured_content["events"] == []
        history = await a.call_tool("get_agent_history", {"agent_id": "agent-a"})
        assert [e["content"] for e in history.structured_content["events"]] == ["tenant A only"]


async def test_requests_without_a_valid_token_are_rejected(
    backend_env: dict[str, str], replicas: tuple[str, str], tenant_id: str
) -> None:
    first, _ = replicas
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    headers = {"Accept": "application/json, text/event-stream"}
    async with httpx2.AsyncClient(timeout=10) as http:
        missing = await http.post(first, json=body, headers=headers)
        bad = await http.post(first, json=body, headers={**headers, "Authorization": "Bearer msm_not-a-token"})
        metadata = await http.get(first.replace("/mcp", "/.well-known/oauth-protected-resource/mcp"))
        health = await http.get(first.replace("/mcp", "/healthz"))

    assert missing.status_code == 401 and "Bearer" in missing.headers["www-authenticate"]
    assert bad.status_code == 401
    assert metadata.status_code == 200 and metadata.json()["resource"].endswith("/mcp")
    assert health.json()["postgres"] == "ok"

    token = await create_token(backend_env, "--tenant", tenant_id, "--agent-id", "agent-a", "--scope", "user:alice")
    listed = await cli(backend_env, "token", "list", "--json", "--tenant", tenant_id)
    (record,) = json.loads(listed)
    assert token not in listed and "token_sha256" not in listed
    await cli(backend_env, "token", "revoke", record["id"])
    await anyio.sleep(5.5)  # the verifier caches a token's verdict for 5 s
    async with httpx2.AsyncClient(timeout=10) as http:
        revoked = await http.post(first, json=body, headers={**headers, "Authorization": f"Bearer {token}"})
    assert revoked.status_code == 401
