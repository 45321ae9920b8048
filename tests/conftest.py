"""Real backends for the whole suite: embedded PostgreSQL+pgvector and Valkey by default, or external
servers via MSM_TEST_DATABASE_URL / MSM_TEST_REDIS_URL.

The expensive part (backends, pool, Redis client, the model) is opened once per session; every test
gets its own runtime on top of it, with its own Redis key prefix, and fresh tenant ids."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from mcp_shared_memory.embedded import EmbeddedBackends, remove_data_dir
from mcp_shared_memory.embeddings import Embedder
from mcp_shared_memory.memory import SharedMemory
from mcp_shared_memory.models import Principal, Scope
from mcp_shared_memory.runtime import Connections, Runtime, open_connections, open_runtime
from mcp_shared_memory.settings import Settings
from mcp_shared_memory.stores.bulk import EventRow, copy_events
from mcp_shared_memory.stores.cache import RedisKeys
from mcp_shared_memory.stores.episodic import PostgresEpisodicStore
from mcp_shared_memory.stores.postgres import PostgresPool
from mcp_shared_memory.stores.workspaces import PostgresWorkspaceStore
from mcp_shared_memory.vectors import Vector


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def data_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="msm-test-", dir="/tmp"))
    yield path
    remove_data_dir(path)  # as root also the service directory outside it


@pytest.fixture(scope="session")
def session_backends(data_dir: Path) -> Iterator[EmbeddedBackends]:
    """The URLs of the test backends: MSM_TEST_DATABASE_URL / MSM_TEST_REDIS_URL, else embedded servers
    started once per session (whose PostgreSQL also has an application login)."""
    database_url = os.environ.get("MSM_TEST_DATABASE_URL")
    redis_url = os.environ.get("MSM_TEST_REDIS_URL")
    if database_url and redis_url:
        yield EmbeddedBackends(database_url, redis_url)
        return
    from mcp_shared_memory.embedded import install_exit_signal_handlers, start_embedded

    install_exit_signal_handlers()  # a terminated test run still releases the embedded servers
    held = start_embedded(data_dir, postgres=database_url is None, redis=redis_url is None)
    yield EmbeddedBackends(
        database_url or held.database_url, redis_url or held.redis_url,
        app_database_url=None if database_url else held.app_database_url,
    )  # fmt: skip
    held.release()


@pytest.fixture(scope="session")
def backend_env(session_backends: EmbeddedBackends, data_dir: Path) -> dict[str, str]:
    """MSM_* variables pointing at the test backends, with the one login that owns the tables (a server
    started with them serves requests as msm_app after SET ROLE)."""
    assert session_backends.database_url and session_backends.redis_url
    return {
        "MSM_DATABASE_URL": session_backends.database_url,
        "MSM_REDIS_URL": session_backends.redis_url,
        "MSM_DATA_DIR": str(data_dir),
    }


@pytest.fixture(scope="session")
def settings(session_backends: EmbeddedBackends, backend_env: dict[str, str]) -> Settings:
    """In process, requests are served through the application login where there is one (embedded), and
    the owner's login applies the migrations and works across tenants."""
    app_url = session_backends.app_database_url
    return Settings(
        database_url=app_url or backend_env["MSM_DATABASE_URL"],
        database_owner_url=backend_env["MSM_DATABASE_URL"] if app_url else None,
        redis_url=backend_env["MSM_REDIS_URL"],
        data_dir=Path(backend_env["MSM_DATA_DIR"]),
        # A loaded machine, or the embedding service restarted by a fault test, can keep a search's model
        # wait past the 2 s default; the tests of that bound set their own.
        embedding_catch_up_seconds=15,
    )


@pytest.fixture(scope="session")
async def connections(settings: Settings) -> AsyncIterator[Connections]:
    async with open_connections(settings) as opened:
        yield opened


def fresh_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def isolated(settings: Settings, **changes: object) -> Settings:
    """The session's settings with a Redis key prefix of its own (and any other changes)."""
    return settings.model_copy(update={"redis_prefix": fresh_id("t"), **changes})


@pytest.fixture
async def runtime(settings: Settings, connections: Connections) -> AsyncIterator[Runtime]:
    async with open_runtime(isolated(settings), connections=connections) as opened:
        yield opened


@pytest.fixture
def memory(runtime: Runtime) -> SharedMemory:
    return runtime.memory


def event_rows(
    tenant: str,
    scope: Scope,
    texts: Sequence[str],
    *,
    vectors: Sequence[Vector] | None = None,
    model_id: str | None = None,
    importance: float = 0.5,
    agent_id: str | None = None,
) -> list[EventRow]:
    """Events as COPY writes them, by ``agent_id`` (agents ``bulk-0`` to ``bulk-2`` in turn without): embedded
    with ``vectors`` (one per text, of ``model_id``) or, without, waiting for a vector."""
    return [
        EventRow(
            id=uuid.uuid4(), tenant_id=tenant, scope_type=scope.type, scope_id=scope.id,
            agent_id=agent_id or f"bulk-{i % 3}", agent_type="agent", event_type="observation", content=text,
            content_hash=f"bulk-{i}",
            embedding=vectors[i] if vectors is not None else None,
            embedding_model=model_id if vectors is not None else None, importance=importance,
        )
        for i, text in enumerate(texts)
    ]  # fmt: skip


@dataclass
class Backdoor:
    """Direct access to the real stores under a test's runtime, to set up faults (an evicted key) and
    check what is durable. Never used by the package itself."""

    db: PostgresPool
    redis: aioredis.Redis
    keys: RedisKeys
    episodic: PostgresEpisodicStore
    workspaces: PostgresWorkspaceStore
    embedder: Embedder

    async def bulk_append(self, tenant: str, scope: Scope, texts: list[str], *, importance: float = 0.5) -> int:
        """Events copied straight into the log, as if announced long ago (no cache, no bus)."""
        vectors = await self.embedder.embed_many(texts)
        rows = event_rows(tenant, scope, texts, vectors=vectors, model_id=self.embedder.model_id, importance=importance)
        return await copy_events(self.db, rows)


@pytest.fixture
def backdoor(runtime: Runtime, connections: Connections) -> Backdoor:
    return Backdoor(
        db=connections.db, redis=connections.redis, keys=RedisKeys(runtime.settings.redis_prefix),
        episodic=PostgresEpisodicStore(connections.db), workspaces=PostgresWorkspaceStore(connections.db),
        embedder=connections.embedder,
    )  # fmt: skip


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
