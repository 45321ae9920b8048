"""Token lifetime: ``token create --expires-in``, expired tokens refused (the verifier's cache included), and
the open streams and sessions of a token revoked or expired meanwhile ended within the revocation window,
over real HTTP against a server process."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import anyio
import httpx2
import pytest

from mcp_shared_memory.models import Scope
from mcp_shared_memory.runtime import Runtime
from mcp_shared_memory.server.uris import recent_uri
from mcp_shared_memory.stores.bus import RedisBus
from mcp_shared_memory.stores.messages import Topic
from mcp_shared_memory.stores.redis_client import RedisBreaker

from ..conftest import Backdoor
from .mcp_clients import Inbox, free_port, http_client, http_server, server_env, until

pytestmark = pytest.mark.anyio

ALICE = Scope("user", "alice")
LEGACY_VERSION = "2025-11-25"
# The token store caches a verdict for 5 s and the server re-verifies open streams every 2 s.
REVOCATION_WINDOW = 10
SSE = {"Accept": "application/json, text/event-stream"}


@pytest.fixture(scope="module")
def server(backend_env: dict[str, str]) -> Iterator[str]:
    with http_server(backend_env, free_port()) as url:
        yield url


async def cli(backend_env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    return await anyio.run_process(
        [sys.executable, "-m", "mcp_shared_memory", *args], env=server_env(backend_env), check=check
    )


async def listed_tokens(backend_env: dict[str, str], tenant: str) -> list[dict[str, object]]:
    listed = await cli(backend_env, "token", "list", "--json", "--tenant", tenant)
    records: list[dict[str, object]] = json.loads(listed.stdout)
    return records


async def create_token(runtime: Runtime, tenant: str, agent_id: str, *, expires_in: float | None = None) -> str:
    expires_at = datetime.now(UTC) + timedelta(seconds=expires_in) if expires_in else None
    token, _ = await runtime.tokens.create(
        tenant=tenant, agent_id=agent_id, allowed_scopes=["user:alice"], default_scope="user:alice",
        expires_at=expires_at,
    )  # fmt: skip
    return token


async def test_token_create_takes_a_lifetime(backend_env: dict[str, str], tenant: str) -> None:
    await cli(backend_env, "token", "create", "--tenant", tenant, "--agent-id", "a", "--scope", "user:alice=r",
              "--expires-in", "7d")  # fmt: skip
    (record,) = await listed_tokens(backend_env, tenant)
    expires = datetime.fromisoformat(str(record["expires_at"])) - datetime.now(UTC)
    assert timedelta(days=7) - timedelta(minutes=5) < expires <= timedelta(days=7)
    assert record["allowed_scopes"] == ["user:alice=r"]

    for bad in ("7x", "0d", "soon"):
        refused = await cli(backend_env, "token", "create", "--tenant", tenant, "--agent-id", "a", "--scope",
                            "user:alice", "--expires-in", bad, check=False)  # fmt: skip
        assert refused.returncode == 2 and b"--expires-in: expected a positive duration" in refused.stderr
    assert len(await listed_tokens(backend_env, tenant)) == 1


async def test_an_expired_token_is_refused_even_while_its_verdict_is_cached(runtime: Runtime, tenant: str) -> None:
    token = await create_token(runtime, tenant, "agent-a", expires_in=1.5)
    assert await runtime.tokens.verify(token) is not None  # cached for 5 s from now

    async def refused() -> bool:
        return await runtime.tokens.verify(token) is None

    await until(refused, seconds=3)


async def open_legacy_session(http: httpx2.AsyncClient, url: str, token: str, uri: str) -> dict[str, str]:
    """initialize, initialized and resources/subscribe over raw HTTP: the headers of the session."""
    headers = {**SSE, "Authorization": f"Bearer {token}"}
    init = await http.post(url, headers=headers, json={
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": LEGACY_VERSION, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    })  # fmt: skip
    assert init.status_code == 200, init.text
    session = {**headers, "mcp-session-id": init.headers["mcp-session-id"], "mcp-protocol-version": LEGACY_VERSION}
    await http.post(url, headers=session, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
    subscribed = await http.post(
        url, headers=session, json={"jsonrpc": "2.0", "id": 2, "method": "resources/subscribe", "params": {"uri": uri}}
    )
    assert subscribed.status_code == 200 and '"error"' not in subscribed.text, subscribed.text
    return session


class Stream:
    """An SSE response read to its end in the background: ``notified`` once a resource update arrived,
    ``ended`` once the server closed it."""

    def __init__(self) -> None:
        self.notified = anyio.Event()
        self.ended = anyio.Event()

    async def read(self, response: httpx2.Response) -> None:
        try:
            async for line in response.aiter_lines():
                if "notifications/resources/updated" in line:
                    self.notified.set()
        except httpx2.HTTPError:
            pass  # a connection reset ends the stream as well
        self.ended.set()


async def subscribers(backdoor: Backdoor, tenant: str) -> int:
    """Redis subscriptions (of the server process, whose key prefix is the default) to alice's events."""
    channel = RedisBus(backdoor.redis, prefix="msm", breaker=RedisBreaker(0)).channel(Topic(tenant, ALICE))
    return int(dict(await backdoor.redis.pubsub_numsub(channel)).get(channel, 0))


