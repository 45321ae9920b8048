"""``mcp-shared-memory doctor``: is this installation healthy, and what is it running?

A check is an async function of a ``Probe`` (the backends, opened lazily and once) returning a
``CheckResult``; ``CHECKS`` is the list run in order, and the place to add one (e.g. an embedding service's
status). A check that raises a ``SharedMemoryError`` fails with its message; a warning does not make the
installation unhealthy. Nothing printed carries a credential: URLs are shown with their user info masked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from ..embeddings import Embedder, create_embedder
from ..embeddings.openai import mask_credentials
from ..errors import SharedMemoryError
from ..runtime import BackendUrls, backend_urls
from ..settings import Settings
from ..stores.diagnostics import PostgresFacts, postgres_facts, qdrant_facts, redis_facts
from ..stores.migrations import available_migrations
from ..stores.redis_client import connect_redis

log = logging.getLogger(__name__)

T = TypeVar("T")
Status = Literal["ok", "warning", "failed"]
SAMPLE = "The payments service returns ERR_4417 when the card issuer times out."
OUTBOX_STALE_SECONDS = 60.0


@dataclass
class CheckResult:
    name: str
    status: Status
    summary: str
    details: dict[str, Any] = field(default_factory=dict)


class Probe:
    """The backends the checks share, each opened on first use and closed by ``close``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._stack = AsyncExitStack()
        self._urls: BackendUrls | None = None
        self._failed: dict[str, SharedMemoryError] = {}
        self._postgres: PostgresFacts | None = None
        self._embedder: Embedder | None = None

    async def close(self) -> None:
        await self._stack.aclose()

    async def urls(self) -> BackendUrls:
        if self._urls is None:
            self._urls = await self._once("urls", lambda: self._stack.enter_async_context(backend_urls(self.settings)))
        return self._urls

    async def postgres(self) -> PostgresFacts:
        """Read once: a PostgreSQL that is down fails every check that needs it with the same message."""
        if self._postgres is None:
            self._postgres = await self._once("postgres", self._read_postgres)
        return self._postgres

    async def _read_postgres(self) -> PostgresFacts:
        urls = await self.urls()
        return await postgres_facts(urls.owner, connect_timeout=self.settings.db_timeout, label=urls.owner_label)

    async def _once(self, key: str, opener: Callable[[], Awaitable[T]]) -> T:
        if key in self._failed:
            raise self._failed[key]
        try:
            return await opener()
        except SharedMemoryError as exc:
            self._failed[key] = exc
            raise

    async def embedder(self) -> Embedder:
        if self._embedder is None:
            embedder = create_embedder(self.settings)
            await embedder.open()
            self._stack.push_async_callback(embedder.close)
            self._embedder = embedder
        return self._embedder


Check = Callable[[Probe], Awaitable[CheckResult]]


async def check_postgres(probe: Probe) -> CheckResult:
    facts = await probe.postgres()
    details = {"server_version": facts.server_version, "pgvector_version": facts.pgvector_version}
    if facts.pgvector_version is None:
        return CheckResult(
            "postgres",
            "warning",
            f"PostgreSQL {facts.server_version}, pgvector not installed yet (`mcp-shared-memory migrate` installs it)",
            details,
        )
    return CheckResult(
        "postgres", "ok", f"PostgreSQL {facts.server_version}, pgvector {facts.pgvector_version}", details
    )


async def check_migrations(probe: Probe) -> CheckResult:
    applied = (await probe.postgres()).applied_migrations
    known = [f"{v:03d}_{n}" for v, n, _ in available_migrations()]
    pending, unknown = [m for m in known if m not in applied], [m for m in applied if m not in known]
    details = {"applied": len(applied), "known": len(known), "pending": pending, "unknown": unknown}
    if unknown:
        return CheckResult(
            "migrations",
            "warning",
            f"the database has migrations this version does not know "
            f"({', '.join(unknown)}): a newer version migrated it",
            details,
        )
    if pending:
        return CheckResult(
            "migrations",
            "warning",
            f"{len(pending)} of {len(known)} pending (applied at the next "
            "start, or now with `mcp-shared-memory migrate`)",
            details,
        )
    return CheckResult("migrations", "ok", f"{len(applied)} applied, up to date", details)


async def check_redis(probe: Probe) -> CheckResult:
    client = connect_redis((await probe.urls()).redis_url, timeout=probe.settings.redis_timeout)
    try:
        info = await redis_facts(client)
    finally:
        await client.aclose()
    return CheckResult("redis", "ok", f"{info['server']} {info['version']}, {info['mode']}, {info['role']}", info)


async def check_qdrant(probe: Probe) -> CheckResult:
    if not probe.settings.qdrant_url:
        return CheckResult("qdrant", "ok", "not configured: facts are stored in pgvector")
    from ..stores.facts_qdrant import QdrantFactsStore

    embedder = await probe.embedder()
    store = QdrantFactsStore.from_settings(probe.settings, model_id=embedder.model_id, dimension=embedder.dimension)
    try:
        info = await qdrant_facts(store.client)
    finally:
        await store.close()
    counts = info["collections"]
    return CheckResult("qdrant", "ok", f"reachable, {sum(counts.values())} facts in {len(counts)} collections", info)


