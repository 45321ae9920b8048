"""The workload: agents on their own MCP connections (Streamable HTTP spread over the replicas, or a stdio
``serve`` process each) writing with idempotency keys and retrying every failed call with the same key,
reading recent events, searching for their last write; subscribers that count notifications and catch up
with ``since_seq``."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import anyio
from mcp import Client

from ..server.mcp_clients import Inbox, http_client, watch
from .checker import Ledger

CALL_TIMEOUT = 10.0  # a call with no answer by then is retried (same key) on a new connection
RETRY_DELAY = 0.05

Connect = Callable[[int], AbstractAsyncContextManager[Client]]  # attempt number -> a new connection


class Broken(Exception):
    """The connection failed: reconnect (to the next replica) and retry."""


async def _call(client: Client, tool: str, args: dict[str, Any]) -> Any:
    with anyio.move_on_after(CALL_TIMEOUT):
        return await client.call_tool(tool, args)
    raise Broken(f"{tool}: no answer within {CALL_TIMEOUT:.0f} s")


def over_http(urls: Sequence[str], token: str) -> Connect:
    """Connections to the replicas in turn, the first to ``urls[0]``."""
    return lambda attempt: http_client(urls[attempt % len(urls)], token, "auto")


@dataclass
class Agent:
    name: str
    connect: Connect
    ledger: Ledger
    written: int = 0
    _attempt: int = 0

    async def run(self, stop: anyio.Event, *, pace: float = 0.02) -> None:
        """Write ``<name>-<n>`` for n = 0, 1, ... until ``stop``; every failure retries the same key."""
        while not stop.is_set():
            self._attempt += 1
            try:
                async with self.connect(self._attempt - 1) as client:
                    while not stop.is_set():
                        await self._write(client)
                        if self.written % 5 == 0:
                            await self._read(client)
                        await anyio.sleep(pace)
            except Exception as exc:  # a dropped connection, a killed replica: reconnect, retry the same key
                self.ledger.failures.append((time.monotonic(), 0.0, f"connection: {exc!r}"[:300]))
                await anyio.sleep(RETRY_DELAY)

    async def _write(self, client: Client) -> None:
        key = f"{self.name}-{self.written}"
        began = time.monotonic()
        try:
            result = await _call(client, "write_event", {"content": f"{key}: observed", "idempotency_key": key})
        except Exception as exc:
            self.ledger.failures.append((began, time.monotonic() - began, type(exc).__name__))
            raise
        if result.is_error:
            text = result.content[0].text if result.content else ""
            self.ledger.failures.append((began, time.monotonic() - began, text))
            await anyio.sleep(RETRY_DELAY)
            return
        written = result.structured_content
        self.ledger.ack(key, written["seq"], written["status"], began=began, took=time.monotonic() - began)
        self.written += 1

    async def _read(self, client: Client) -> None:
        recent = await _call(client, "get_recent_shared", {"limit": 5})
        last = f"{self.name}-{self.written - 1}"
        search = await _call(client, "search_shared", {"query": last, "limit": 3})
        self.ledger.reads += 2
        self.ledger.read_failures += int(recent.is_error) + int(search.is_error)
        if not search.is_error:
            found = search.structured_content
            hit = any(e["content"].startswith(f"{last}:") for e in found["events"])
            self.ledger.searched(time.monotonic(), hit=hit, degraded=found.get("degraded"))


def _more_than(seen: int, inbox: Inbox) -> bool:
    return len(inbox.updated) > seen


@dataclass
class Subscriber:
    """Watches the scope's recent resource and records when each notification arrived."""

    token: str
    urls: Sequence[str]
    uri: str
    inbox: Inbox = field(default_factory=Inbox)
    arrivals: list[float] = field(default_factory=list)
    reconnects: int = 0

    async def run(self, stop: anyio.Event) -> None:
        """Listen until ``stop``; a dropped stream (a killed replica) reconnects to the next replica."""
        while not stop.is_set():
            url = self.urls[self.reconnects % len(self.urls)]
            try:
                async with (
                    http_client(url, self.token, "auto", self.inbox) as client,
                    watch(client, "auto", self.inbox, [self.uri]),
                ):
                    await self._listen(stop)
            except Exception:
                self.reconnects += 1
                await anyio.sleep(RETRY_DELAY)

    async def _listen(self, stop: anyio.Event) -> None:
        seen = len(self.inbox.updated)
        while not stop.is_set():
            with anyio.move_on_after(0.2):
                await self.inbox.wait_for(functools.partial(_more_than, seen), seconds=3600)
            now = time.monotonic()
            self.arrivals += [now] * (len(self.inbox.updated) - seen)
            seen = len(self.inbox.updated)

    def first_after(self, moment: float) -> float | None:
        return next((t - moment for t in self.arrivals if t >= moment), None)


async def catch_up(client: Client) -> list[int]:
    """Every seq of the scope, paging with since_seq from 0: what a subscriber that missed notifications
    reads to catch up."""
    seqs: list[int] = []
    cursor = 0
    while True:
        page = await _call(client, "get_recent_shared", {"since_seq": cursor, "limit": 100})
        assert not page.is_error, page.content
        events = page.structured_content["events"]
        if not events:
            return seqs
        seqs += [e["seq"] for e in events]
        cursor = page.structured_content["next_since_seq"]
