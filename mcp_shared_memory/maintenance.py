"""Background repair and consolidation: what a failing dependency left behind is caught up here.

Every process may run these at once: the outbox sweep takes a scope's writer lock without waiting and
consolidation takes a per-scope lock. None of them holds a transaction open while it calls Redis, the
model or the network (events waiting for a vector are ``embedding_queue.py``'s, in every process). They work
across tenants, so their stores are on the owner's pool (the composition root sees to it).
"""

from __future__ import annotations

import logging

import anyio
import anyio.abc

from . import metrics
from .announcer import Announcer
from .consolidation import Consolidator
from .errors import SharedMemoryError
from .retention import sweep_retention
from .settings import Settings
from .stores.audit import PostgresAuditLog
from .stores.episodic import PostgresEpisodicStore

log = logging.getLogger(__name__)

SWEEP_INTERVAL = 5.0
# An event queued this long was left behind by a writer that died or a Redis failure.
SWEEP_AFTER = 1.0
AUDIT_RETENTION_EVERY = 720  # sweeps: hourly
LEXEME_BATCH = 5000  # the model failed every text of a batch: it is down, try again soon


class Maintenance:
    def __init__(
        self,
        *,
        settings: Settings,
        episodic: PostgresEpisodicStore,
        announcer: Announcer,
        consolidator: Consolidator,
        audit: PostgresAuditLog | None = None,
    ) -> None:
        self._settings = settings
        self._episodic = episodic
        self._announcer = announcer
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
        metrics.outbox_backlog.set(await self._episodic.outbox_size())
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

    async def expire_events(self) -> int:
        """Delete events past ``MSM_RETENTION_USER_DAYS`` / ``MSM_RETENTION_WORKSPACE_DAYS``; returns how many."""
        return await sweep_retention(self._settings, self._episodic, self._announcer)

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Sweep every few seconds, consolidate every
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
                if passes % AUDIT_RETENTION_EVERY == 1 and (done := await self.expire_audit()):
                    log.info("deleted %d audit rows past their retention", done)
                if passes % AUDIT_RETENTION_EVERY == 2 and (done := await self.expire_events()):
                    log.info("deleted %d events past their retention (MSM_RETENTION_*_DAYS)", done)
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
