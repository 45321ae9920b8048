"""``mcp-shared-memory reembed --pending``: shows what waits for a vector and what the model refused (and
why), clears the refusals and embeds everything, as a program against the test backends."""

from __future__ import annotations

import subprocess
import sys

import anyio
import anyio.to_thread
import pytest

from mcp_shared_memory.models import Principal

from ..conftest import Backdoor
from ..faults import eventually
from ..server.mcp_clients import server_env

pytestmark = pytest.mark.anyio


def reembed_pending(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mcp_shared_memory", "reembed", "--pending"],
        env=env, capture_output=True, text=True, timeout=150,
    )  # fmt: skip


async def test_reembed_pending_reports_refusals_and_embeds_them(
    backend_env: dict[str, str], backdoor: Backdoor, alice: Principal
) -> None:
    tenant = alice.tenant
    refused_id, waiting_id = await backdoor.db.fetchval("SELECT gen_random_uuid()"), None
    async with backdoor.db.cross_tenant() as conn:
        for content, error in (
            ("an event the endpoint refused", "HTTP 400: input too long"),
            ("a waiting event", None),
        ):
            event_id = await conn.fetchval(
                """INSERT INTO shared_episodic_memories (id, tenant_id, scope_type, scope_id, agent_id, agent_type,
                     event_type, content, content_hash, importance, embedding_error, embedding_retry_at)
                   VALUES (coalesce($1, gen_random_uuid()), $2, 'user', 'alice', 'crashed-writer', 'agent',
                     'observation', $3, md5($3), 0.5, $4, CASE WHEN $4::text IS NULL THEN NULL
                     ELSE now() + interval '1 hour' END)
                   RETURNING id""",
                refused_id if error else None, tenant, content, error,
            )  # fmt: skip
            waiting_id = waiting_id or (None if error else event_id)

    done = await anyio.to_thread.run_sync(lambda: reembed_pending(server_env(backend_env)))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"event {refused_id}: HTTP 400: input too long" in done.stdout
    assert "0 refused again" in done.stdout

    async def both_embedded() -> bool:
        embedded = await backdoor.db.fetchval(
            "SELECT count(*) FROM shared_episodic_memories WHERE id = ANY($1::uuid[]) AND embedding IS NOT NULL",
            [refused_id, waiting_id],
        )
        return bool(embedded == 2)

    # by the command, or by a server of the test session that claimed them first
    await eventually(both_embedded)
