from __future__ import annotations

from collections.abc import Callable

import pytest
from mcp import Client

from mcp_shared_memory.models import Principal
from mcp_shared_memory.runtime import Runtime

from .mcp_clients import Inbox, in_process_server

Connect = Callable[..., Client]


@pytest.fixture(params=["legacy", "auto"])
def mode(request: pytest.FixtureRequest) -> str:
    """Both protocol generations: 2025-era (initialize, resources/subscribe) and 2026 (listen)."""
    return request.param


@pytest.fixture
def connect(runtime: Runtime) -> Connect:
    """``connect(principal, mode="auto", inbox=None)``: an in-process MCP client of its own server (the
    principal is bound per server, as on stdio) over the test's runtime; enter it with ``async with``."""

    def client(principal: Principal, mode: str = "auto", inbox: Inbox | None = None) -> Client:
        return Client(in_process_server(runtime, principal), mode=mode, message_handler=inbox)

    return client
