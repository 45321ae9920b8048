"""The audit trail: every tool call, read, subscription and listen is recorded, without content; the CLI
filters it; retention deletes old rows; a full buffer drops the oldest rows instead of blocking."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

import anyio
import pytest
from mcp import Client

from mcp_shared_memory.models import Principal
from mcp_shared_memory.runtime import Connections, Runtime, open_runtime
from mcp_shared_memory.settings import Settings
from mcp_shared_memory.stores.audit import AuditEntry, AuditRecord, PostgresAuditLog

from .conftest import fresh_id, isolated
from .server.conftest import Connect
from .server.mcp_clients import Inbox, in_process_server, server_env, watch

pytestmark = pytest.mark.anyio


@pytest.fixture
def connect(runtime: Runtime) -> Connect:
    """As in tests/server: an in-process client of a server bound to ``principal``, over the runtime."""

    def client(principal: Principal, mode: str = "auto", inbox: Inbox | None = None) -> Client:
        return Client(in_process_server(runtime, principal), mode=mode, message_handler=inbox)

    return client


def audit_of(runtime: Runtime) -> PostgresAuditLog:
    assert runtime.audit is not None
    return runtime.audit


def entry(
    tenant: str, *, agent: str = "a-1", target: str = "write_event", outcome: str = "ok", **kw: object
) -> AuditEntry:
    return AuditEntry(
        tenant_id=tenant, agent_id=agent, agent_type="agent", token_id=None, method="tools/call", target=target,
        scope=None, outcome=outcome, result_count=None, latency_ms=1.0, transport="stdio", **kw,  # type: ignore[arg-type]
    )  # fmt: skip


async def test_tool_calls_and_reads_are_audited_without_content(
    connect: Connect, runtime: Runtime, alice: Principal
) -> None:
    secret = f"the launch code is {uuid.uuid4().hex}"
    uri = f"memory://{alice.tenant}/user/alice/recent"
    async with connect(alice) as client:
        assert not (await client.call_tool("write_event", {"content": secret, "importance": 0.9})).is_error
        recent = await client.call_tool("get_recent_shared", {"limit": 5, "scope": "user:alice"})
        assert not recent.is_error
        denied = await client.call_tool("write_event", {"content": secret, "scope": "user:bob"})
        assert denied.is_error
        await client.read_resource(uri)
    await audit_of(runtime).flush()

    rows = await audit_of(runtime).query(tenant=alice.tenant)
    calls = [(r.method, r.target, r.scope, r.outcome) for r in reversed(rows)]
    assert calls == [
        ("tools/call", "write_event", None, "ok"),
        ("tools/call", "get_recent_shared", "user:alice", "ok"),
        ("tools/call", "write_event", "user:bob", "AccessDenied"),
        ("resources/read", uri, "user:alice", "ok"),
    ]
    assert {(r.agent_id, r.agent_type, r.transport) for r in rows} == {("research-1", "research", "stdio")}
    assert next(r for r in rows if r.target == "get_recent_shared").result_count == 1
    assert all(r.latency_ms > 0 for r in rows)
    dumped = json.dumps([r.model_dump(mode="json") for r in rows])
    assert secret not in dumped and "launch code" not in dumped


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_subscriptions_and_listens_are_audited(
    connect: Connect, runtime: Runtime, alice: Principal, mode: str
) -> None:
    uri = f"memory://{alice.tenant}/user/alice/recent"
    inbox = Inbox()
    async with connect(alice, mode, inbox) as client, watch(client, mode, inbox, [uri]):
        method = "resources/subscribe" if mode == "legacy" else "subscriptions/listen"
        with anyio.fail_after(10):
            while not await audit_of(runtime).query(tenant=alice.tenant, target=uri):
                await audit_of(runtime).flush()
                await anyio.sleep(0.02)
    (row,) = await audit_of(runtime).query(tenant=alice.tenant, target=uri)
    assert (row.method, row.agent_id, row.outcome) == (method, alice.agent_id, "ok")


async def test_rows_are_written_in_the_background(connect: Connect, runtime: Runtime, alice: Principal) -> None:
    async with connect(alice) as client:
        await client.call_tool("get_recent_shared", {"limit": 1})
    rows: list[AuditRecord] = []
    with anyio.fail_after(10):  # the flush interval is 0.5 s
        while not rows:
            await anyio.sleep(0.05)
            rows = await audit_of(runtime).query(tenant=alice.tenant)
    assert rows[0].target == "get_recent_shared"


async def test_buffered_rows_are_written_when_the_runtime_closes(settings: Settings, connections: Connections) -> None:
    tenant = fresh_id("tenant")
    async with open_runtime(isolated(settings), connections=connections) as opened:
        audit_of(opened).record(entry(tenant, target="last-call"))
        log = audit_of(opened)
    assert [r.target for r in await log.query(tenant=tenant)] == ["last-call"]


async def test_retention_deletes_only_old_rows(runtime: Runtime) -> None:
    tenant = fresh_id("tenant")
    log = audit_of(runtime)
    log.record(
        entry(tenant, target="old", at=datetime.now(UTC) - timedelta(days=runtime.settings.audit_retention_days + 1))
    )
    log.record(entry(tenant, target="new"))
    await log.flush()

    assert await runtime.maintenance.expire_audit() >= 1
    assert [r.target for r in await log.query(tenant=tenant)] == ["new"]


async def test_a_full_buffer_drops_the_oldest_rows(connections: Connections) -> None:
    tenant = fresh_id("tenant")
    log = PostgresAuditLog(connections.db, buffer_max=3)
    for i in range(5):
        log.record(entry(tenant, target=f"call-{i}"))
    assert await log.flush() == 3
    assert sorted(r.target for r in await log.query(tenant=tenant)) == ["call-2", "call-3", "call-4"]


def audit_cli(backend_env: dict[str, str], *args: str) -> list[AuditRecord]:
    done = subprocess.run(
        [sys.executable, "-m", "mcp_shared_memory", "audit", "--json", *args],
        env=server_env(backend_env), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [AuditRecord(**r) for r in json.loads(done.stdout)]


async def test_the_cli_filters_the_trail(connections: Connections, backend_env: dict[str, str]) -> None:
    tenant = fresh_id("tenant")
    log = PostgresAuditLog(connections.db)
    yesterday = datetime.now(UTC) - timedelta(days=1)
    log.record(entry(tenant, agent="a-1", target="write_event", at=yesterday))
    log.record(entry(tenant, agent="a-2", target="search_shared"))
    log.record(entry(tenant, agent="a-2", target="write_event", outcome="InvalidInput"))
    log.record(entry(fresh_id("tenant"), agent="a-1", target="write_event"))
    await log.flush()

    def targets(*args: str) -> list[tuple[str, str]]:
        return sorted((r.agent_id, r.target) for r in audit_cli(backend_env, "--tenant", tenant, *args))

    assert len(targets()) == 3
    assert targets("--agent", "a-2") == [("a-2", "search_shared"), ("a-2", "write_event")]
    assert targets("--tool", "write_event") == [("a-1", "write_event"), ("a-2", "write_event")]
    assert targets("--outcome", "error") == [("a-2", "write_event")]
    assert targets("--outcome", "ok", "--since", (yesterday + timedelta(hours=1)).isoformat()) == [
        ("a-2", "search_shared")
    ]
    assert targets("--until", (yesterday + timedelta(hours=1)).isoformat()) == [("a-1", "write_event")]
    assert len(targets("--limit", "1")) == 1
