"""The run context: backends, profile, output dir, recorded metrics and the same-run floors."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from .profile import Profile
from .stats import Metric, Summary

if TYPE_CHECKING:
    from mcp_shared_memory.runtime import Connections
    from mcp_shared_memory.settings import Settings

log = logging.getLogger("bench")

MODEL_ID = "all-MiniLM-L6-v2"


@dataclass(frozen=True)
class Backends:
    database_url: str
    redis_url: str
    data_dir: Path  # the bench's temp dir (embedded data lives in it when embedded)
    embedded: bool

    def server_env(self, **binding: str) -> dict[str, str]:
        """Environment for a server process: our backends plus ``MSM_<KEY>`` for each binding."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MSM_")}
        env.update(
            MSM_DATABASE_URL=self.database_url,
            MSM_REDIS_URL=self.redis_url,
            MSM_DATA_DIR=str(self.data_dir / "server-data"),
            MSM_LOG_LEVEL="WARNING",
            # The bench drives far more calls than one agent may make: a rate it never reaches, with the default
            # burst, so every call still pays what the limiter costs by default (a Redis call per lease).
            MSM_RATE_LIMIT_PER_MINUTE="10000000",
        )
        env.update({f"MSM_{k.upper()}": v for k, v in binding.items()})
        return env

    def settings(self, **overrides: Any) -> Settings:
        from pydantic import SecretStr

        from mcp_shared_memory.settings import Settings

        return Settings(
            database_url=SecretStr(self.database_url),
            redis_url=SecretStr(self.redis_url),
            data_dir=self.data_dir / "server-data",
            **overrides,
        )

    def connections(self) -> AbstractAsyncContextManager[Connections]:
        """The package's composition root on our backends, for what in-process code needs beyond a
        ``Runtime``: the pool handed to store-level functions (bulk loading, counts), the embedder."""
        from mcp_shared_memory.runtime import open_connections

        return open_connections(self.settings())


@asynccontextmanager
async def open_backends() -> AsyncIterator[Backends]:
    """Embedded PostgreSQL + Valkey in a fresh temp dir, or MSM_DATABASE_URL / MSM_REDIS_URL when set."""
    tmp = Path(tempfile.mkdtemp(prefix="msm-bench-", dir="/tmp"))
    os.chmod(tmp, 0o755)  # embedded PostgreSQL runs as its own user when we are root: it must traverse this
    database_url = os.environ.get("MSM_DATABASE_URL") or None
    redis_url = os.environ.get("MSM_REDIS_URL") or None
    held = None
    try:
        if not (database_url and redis_url):
            from mcp_shared_memory.embedded import start_embedded

            data = tmp / "backends"
            held = await anyio.to_thread.run_sync(
                lambda: start_embedded(data, postgres=database_url is None, redis=redis_url is None)
            )
            database_url = database_url or held.database_url
            redis_url = redis_url or held.redis_url
        assert database_url and redis_url
        backends = Backends(database_url, redis_url, tmp, embedded=held is not None)
        await migrate(backends)
        yield backends
    finally:
        if held is not None:
            from mcp_shared_memory.embedded import remove_data_dir

            await anyio.to_thread.run_sync(held.release)
            remove_data_dir(tmp / "backends")  # as root also its service directory outside the temp dir
        shutil.rmtree(tmp, ignore_errors=True)


async def migrate(backends: Backends) -> None:
    """The package's schema, as ``mcp-shared-memory migrate`` applies it (the raw floors need its tables
    and the vector type before any server has started)."""
    from mcp_shared_memory.runtime import open_admin

    async with open_admin(backends.settings()):
        pass


@dataclass
class Bench:
    profile: Profile
    backends: Backends
    out_dir: Path
    errlog: IO[str]  # server processes' stderr goes here (servers.log in the results dir)
    run_id: str = field(default_factory=lambda: secrets.token_hex(3))
    metrics: list[Metric] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)  # raw series (e.g. for the chart)
    _floors: dict[str, Summary] = field(default_factory=dict)
    _values: dict[str, float] = field(default_factory=dict)
    _floor_errors: dict[str, str] = field(default_factory=dict)
    _lock: anyio.Lock = field(default_factory=anyio.Lock)

    def tenant(self, label: str) -> str:
        """A tenant id unique to this run (identifier rules: letters, digits, . _ @ + -)."""
        return f"b{self.run_id}-{label}"

    def add(self, metric: Metric) -> Metric:
        self.metrics.append(metric)
        log.info(
            "%s / %s: %s",
            metric.section,
            metric.name,
            f"p50 {metric.p50:.3f} p99 {metric.p99:.3f} ms" if metric.p50 is not None else metric.value,
        )
        return metric

    def error(self, section: str, what: str, exc: BaseException) -> None:
        text = f"{type(exc).__name__}: {exc}"
        log.warning("%s / %s failed: %s", section, what, text)
        log.info("%s / %s failed", section, what, exc_info=exc)  # the traceback, with -v
        self.errors.append({"section": section, "what": what, "error": text[:2000]})

    async def floor(self, name: str) -> Summary:
        """A floor measured once per run (lazily, so ``--only`` sections still get same-run floors)."""
        from .floors import measure_floor

        async with self._lock:
            if name in self._floors:
                return self._floors[name]
            if name in self._floor_errors:
                raise RuntimeError(f"floor {name} failed earlier: {self._floor_errors[name]}")
            try:
                summary, value = await measure_floor(self, name)
            except Exception as exc:  # a cancellation is not remembered: a later section may retry
                self._floor_errors[name] = f"{type(exc).__name__}: {exc}"
                raise
            self._floors[name] = summary
            if value is not None:
                self._values[name] = value
            return summary

    async def try_floor(self, section: str, name: str) -> Summary | None:
        """The floor, or None (error recorded once) so the caller still reports its own figures."""
        try:
            return await self.floor(name)
        except Exception as exc:
            if not any(e["what"] == f"floor {name}" for e in self.errors):
                self.error(section, f"floor {name}", exc)
            return None

    def measured(self, name: str) -> Summary | None:
        """A floor if it was already measured (never measures)."""
        return self._floors.get(name)

    async def floor_value(self, name: str) -> float:
        await self.floor(name)
        return self._values[name]
