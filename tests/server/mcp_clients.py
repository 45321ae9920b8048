"""MCP clients for the tests: in-process clients of a server built over a test's runtime (most tests),
and real server processes (stdio, HTTP) for the transport tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
import httpx2
import mcp.types as types
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer

from mcp_shared_memory.models import Principal
from mcp_shared_memory.runtime import Runtime
from mcp_shared_memory.server.app import build_server
from mcp_shared_memory.server.state import ServerLifespan


def server_env(backend_env: dict[str, str], **binding: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSM_")}
    env.update(backend_env)
    env.update({f"MSM_{k.upper()}": v for k, v in binding.items()})
    return env


def stdio_server(backend_env: dict[str, str], **binding: str) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable, args=["-m", "mcp_shared_memory", "serve"], env=server_env(backend_env, **binding)
    )


def in_process_server(runtime: Runtime, principal: Principal) -> MCPServer[Any]:
    """The MCP server an agent bound to ``principal`` talks to (as on stdio), over a test's runtime.
    Each agent needs its own server: the principal is bound per server."""
    return build_server(ServerLifespan(runtime.settings, local_principal=principal, runtime=runtime))


class Inbox:
    """Collects the resources/updated and list_changed notifications a client receives, as its message
    handler (in both generations: the SDK tees listen-stream events to the message handler too)."""

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

    async def wait_for(self, predicate: Callable[[Inbox], bool], seconds: float = 10) -> None:
        with anyio.fail_after(seconds):
            while not predicate(self):
                await self._event.wait()


async def until(condition: Callable[[], Awaitable[bool]], *, seconds: float = 10) -> None:
    """Poll a condition that has no event to wait on (the state of Redis, of another process's cache)."""
    with anyio.fail_after(seconds):
        while not await condition():  # noqa: ASYNC110 -- nothing to wait on but the condition itself
            await anyio.sleep(0.01)


async def legacy_subscribe(client: Client, uri: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        await client.subscribe_resource(uri)


@asynccontextmanager
async def watch(
    client: Client, mode: str, inbox: Inbox, uris: Sequence[str] = (), *, list_changed: bool = False
) -> AsyncIterator[Inbox]:
    """Subscribe ``client`` to ``uris`` in its protocol generation: ``resources/subscribe`` (legacy; such
    connections get ``list_changed`` unasked) or one ``subscriptions/listen`` stream (modern). Once
    entered, the server holds the subscription; notifications land in ``inbox``, the client's message
    handler."""
    if mode == "legacy":
        for uri in uris:
            await legacy_subscribe(client, uri)
        yield inbox
        return
    async with (
        client.listen(resource_subscriptions=list(uris), resources_list_changed=list_changed) as stream,
        anyio.create_task_group() as tasks,
    ):

        async def drain() -> None:  # the events reach the inbox through the message handler
            async for _ in stream:
                pass

        tasks.start_soon(drain)
        yield inbox
        tasks.cancel_scope.cancel()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def http_server(backend_env: dict[str, str], port: int, *, args: list[str] | None = None) -> Iterator[str]:
    """A `serve --transport http` process; yields its /mcp URL once /healthz answers. Its stderr goes to
    a file (a pipe nobody reads would block the server once full) and is shown if it fails to start."""
    args = args or ["serve", "--transport", "http", "--port", str(port)]
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mcp_shared_memory", *args],
            env=server_env(backend_env),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                if proc.poll() is not None:
                    stderr.seek(0)
                    raise RuntimeError(f"server exited: {stderr.read().decode(errors='replace')[-4000:]}")
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
                proc.wait()


@asynccontextmanager
async def http_client(url: str, token: str, mode: str, inbox: Inbox | None = None) -> AsyncIterator[Client]:
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode, message_handler=inbox) as client,
    ):
        yield client
