"""Server processes and MCP clients: stdio (one process per connection) and Streamable HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Any

import anyio
import anyio.abc
import httpx2
import psutil
from mcp import Client, StdioServerParameters
from mcp.client.session import MessageHandlerFnT
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

REPO = Path(__file__).resolve().parent.parent
TRIVIAL_SERVER = Path(__file__).resolve().parent / "trivial_server.py"
MessageHandler = MessageHandlerFnT


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MSM_")}


def serve_params(env: dict[str, str], *extra: str) -> StdioServerParameters:
    """``python -m mcp_shared_memory serve`` over stdio; ``extra`` CLI args (e.g. a --agent-id marker)."""
    return StdioServerParameters(
        command=sys.executable, args=["-m", "mcp_shared_memory", "serve", *extra], env=env, cwd=str(REPO)
    )


def trivial_params() -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable, args=[str(TRIVIAL_SERVER), "stdio"], env=clean_env())


def stdio_client_for(
    params: StdioServerParameters,
    errlog: IO[str],
    *,
    mode: str = "auto",
    message_handler: MessageHandler | None = None,
) -> Client:
    """A Client on a new server process; the process's stderr goes to ``errlog``."""
    return Client(stdio_client(params, errlog=errlog), mode=mode, message_handler=message_handler, cache=None)  # type: ignore[arg-type]


@asynccontextmanager
async def http_client(
    url: str, token: str | None = None, *, mode: str = "auto", message_handler: MessageHandler | None = None
) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        Client(
            streamable_http_client(url, http_client=http),
            mode=mode,
            message_handler=message_handler,
            cache=None,
        ) as client,
    ):
        yield client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait_http(proc: anyio.abc.Process, url: str, seconds: float, ok: Callable[[int], bool]) -> None:
    deadline = time.monotonic() + seconds
    async with httpx2.AsyncClient(timeout=1) as http:
        while True:
            if proc.returncode is not None:
                raise RuntimeError(f"server exited with {proc.returncode} before answering {url}")
            try:
                if ok((await http.get(url)).status_code):
                    return
            except httpx2.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer within {seconds:.0f} s")
            await anyio.sleep(0.05)


@asynccontextmanager
async def http_process(
    args: list[str], env: dict[str, str], probe_url: str, errlog: IO[str], *, start_seconds: float = 90
) -> AsyncIterator[anyio.abc.Process]:
    """Start an HTTP server process and wait until ``probe_url`` answers; terminated on exit."""
    proc = await anyio.open_process(
        [sys.executable, *args], env=env, cwd=str(REPO), stdin=subprocess.DEVNULL, stdout=errlog, stderr=errlog
    )
    try:
        # The trivial server has no /healthz: any HTTP answer on /mcp proves it is up.
        await _wait_http(proc, probe_url, start_seconds, lambda status: status == 200 or "healthz" not in probe_url)
        yield proc
    finally:
        with anyio.CancelScope(shield=True):
            await stop_process(proc)


async def stop_process(proc: anyio.abc.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        with anyio.move_on_after(15):
            await proc.wait()
            return
        proc.kill()
        await proc.wait()


@asynccontextmanager
async def our_http_server(env: dict[str, str], errlog: IO[str]) -> AsyncIterator[tuple[str, int]]:
    """``serve --transport http`` on a free port; yields (/mcp URL, pid) once /healthz is 200."""
    port = free_port()
    args = ["-m", "mcp_shared_memory", "serve", "--transport", "http", "--port", str(port)]
    async with http_process(args, env, f"http://127.0.0.1:{port}/healthz", errlog) as proc:
        yield f"http://127.0.0.1:{port}/mcp", proc.pid


@asynccontextmanager
async def trivial_http_server(errlog: IO[str]) -> AsyncIterator[tuple[str, int]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    async with http_process([str(TRIVIAL_SERVER), "http", str(port)], clean_env(), url, errlog) as proc:
        yield url, proc.pid


def find_child(marker: str) -> psutil.Process | None:
    """The descendant process whose command line contains ``marker``."""
    for child in psutil.Process().children(recursive=True):
        try:
            if marker in " ".join(child.cmdline()):
                return child
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return None


async def legacy_subscribe(client: Client, uri: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        await client.subscribe_resource(uri)


def check(result: Any, what: str) -> Any:
    """Raise if a tool call failed; returns the structured content."""
    if getattr(result, "is_error", False):
        text = " ".join(getattr(c, "text", "") for c in result.content)
        raise RuntimeError(f"{what} failed: {text[:500]}")
    return result.structured_content
