"""Background repair and consolidation: what a failing dependency left behind is caught up here.

Every process may run these at once: the outbox sweep takes a scope's writer lock without waiting,
the embedding back-fill claims rows with a lease (``SKIP LOCKED``), and consolidation takes a per-scope
lock. None of them holds a transaction open while it calls Redis, the model or the network. They work
across tenants, so their stores are on the owner's pool (the composition root sees to it).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence

import anyio
import anyio.abc
import numpy as np

from .announcer import Announcer
from .consolidation import Consolidator
from .embeddings import Embedder
from .errors import EmbeddingUnavailable, SharedMemoryError
from .settings import Settings
from .stores.audit import PostgresAuditLog
from .stores.episodic import PostgresEpisodicStore

log = logging.getLogger(__name__)

SWEEP_INTERVAL = 5.0
# An event queued this long was left behind by a writer that died or a Redis failure.
SWEEP_AFTER = 1.0
EMBED_EVERY = 6  # sweeps: every 30 s
EMBEDDING_LEASE = 120.0
RETRY_REJECTED = 3600.0  # the model rejected this text: try it hourly, never block the others
RETRY_OUTAGE = 60.0
AUDIT_RETENTION_EVERY = 720  # sweeps: hourly
LEXEME_BATCH = 5000  # the model failed every text of a batch: it is down, try again soon


class Maintenance:
    def __init__(
        self,
        *,
        settings: Settings,
        episodic: PostgresEpisodicStore,
        announcer: Announcer,
        embedder: Embedder,
        consolidator: Consolidator,
        audit: PostgresAuditLog | None = None,
    ) -> None:
        self._settings = settings
        self._episodic = episodic
        self._announcer = announcer
        self._embedder = embedder
        self.consolidator = consolidator
        self._audit = audit

    async def publish_queued(self, *, older_than: float = SWEEP_AFTER) -> int:
        """Announce events committed but never announced (their writer died, or Redis failed), scope by
        scope under the scope's writer lock so they reach the cache in order. Busy scopes are skipped:
        their next writer announces the backlog first."""
        total = 0
        for tenant, scope in await self._episodic.queued_scopes(older_than=older_than):
            async with self._episodic.writer(tenant, scope, wait=False) as writer:
                if writer is not None:
                    total += await self._announcer.events(writer, await writer.backlog())
        return total

    async def embed_missing(self, *, batch: int = 64) -> int:
        """Embed events stored without a vector (embedder outage, or after a model change). Rows are
        claimed with a lease and committed before the model runs; vectors are written back after."""
        total = 0
        while claimed := await self._episodic.claim_unembedded(limit=batch, lease_seconds=EMBEDDING_LEASE):
            results = await asyncio.gather(*(self._embedder.embed(text) for _, text in claimed), return_exceptions=True)
            done = [(i, r) for (i, _), r in zip(claimed, results, strict=True) if isinstance(r, np.ndarray)]
            failed = [i for (i, _), r in zip(claimed, results, strict=True) if not isinstance(r, np.ndarray)]
            await self._episodic.set_embeddings(done, model_id=self._embedder.model_id)
            total += len(done)
            if failed and not done:
                await self._episodic.defer_embedding(failed, seconds=RETRY_OUTAGE)
                break
            await self._episodic.defer_embedding(failed, seconds=RETRY_REJECTED)
            _log_rejected(failed, results)
        return total

    async def fill_lexemes(self, *, batch: int = LEXEME_BATCH) -> int:
        """Index the events written before the lexical index existed, in batches, logging progress;
        returns how many were indexed."""
        return await fill_lexemes(self._episodic, batch=batch)

    async def expire_audit(self) -> int:
        """Delete audit rows older than ``MSM_AUDIT_RETENTION_DAYS``; returns how many."""
        if self._audit is None:
            return 0
        return await self._audit.delete_older_than(self._settings.audit_retention_days)

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Sweep every few seconds, back-fill every half minute, consolidate every
        ``MSM_CONSOLIDATION_INTERVAL`` seconds (0: never) until cancelled. Never raises."""
        task_status.started()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._repair_periodically)
            if self._settings.consolidation_interval > 0:
                tg.start_soon(self._consolidate_periodically, self._settings.consolidation_interval)

    async def _repair_periodically(self) -> None:
        try:
            await self.fill_lexemes()
        except SharedMemoryError as exc:
            log.warning("lexical indexing of older events skipped: %s", exc.message)
        passes = 0
        while True:
            await anyio.sleep(SWEEP_INTERVAL)
            passes += 1
            try:
                if done := await self.publish_queued():
                    log.info("announced %d committed events that had not reached Redis", done)
                if passes % EMBED_EVERY == 0 and (done := await self.embed_missing()):
                    log.info("embedded %d events stored without a vector", done)
                if passes % AUDIT_RETENTION_EVERY == 1 and (done := await self.expire_audit()):
                    log.info("deleted %d audit rows past their retention", done)
            except SharedMemoryError as exc:
                log.warning("repair pass skipped: %s", exc.message)

    async def _consolidate_periodically(self, interval: float) -> None:
        while True:
            await anyio.sleep(interval)
            try:
                report = await self.consolidator.run()
                if report.events:
                    log.info("consolidated %d events: %d facts stored, %d confirmed", report.events,
                             report.stored, report.confirmed)  # fmt: skip
            except SharedMemoryError as exc:
                log.warning("consolidation skipped: %s", exc.message)


async def fill_lexemes(episodic: PostgresEpisodicStore, *, batch: int = LEXEME_BATCH) -> int:
    remaining = await episodic.count_without_lexemes()
    if not remaining:
        return 0
    log.warning("indexing %d older events for lexical search, %d at a time", remaining, batch)
    done = 0
    while filled := await episodic.fill_lexemes(batch=batch):
        done += filled
        log.warning("lexical index: %d of %d older events done", done, remaining)
    return done


def _log_rejected(failed: list[uuid.UUID], results: Sequence[object]) -> None:
    if failed:
        reasons = {type(r).__name__ for r in results if isinstance(r, BaseException)}
        if reasons - {EmbeddingUnavailable.__name__}:
            log.warning("the model rejected %d events (%s); retrying them hourly", len(failed), ", ".join(reasons))
        else:
            log.warning("the model rejected %d events; retrying them hourly", len(failed))
