"""Two HTTP replicas of one deployment (real processes): notifications across them, bearer tokens from
the database (created and revoked with the CLI), and a legacy client dropped mid-delivery. The token
verifier's cache is tested in-process."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, suppress
from urllib.parse import urlsplit

import anyio
import httpx2
import pytest
from mcp import Client

from mcp_shared_memory.runtime import Connections, Runtime, open_runtime
from mcp_shared_memory.server.http import DatabaseTokenVerifier
from mcp_shared_memory.server.state import CLAIM_PRINCIPAL, ServerLifespan
from mcp_shared_memory.settings import Settings
from mcp_shared_memory.stores import tokens as token_store

from ..conftest import isolated
from ..tcp_proxy import faulty_proxy
from .mcp_clients import Inbox, free_port, http_client, http_server, legacy_subscribe, server_env, until, watch

pytestmark = pytest.mark.anyio


async def cli(backend_env: dict[str, str], *args: str) -> str:
    done = await anyio.run_process([sys.executable, "-m", "mcp_shared_memory", *args], env=server_env(backend_env))
    return done.stdout.decode().strip()


async def create_token(runtime: Runtime, tenant: str, agent_id: str, *scopes: str) -> str:
    token, _ = await runtime.tokens.create(
        tenant=tenant, agent_id=agent_id, allowed_scopes=list(scopes), default_scope="user:alice"
    )
    return token


@pytest.fixture(scope="module")
def replicas(backend_env: dict[str, str]) -> Iterator[tuple[str, str]]:
    with http_server(backend_env, free_port()) as first, http_server(backend_env, free_port()) as second:
        yield first, second


async def test_replicas_share_notifications_and_tokens_bind_identity(
    backend_env: dict[str, str], replicas: tuple[str, str], runtime: Runtime, tenant: str
) -> None:
    first, second = replicas
    token_a = await cli(backend_env, "token", "create", "--tenant", tenant, "--agent-id", "agent-a",
                        "--scope", "user:alice")  # fmt: skip
    token_b = await create_token(runtime, tenant, "agent-b", "user:alice")
    token_other = await create_token(runtime, f"{tenant}-b", "agent-a", "*")
    uri = f"memory://{tenant}/user/alice/recent"
    legacy_inbox, modern_inbox = Inbox(), Inbox()
    async with (
        http_client(first, token_a, "legacy") as a_legacy,
        http_client(first, token_a, "auto") as a_modern,
        http_client(second, token_b, "legacy", legacy_inbox) as b_legacy,
        http_client(second, token_b, "auto", modern_inbox) as b_modern,
        http_client(first, token_other, "legacy") as other_legacy,
        http_client(second, token_other, "auto") as other_modern,
        watch(b_legacy, "legacy", legacy_inbox, [uri]),
        watch(b_modern, "auto", modern_inbox, [uri]),
    ):
        written = await a_legacy.call_tool("write_event", {"content": "replica one write", "importance": 0.7})
        assert written.structured_content["scope"] == "user:alice"  # the token's default scope
        await legacy_inbox.wait_for(lambda box: uri in box.updated)
        await modern_inbox.wait_for(lambda box: uri in box.updated)
        for b in (b_legacy, b_modern):
            events = json.loads((await b.read_resource(uri)).contents[0].text)["events"]
            assert [(e["agent_id"], e["content"]) for e in events] == [("agent-a", "replica one write")]

        for a in (a_legacy, a_modern):
            denied = await a.call_tool("write_event", {"content": "x", "scope": "user:bob"})
            assert denied.is_error and "not allowed" in denied.content[0].text
            history = await a.call_tool("get_agent_history", {"agent_id": "agent-a"})
            assert [e["content"] for e in history.structured_content["events"]] == ["replica one write"]
        for other in (other_legacy, other_modern):
            seen_by_other = await other.call_tool("get_recent_shared", {"limit": 50})
            assert seen_by_other.structured_content["events"] == []

    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    headers = {"Accept": "application/json, text/event-stream"}
    listed = await cli(backend_env, "token", "list", "--json", "--tenant", tenant)
    records = {r["agent_id"]: r for r in json.loads(listed)}
    assert set(records) == {"agent-a", "agent-b"}
    assert token_a not in listed and token_b not in listed and "token_sha256" not in listed
    await cli(backend_env, "token", "revoke", records["agent-a"]["id"])
    async with httpx2.AsyncClient(timeout=10) as http:
        missing = await http.post(first, json=body, headers=headers)
        bad = await http.post(first, json=body, headers={**headers, "Authorization": "Bearer msm_not-a-token"})
        # Replica two never verified token A, so it has no cached verdict to outlive the revocation.
        revoked = await http.post(second, json=body, headers={**headers, "Authorization": f"Bearer {token_a}"})
        metadata = await http.get(first.replace("/mcp", "/.well-known/oauth-protected-resource/mcp"))
        health = await http.get(second.replace("/mcp", "/healthz"))

    assert missing.status_code == 401 and "Bearer" in missing.headers["www-authenticate"]
    assert bad.status_code == 401
    assert revoked.status_code == 401
    assert metadata.status_code == 200 and metadata.json()["resource"].endswith("/mcp")
    assert health.json()["postgres"] == "ok"


async def test_a_revoked_token_is_refused_at_once_here_and_within_the_cache_window_elsewhere(
    settings: Settings, connections: Connections, runtime: Runtime, tenant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each replica caches a token's verdict for VERIFY_CACHE_SECONDS (shortened here): the replica that
    revokes forgets at once, another one once its cached verdict expires."""
    monkeypatch.setattr(token_store, "VERIFY_CACHE_SECONDS", 0.3)
    token, record = await runtime.tokens.create(
        tenant=tenant, agent_id="agent-a", allowed_scopes=["user:alice"], default_scope="user:alice"
    )

    @asynccontextmanager
    async def verifier(on: Runtime) -> AsyncIterator[DatabaseTokenVerifier]:
        lifespan = ServerLifespan(on.settings, local_principal=None, runtime=on)
        async with lifespan.open():
            yield DatabaseTokenVerifier(lifespan)

    async with (
        open_runtime(isolated(settings), connections=connections) as other_replica,
        verifier(runtime) as here,
        verifier(other_replica) as elsewhere,
    ):
        for replica in (here, elsewhere):
            access = await replica.verify_token(token)
            assert access is not None
            principal = access.claims[CLAIM_PRINCIPAL]
            assert (principal.tenant, principal.agent_id, principal.token_id) == (tenant, "agent-a", record.id)
            assert await replica.verify_token("msm_not-a-token") is None

        await runtime.tokens.revoke(record.id)
        assert await here.verify_token(token) is None

        async def refused_elsewhere() -> bool:
            return await elsewhere.verify_token(token) is None

        await until(refused_elsewhere, seconds=5)


