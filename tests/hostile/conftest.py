"""Fixtures of the hostile suite: principals of two tenants and two users, in-process MCP clients, a
snapshot of what PostgreSQL holds for the tenants under attack, and the checks every error must pass."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
from mcp import Client

from mcp_shared_memory.models import Principal, Scope
from mcp_shared_memory.runtime import Connections, Runtime, open_runtime
from mcp_shared_memory.settings import Settings

from ..conftest import Backdoor, isolated
from ..server.mcp_clients import Inbox, in_process_server

Connect = Callable[..., Client]

# Figures of the property-based run (calls made, seconds), shown after the test session.
STATS: dict[str, float] = defaultdict(float)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if STATS:
        figures = ", ".join(
            f"{value:,.0f} {name}" if name != "seconds" else f"{value:.1f} s" for name, value in STATS.items()
        )
        terminalreporter.write_line(f"hostile property run: {figures}")


def without_rate_limits(settings: Settings) -> dict[str, object]:
    """Settings changes that switch off per-token rate limits, where this version has them: the suite
    throws thousands of calls a minute at the server on purpose."""
    changes: dict[str, object] = {}
    for name in ("rate_limit_per_minute",):
        if name in Settings.model_fields:
            changes[name] = None if Settings.model_fields[name].default is None else 0
    return changes


# Identifiers an attacker would try: separators of Redis keys, URIs and globs, encodings, look-alikes,
# control characters, and lengths past every limit.
HOSTILE = {
    "colon": "alice:bob",
    "slash": "alice/bob",
    "star": "*",
    "glob": "ali*",
    "glob class": "[ab]lice",
    "question mark": "alice?x=1",
    "percent-encoded slash": "alice%2Fbob",
    "dot-dot": "..",
    "dot-dot slash": "../bob",
    "leading dot": ".alice",
    "fullwidth colon": "alice\uff1abob",
    "Cyrillic a": "\u0430lice",
    "zero-width space": "ali\u200bce",
    "right-to-left override": "alice\u202e",
    "NUL": "alice\x00",
    "newline": "alice\nbob",
    "trailing newline": "alice\n",
    "carriage return": "alice\r",
    "tab": "alice\tbob",
    "space": "alice bob",
    "Redis hash tag": "{alice}",
    "quote": "alice';--",
    "empty": "",
    "129 characters": "a" * 129,
    "100k characters": "a" * 100_000,
}


@pytest.fixture
async def runtime(settings: Settings, connections: Connections) -> AsyncIterator[Runtime]:
    """The test's runtime (its own Redis key prefix), without rate limits; consolidation never runs in it."""
    async with open_runtime(isolated(settings, **without_rate_limits(settings)), connections=connections) as opened:
        yield opened


@pytest.fixture(params=["legacy", "auto"])
def mode(request: pytest.FixtureRequest) -> str:
    """Both protocol generations: 2025-era (initialize, resources/subscribe) and 2026 (listen)."""
    return str(request.param)


@pytest.fixture
def connect(runtime: Runtime) -> Connect:
    """``connect(principal, mode="auto", inbox=None)``: an in-process MCP client of its own server."""

    def client(principal: Principal, mode: str = "auto", inbox: Inbox | None = None) -> Client:
        return Client(in_process_server(runtime, principal), mode=mode, message_handler=inbox)

    return client


@pytest.fixture
def bob(tenant: str) -> Principal:
    """An agent of tenant A serving another user, allowed every workspace pattern (membership decides)."""
    return Principal(
        tenant=tenant, agent_id="bob-agent", agent_type="code", allowed_scopes=("user:bob", "workspace:*"),
        default_scope=Scope("user", "bob"),
    )  # fmt: skip


@dataclass(frozen=True)
class Snapshot:
    """What PostgreSQL holds for some tenants: row counts, and when a workspace or a fact last changed (every
    change of either sets it; events are only ever appended)."""

    events: int
    facts: int
    workspaces: int
    workspaces_changed: str | None
    facts_changed: str | None


SNAPSHOT = """
SELECT
  (SELECT count(*) FROM shared_episodic_memories WHERE tenant_id = ANY($1::text[])) AS events,
  (SELECT count(*) FROM semantic_facts WHERE tenant_id = ANY($1::text[])) AS facts,
  (SELECT count(*) FROM workspaces WHERE tenant_id = ANY($1::text[])) AS workspaces,
  (SELECT max(updated_at)::text FROM workspaces WHERE tenant_id = ANY($1::text[])) AS workspaces_changed,
  (SELECT max(last_seen)::text || ' ' || sum(confirmations)
     FROM semantic_facts WHERE tenant_id = ANY($1::text[])) AS facts_changed
"""


async def snapshot(backdoor: Backdoor, *tenants: str) -> Snapshot:
    row = await backdoor.db.fetchrow(SNAPSHOT, list(tenants))
    assert row is not None
    return Snapshot(**dict(row))


# What an error shown to an agent must never carry: a stack trace, a backend's address or URL, a file
# path, a Python exception's repr, a driver's own error class.
LEAKS = re.compile(
    r"Traceback|File \"|\bline \d+, in\b|postgres(?:ql)?://|redis://|valkey://|\b\d{1,3}(?:\.\d{1,3}){3}:\d+"
    r"|localhost:\d+|/tmp/|/var/|/home/|/root/|site-packages|asyncpg|Error\(|object at 0x|<[a-z_.]+ object",
    re.IGNORECASE,
)


# How the SDK reports an exception that is not a domain error (its text stays in the server log).
CRASH = re.compile(
    r"Error executing tool [\w.-]+|Error creating resource from template \S+|Error rendering prompt \S+"
    r"|Internal server error"
)


def assert_clear_error(message: str, *, expect: str | None = None) -> None:
    """A refused call's message: says what is wrong (an input problem, not an outage), leaks nothing."""
    assert message.strip(), "an error without a message"
    assert not LEAKS.search(message), f"the error leaks internals: {message!r}"
    assert not CRASH.fullmatch(message.strip()), f"an unexpected crash: {message!r}"
    assert "unavailable" not in message and "retry later" not in message, (
        f"bad input reported as an outage: {message!r}"
    )
    if expect is not None:
        assert re.search(expect, message, re.IGNORECASE), f"{expect!r} not in {message!r}"
