"""The HTTP app as an attacker meets it, in-process over an ASGI transport (the app's own lifespan, the
test's runtime): Host/Origin validation whatever the bind address, 503 rather than 401 when PostgreSQL is
unreachable during token verification, and a limit on failed authentications per client address."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import httpx2
import pytest
from starlette.applications import Starlette

from mcp_shared_memory.errors import StoreUnavailable
from mcp_shared_memory.runtime import Connections, Runtime
from mcp_shared_memory.server import http_guard
from mcp_shared_memory.server.http import create_http_app
from mcp_shared_memory.server.http_guard import AllowedPeers, AuthFailureLimiter, TokenWatch
from mcp_shared_memory.settings import Settings

from ..conftest import isolated
from ..faults import faulty_postgres_runtime

pytestmark = pytest.mark.anyio

PORT = 8765
PUBLIC_URL = "https://memory.example.com"
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}
ACCEPT = {"Accept": "application/json, text/event-stream"}


@asynccontextmanager
async def serving(settings: Settings, runtime: Runtime) -> AsyncIterator[Starlette]:
    """``create_http_app(settings)`` over the test's runtime, its lifespan entered."""
    app = create_http_app(settings, runtime=runtime)
    async with app.router.lifespan_context(app):
        yield app


def client(app: Starlette, address: str = "198.51.100.7") -> httpx2.AsyncClient:
    """A client of ``app`` whose requests come from ``address``."""
    transport = httpx2.ASGITransport(app=app, client=(address, 40000))
    return httpx2.AsyncClient(transport=transport, base_url=f"http://127.0.0.1:{PORT}", timeout=10)


async def initialize(client: httpx2.AsyncClient, token: str, **headers: str) -> httpx2.Response:
    return await client.post("/mcp", json=INITIALIZE, headers={**ACCEPT, "Authorization": f"Bearer {token}", **headers})


async def create_token(runtime: Runtime, tenant: str) -> str:
    token, _ = await runtime.tokens.create(
        tenant=tenant, agent_id="agent-a", allowed_scopes=["user:alice"], default_scope="user:alice"
    )
    return token


@pytest.mark.parametrize(
    "binding",
    [
        pytest.param({"public_url": PUBLIC_URL}, id="public-url"),
        pytest.param({"host": "0.0.0.0"}, id="all-interfaces"),
        pytest.param({"host": "0.0.0.0", "public_url": PUBLIC_URL}, id="both"),
    ],
)
async def test_a_foreign_host_or_origin_is_refused_whatever_the_binding(
    settings: Settings, runtime: Runtime, tenant: str, binding: dict[str, str]
) -> None:
    token = await create_token(runtime, tenant)
    served = isolated(settings, port=PORT, allowed_hosts="memory.internal:9000", **binding)
    async with serving(served, runtime) as app, client(app) as http:
        evil_host = await initialize(http, token, Host="evil.example")
        evil_host_with_port = await initialize(http, token, Host=f"evil.example:{PORT}")
        evil_origin = await initialize(http, token, Origin="https://evil.example")
        evil_metadata = await http.get("/.well-known/oauth-protected-resource/mcp", headers={"Host": "evil.example"})
        loopback = await initialize(http, token, Host=f"localhost:{PORT}", Origin="http://localhost:6274")
        configured = await initialize(http, token, Host="memory.internal:9000")
        public = await initialize(http, token, Host="memory.example.com", Origin=PUBLIC_URL)

    for refused in (evil_host, evil_host_with_port, evil_metadata):
        assert refused.status_code == 421
    assert evil_origin.status_code == 403
    assert loopback.status_code == 200 and configured.status_code == 200
    assert public.status_code == (200 if "public_url" in binding else 421)


async def test_a_database_outage_during_verification_answers_503_and_the_token_still_works_after(
    settings: Settings, connections: Connections, runtime: Runtime, tenant: str
) -> None:
    token = await create_token(runtime, tenant)  # through the session's pool, not the faulty one
    async with (
        faulty_postgres_runtime(isolated(settings), connections) as faulty,
        serving(isolated(settings, port=PORT), faulty.runtime) as app,
        client(app) as http,
    ):
        faulty.proxy.cut()
        during = await initialize(http, token)
        bad_during = await initialize(http, "msm_not-a-token-either")
        faulty.proxy.restore()
        after = await initialize(http, token)

    assert during.status_code == 503, during.text
    assert int(during.headers["retry-after"]) >= 1
    assert "www-authenticate" not in during.headers
    assert "127.0.0.1" not in during.text and "postgres" not in during.text.lower()
    assert bad_during.status_code == 503  # unknown too, until the store answers
    assert after.status_code == 200


async def test_more_failed_authentications_than_the_limit_from_one_address_get_429(
    settings: Settings, runtime: Runtime, tenant: str
) -> None:
    token = await create_token(runtime, tenant)
    served = isolated(settings, port=PORT, auth_failures_per_minute=30)
    async with serving(served, runtime) as app, client(app) as attacker, client(app, "203.0.113.9") as neighbour:
        failures = [await initialize(attacker, f"msm_guess-{i}") for i in range(30)]
        limited = await initialize(attacker, "msm_guess-30")
        good_token_from_attacker = await initialize(attacker, token)
        no_token = await attacker.post("/mcp", json=INITIALIZE, headers=ACCEPT)
        neighbour_good = await initialize(neighbour, token)
        neighbour_bad = await initialize(neighbour, "msm_guess-neighbour")

    assert [r.status_code for r in failures] == [401] * 30
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert good_token_from_attacker.status_code == 429
    assert no_token.status_code == 401  # the OAuth discovery challenge is still answered
    assert neighbour_good.status_code == 200 and neighbour_bad.status_code == 401


