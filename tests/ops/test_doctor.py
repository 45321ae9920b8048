"""``mcp-shared-memory doctor`` as a program, against the test backends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from mcp_shared_memory.models import Scope
from mcp_shared_memory.runtime import Connections

from ..conftest import Backdoor, fresh_id
from ..server.mcp_clients import server_env


def doctor(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return cli(env, "doctor", *args)


@pytest.mark.anyio
async def test_a_healthy_installation_exits_0_and_reports_every_check(
    backend_env: dict[str, str], connections: Connections
) -> None:
    """``connections`` migrated the database and recorded the model, as a server's first start does."""
    done = await anyio.to_thread.run_sync(lambda: doctor(server_env(backend_env), "--json"))
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert report["healthy"] is True
    assert {"postgres", "migrations", "redis", "qdrant", "embedding model", "embedder speed", "backlogs"} <= set(checks)
    service = checks["embedding service"]
    assert service["status"] == "ok" and service["details"]["running"] and service["details"]["pid"]
    assert checks["postgres"]["details"]["pgvector_version"]
    assert checks["redis"]["details"]["version"]
    assert checks["embedding model"]["details"]["model"] == checks["embedding model"]["details"]["recorded_model"]
    assert checks["embedder speed"]["details"]["embed_ms"] > 0
    assert checks["migrations"]["details"]["applied"] >= 15
    assert "pending_embeddings" in checks["backlogs"]["details"]
    assert report["configuration"]["redis_prefix"] == "msm"


def test_the_human_report_masks_credentials(backend_env: dict[str, str]) -> None:
    done = doctor(server_env(backend_env))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "healthy" in done.stdout
    url = backend_env["MSM_DATABASE_URL"]
    password = url.split("://", 1)[1].split("@", 1)[0].partition(":")[2]
    if password:
        assert password not in done.stdout + done.stderr


def test_an_unreachable_database_exits_1_with_a_clear_message_and_no_secret(backend_env: dict[str, str]) -> None:
    env = server_env(backend_env, database_url="postgresql://msm:S3cretPassw0rd@127.0.0.1:1/msm")
    done = doctor(env, "--json")
    assert done.returncode == 1
    report = json.loads(done.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert report["healthy"] is False
    assert checks["postgres"]["status"] == "failed"
    assert "PostgreSQL is unavailable" in checks["postgres"]["summary"]
    assert checks["redis"]["status"] == "ok"  # one failure does not hide the rest
    output = done.stdout + done.stderr
    assert "S3cretPassw0rd" not in output and "Traceback" not in output
    assert "postgresql://***@127.0.0.1:1/msm" in output


def test_an_invalid_setting_exits_1_naming_it(backend_env: dict[str, str]) -> None:
    done = doctor(server_env(backend_env, port="not-a-port", openai_api_key="sk-secret-123"))
    assert done.returncode == 1
    assert "MSM_PORT" in done.stdout and "not healthy" in done.stdout
    assert "sk-secret-123" not in done.stdout + done.stderr


def test_zero_config_checks_the_embedded_backends(backend_env: dict[str, str], data_dir: Path) -> None:
    if os.environ.get("MSM_TEST_DATABASE_URL") or os.environ.get("MSM_TEST_REDIS_URL"):
        pytest.skip("the suite runs on external backends")
    env = server_env({"MSM_DATA_DIR": str(data_dir)})
    done = doctor(env, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["configuration"]["database_url"].startswith("embedded")


@pytest.mark.anyio
async def test_events_missing_from_the_full_text_index_are_reported_until_migrate_fills_them(
    backend_env: dict[str, str], backdoor: Backdoor
) -> None:
    """Events older than the index keyed by scope (sql/020) are a warning saying what fills them."""
    tenant = fresh_id("unindexed")
    await backdoor.bulk_append(tenant, Scope("user", "alice"), ["The deploy of ledger-svc v4.2 finished", "TTL"])
    await backdoor.db.execute("UPDATE shared_episodic_memories SET scoped_lexemes = NULL WHERE tenant_id = $1", tenant)
    env = server_env(backend_env)

    backlogs = await anyio.to_thread.run_sync(lambda: backlogs_check(env))
    assert backlogs["status"] == "warning"
    assert backlogs["details"]["unindexed_events"] >= 2
    assert "mcp-shared-memory migrate" in backlogs["summary"]

    migrated = await anyio.to_thread.run_sync(lambda: cli(env, "migrate"))
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    assert "indexed" in migrated.stdout
    backlogs = await anyio.to_thread.run_sync(lambda: backlogs_check(env))
    assert backlogs["details"]["unindexed_events"] == 0


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mcp_shared_memory", *args], env=env, capture_output=True, text=True, timeout=150
    )


def backlogs_check(env: dict[str, str]) -> dict[str, object]:
    done = doctor(env, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    checks = {c["name"]: c for c in json.loads(done.stdout)["checks"]}
    backlogs: dict[str, object] = checks["backlogs"]
    return backlogs