async def check_embedding_model(probe: Probe) -> CheckResult:
    embedder = await probe.embedder()
    facts = await probe.postgres()
    details = {
        "model": embedder.model_id,
        "dimension": embedder.dimension,
        "recorded_model": facts.recorded_model,
        "recorded_dimension": facts.recorded_dimension,
    }
    if facts.recorded_model is None:
        return CheckResult(
            "embedding model",
            "warning",
            f"{embedder.model_id} ({embedder.dimension} dims); the "
            "database has no model recorded yet (the first start records it)",
            details,
        )
    if (facts.recorded_model, facts.recorded_dimension) != (embedder.model_id, embedder.dimension):
        return CheckResult(
            "embedding model",
            "failed",
            f"configured {embedder.model_id} ({embedder.dimension} "
            f"dims) but the database holds {facts.recorded_model} ({facts.recorded_dimension} dims): "
            "configure that model, or run `mcp-shared-memory reembed`",
            details,
        )
    return CheckResult(
        "embedding model", "ok", f"{embedder.model_id} ({embedder.dimension} dims), as recorded", details
    )


async def check_embedder_speed(probe: Probe) -> CheckResult:
    embedder = await probe.embedder()
    await embedder.embed("warm-up")
    started = time.perf_counter()
    await embedder.embed(SAMPLE)
    ms = (time.perf_counter() - started) * 1000
    return CheckResult("embedder speed", "ok", f"one embedding in {ms:.1f} ms", {"embed_ms": round(ms, 2)})


async def check_backlogs(probe: Probe) -> CheckResult:
    facts = await probe.postgres()
    details = {
        "pending_embeddings": facts.pending_embeddings,
        "failed_embeddings": facts.failed_embeddings,
        "outbox_queued": facts.outbox_queued,
        "outbox_oldest_seconds": round(facts.outbox_oldest_seconds, 1),
        "unindexed_events": facts.unindexed_events,
    }
    summary = (
        f"{facts.pending_embeddings} events without a vector ({facts.failed_embeddings} deferred as failed), "
        f"{facts.outbox_queued} events queued for Redis"
    )
    hints = []
    if facts.unindexed_events:
        summary += f", {facts.unindexed_events} older events not yet in the full-text index"
        hints.append("`mcp-shared-memory migrate` indexes them now, a starting server in batches")
    if facts.failed_embeddings or (facts.outbox_queued and facts.outbox_oldest_seconds > OUTBOX_STALE_SECONDS):
        hints.append("a running server announces the outbox; the model is retried hourly")
    if hints:
        return CheckResult("backlogs", "warning", f"{summary} ({'; '.join(hints)})", details)
    return CheckResult("backlogs", "ok", summary, details)


async def check_embedding_service(probe: Probe) -> CheckResult:
    settings = probe.settings
    if settings.embedding_provider != "local" or settings.embedding_service == "off":
        return CheckResult("embedding service", "ok", "not used: each process embeds on its own")
    from ..embedded.embedding_service import service_status
    from ..embeddings.local_service import LocalServiceEmbedder

    embedder = await probe.embedder()  # attached (or started) the service, as a server would
    status = service_status(settings.data_dir)
    if (isinstance(embedder, LocalServiceEmbedder) and embedder.in_process) or not status.get("running"):
        return CheckResult(
            "embedding service", "warning",
            f"not running: processes embed on their own (see {status.get('log')})", status,
        )  # fmt: skip
    holders = status.get("holders")
    return CheckResult(
        "embedding service", "ok",
        f"pid {status.get('pid')}, {len(holders) if holders is not None else '?'} processes attached, "
        f"{status.get('requests', 0)} requests served", status,
    )  # fmt: skip


# Run in this order; append a check here to have doctor run it.
CHECKS: list[Check] = [
    check_postgres,
    check_migrations,
    check_redis,
    check_qdrant,
    check_embedding_model,
    check_embedder_speed,
    check_embedding_service,
    check_backlogs,
]


def configuration(settings: Settings) -> dict[str, Any]:
    """The settings in effect, secrets masked: a URL keeps its host but not its user info."""
    shown: dict[str, Any] = {}
    for name, value in settings.model_dump(mode="json").items():
        raw = getattr(settings, name)
        if name.endswith("_url") and raw is not None:
            text = raw.get_secret_value() if hasattr(raw, "get_secret_value") else str(raw)
            value = mask_credentials(text)
        shown[name] = value
    for name in ("database_url", "redis_url"):
        if shown[name] is None:
            shown[name] = f"embedded (in {settings.data_dir})"
    return shown


@dataclass
class Report:
    configuration: dict[str, Any]
    checks: list[CheckResult]

    @property
    def healthy(self) -> bool:
        return all(c.status != "failed" for c in self.checks)

    def as_json(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "configuration": self.configuration,
            "checks": [c.__dict__ for c in self.checks],
        }


async def diagnose(settings: Settings, checks: list[Check] | None = None) -> Report:
    """Run every check (a failing one does not stop the others)."""
    probe = Probe(settings)
    results = []
    try:
        for check in checks if checks is not None else CHECKS:
            name = check.__name__.removeprefix("check_").replace("_", " ")
            try:
                results.append(await check(probe))
            except SharedMemoryError as exc:
                results.append(CheckResult(name, "failed", exc.message))
            except Exception as exc:
                log.debug("doctor check %s failed", name, exc_info=True)
                results.append(CheckResult(name, "failed", f"failed unexpectedly ({type(exc).__name__})"))
    finally:
        try:
            await probe.close()
        except Exception:
            log.debug("closing the doctor's backends failed", exc_info=True)
    return Report(configuration(settings), results)
