"""Real backends for the whole suite: embedded PostgreSQL+pgvector and Valkey by default, or external
servers via MSM_TEST_DATABASE_URL / MSM_TEST_REDIS_URL. Tests isolate by fresh tenant ids."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from mcp_shared_memory.memory import SharedMemory
from mcp_shared_memory.models import Principal, Scope
from mcp_shared_memory.runtime import open_memory
from mcp_shared_memory.settings import Settings


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def data_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="msm-test-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def backend_env(data_dir: Path) -> Iterator[dict[str, str]]:
    """MSM_* variables pointing at the test backends (embedded ones are started once per session)."""
    database_url = os.environ.get("MSM_TEST_DATABASE_URL")
    redis_url = os.environ.get("MSM_TEST_REDIS_URL")
    backends = None
    if not (database_url and redis_url):
        from mcp_shared_memory.embedded import start_embedded

        backends = start_embedded(data_dir, postgres=database_url is None, redis=redis_url is None)
        database_url = database_url or backends.database_url
        redis_url = redis_url or backends.redis_url
    assert database_url and redis_url
    yield {
        "MSM_DATABASE_URL": database_url,
        "MSM_REDIS_URL": redis_url,
        "MSM_DATA_DIR": str(data_dir),
    }
    if backends is not None:
        backends.release()


@pytest.fixture(scope="session")
def settings(backend_env: dict[str, str]) -> Settings:
    return Settings(
        database_url=backend_env["MSM_DATABASE_URL"],
        redis_url=backend_env["MSM_REDIS_URL"],
        data_dir=Path(backend_env["MSM_DATA_DIR"]),
    )


@pytest.fixture(scope="session")
async def memory(settings: Settings) -> AsyncIterator[SharedMemory]:
    async with open_memory(settings) as opened:
        yield opened


def fresh_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def tenant() -> str:
    return fresh_id("tenant")


@pytest.fixture
def alice(tenant: str) -> Principal:
    """A research agent serving user alice, allowed her user scope and every workspace."""
    return Principal(
        tenant=tenant,
        agent_id="research-1",
        agent_type="research",
        allowed_scopes=("user:alice", "workspace:*"),
        default_scope=Scope("user", "alice"),
    )


@pytest.fixture
def alice_coder(tenant: str) -> Principal:
    """A second agent of the same tenant and user."""
    return Principal(
        tenant=tenant,
        agent_id="code-1",
        agent_type="code",
        allowed_scopes=("user:alice", "workspace:*"),
        default_scope=Scope("user", "alice"),
    )


@pytest.fixture
def other_tenant() -> Principal:
    """Same user id, same agent ids, same scopes, another tenant: must never see tenant A's data."""
    return Principal(
        tenant=fresh_id("tenant-b"),
        agent_id="research-1",
        agent_type="research",
        allowed_scopes=("*",),
        default_scope=Scope("user", "alice"),
    )
