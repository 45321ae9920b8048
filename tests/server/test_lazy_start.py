"""A stdio server answers its first requests before its backends are open, tells an agent what is wrong
while they cannot be opened, and serves once they can (without a restart)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import parse_qs, urlsplit

import anyio
import pytest
from mcp import Client
from mcp.types import CallToolResult, TextContent

from mcp_shared_memory.models import Principal
from mcp_shared_memory.runtime import Runtime
from mcp_shared_memory.server.app import build_server
from mcp_shared_memory.server.state import ServerLifespan

from ..tcp_proxy import faulty_proxy
from .mcp_clients import stdio_server, until

pytestmark = pytest.mark.anyio


def text_of(result: CallToolResult) -> str:
    block = result.content[0]
    assert isinstance(block, TextContent)
    return block.text


def database_socket(database_url: str) -> tuple[str, str]:
    """(the unix socket of the test PostgreSQL, its login) from the embedded server's URL."""
    url = urlsplit(database_url)
    query = parse_qs(url.query)
    if "host" not in query or not query["host"][0].startswith("/"):
        pytest.skip("the test PostgreSQL is not reached over a unix socket (external MSM_TEST_DATABASE_URL)")
    return f"{query['host'][0]}/.s.PGSQL.{query['port'][0]}", url.username or "postgres"


async def test_tools_are_listed_while_the_database_is_down_and_served_once_it_is_back(
    backend_env: dict[str, str],
) -> None:
    socket_path, login = database_socket(backend_env["MSM_DATABASE_URL"])
    tenant = f"t{uuid.uuid4().hex[:10]}"
    async with faulty_proxy(socket_path, None) as proxy:
        proxy.cut()
        env = {**backend_env, "MSM_DATABASE_URL": f"postgresql://{login}@127.0.0.1:{proxy.port}/postgres"}
        params = stdio_server(env, tenant=tenant, agent_id="early-agent", scope="user:alice")
        with anyio.fail_after(150):
            async with Client(params) as client:
                with anyio.fail_after(30):
                    tools = await client.list_tools()
                assert {"write_event", "search_shared", "get_recent_shared"} <= {tool.name for tool in tools.tools}

                refused = await client.call_tool("write_event", {"content": "written before the database was up"})
                assert refused.is_error
                message = text_of(refused)
                assert "PostgreSQL" in message and "retry" in message
                assert "127.0.0.1" not in message and str(proxy.port) not in message

                proxy.restore()
                written: list[CallToolResult] = []

                async def write_succeeds() -> bool:
                    written.append(await client.call_tool("write_event", {"content": "the deploy is green"}))
                    return not written[-1].is_error

                await until(write_succeeds, seconds=60)  # the server tries again with backoff (1 s, then 2 s, ...)
                assert written[-1].structured_content is not None
                assert written[-1].structured_content["status"] == "written"
                recent = await client.call_tool("get_recent_shared", {"limit": 5})
                assert [e["content"] for e in recent.structured_content["events"]] == ["the deploy is green"]


async def test_a_configuration_the_backends_refuse_is_said_on_every_call(backend_env: dict[str, str]) -> None:
    env = {**backend_env, "MSM_EMBEDDING_PROVIDER": "openai", "OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""}
    params = stdio_server(env, tenant=f"t{uuid.uuid4().hex[:10]}", agent_id="misconfigured", scope="user:alice")
    with anyio.fail_after(120):
        async with Client(params) as client:
            with anyio.fail_after(30):
                tools = await client.list_tools()
            assert "write_event" in {tool.name for tool in tools.tools}
            for _ in range(2):  # not retried: the same answer, at once
                with anyio.fail_after(30):
                    refused = await client.call_tool("get_recent_shared", {})
                assert refused.is_error and "OPENAI_API_KEY" in text_of(refused)


async def test_an_unexpected_fault_while_opening_the_backends_is_said_and_retried_never_fatal(
    runtime: Runtime, alice: Principal
) -> None:
    """An error that is no outage (a bug: CI once had a thread-join RuntimeError there) used to end the
    background start, and with it the server; it is reported to agents like an outage and retried."""
    attempts = 0
    refused_seen = anyio.Event()

    class FaultyOnce(ServerLifespan):
        @asynccontextmanager
        async def _runtime(self) -> AsyncIterator[Runtime]:
            nonlocal attempts
            attempts += 1
            if attempts == 1:
                raise RuntimeError("a fault of ours, naming 10.0.0.7:5432")
            await refused_seen.wait()  # the retry opens only once the agent was told
            yield runtime

    server = build_server(FaultyOnce(runtime.settings, local_principal=alice, background=True))
    with anyio.fail_after(60):
        async with Client(server) as client:
            refused = await client.call_tool("write_event", {"content": "written while the start failed"})
            assert refused.is_error
            assert "internal error" in text_of(refused) and "10.0.0.7" not in text_of(refused)
            refused_seen.set()

            async def write_succeeds() -> bool:
                return not (await client.call_tool("write_event", {"content": "written after the retry"})).is_error

            await until(write_succeeds, seconds=30)  # retried after 1 s
    assert attempts == 2
