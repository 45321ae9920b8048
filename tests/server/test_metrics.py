"""Prometheus /metrics: counters move after real tool calls through a real HTTP server process, the
route opens only to MSM_METRICS_TOKEN (not to a tenant's token) and is off without it, and what a tool
call adds to the hot path costs microseconds."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mcp_shared_memory import metrics
from mcp_shared_memory.runtime import Runtime
from mcp_shared_memory.server import client_logging
from mcp_shared_memory.server.http import create_http_app

from .mcp_clients import Inbox, free_port, http_client, http_server, watch

pytestmark = pytest.mark.anyio

SCRAPE_TOKEN = "scrape-secret-for-tests"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` of a scrape."""
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(scrape: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return scrape.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def metered_server(backend_env: dict[str, str]) -> Iterator[str]:
    with http_server({**backend_env, "MSM_METRICS_TOKEN": SCRAPE_TOKEN}, free_port()) as url:
        yield url


async def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with httpx2.AsyncClient(timeout=10) as http:
        response = await http.get(f"{base}/metrics", headers={"Authorization": f"Bearer {SCRAPE_TOKEN}"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


async def test_counters_move_after_real_tool_calls(metered_server: str, runtime: Runtime, tenant: str) -> None:
    base = metered_server.removesuffix("/mcp")
    token, _ = await runtime.tokens.create(
        tenant=tenant, agent_id="agent-m", allowed_scopes=["user:alice"], default_scope="user:alice"
    )
    before = await scrape(base)
    uri = f"memory://{tenant}/user/alice/recent"
    inbox = Inbox()
    async with http_client(metered_server, token, "legacy", inbox) as client, watch(client, "legacy", inbox, [uri]):
        assert not (await client.call_tool("write_event", {"content": "metered write", "importance": 0.7})).is_error
        await inbox.wait_for(lambda box: uri in box.updated)
        for _ in range(2):
            assert not (await client.call_tool("get_recent_shared", {"limit": 5})).is_error
        assert (await client.call_tool("get_recent_shared", {"scope": "user:bob"})).is_error
        assert (await client.call_tool("get_recent_shared", {"limit": 0})).is_error  # refused by the schema
    after = await scrape(base)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("msm_tool_calls_total", tool="write_event", outcome="ok") == 1
    assert moved("msm_tool_calls_total", tool="get_recent_shared", outcome="ok") == 2
    assert moved("msm_tool_calls_total", tool="get_recent_shared", outcome="AccessDenied") == 1
    assert moved("msm_tool_calls_total", tool="get_recent_shared", outcome="ToolError") == 1
    assert moved("msm_tool_call_seconds_count", tool="write_event", outcome="ok") == 1
    assert moved("msm_tool_call_seconds_sum", tool="write_event", outcome="ok") > 0
    assert moved("msm_notifications_sent_total", kind="resource_updated") >= 1
    reads = sum(moved("msm_recent_cache_reads_total", result=r) for r in ("hit", "miss", "unavailable"))
    assert reads >= 2 and moved("msm_recent_cache_reads_total", result="hit") >= 1
    assert ("msm_embedding_queue_depth", ()) in after and ("msm_outbox_backlog", ()) in after


async def test_only_the_scrape_token_opens_metrics(metered_server: str, runtime: Runtime, tenant: str) -> None:
    base = metered_server.removesuffix("/mcp")
    tenant_token, _ = await runtime.tokens.create(tenant=tenant, agent_id="agent-m", allowed_scopes=["*"])
    async with httpx2.AsyncClient(timeout=10) as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {tenant_token}"}):
            refused = await http.get(f"{base}/metrics", headers=headers)
            assert refused.status_code == 401 and "msm_" not in refused.text


async def test_metrics_are_off_without_a_scrape_token(runtime: Runtime) -> None:
    app = create_http_app(runtime.settings, runtime=runtime)
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1:8765") as http:
        off = await http.get("/metrics")
    assert off.status_code == 404 and "MSM_METRICS_TOKEN" in off.text


def test_the_write_path_and_pools_report_through_the_metrics_module() -> None:
    metrics.embedding_queue_depth.set(3)
    metrics.embedding_queue_seconds.observe(0.2)
    metrics.outbox_backlog.set(5)
    metrics.watch_pool("test-pool", lambda: (4, 1, 8))
    metrics.watch_pool("closed-pool", lambda: (_ for _ in ()).throw(RuntimeError("closed")))
    scraped = samples(metrics.exposition().decode())
    assert value(scraped, "msm_embedding_queue_depth") == 3
    assert value(scraped, "msm_embedding_queue_seconds_count") >= 1
    assert value(scraped, "msm_outbox_backlog") == 5
    assert [value(scraped, "msm_db_pool_connections", pool="test-pool", state=s) for s in ("open", "idle", "max")] == [
        4, 1, 8,
    ]  # fmt: skip


def test_a_tool_calls_metrics_and_log_capture_cost_microseconds() -> None:
    """What the middleware adds to every tool call: the request log's context, the outcome and two
    metric updates. Measured per call over many calls; the bound leaves room for a busy machine."""
    calls = 20_000
    result = {"isError": False}
    started = time.perf_counter()
    for _ in range(calls):
        with client_logging.capture():
            outcome = "ToolError" if result.get("isError") else "ok"
            metrics.observe_tool_call("get_recent_shared", outcome, 0.001)
    per_call_us = (time.perf_counter() - started) / calls * 1e6
    print(f"metrics and log capture per tool call: {per_call_us:.2f} us")
    assert per_call_us < 25
