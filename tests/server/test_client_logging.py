"""Server log messages reach the client whose request met them, at the level it chose: after
``logging/setLevel`` on 2025-era connections, per request (``_meta``) on 2026 ones. Another session's
client hears nothing of it, and no message carries an address, a secret or a traceback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import mcp.types as types
import pytest
from mcp import Client

from mcp_shared_memory.models import Principal
from mcp_shared_memory.runtime import Connections, Runtime, open_runtime
from mcp_shared_memory.server.client_logging import MAX_CHARS, client_text
from mcp_shared_memory.settings import Settings

from ..conftest import isolated
from ..faults import FaultyRedis, faulty_redis_runtime
from .mcp_clients import in_process_server

# logging/setLevel and ping are deprecated by the 2026 revision; 2025-era clients use both.
pytestmark = [pytest.mark.anyio, pytest.mark.filterwarnings("ignore::mcp.MCPDeprecationWarning")]

OPT_IN = "io.modelcontextprotocol/logLevel"


class LogInbox:
    """The notifications/message a client receives, as its message handler."""

    def __init__(self) -> None:
        self.messages: list[types.LoggingMessageNotificationParams] = []
        self._event = anyio.Event()

    async def __call__(self, message: Any) -> None:
        if isinstance(message, types.LoggingMessageNotification):
            self.messages.append(message.params)
            self._event.set()
            self._event = anyio.Event()

    async def wait_for(self, count: int, seconds: float = 10) -> None:
        with anyio.fail_after(seconds):
            while len(self.messages) < count:
                await self._event.wait()

    def texts(self) -> list[str]:
        return [str(m.data) for m in self.messages]


@pytest.fixture
async def flaky_redis(settings: Settings, connections: Connections) -> AsyncIterator[FaultyRedis]:
    """A runtime on a Redis that can be cut, retried on every call (no breaker pause)."""
    async with faulty_redis_runtime(isolated(settings, redis_breaker_seconds=0), connections) as faulty:
        yield faulty


async def test_a_legacy_client_hears_a_degraded_read_only_at_the_level_it_chose(
    flaky_redis: FaultyRedis, alice: Principal, alice_coder: Principal
) -> None:
    runtime = flaky_redis.runtime
    inbox, bystander = LogInbox(), LogInbox()
    async with (
        Client(in_process_server(runtime, alice), mode="legacy", message_handler=inbox) as client,
        Client(in_process_server(runtime, alice_coder), mode="legacy", message_handler=bystander) as other,
    ):
        await client.call_tool("write_event", {"content": "cached before the outage", "importance": 0.8})
        await other.set_logging_level("debug")
        flaky_redis.proxy.cut()

        read = await client.call_tool("get_recent_shared", {"limit": 5})  # no level chosen yet: nothing sent
        assert not read.is_error
        await client.set_logging_level("error")
        await client.call_tool("get_recent_shared", {"limit": 5})  # a warning, below "error"
        await client.send_ping()  # the server answers in order: anything sent before would be here by now
        assert inbox.messages == []

        await client.set_logging_level("warning")
        read = await client.call_tool("get_recent_shared", {"limit": 5})
        assert [e["content"] for e in read.structured_content["events"]] == ["cached before the outage"]
        await inbox.wait_for(1)
        message = inbox.messages[0]
        assert message.level == "warning" and message.logger and message.logger.startswith("mcp_shared_memory")
        assert "falling back to PostgreSQL" in str(message.data)
        for leak in ("127.0.0.1", str(flaky_redis.proxy.port), "Traceback", "redis://"):
            assert leak not in str(message.data)

        await other.send_ping()
        assert bystander.messages == []  # its own requests met no fault: it hears nothing of the other's


async def test_a_modern_client_opts_in_per_request(flaky_redis: FaultyRedis, alice: Principal) -> None:
    inbox = LogInbox()
    async with Client(in_process_server(flaky_redis.runtime, alice), message_handler=inbox) as client:
        flaky_redis.proxy.cut()
        await client.call_tool("get_recent_shared", {"limit": 5})
        await client.call_tool("get_recent_shared", {"limit": 5}, meta={OPT_IN: "error"})  # type: ignore[typeddict-unknown-key]
        await client.list_tools()  # answered in order: anything sent before would be here by now
        assert inbox.messages == []
        await client.call_tool("get_recent_shared", {"limit": 5}, meta={OPT_IN: "info"})  # type: ignore[typeddict-unknown-key]
        await inbox.wait_for(1)
        assert inbox.messages[0].level == "warning" and "falling back" in str(inbox.messages[0].data)


async def test_a_rate_limited_client_is_told(settings: Settings, connections: Connections, alice: Principal) -> None:
    limited = isolated(settings, rate_limit_per_minute=1, rate_limit_burst=1)
    inbox = LogInbox()
    runtime: Runtime
    async with (
        open_runtime(limited, connections=connections) as runtime,
        Client(in_process_server(runtime, alice), mode="legacy", message_handler=inbox) as client,
    ):
        await client.set_logging_level("notice")
        assert not (await client.call_tool("get_recent_shared", {})).is_error
        refused = await client.call_tool("get_recent_shared", {})
        assert refused.is_error and "retry after" in refused.content[0].text
        await inbox.wait_for(1)
        assert inbox.messages[0].level == "warning"
        assert inbox.texts()[0].startswith("get_recent_shared was rate limited: ")


def test_client_text_keeps_one_line_without_secrets_addresses_or_paths() -> None:
    raw = (
        "connect to postgresql://app:hunter2@db.internal:5432/msm failed (10.0.3.7:6379, redis.local:6380) "
        "reading /var/lib/msm/pg/postmaster.pid with key sk-abcdefghijklmnopqrstuvwxyz0123456789ABCD\n"
        'Traceback (most recent call last):\n  File "/srv/app.py", line 1'
    )
    text = client_text(raw)
    assert "\n" not in text and "Traceback" not in text
    for leak in ("hunter2", "db.internal", "10.0.3.7", "redis.local", "/var/lib", "sk-abcdefghij"):
        assert leak not in text
    assert text.startswith("connect to [address] failed ([address], [address]) reading [path] with key ")
    assert len(client_text("x" * 10_000)) == MAX_CHARS