async def test_a_legacy_client_dropped_mid_delivery_does_not_disturb_the_others(
    replicas: tuple[str, str], runtime: Runtime, tenant: str
) -> None:
    first, _ = replicas
    token = await create_token(runtime, tenant, "agent-a", "user:alice")
    uri = f"memory://{tenant}/user/alice/recent"
    good_inbox, victim_inbox = Inbox(), Inbox()
    written = 0
    victim_subscribed = anyio.Event()

    async def victim(url: str) -> None:
        with suppress(Exception):  # its connection is reset under it: whatever it raises is expected
            async with http_client(url, token, "legacy", victim_inbox) as client:
                await legacy_subscribe(client, uri)
                victim_subscribed.set()
                await anyio.sleep_forever()

    async def write_forever(writer: Client) -> None:
        nonlocal written
        while True:
            result = await writer.call_tool("write_event", {"content": f"event {written}", "importance": 0.7})
            assert result.structured_content["status"] == "written"
            written += 1

    async with (
        faulty_proxy("127.0.0.1", urlsplit(first).port) as proxy,
        http_client(first, token, "legacy", good_inbox) as good,
        http_client(first, token, "auto") as writer,
        watch(good, "legacy", good_inbox, [uri]),
        anyio.create_task_group() as tasks,
    ):
        tasks.start_soon(victim, first.replace(f":{urlsplit(first).port}/", f":{proxy.port}/"))
        with anyio.fail_after(10):
            await victim_subscribed.wait()
        tasks.start_soon(write_forever, writer)
        await victim_inbox.wait_for(lambda box: len(box.updated) >= 2)
        proxy.cut()  # the victim's connections are reset while events keep being written
        after_cut = len(good_inbox.updated)
        await good_inbox.wait_for(lambda box: len(box.updated) >= after_cut + 10)
        tasks.cancel_scope.cancel()

    async with http_client(first, token, "auto") as fresh:
        recent = await fresh.call_tool("get_recent_shared", {"limit": 1000})
    assert len(recent.structured_content["events"]) >= written > 10
