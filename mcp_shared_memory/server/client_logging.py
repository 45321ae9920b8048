"""Server log messages to MCP clients (``notifications/message``), at the level each client chose.

What a session hears is what this package logged *while serving that session's request* (a Redis outage met
on its read, an event stored without a vector, ...) plus what the server tells it on purpose (``tell``: its
calls are rate limited). Background work and other sessions' requests are never reported. A message is
sent as its one-line text: secrets redacted, addresses and paths replaced, no traceback, at most
``MAX_CHARS`` characters, at most ``MAX_PER_REQUEST`` per request. DEBUG records are never sent.

The level: 2025-era clients choose it with ``logging/setLevel`` (per connection; nothing is sent before);
2026 clients opt in per request (the ``io.modelcontextprotocol/logLevel`` ``_meta`` key), which the SDK
enforces when the message is sent.
"""

from __future__ import annotations

import logging
import re
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, get_args

from mcp.server.connection import allowed_log_levels
from mcp.server.context import ServerRequestContext
from mcp.types import EmptyResult, LoggingLevel, SetLevelRequestParams
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from .. import metrics
from ..logs import scrub
from . import sdk_adapter

log = logging.getLogger(__name__)

LEVELS: tuple[LoggingLevel, ...] = get_args(LoggingLevel)  # severity-ascending (RFC 5424)
PACKAGE_LOGGER = "mcp_shared_memory"
LEVEL_KEY = "msm_log_level"
MAX_PER_REQUEST = 20
MAX_CHARS = 500

_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>)]+")
_HOST_PORT = re.compile(r"\b(?:\d{1,3}(?:\.\d{1,3}){3}|\[[0-9a-fA-F:]+\]|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*):\d{2,5}\b")
_IPV4 = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b")
_PATH = re.compile(r"(?<![\w:/])/(?:[\w.@-]+/)+[\w.@-]*")


def client_text(message: str) -> str:
    """``message`` as a client may read it: its first line, secrets redacted, no address or file path."""
    text = scrub(message.split("\n", 1)[0])
    for pattern, replacement in ((_URL, "[address]"), (_HOST_PORT, "[address]"), (_IPV4, "[address]")):
        text = pattern.sub(replacement, text)
    text = _PATH.sub("[path]", text)
    return text if len(text) <= MAX_CHARS else text[: MAX_CHARS - 1] + "…"


def level_of(record: logging.LogRecord) -> LoggingLevel | None:
    """The MCP level of a record; None for DEBUG (operators' detail, never sent)."""
    if record.levelno >= logging.CRITICAL:
        return "critical"
    if record.levelno >= logging.ERROR:
        return "error"
    if record.levelno >= logging.WARNING:
        return "warning"
    if record.levelno >= logging.INFO:
        return "info"
    return None


@dataclass
class Entry:
    level: LoggingLevel
    logger: str
    text: str


@dataclass
class RequestLog:
    """What one request has to tell its client."""

    entries: list[Entry] = field(default_factory=list)

    def add(self, level: LoggingLevel, logger: str, message: str) -> None:
        if len(self.entries) < MAX_PER_REQUEST:
            self.entries.append(Entry(level, logger, client_text(message)))


_CURRENT: ContextVar[RequestLog | None] = ContextVar("msm_request_log", default=None)


class RequestLogHandler(logging.Handler):
    """Copies this package's records into the log of the request being served, if any (tasks a request
    starts inherit its context, so their records count too)."""

    def emit(self, record: logging.LogRecord) -> None:
        current = _CURRENT.get()
        if current is None:
            return
        level = level_of(record)
        if level is not None:
            current.add(level, record.name, record.getMessage())


_HANDLER = RequestLogHandler()


def install() -> None:
    """Attach the handler to the package's logger (once per process; building a server calls it)."""
    package = logging.getLogger(PACKAGE_LOGGER)
    if _HANDLER not in package.handlers:
        package.addHandler(_HANDLER)


def tell(level: LoggingLevel, message: str) -> None:
    """Tell the client of the request being served (not the process log)."""
    if (current := _CURRENT.get()) is not None:
        current.add(level, PACKAGE_LOGGER, message)


class capture:  # lower-case: used as a function, ``with capture() as request_log``
    """Collect what is logged while the block serves a request (a class, not ``@contextmanager``: this runs
    on every request, and a generator-based context manager costs three times as much)."""

    __slots__ = ("_log", "_token")

    def __enter__(self) -> RequestLog:
        self._log = RequestLog()
        self._token = _CURRENT.set(self._log)
        return self._log

    def __exit__(self, *exc: object) -> None:
        _CURRENT.reset(self._token)


def allowed_levels(ctx: ServerRequestContext[Any, Any]) -> frozenset[LoggingLevel]:
    """The levels this request's client takes: those it opted into with the request on 2026 connections,
    those at or above its ``logging/setLevel`` on 2025-era ones (none before it asked)."""
    if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
        return allowed_log_levels(ctx.protocol_version, ctx.meta)
    level = sdk_adapter.connection_state(ctx).get(LEVEL_KEY)
    return frozenset(LEVELS[LEVELS.index(level) :]) if level in LEVELS else frozenset()


async def deliver(ctx: ServerRequestContext[Any, Any], request_log: RequestLog) -> None:
    """Send the request's entries the client takes, on the request's own stream."""
    if not request_log.entries or not (levels := allowed_levels(ctx)):
        return
    for entry in request_log.entries:
        if entry.level not in levels:
            continue
        try:
            await sdk_adapter.send_log_message(ctx, entry.level, entry.text, entry.logger)
        except Exception as exc:  # a client gone mid-request: its answer fails the same way, later
            log.debug("log message not delivered: %s", type(exc).__name__)
            return
        metrics.client_log_messages.labels(entry.level).inc()


async def set_level(ctx: ServerRequestContext[Any, Any], params: SetLevelRequestParams) -> EmptyResult:
    """``logging/setLevel``: this connection's messages at ``params.level`` and above from now on."""
    sdk_adapter.connection_state(ctx)[LEVEL_KEY] = params.level
    return EmptyResult()