@pytest.mark.parametrize("ending", ["revoked", "expired"])
async def test_the_streams_and_session_of_a_token_that_ends_are_closed_within_the_window(
    server: str, runtime: Runtime, backdoor: Backdoor, tenant: str, ending: str
) -> None:
    """A legacy GET stream (its session subscribed to alice's events) and a modern listen stream of one
    token, both receiving notifications; the token is revoked (or expires): both streams end, the session
    is gone (its subscription released), and the token is refused; another token goes on working."""
    lifetime = 6  # seconds: long enough for the streams to be opened and notified first
    token = await create_token(runtime, tenant, "agent-a", expires_in=lifetime if ending == "expired" else None)
    writer_token = await create_token(runtime, tenant, "agent-w")
    uri = recent_uri(tenant, ALICE)
    legacy, modern, listen_inbox = Stream(), Stream(), Inbox()
    async with (
        httpx2.AsyncClient(timeout=30) as http,
        http_client(server, writer_token, "auto") as writer,
        http_client(server, token, "auto", listen_inbox) as listener,
        anyio.create_task_group() as tasks,
    ):
        session = await open_legacy_session(http, server, token, uri)
        get_stream = await http.send(
            http.build_request("GET", server, headers={**session, "Accept": "text/event-stream"}), stream=True
        )
        assert get_stream.status_code == 200
        tasks.start_soon(legacy.read, get_stream)

        listening = anyio.Event()

        async def listen() -> None:
            try:
                async with listener.listen(resource_subscriptions=[uri]) as events:
                    listening.set()
                    async for _ in events:
                        modern.notified.set()
            except Exception:  # the stream is cut under it: whatever the client raises is expected
                pass
            modern.ended.set()

        tasks.start_soon(listen)
        with anyio.fail_after(10):
            await listening.wait()
        await writer.call_tool("write_event", {"content": "while the token is good", "importance": 0.9})
        with anyio.fail_after(10):
            await legacy.notified.wait()
            await modern.notified.wait()

        if ending == "revoked":
            (record,) = [r for r in await runtime.tokens.list(tenant=tenant) if r.agent_id == "agent-a"]
            await runtime.tokens.revoke(record.id)
        with anyio.fail_after(REVOCATION_WINDOW + (lifetime if ending == "expired" else 0)):
            await legacy.ended.wait()
            await modern.ended.wait()
        await get_stream.aclose()

        async def released() -> bool:
            return await subscribers(backdoor, tenant) == 0

        await until(released, seconds=5)  # the legacy session was ended, not just its stream
        refused = await http.post(server, headers={**session, "Accept": "application/json, text/event-stream"},
                                  json={"jsonrpc": "2.0", "id": 3, "method": "tools/list"})  # fmt: skip
        assert refused.status_code == 401
        still = await writer.call_tool("write_event", {"content": "the other token still works"})
        assert still.structured_content["status"] == "written"
        tasks.cancel_scope.cancel()
