"""A TCP proxy that injects network faults between the server and a real backend (Redis, PostgreSQL).

``cut()`` resets every open connection and refuses new ones (a crash or restart, as the client sees
it), ``stall()`` keeps connections open but stops forwarding (a server that hangs), ``restore()`` undoes
either. It runs in the test's event loop.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc


class FaultyProxy:
    """Forwards to ``target``: (host, port) over TCP, or (socket path, None) over a unix socket."""

    def __init__(self, target_host: str, target_port: int | None) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._links: set[anyio.abc.SocketStream] = set()
        self._flowing = anyio.Event()
        self._flowing.set()
        self._refusing = False
        self.connections = 0

    def url(self, scheme: str = "redis", path: str = "/0") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def cut(self) -> None:
        """Reset every connection and refuse new ones until ``restore()``."""
        self._refusing = True
        for stream in list(self._links):
            with contextlib.suppress(OSError):
                sock = stream.extra(anyio.abc.SocketAttribute.raw_socket)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                sock.shutdown(socket.SHUT_RDWR)
        self._links.clear()

    def stall(self) -> None:
        """Accept and hold connections but forward nothing until ``restore()``."""
        self._flowing = anyio.Event()

    def restore(self) -> None:
        self._refusing = False
        self._flowing.set()

    async def _pipe(self, source: anyio.abc.SocketStream, sink: anyio.abc.SocketStream) -> None:
        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            while True:
                data = await source.receive()
                await self._flowing.wait()
                await sink.send(data)
        with contextlib.suppress(Exception):
            await sink.send_eof()

    async def _handle(self, client: anyio.abc.SocketStream) -> None:
        if self._refusing:
            await client.aclose()
            return
        self.connections += 1
        try:
            host, port = self.target
            upstream: anyio.abc.SocketStream
            if port is None:
                upstream = await anyio.connect_unix(host)
            else:
                upstream = await anyio.connect_tcp(host, port)
        except OSError:
            await client.aclose()
            return
        self._links |= {client, upstream}
        try:
            async with client, upstream, anyio.create_task_group() as tg:
                tg.start_soon(self._pipe, client, upstream)
                tg.start_soon(self._pipe, upstream, client)
        finally:
            self._links -= {client, upstream}


@asynccontextmanager
async def faulty_proxy(target_host: str, target_port: int | None) -> AsyncIterator[FaultyProxy]:
    proxy = FaultyProxy(target_host, target_port)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    proxy.port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, proxy._handle)
        try:
            yield proxy
        finally:
            proxy.restore()
            tg.cancel_scope.cancel()
