"""Every use of the MCP SDK's private API lives here, so an SDK upgrade touches one module."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, get_args, get_origin

from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import NotificationOptions
from mcp.server.mcpserver import MCPServer
from mcp.types import (
    CallToolResult,
    EmptyResult,
    LoggingLevel,
    LoggingMessageNotification,
    LoggingMessageNotificationParams,
    SubscribeRequestParams,
    UnsubscribeRequestParams,
)
from pydantic import BaseModel

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


def register_request_handler(
    server: MCPServer[Any], method: str, params_type: type[BaseModel], handler: Callable[..., Awaitable[Any]]
) -> None:
    """A request MCPServer has no handler-with-context decorator for (``completion/complete`` hands its
    function no context, ``logging/setLevel`` has none); registering it advertises the capability."""
    server._lowlevel_server.add_request_handler(method, params_type, handler)


def prompt_and_template_names(server: MCPServer[Any]) -> tuple[list[str], list[str]]:
    """The names of the registered prompts and the URI templates of the registered resource templates."""
    prompts = [p.name for p in server._prompt_manager.list_prompts()]
    templates = [t.uri_template for t in server._resource_manager.list_templates()]
    return prompts, templates


def tool_names(server: MCPServer[Any]) -> list[str]:
    return [t.name for t in server._tool_manager.list_tools()]


async def send_log_message(ctx: ServerRequestContext[Any, Any], level: LoggingLevel, data: str, logger: str) -> None:
    """``notifications/message`` on the request's own stream. ``ServerSession.send_log_message`` does the same
    but warns on every use (the 2026 revision deprecates logging; 2025-era clients still rely on it). The
    caller has checked the level against what the client takes (``client_logging.allowed_levels``)."""
    params = LoggingMessageNotificationParams(level=level, data=data, logger=logger)
    await ctx.session._notify(LoggingMessageNotification(params=params), request_scoped=True)


def inline_output_schemas(server: MCPServer[Any]) -> None:
    """Publish output schemas without ``$ref``: clients validate every structured result against the
    schema, and jsonschema resolves a ``$ref`` per list item (about 80 % of a 20-event read's round trip).

    A tool that returns a ``CallToolResult`` built from its output model (``results.py``) is not validated
    against that model again by the SDK: its schema stays published, and clients still check it."""
    for tool in server._tool_manager.list_tools():
        metadata = tool.fn_metadata
        schema = metadata.output_schema
        if schema and "$defs" in schema:
            metadata.output_schema = _inline(schema, schema["$defs"])
        if _returns_call_tool_result(tool.fn):
            metadata.output_model = None


def _returns_call_tool_result(fn: Callable[..., Any]) -> bool:
    returns = fn.__annotations__.get("return")
    return get_origin(returns) is Annotated and get_args(returns)[0] is CallToolResult


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            merged = {**defs[ref.removeprefix("#/$defs/")], **{k: v for k, v in node.items() if k != "$ref"}}
            return _inline(merged, defs)
        inlined = {k: _inline(v, defs) for k, v in node.items() if k != "$defs"}
        return _nullable_as_type_list(inlined)
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    return node


def _nullable_as_type_list(node: dict[str, Any]) -> dict[str, Any]:
    """``anyOf: [{type: T, ...}, {type: null}]`` → ``type: [T, null]``: equivalent, and far cheaper for
    jsonschema to check than an ``anyOf`` (which builds a validator per branch per value)."""
    branches = node.get("anyOf")
    if not isinstance(branches, list) or len(branches) != 2 or {"type": "null"} not in branches:
        return node
    (other,) = [b for b in branches if b != {"type": "null"}]
    if not isinstance(other.get("type"), str) or set(other) - {"type", "format"}:
        return node
    rest = {k: v for k, v in node.items() if k != "anyOf"}
    return {**rest, **other, "type": [other["type"], "null"]}


def connection_key(ctx: ServerRequestContext[Any, Any]) -> int:
    """A stable key for the client connection (the session object is a per-request proxy)."""
    return id(ctx.session._connection)


def connection_state(ctx: ServerRequestContext[Any, Any]) -> dict[str, Any]:
    return ctx.session._connection.state


def on_connection_close(ctx: ServerRequestContext[Any, Any], callback: Callable[[], Awaitable[None]]) -> None:
    ctx.session._connection.exit_stack.push_async_callback(callback)