def test_allowed_peers_follow_the_public_url_and_the_settings(settings: Settings) -> None:
    default_port = AllowedPeers.from_settings(
        settings.model_copy(
            update={"public_url": "https://Memory.Example.com/", "allowed_origins": "https://app.example/"}
        )
    )
    assert default_port.host_allowed("memory.example.com") and default_port.host_allowed("MEMORY.example.com:443")
    assert default_port.host_allowed("localhost:6274") and default_port.host_allowed("[::1]:8765")
    assert not default_port.host_allowed("memory.example.com:8443") and not default_port.host_allowed(None)
    assert not default_port.host_allowed("localhost.evil.example:80") and not default_port.host_allowed("localhost:x")
    assert default_port.origin_allowed("https://memory.example.com") and default_port.origin_allowed(
        "https://app.example"
    )
    assert not default_port.origin_allowed("http://memory.example.com") and default_port.origin_allowed(None)

    ipv6 = AllowedPeers.from_settings(settings.model_copy(update={"public_url": "https://[2001:db8::1]:8443"}))
    assert ipv6.host_allowed("[2001:db8::1]:8443") and ipv6.origin_allowed("https://[2001:db8::1]:8443")
    assert not ipv6.host_allowed("[2001:db8::1]")


def test_the_failure_limit_is_a_sliding_window_per_address() -> None:
    now = [1000.0]
    limiter = AuthFailureLimiter(3, window=60, clock=lambda: now[0])
    for _ in range(3):
        assert limiter.retry_after("a") is None
        limiter.record("a")
        now[0] += 10
    assert limiter.retry_after("a") == pytest.approx(30)  # the first failure leaves the window at 1060
    assert limiter.retry_after("b") is None
    now[0] += 30
    assert limiter.retry_after("a") is None
    now[0] += 60
    assert limiter.retry_after("a") is None


async def test_refused_tokens_are_audited_with_the_address_and_never_the_token(
    settings: Settings, runtime: Runtime, tenant: str
) -> None:
    """Each refused token is one ``unauthenticated`` row naming the client's address; the failures the
    limiter answers with 429 add none, so a flood cannot fill the table."""
    address = f"2001:db8::{uuid.uuid4().hex[:4]}"
    token = await create_token(runtime, tenant)
    served = isolated(settings, port=PORT, auth_failures_per_minute=3)
    guesses = [f"msm_guess-{uuid.uuid4().hex}" for _ in range(6)]
    async with serving(served, runtime) as app, client(app, address) as attacker, client(app, "192.0.2.1") as other:
        statuses = [(await initialize(attacker, guess)).status_code for guess in guesses]
        good = await initialize(other, token)
    assert statuses == [401, 401, 401, 429, 429, 429]
    assert good.status_code == 200
    assert runtime.audit is not None
    await runtime.audit.flush()

    rows = await runtime.audit.query(target=address)
    assert [(r.method, r.outcome, r.transport, r.tenant_id, r.token_id) for r in rows] == [
        ("authenticate", "unauthenticated", "http", "", None)
    ] * 3
    dumped = json.dumps([r.model_dump(mode="json") for r in rows])
    assert not any(guess in dumped or guess.removeprefix("msm_") in dumped for guess in guesses)


async def test_failures_audited_per_minute_are_capped_over_all_addresses(
    settings: Settings, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_guard, "AUDITED_FAILURES_PER_MINUTE", 2)
    addresses = [f"2001:db8::{uuid.uuid4().hex[:4]}" for _ in range(4)]
    async with serving(isolated(settings, port=PORT), runtime) as app:
        for address in addresses:
            async with client(app, address) as http:
                assert (await initialize(http, "msm_guess")).status_code == 401
    assert runtime.audit is not None
    await runtime.audit.flush()

    audited = [len(await runtime.audit.query(target=address)) for address in addresses]
    assert audited == [1, 1, 0, 0]


async def test_the_watch_ends_only_the_requests_of_tokens_no_longer_valid() -> None:
    watch = TokenWatch(interval=60)
    valid = {"good": True, "revoked": False}
    requests = {name: anyio.CancelScope() for name in ("good", "revoked-1", "revoked-2")}

    async def check(token: str) -> bool:
        return valid[token]

    async def down(token: str) -> bool:
        raise StoreUnavailable

    with (
        watch.holding("good", requests["good"]),
        watch.holding("revoked", requests["revoked-1"]),
        watch.holding("revoked", requests["revoked-2"]),
    ):
        assert await watch.sweep(down) == 0  # the store is down: nothing is ended on its account
        assert await watch.sweep(check) == 2
    assert [name for name, scope in requests.items() if scope.cancel_called] == ["revoked-1", "revoked-2"]
