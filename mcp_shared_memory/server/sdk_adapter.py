"""Every use of the MCP SDK's private API lives here, so an SDK upgrade touches one module."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import NotificationOptions
from mcp.server.mcpserver import MCPServer
from mcp.types import EmptyResult, SubscribeRequestParams, UnsubscribeRequestParams

SubscribeHandler = Callable[[ServerRequestContext[Any, Any], SubscribeRequestParams], Awaitable[EmptyResult]]
UnsubscribeHandler = Callable[[ServerRequestContext[Any, Any], UnsubscribeRequestParams], Awaitable[EmptyResult]]


def register_legacy_subscriptions(
    server: MCPServer[Any], on_subscribe: SubscribeHandler, on_unsubscribe: UnsubscribeHandler
) -> None:
    """``resources/subscribe`` for 2025-era clients (MCPServer has no decorator for it); registering
    the handlers advertises ``resources.subscribe``. Also advertises ``resources.listChanged``."""
    low = server._lowlevel_server
    low.add_request_handler("resources/subscribe", SubscribeRequestParams, on_subscribe)
    low.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, on_unsubscribe)
    low.create_initialization_options = functools.partial(  # type: ignore[method-assign]
        low.create_initialization_options, NotificationOptions(resources_changed=True)
    )


def connection_key(ctx: ServerRequestContext[Any, Any]) -> int:
    """A stable key for the client connection (the session object is a per-request proxy)."""
    return id(ctx.session._connection)


def connection_state(ctx: ServerRequestContext[Any, Any]) -> dict[str, Any]:
    return ctx.session._connection.state


def on_connection_close(ctx: ServerRequestContext[Any, Any], callback: Callable[[], Awaitable[None]]) -> None:
    ctx.session._connection.exit_stack.push_async_callback(callback)
