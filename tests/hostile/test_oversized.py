"""Oversized and deeply nested input: metadata and context nested 1,000 or more levels deep or with 100,000 keys,
strings of megabytes in every argument. Each is a clear error, writes nothing, and the server keeps
serving, in process and over a real stdio transport fed raw JSON."""

from __future__ import annotations

import json
import sys
from typing import Any

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.text import TextReceiveStream

from mcp_shared_memory.errors import InvalidInput
from mcp_shared_memory.memory import SharedMemory
from mcp_shared_memory.models import Principal

from ..conftest import Backdoor, fresh_id
from ..server.mcp_clients import server_env
from .conftest import Connect, Snapshot, assert_clear_error, snapshot

pytestmark = pytest.mark.anyio

MB = 1_000_000


def nested(depth: int, *, kind: str = "object") -> dict[str, Any]:
    """``{"x": {"x": ...}}`` or ``{"x": [[...]]}``, ``depth`` levels of objects or arrays in all."""
    inner: Any = {} if kind == "object" else []
    for _ in range(depth - 2):
        inner = {"x": inner} if kind == "object" else [inner]
    return {"x": inner}


def oversized() -> dict[str, tuple[str, dict[str, Any], str]]:
    """(tool, arguments, what the error says) for each case; built when needed (they weigh ~60 MB)."""
    keys_100k = {f"k{i}": i for i in range(100_000)}
    return {
        "metadata 33 levels deep": ("write_event", {"content": "c", "metadata": nested(33)}, "nested more than"),
        "metadata arrays 200 levels deep": (
            "write_event", {"content": "c", "metadata": nested(200, kind="array")}, "nested more than",
        ),
        "metadata 240 levels deep": ("write_event", {"content": "c", "metadata": nested(240)}, "nested more than"),
        "metadata with 100k keys": ("write_event", {"content": "c", "metadata": keys_100k}, "larger than"),
        "metadata with a 1 MB string": ("write_event", {"content": "c", "metadata": {"k": "x" * MB}}, "larger than"),
        "context 200 levels deep": ("create_workspace", {"task": "t", "context": nested(200)}, "nested more than"),
        "context with 100k keys": ("create_workspace", {"task": "t", "context": keys_100k}, "larger than"),
        "10 MB content": ("write_event", {"content": "x" * (10 * MB)}, "at most"),
        "10 MB task": ("create_workspace", {"task": "x" * (10 * MB)}, "at most"),
        "10 MB fact": ("store_fact", {"fact": "x" * (10 * MB)}, "at most"),
        "10 MB query": ("search_shared", {"query": "x" * (10 * MB)}, "at most"),
        "10 MB facts query": ("search_facts", {"query": "x" * (10 * MB)}, "at most"),
        "1 MB event type": ("write_event", {"content": "c", "event_type": "x" * MB}, "at most"),
        "1 MB idempotency key": ("write_event", {"content": "c", "idempotency_key": "k" * MB}, "at most"),
        "1 MB role": ("write_event", {"content": "c", "role": "r" * MB}, "at most"),
        "1 MB scope": ("get_recent_shared", {"scope": "user:" + "a" * MB}, "at most"),
        "1 MB agent id": ("get_agent_history", {"agent_id": "a" * MB}, "at most"),
        "100k filter agent ids": ("get_recent_shared", {"filters": {"agent_ids": ["a"] * 100_000}}, "at most"),
        "100k filter metadata keys": ("get_recent_shared", {"filters": {"metadata": keys_100k}}, "takes 1 to"),
        "100k roster": ("create_workspace", {"task": "t", "agents": [f"a{i}" for i in range(100_000)]}, "at most"),
        "huge limit": ("get_recent_shared", {"limit": 10**30}, "less than or equal"),
        "huge since_seq": ("get_recent_shared", {"since_seq": 10**30}, "from 0 to"),
    }  # fmt: skip


async def test_oversized_input_is_a_clear_error_writes_nothing_and_the_server_keeps_serving(
    connect: Connect, backdoor: Backdoor, alice: Principal
) -> None:
    problems: dict[str, str] = {}
    async with connect(alice) as client:
        await client.call_tool("write_event", {"content": "written before", "metadata": nested(32)})
        before = await snapshot(backdoor, alice.tenant)
        for name, (tool, args, expected) in oversized().items():
            with anyio.fail_after(30):
                result = await client.call_tool(tool, args)
            try:
                assert result.is_error, "accepted"
                assert_clear_error(result.content[0].text[:2000], expect=expected)
            except AssertionError as exc:
                problems[name] = str(exc)[:300]
        after = await snapshot(backdoor, alice.tenant)
        wrote = await client.call_tool("write_event", {"content": "written after"})
        recent = await client.call_tool("get_recent_shared", {})
        resource = await client.read_resource(f"memory://{alice.tenant}/user/alice/recent")
    assert problems == {}, json.dumps(problems, indent=1)
    assert after == before
    assert not wrote.is_error and not recent.is_error
    assert [e["content"] for e in recent.structured_content["events"]] == ["written after", "written before"]
    assert json.loads(resource.contents[0].text)["events"] == []  # none reaches the shared floor


@pytest.mark.parametrize("depth", [33, 1_000, 10_000])
async def test_deep_metadata_is_refused_by_the_library_without_exhausting_the_stack(
    memory: SharedMemory, backdoor: Backdoor, alice: Principal, depth: int
) -> None:
    for kind in ("object", "array"):
        with pytest.raises(InvalidInput, match="nested more than"):
            await memory.write_event(alice, "deep", metadata=nested(depth, kind=kind))
        with pytest.raises(InvalidInput, match="nested more than"):
            await memory.create_workspace(alice, "deep", context=nested(depth, kind=kind))
    assert await snapshot(backdoor, alice.tenant) == Snapshot(0, 0, 0, None, None)


