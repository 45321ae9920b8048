"""The live timeline page (/ui) of a real HTTP server process: its API applies the tools' read rules to the
bearer token, and in a real headless Chromium the page signs in with a token, shows events written through
MCP after it opened, renders hostile content as text, filters, searches, and refuses a wrong token."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from mcp_shared_memory.runtime import Runtime

from ..cdp import Page, chromium_path, open_browser
from .mcp_clients import free_port, http_client, http_server

pytestmark = pytest.mark.anyio

XSS = '<img src=x onerror="window.__xss = 1"><script>window.__xss = 2</script>'
# Set to a path (docs/ui-timeline.png) to keep the test's screenshot for the README.
SCREENSHOT_ENV = "MSM_UI_SCREENSHOT"


@pytest.fixture(scope="module")
def server(backend_env: dict[str, str]) -> Iterator[str]:
    """The base URL of a `serve --transport http` process."""
    with http_server(backend_env, free_port()) as url:
        yield url.removesuffix("/mcp")


async def token(runtime: Runtime, tenant: str, agent_id: str, *grants: str, agent_type: str = "agent") -> str:
    created, _ = await runtime.tokens.create(
        tenant=tenant, agent_id=agent_id, agent_type=agent_type, allowed_scopes=list(grants)
    )
    return created


async def write(server: str, bearer: str, content: str, **arguments: Any) -> dict[str, Any]:
    async with http_client(f"{server}/mcp", bearer, "auto") as client:
        result = await client.call_tool("write_event", {"content": content, **arguments})
        assert not result.is_error, result.content
        return dict(result.structured_content or {})


async def create_workspace(server: str, bearer: str, task: str, agents: list[str]) -> str:
    async with http_client(f"{server}/mcp", bearer, "auto") as client:
        result = await client.call_tool("create_workspace", {"task": task, "agents": agents})
        assert not result.is_error, result.content
        return str((result.structured_content or {})["id"])


def get(server: str, path: str, bearer: str | None = None, **params: str) -> httpx2.Response:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    return httpx2.get(f"{server}{path}", params=params, headers=headers, timeout=30)


# the API, without a browser


async def test_page_is_public_and_locked_down_but_the_api_needs_a_token(server: str, runtime: Runtime) -> None:
    page = get(server, "/ui")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert get(server, "/ui/app.js").status_code == 200
    for bearer in (None, "msm_not-a-token"):
        refused = get(server, "/ui/api/events", bearer, scope="user:alice")
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        assert set(refused.json()) == {"error"} and "msm_" not in refused.text
    foreign = httpx2.get(f"{server}/ui", headers={"Origin": "https://evil.example"}, timeout=30)
    assert foreign.status_code == 403


async def test_api_reads_as_the_tools_do(server: str, runtime: Runtime, tenant: str) -> None:
    alice = await token(runtime, tenant, "research-1", "user:alice", "workspace:*")
    only_alice = await token(runtime, tenant, "viewer", "user:alice=r", "workspace:*=r")
    other_tenant = await token(runtime, f"{tenant}-b", "research-1", "*")
    await write(server, alice, "ERR_4417 from payments-api v2.3.1 on checkout", scope="user:alice")
    await write(server, alice, "bob's private note", scope="user:alice", event_type="decision")

    seen = get(server, "/ui/api/events", only_alice, scope="user:alice").json()["events"]
    assert [e["content"] for e in seen] == ["bob's private note", "ERR_4417 from payments-api v2.3.1 on checkout"]
    narrowed = get(server, "/ui/api/events", only_alice, scope="user:alice", type="decision").json()["events"]
    assert [e["event_type"] for e in narrowed] == ["decision"]
    hits = get(server, "/ui/api/search", only_alice, scope="user:alice", q="ERR_4417").json()["events"]
    assert hits[0]["content"].startswith("ERR_4417")

    denied = get(server, "/ui/api/events", only_alice, scope="user:bob")
    assert denied.status_code == 403 and "not allowed" in denied.json()["error"]
    assert get(server, "/ui/api/events", other_tenant, scope="user:alice").json()["events"] == []
    bad = get(server, "/ui/api/events", only_alice, scope="user:alice", limit="lots")
    assert bad.status_code == 400 and "limit" in bad.json()["error"]

    # A workspace is read by its members only, as with get_workspace_summary.
    workspace = await create_workspace(server, alice, "Ship the fix", ["code-1"])
    member = await token(runtime, tenant, "code-1", "workspace:*=r")
    outsider = await token(runtime, tenant, "deploy-1", "workspace:*=r")
    summary = get(server, "/ui/api/workspace", member, id=workspace).json()
    assert summary["workspace"]["agents"] == ["code-1"] and summary["workspace"]["created_by"] == "research-1"
    for path, params in (
        ("/ui/api/workspace", {"id": workspace}),
        ("/ui/api/stream", {"scope": f"workspace:{workspace}"}),
    ):
        refused = get(server, path, outsider, **params)
        assert refused.status_code == 403 and "not a member" in refused.json()["error"]
    me = get(server, "/ui/api/me", member).json()
    assert me["agent_id"] == "code-1" and [w["id"] for w in me["workspaces"]] == [workspace]


async def test_stream_follows_writes_and_ends_when_its_token_is_revoked(
    server: str, runtime: Runtime, tenant: str
) -> None:
    writer = await token(runtime, tenant, "research-1", "user:alice")
    viewer, record = await runtime.tokens.create(tenant=tenant, agent_id="viewer", allowed_scopes=["user:alice=r"])
    headers = {"Authorization": f"Bearer {viewer}"}
    async with (
        httpx2.AsyncClient(timeout=30) as http,
        http.stream("GET", f"{server}/ui/api/stream", params={"scope": "user:alice"}, headers=headers) as stream,
    ):
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.aiter_lines()
        with anyio.fail_after(20):
            assert await anext(lines) == "event: ready"
            await write(server, writer, "written while the stream was open", scope="user:alice")
            while not (line := await anext(lines)).startswith("data: [{"):
                pass
            assert json.loads(line.removeprefix("data: "))[0]["content"] == "written while the stream was open"
            await runtime.tokens.revoke(record.id)
            async for _ in lines:  # the guard ends the stream of a revoked token within seconds
                pass


# the page, in a real headless Chromium


async def rows(page: Page, table: str = "timeline") -> list[dict[str, str]]:
    found = await page.evaluate(
        f"""[...document.querySelectorAll('#{table} tr')].map(r => ({{
            agent: r.cells[1].textContent, type: r.cells[2].textContent, content: r.cells[4].textContent}}))"""
    )
    assert isinstance(found, list)
    return found


async def visible(page: Page, element_id: str) -> bool:
    return bool(await page.evaluate(f"document.getElementById({json.dumps(element_id)}).checkVisibility()"))


async def sign_in(page: Page, bearer: str) -> None:
    await page.wait_for("document.getElementById('login').checkVisibility()")
    await page.evaluate(
        f"document.getElementById('token').value = {json.dumps(bearer)};"
        "document.getElementById('login').requestSubmit(); true"
    )


@pytest.mark.skipif(chromium_path() is None, reason="needs Debian's chromium (apt-get install chromium)")
async def test_timeline_page_in_chromium(server: str, runtime: Runtime, tenant: str, tmp_path: Path) -> None:
    orchestrator = await token(runtime, tenant, "orchestrator", "workspace:*", agent_type="orchestrator")
    writers = {
        agent: await token(runtime, tenant, agent, "workspace:*", agent_type=kind)
        for agent, kind in (("research-1", "research"), ("code-1", "code"), ("review-1", "review"))
    }
    viewer = await token(runtime, tenant, "orchestrator", "workspace:*=r", agent_type="orchestrator")  # read-only
    workspace = await create_workspace(server, orchestrator, "Bring payments-api p95 under 200 ms", list(writers))
    scope = f"workspace:{workspace}"

    async with open_browser(tmp_path / "profile") as browser:
        page = await browser.new_page(f"{server}/ui#scope={scope}")
        await sign_in(page, viewer)
        await page.wait_for("document.getElementById('live').textContent === 'live'")
        assert await visible(page, "app") and not await visible(page, "login")
        await page.wait_for("document.getElementById('ws-roster').children.length === 3")
        assert await page.evaluate("document.getElementById('ws-status').textContent") == "active"
        assert [r["type"] for r in await rows(page)] == ["workspace_created"]

        # Written through MCP after the page opened: each shows up on top, as it arrives.
        story = [
            ("research-1", "finding", 0.6, "ERR_4417 from payments-api v2.3.1 on checkout: p95 at 840 ms"),
            ("code-1", "observation", 0.5, "Cache misses on the price lookup explain most of the latency"),
            ("code-1", "decision", 0.8, "Cache prices for 60 s in Redis; invalidate on price change"),
            ("review-1", "decision", 0.8, "payments-api p95 back under 200 ms after the cache fix"),
        ]
        for agent, kind, importance, content in story:
            await write(server, writers[agent], content, scope=scope, event_type=kind, importance=importance)
            await page.wait_for(f"document.querySelector('#timeline td.content').textContent === {json.dumps(content)}")
        shown = await rows(page)
        assert [(r["agent"], r["type"], r["content"]) for r in shown[:4]] == [
            (agent, kind, content) for agent, kind, _, content in reversed(story)
        ]
        bottom = await page.evaluate("Math.ceil(document.querySelector('main').getBoundingClientRect().bottom) + 24")
        shot = await page.screenshot(tmp_path / "ui-timeline.png", height=bottom)
        assert shot.read_bytes().startswith(b"\x89PNG")
        if keep := os.environ.get(SCREENSHOT_ENV):
            shutil.copyfile(shot, keep)

        # Hostile content is text: no element is created from it, no script of it runs.
        await write(server, writers["research-1"], XSS, scope=scope)
        await page.wait_for(f"document.querySelector('#timeline td.content').textContent === {json.dumps(XSS)}")
        assert await page.evaluate("document.querySelectorAll('#timeline img, #timeline script').length") == 0
        assert await page.evaluate("window.__xss === undefined")

        # Filters: by agent, then by type (the stream reconnects with them).
        await page.evaluate("const a = document.getElementById('agent'); a.value = 'code-1';"
                            "a.dispatchEvent(new Event('change')); true")  # fmt: skip
        await page.wait_for("document.getElementById('live').textContent === 'live'")
        await page.wait_for("document.querySelectorAll('#timeline tr').length === 2")
        assert {r["agent"] for r in await rows(page)} == {"code-1"}
        await page.evaluate("const t = document.getElementById('type'); t.value = 'decision';"
                            "t.dispatchEvent(new Event('change')); true")  # fmt: skip
        await page.wait_for("document.querySelectorAll('#timeline tr').length === 1")
        assert [r["content"] for r in await rows(page)] == [story[2][3]]
        await page.evaluate("for (const id of ['agent', 'type']) document.getElementById(id).value = '';"
                            "document.getElementById('controls').requestSubmit(); true")  # fmt: skip
        await page.wait_for("document.querySelectorAll('#timeline tr').length === 6")

        # Search (hybrid, through the domain).
        await page.evaluate("document.getElementById('query').value = 'price lookup latency';"
                            "document.getElementById('search').requestSubmit(); true")  # fmt: skip
        await page.wait_for("document.getElementById('results').checkVisibility()")
        assert story[1][3] in [r["content"] for r in await rows(page, "result-rows")][:3]

        # The token travelled in headers only: in no URL the page loaded or fetched.
        urls = page.requested_urls()
        assert any("/ui/api/stream" in url for url in urls)
        assert not [url for url in [*urls, await page.evaluate("location.href")] if viewer in url]
        assert page.errors() == []

        # A wrong token: an error, and no data.
        stranger = await browser.new_page(f"{server}/ui#scope={scope}")
        await sign_in(stranger, "msm_" + "x" * 43)
        await stranger.wait_for("document.getElementById('error').checkVisibility()")
        assert "refused" in await stranger.evaluate("document.getElementById('error').textContent")
        assert not await visible(stranger, "app") and await visible(stranger, "login")
        body = await stranger.evaluate("document.body.innerText")
        assert not any(content in body for *_, content in story) and "payments-api" not in body
        assert await stranger.evaluate("document.querySelectorAll('#timeline tr').length") == 0
