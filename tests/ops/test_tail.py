"""``mcp-shared-memory tail`` as a program: the last events first, then one written after it started."""

from __future__ import annotations

import sys

import anyio
import pytest
from anyio.abc import ByteReceiveStream

from mcp_shared_memory.models import Principal, Scope
from mcp_shared_memory.runtime import Connections, open_runtime
from mcp_shared_memory.settings import Settings

from ..conftest import fresh_id
from ..server.mcp_clients import server_env

pytestmark = pytest.mark.anyio


async def read_until(stream: ByteReceiveStream, seen: bytearray, text: str) -> None:
    while text.encode() not in seen:
        seen.extend(await stream.receive())


async def test_tail_shows_the_last_events_then_one_written_after_it_started(
    settings: Settings, connections: Connections, backend_env: dict[str, str]
) -> None:
    tenant = fresh_id("tenant")
    writer = Principal(tenant=tenant, agent_id="deploy-1", agent_type="deploy", default_scope=Scope("user", "alice"))
    # The default Redis prefix: the one the tail process uses.
    async with open_runtime(settings, connections=connections) as runtime:
        await runtime.memory.write_event(writer, "written before tail started")
        await runtime.memory.write_event(
            Principal(tenant=tenant, agent_id="other-1", default_scope=Scope("user", "alice")), "filtered out"
        )
        command = [sys.executable, "-m", "mcp_shared_memory", "tail", "--scope", "user:alice", "--tenant", tenant,
                   "--agent", "deploy-1", "-n", "5"]  # fmt: skip
        async with await anyio.open_process(command, env=server_env(backend_env)) as process:
            assert process.stdout is not None and process.stderr is not None
            out, err = bytearray(), bytearray()
            try:
                with anyio.fail_after(90):
                    await read_until(process.stderr, err, "following user:alice")
                    await read_until(process.stdout, out, "written before tail started")
                    await runtime.memory.write_event(writer, "ERR_4417 written while tailing", event_type="error")
                    await read_until(process.stdout, out, "ERR_4417 written while tailing")
            finally:
                process.terminate()
        text = out.decode()
        assert "deploy-1 (deploy)" in text and "error" in text
        assert "filtered out" not in text
        assert text.index("written before") < text.index("ERR_4417")