class RawStdio:
    """A `serve` process fed raw lines on stdin, as a hostile or broken client would."""

    def __init__(self, process: Process) -> None:
        self._process = process
        assert process.stdout is not None
        self._lines = TextReceiveStream(process.stdout)
        self._buffer = ""

    async def send(self, line: str | bytes) -> None:
        assert self._process.stdin is not None
        await self._process.stdin.send((line.encode() if isinstance(line, str) else line) + b"\n")

    async def request(self, id_: int, method: str, params: dict[str, Any]) -> None:
        await self.send(json.dumps({"jsonrpc": "2.0", "id": id_, "method": method, "params": params}))

    async def response(self, id_: int) -> dict[str, Any]:
        """The response to request ``id_`` (skipping responses to others and notifications)."""
        while True:
            while "\n" not in self._buffer:
                self._buffer += await self._lines.receive()
            line, self._buffer = self._buffer.split("\n", 1)
            message = json.loads(line)
            if message.get("id") == id_:
                return dict(message)


def raw_call(id_: int, arguments: str) -> str:
    """A tools/call of write_event whose arguments are spliced in as raw JSON text."""
    call = f'"method":"tools/call","params":{{"name":"write_event","arguments":{arguments}}}'
    return f'{{"jsonrpc":"2.0","id":{id_},{call}}}'


async def test_hostile_raw_json_over_stdio_never_stops_the_server(
    backend_env: dict[str, str], backdoor: Backdoor
) -> None:
    tenant = fresh_id("tenant-raw")
    env = server_env(backend_env, tenant=tenant, agent_id="raw-1", scope="user:alice")
    hostile: list[str | bytes] = [
        raw_call(2, '{"content":"deep","metadata":' + "[" * 1_000 + "]" * 1_000 + "}"),
        raw_call(3, '{"content":"deeper","metadata":{"x":' + '{"x":' * 100_000 + "{}" + "}" * 100_000 + "}}"),
        raw_call(4, '{"content":"lone \\ud800 surrogate"}'),
        raw_call(5, '{"content":"nul \\u0000 inside"}'),
        raw_call(6, '{"content":"' + "x" * (10 * MB) + '"}'),
        raw_call(7, '{"content":"c","metadata":{' + ",".join(f'"k{i}":{i}' for i in range(100_000)) + "}}"),
        b'{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"write_event","arguments":{"content":"\xff\xfe"}}}',
        "this is not JSON",
        '{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"write_event","arguments":"not an object"}}',
        '{"jsonrpc":"2.0","id":10,"method":"resources/read","params":{"uri":"memory://' + "a" * MB + '/workspaces"}}',
        # A validation error that quotes its input back: the answer must still be writable.
        raw_call(11, '{"content":"c","importance":"\\ud800"}'),
        raw_call(12, '{"content":"c","event_type":"\\udfff' + "x" * 100 + '"}'),
    ]
    async with await anyio.open_process(
        [sys.executable, "-m", "mcp_shared_memory", "serve"], env=env, stderr=None
    ) as process:
        server = RawStdio(process)
        with anyio.fail_after(60):
            await server.request(1, "initialize", {
                "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"},
            })  # fmt: skip
            await server.response(1)
            await server.send('{"jsonrpc":"2.0","method":"notifications/initialized"}')
            for line in hostile:
                await server.send(line)
            await server.request(99, "tools/call", {"name": "write_event", "arguments": {"content": "still serving"}})
            answered = await server.response(99)
            await server.request(100, "tools/call", {"name": "get_recent_shared", "arguments": {}})
            recent = await server.response(100)
        assert process.returncode is None
        process.terminate()
    assert not answered["result"].get("isError"), answered
    contents = [e["content"] for e in recent["result"]["structuredContent"]["events"]]
    # What the transport could parse and the domain accepted is stored; nothing deep, huge or with NUL.
    assert "still serving" in contents
    assert not {"deep", "deeper", "nul \x00 inside", "c"} & set(contents)
    assert all(len(content) < 1_000 for content in contents)
    rows = await backdoor.db.fetchval(
        "SELECT count(*) FROM shared_episodic_memories WHERE tenant_id = $1 AND metadata::text LIKE '%[[[[%'", tenant
    )
    assert rows == 0


LONG_WORD = "x1" * 1_100  # one 2,200-character "identifier" (letters and digits): over tsvector's 2,047 bytes
# Short enough to be a lexeme, too long to be one with its scope's prefix (sql/020).
BORDER_WORD = "y2" * 1_020


@pytest.mark.parametrize(
    ("tool", "args"),
    [
        ("write_event", {"content": f"a log line {LONG_WORD}"}),
        ("store_fact", {"fact": f"a fact {LONG_WORD}"}),
        ("create_workspace", {"task": f"a task {LONG_WORD}"}),
        ("search_shared", {"query": LONG_WORD, "mode": "lexical"}),
        ("search_facts", {"query": LONG_WORD, "mode": "lexical"}),
        ("write_event", {"content": f"a log line {BORDER_WORD}"}),
        ("search_shared", {"query": f"log line {BORDER_WORD}", "mode": "lexical"}),
    ],
)
async def test_a_very_long_word_is_stored_or_refused_clearly_never_half_written(
    connect: Connect, backdoor: Backdoor, alice: Principal, tool: str, args: dict[str, Any]
) -> None:
    async with connect(alice) as client:
        before = await snapshot(backdoor, alice.tenant)
        result = await client.call_tool(tool, args)
        after = await snapshot(backdoor, alice.tenant)
    if result.is_error:
        assert after == before
        assert_clear_error(result.content[0].text)
