"""Helpers to drive real server processes through real MCP clients."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
import httpx2
import mcp.types as types
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

MODES = ["legacy", "auto"]


def server_env(backend_env: dict[str, str], **binding: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSM_")}
    env.update(backend_env)
    env.update({f"MSM_{k.upper()}": v for k, v in binding.items()})
    return env


def stdio_server(backend_env: dict[str, str], **binding: str) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable, args=["-m", "mcp_shared_memory", "serve"], env=server_env(backend_env, **binding)
    )


class Inbox:
    """Collects resources/updated and list_changed notifications of a legacy client."""

    def __init__(self) -> None:
        self.updated: list[str] = []
        self.list_changed = 0
        self._event = anyio.Event()

    async def __call__(self, message: Any) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            self.updated.append(str(message.params.uri))
        elif isinstance(message, types.ResourceListChangedNotification):
            self.list_changed += 1
        else:
            return
        self._event.set()
        self._event = anyio.Event()

    async def wait_for(self, predicate: Any, seconds: float = 10) -> None:
        with anyio.fail_after(seconds):
            while not predicate(self):
                await self._event.wait()


async def legacy_subscribe(client: Client, uri: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        await client.subscribe_resource(uri)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def http_server(backend_env: dict[str, str], port: int, *, args: list[str] | None = None) -> Iterator[str]:
    """A `serve --transport http` process; yields its /mcp URL once /healthz answers."""
    args = args or ["serve", "--transport", "http", "--port", str(port)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mcp_shared_memory", *args],
        env=server_env(backend_env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {proc.stderr.read().decode() if proc.stderr else ''}")
            try:
                if httpx2.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx2.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("HTTP server did not become healthy")
            time.sleep(0.1)
        yield f"{base}/mcp"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@asynccontextmanager
async def http_client(url: str, token: str, mode: str, inbox: Inbox | None = None) -> AsyncIterator[Client]:
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode, message_handler=inbox) as client,
    ):
        yield client
