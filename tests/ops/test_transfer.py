"""export → import: exact round trips, into another tenant, idempotent, and bad lines change nothing."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from mcp_shared_memory.errors import InvalidInput
from mcp_shared_memory.memory import SharedMemory
from mcp_shared_memory.models import Principal, Scope
from mcp_shared_memory.ops.erase import erase
from mcp_shared_memory.ops.transfer import export_tenant, import_lines, parse_lines
from mcp_shared_memory.runtime import Connections, Runtime
from mcp_shared_memory.stores.erasure import ErasureTarget
from mcp_shared_memory.stores.transfer import derived_id

from ..conftest import Backdoor, fresh_id
from ..server.mcp_clients import server_env

pytestmark = pytest.mark.anyio
ALICE = Scope("user", "alice")


async def seed(memory: SharedMemory, alice: Principal, coder: Principal) -> None:
    workspace = await memory.create_workspace(alice, "Migrate billing", ["code-1"], context={"repo": "billing"})
    await memory.write_event(alice, "Auth uses OAuth2 PKCE", importance=0.9, role="assistant",
                             metadata={"ticket": "SEC-12", "nested": {"a": [1, 2]}}, idempotency_key="k-1")  # fmt: skip
    await memory.write_event(coder, "payments-api p95 back under 200 ms", event_type="decision")
    await memory.write_event(coder, "a workspace note", scope=f"workspace:{workspace.id}")
    await memory.write_event(alice, "ERR_4417 on checkout", importance=0.3)
    await memory.store_fact(alice, "Auth uses PKCE")


async def export(runtime: Runtime, connections: Connections, tenant: str) -> list[dict[str, Any]]:
    out = io.StringIO()
    await export_tenant(runtime.settings, connections, out, tenant=tenant, with_vectors=True)
    return [json.loads(line) for line in out.getvalue().splitlines()]


def comparable(lines: list[dict[str, Any]], *, rename: tuple[str, str] | None = None) -> list[dict[str, Any]]:
    """Without the installation's seq numbers (their order is checked by the list order), and, for a copy
    into another tenant, with the source tenant's ids mapped as the import maps them."""
    result = []
    for line in lines:
        # An event's vector may arrive after its commit (embedded in the background): compared where both have one.
        line = {k: v for k, v in line.items() if k != "seq" and not (k == "embedding" and line["kind"] == "event")}
        if rename is not None and line["kind"] != "workspace":
            target = rename[1]
            line["tenant"] = target
            line["id"] = str(derived_id(target, uuid.UUID(line["id"])))
            if line["kind"] == "fact":
                line["source_event_ids"] = [str(derived_id(target, uuid.UUID(e)))
                                            for e in line["source_event_ids"]]  # fmt: skip
        elif rename is not None:
            line["tenant"] = rename[1]
        result.append(line)
    return result


async def test_a_copy_into_another_tenant_round_trips_and_importing_twice_changes_nothing(
    runtime: Runtime, connections: Connections, memory: SharedMemory, backdoor: Backdoor, alice: Principal,
    alice_coder: Principal,
) -> None:  # fmt: skip
    await seed(memory, alice, alice_coder)
    original = await export(runtime, connections, alice.tenant)
    assert [line["kind"] for line in original] == ["workspace"] + ["event"] * 5 + ["fact"]
    # Events are embedded after their commit: those not embedded yet are exported without a vector.
    assert all(len(line.get("embedding", [0] * 384)) == 384 for line in original if line["kind"] != "workspace")
    assert len(original[-1]["embedding"]) == 384

    copy = fresh_id("tenant-copy")
    records = parse_lines(json.dumps(line) for line in original)
    first = await import_lines(runtime.settings, connections, records, tenant=copy)
    assert (first.new, first.present["event"]) == ({"workspace": 1, "event": 5, "fact": 1}, 0)
    again = await import_lines(runtime.settings, connections, records, tenant=copy)
    assert again.new == {"workspace": 0, "event": 0, "fact": 0} and again.present["event"] == 5

    copied = await export(runtime, connections, copy)
    assert comparable(copied) == comparable(original, rename=(alice.tenant, copy))
    reader = Principal(tenant=copy, agent_id="reader", allowed_scopes=("*",), default_scope=ALICE)
    recent = await memory.get_recent_shared(reader)
    assert [e.content for e in recent][:2] == ["ERR_4417 on checkout", "payments-api p95 back under 200 ms"]
    hits = await memory.search_shared(reader, "OAuth2 PKCE")
    assert hits[0].content == "Auth uses OAuth2 PKCE"


async def test_an_erased_tenant_imported_back_is_exactly_what_was_exported(
    runtime: Runtime, connections: Connections, memory: SharedMemory, alice: Principal, alice_coder: Principal
) -> None:
    await seed(memory, alice, alice_coder)
    original = await export(runtime, connections, alice.tenant)
    await erase(runtime.settings, connections, ErasureTarget(alice.tenant))
    assert await export(runtime, connections, alice.tenant) == []

    await import_lines(runtime.settings, connections, parse_lines(json.dumps(line) for line in original))

    restored = await export(runtime, connections, alice.tenant)
    assert comparable(restored) == comparable(original)  # ids, timestamps, provenance, metadata, keys
    vectors = [(a.get("embedding"), b.get("embedding")) for a, b in zip(original, restored, strict=True)]
    assert all(a == b for a, b in vectors if a is not None and b is not None)
    replay = await memory.write_event(alice, "Auth uses OAuth2 PKCE", idempotency_key="k-1")
    assert replay.status == "replayed"


async def test_bad_lines_are_reported_by_number_and_nothing_is_imported(
    runtime: Runtime, connections: Connections, memory: SharedMemory, backdoor: Backdoor, alice: Principal,
    alice_coder: Principal,
) -> None:  # fmt: skip
    await seed(memory, alice, alice_coder)
    lines = [json.dumps(line) for line in await export(runtime, connections, alice.tenant)]
    broken = json.loads(lines[2])
    broken["importance"] = 7
    lines[2] = json.dumps(broken)
    lines[4] = "{not json"
    with pytest.raises(InvalidInput, match=r"nothing was imported: line 3: importance: .*; line 5: "):
        parse_lines(lines)


def test_the_cli_refuses_a_bad_file_before_touching_the_database(backend_env: dict[str, str], tmp_path: Path) -> None:
    source = tmp_path / "bad.jsonl"
    source.write_text('{"kind": "event", "tenant": "acme"}\n{"kind": "spaceship"}\n')
    done = subprocess.run(
        [sys.executable, "-m", "mcp_shared_memory", "import", str(source), "--tenant", "acme"],
        env=server_env(backend_env), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert "line 1:" in done.stderr and "line 2:" in done.stderr and "Traceback" not in done.stderr
