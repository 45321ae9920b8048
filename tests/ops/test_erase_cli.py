"""``mcp-shared-memory erase`` as a program: refused without a confirmation, done with ``--yes``."""

from __future__ import annotations

import subprocess
import sys

import anyio.to_thread
import pytest

from mcp_shared_memory.memory import SharedMemory
from mcp_shared_memory.models import Principal

from ..conftest import Backdoor
from ..server.mcp_clients import server_env

pytestmark = pytest.mark.anyio


def erase_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mcp_shared_memory", "erase", *args],
        env=env, capture_output=True, text=True, timeout=150, stdin=subprocess.DEVNULL,
    )  # fmt: skip


async def count(backdoor: Backdoor, tenant: str, scope_id: str) -> int:
    return int(
        await backdoor.db.fetchval(
            "SELECT count(*) FROM shared_episodic_memories WHERE tenant_id = $1 AND scope_id = $2", tenant, scope_id
        )
    )


async def test_erase_asks_for_confirmation_and_then_erases_the_scope(
    backend_env: dict[str, str], memory: SharedMemory, alice: Principal, backdoor: Backdoor
) -> None:
    bob = Principal(tenant=alice.tenant, agent_id="bobs-agent", allowed_scopes=("user:bob",))
    await memory.write_event(alice, "Alice's note to be erased", scope="user:alice")
    await memory.write_event(bob, "Bob's note stays", scope="user:bob")
    env = server_env(backend_env)

    refused = await anyio.to_thread.run_sync(lambda: erase_cli(env, "--tenant", alice.tenant, "--scope", "user:alice"))
    assert refused.returncode != 0 and "pass --yes to confirm" in refused.stdout + refused.stderr
    assert await count(backdoor, alice.tenant, "alice") == 1  # nothing erased

    done = await anyio.to_thread.run_sync(
        lambda: erase_cli(env, "--tenant", alice.tenant, "--scope", "user:alice", "--yes")
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert await count(backdoor, alice.tenant, "alice") == 0
    assert await count(backdoor, alice.tenant, "bob") == 1
    assert "Traceback" not in done.stderr
