"""Events are acknowledged at commit and embedded here, afterwards.

``write_event`` commits an event without its vector and wakes this queue; the queue claims waiting
events in batches (``SKIP LOCKED`` with a lease, so every process and replica can run one and a writer
that dies loses nothing: its events are claimed by whichever process polls next) and writes the vectors
back. Batches coalesce on their own: the writes that arrive while the model runs are the next claim.

A search embeds its scope's waiting events first (``catch_up``), so an acknowledged event is found by
meaning as soon as it is found by words. While the model is down, claims are given back at once and
retried with a short backoff; a text the model refuses while it embeds others is recorded with the
reason and retried hourly, never blocking the rest.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import anyio
import anyio.abc

from . import metrics
from .embeddings import Embedder
from .errors import EmbeddingUnavailable, SharedMemoryError
from .models import Scope
from .stores.embedding_backlog import Claimed, PostgresEmbeddingBacklog
from .vectors import Vector

log = logging.getLogger(__name__)

BATCH = 64
LEASE_SECONDS = 10.0  # a claimant that died delays its events this long at most (a slower batch is only done twice)
# Another process's events, an expired lease, a writer that died: found by polling this often.
POLL_SECONDS = 2.0
BACKOFF_FIRST = 0.25
BACKOFF_MAX = 4.0
RETRY_REJECTED_AFTER = 3600.0
CATCH_UP_MAX_EVENTS = 256
DEPTH_EVERY = 10.0  # seconds between two counts of the waiting events, for the metrics
PROBE_TEXT = "embedding probe"


@dataclass(frozen=True, slots=True)
class CatchUp:
    """A search's catch-up: ``left`` of the scope's waiting events could not be embedded in time."""

    left: int = 0


class EmbeddingQueue:
    """``backlog`` is on the owner's pool (claims cross tenants); ``scoped`` on the requests' pool."""

    def __init__(
        self,
        *,
        backlog: PostgresEmbeddingBacklog,
        scoped: PostgresEmbeddingBacklog,
        embedder: Embedder,
        catch_up_timeout: float,
        poll_seconds: float = POLL_SECONDS,
        batch: int = BATCH,
    ) -> None:
        self._backlog = backlog
        self._scoped = scoped
        self._embedder = embedder
        self._catch_up_timeout = catch_up_timeout
        self._poll_seconds = poll_seconds
        self._batch = batch
        self._wake = anyio.Event()
        self._down_since: float | None = None
        self.embedded = 0  # by this process, since it started

    @property
    def backlog(self) -> PostgresEmbeddingBacklog:
        """Every tenant's waiting and refused events (counts, reasons, retry)."""
        return self._backlog

    @property
    def model_down(self) -> bool:
        """The last attempt found the model unavailable (until an attempt succeeds)."""
        return self._down_since is not None

    def notify(self) -> None:
        """An event was committed without its vector: embed it now rather than at the next poll."""
        self._wake.set()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Embed what waits, then wait for a write or the next poll; back off while the model or the
        database is down. Never raises."""
        task_status.started()
        backoff = 0.0
        counted_at = -DEPTH_EVERY
        while True:
            with anyio.move_on_after(backoff or self._poll_seconds):
                await self._wake.wait()
            self._wake = anyio.Event()
            try:
                await self.drain()
                backoff = 0.0
                if time.monotonic() - counted_at >= DEPTH_EVERY:
                    counted_at = time.monotonic()
                    metrics.embedding_queue_depth.set((await self._backlog.counts()).waiting)
            except SharedMemoryError as exc:
                if not isinstance(exc, EmbeddingUnavailable) and not backoff:
                    log.warning("embedding queue paused: %s", exc.message)
                backoff = min(max(2 * backoff, BACKOFF_FIRST), BACKOFF_MAX)

    async def drain(self, progress: Callable[[int], object] | None = None) -> int:
        """Embed every event waiting now; returns how many were embedded (``progress(n)`` after each
        batch). Raises ``EmbeddingUnavailable`` when the model is down (the claimed events are given back
        first)."""
        total = 0
        while claimed := await self._claim():
            started = time.monotonic()
            try:
                total += await self._embed_claimed([(c.event_id, c.content) for c in claimed])
            except BaseException:
                # Given back (those still without a vector), so nobody waits for the lease to end.
                with anyio.CancelScope(shield=True):
                    await self._backlog.release([c.event_id for c in claimed])
                raise
            took = time.monotonic() - started
            for event in claimed:
                metrics.embedding_queue_seconds.observe(event.age + took)
            if progress is not None:
                progress(len(claimed))
            if len(claimed) < self._batch:
                # Nothing else was claimable: this process's writes since have woken the queue again, and
                # what others left (or locked a moment) is found by the next poll.
                break
        self._came_back(total)
        return total

    async def _claim(self) -> list[Claimed]:
        # Shielded: a claim committed while its caller is cancelled would be lost until the lease ends.
        with anyio.CancelScope(shield=True):
            claimed = await self._backlog.claim(limit=self._batch, lease_seconds=LEASE_SECONDS)
        return claimed

    async def _embed_claimed(self, claimed: list[tuple[uuid.UUID, str]]) -> int:
        done, failed = await _embed_each(self._embedder, claimed)
        await self._backlog.set(done, model_id=self._embedder.model_id)
        self.embedded += len(done)
        if failed and not done and not await self._model_answers():
            self._went_down(failed[0][1])
            raise EmbeddingUnavailable("The embedding model is unavailable; waiting events are retried.")
        if failed:
            await self._reject(failed)
        return len(done)

    async def catch_up(self, tenant: str, scope: Scope) -> CatchUp:
        """Embed ``scope``'s waiting events before a search ranks it (read-your-writes), waiting at most
        the catch-up timeout. Never raises: what is left is found by its words only."""
        try:
            pending = await self._scoped.pending_in_scope(tenant, scope, limit=CATCH_UP_MAX_EVENTS)
        except SharedMemoryError:
            return CatchUp()  # the search itself will report the database
        if not pending:
            return CatchUp()
        done: list[tuple[uuid.UUID, Vector]] = []
        with anyio.move_on_after(self._catch_up_timeout):
            done, _ = await _embed_each(self._embedder, pending, urgent=True)
            try:
                await self._scoped.set_in_scope(tenant, done, model_id=self._embedder.model_id)
            except SharedMemoryError:
                done = []
        return CatchUp(left=len(pending) - len(done))

    async def _model_answers(self) -> bool:
        """Whether the model embeds a plain text: if so, the texts it just failed on were refused."""
        try:
            await self._embedder.embed(PROBE_TEXT)
        except SharedMemoryError:
            return False
        return True

    async def _reject(self, failed: list[tuple[uuid.UUID, Exception]]) -> None:
        by_reason: dict[str, list[uuid.UUID]] = {}
        for event_id, exc in failed:
            by_reason.setdefault(_reason(exc), []).append(event_id)
        for reason, ids in by_reason.items():
            await self._backlog.reject(ids, reason=reason, retry_after=RETRY_REJECTED_AFTER)
            log.warning("the embedding model refused %d events (%s); retrying them hourly", len(ids), reason)

    def _went_down(self, exc: Exception) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("embedding paused, the model is unavailable (%s): events wait and are retried", _reason(exc))

    def _came_back(self, embedded: int) -> None:
        if self._down_since is not None:
            log.warning("the embedding model is back after %.0f s: %d waiting events embedded",
                        time.monotonic() - self._down_since, embedded)  # fmt: skip
            self._down_since = None


async def _embed_each(
    embedder: Embedder, events: Sequence[tuple[uuid.UUID, str]], *, urgent: bool = False
) -> tuple[list[tuple[uuid.UUID, Vector]], list[tuple[uuid.UUID, Exception]]]:
    """(embedded, failed with the reason). The embedder batches the texts together and retries a failed
    batch text by text, so one refused text fails alone. ``urgent``: a search waits for them."""
    embedded = (embedder.embed(text, urgent=urgent) for _, text in events)
    results = await asyncio.gather(*embedded, return_exceptions=True)
    done: list[tuple[uuid.UUID, Vector]] = []
    failed: list[tuple[uuid.UUID, Exception]] = []
    for (event_id, _), result in zip(events, results, strict=True):
        if isinstance(result, array):
            done.append((event_id, result))
        elif isinstance(result, Exception):
            failed.append((event_id, result))
        else:
            raise result
    return done, failed


def _reason(exc: Exception) -> str:
    return exc.message if isinstance(exc, SharedMemoryError) else type(exc).__name__
