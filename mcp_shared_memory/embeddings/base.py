"""The embedder interface and the request coalescing every provider shares.

Callers enqueue single texts; one background worker drains the queue into batches of up to
``batch_size`` and makes one model call per batch, so many concurrent ``embed()`` calls cost one or two
model calls instead of one each.

A text someone is waiting on (a search's question, the events a search must rank) is ``urgent``: it goes
ahead of every queued background text (the embedding backlog), in batches of its own, so a search waits for
at most the model call already running, not for the backlog.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from .. import vectors
from ..errors import EmbeddingUnavailable, SharedMemoryError
from ..vectors import Vector

logger = logging.getLogger(__name__)

# How an HTTP client marks an urgent batch for the machine's embedding service (``service_app.py``), which
# embeds it ahead of its backlog; other OpenAI-compatible servers ignore the header.
PRIORITY_HEADER = "X-MSM-Priority"
URGENT = "urgent"


@dataclass(slots=True)
class BatchStats:
    """Model batches run by an embedder's worker, for status output."""

    batches: int = 0
    texts: int = 0
    largest: int = 0

    def add(self, size: int) -> None:
        self.batches += 1
        self.texts += size
        self.largest = max(self.largest, size)

    @property
    def mean(self) -> float:
        return self.texts / self.batches if self.batches else 0.0


@dataclass(slots=True)
class _Request:
    text: str
    future: asyncio.Future[Vector]
    urgent: bool = False


# Queue entries: (0 urgent / 1 background, arrival order, request).
_Entry = tuple[int, int, _Request]


class Embedder(ABC):
    """Turns text into L2-normalised float32 vectors (``vectors.Vector``) of ``dimension`` entries.

    Use as ``async with embedder:`` or call ``open()`` / ``close()``. ``dimension`` is only guaranteed
    after ``open()`` (an OpenAI-compatible endpoint may have to be probed for it).
    """

    model_id: str
    dimension: int
    #: Inputs are cut to this many characters before they reach the model.
    max_chars: int = 8000

    def __init__(self, *, batch_size: int = 32, batch_wait: float = 0.0) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if batch_wait < 0:
            raise ValueError("batch_wait must not be negative")
        self.batch_size = batch_size
        #: Seconds a batch that is not full may wait for more texts before the model call.
        self.batch_wait = batch_wait
        self.stats = BatchStats()
        self._queue: asyncio.PriorityQueue[_Entry] | None = None
        self._arrivals = itertools.count()
        #: Whether the batch ``_embed_batch`` is embedding is urgent (a provider may tell its endpoint).
        self.batch_urgent = False
        self._worker: asyncio.Task[None] | None = None

    # lifecycle -------------------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._worker is not None

    #: True when ``dimension`` is known before the model is loaded (so loading can finish in the background).
    dimension_is_static: bool = False

    async def open(self, *, wait: bool = True) -> None:
        """Load the model and start the batching worker. With ``wait=False`` (only for embedders whose
        dimension is static) the model loads in the background: requests queue until it is ready, and
        a load failure is given to every request."""
        if self._worker is not None:
            return
        if wait or not self.dimension_is_static:
            await self._load()
        self._load_error: SharedMemoryError | None = None
        self._queue = asyncio.PriorityQueue()
        run = self._run(self._queue) if wait or not self.dimension_is_static else self._load_then_run(self._queue)
        self._worker = asyncio.create_task(run, name=f"{type(self).__name__}-worker")

    async def close(self) -> None:
        worker, queue = self._worker, self._queue
        self._worker = self._queue = None
        if worker is not None:
            worker.cancel()
            # wait() rather than `await worker`: a cancellation of close() itself must not be swallowed.
            await asyncio.wait({worker})
        if queue is not None:
            while not queue.empty():
                _fail(queue.get_nowait()[2].future, EmbeddingUnavailable("The embedder was closed."))
        if worker is not None:
            await self._unload()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _load(self) -> None:  # noqa: B027 - optional hook
        """Load the model / create the client; runs once per ``open()``."""

    async def _unload(self) -> None:  # noqa: B027 - optional hook
        """Release what ``_load`` acquired."""

    # embedding -------------------------------------------------------------------------------------

    async def embed(self, text: str, *, urgent: bool = False) -> Vector:
        """``urgent``: someone waits on it (see the module's docstring)."""
        # Cancelling the caller cancels its future; the worker then skips or ignores that request.
        return await self._enqueue(text, urgent)

    async def embed_many(self, texts: Sequence[str], *, urgent: bool = False) -> list[Vector]:
        if isinstance(texts, str):
            raise TypeError("embed_many() takes a sequence of strings, not a string")
        futures = [self._enqueue(text, urgent) for text in texts]
        if not futures:
            return []
        return list(await asyncio.gather(*futures))

    @abstractmethod
    async def _embed_batch(self, texts: list[str]) -> Sequence[Any]:
        """Embed ``texts`` (already truncated) in one model call: n vectors of ``dimension`` floats (``Vector``s,
        lists, or the rows of an (n, dimension) numpy array)."""

    def _prepare(self, text: str) -> str:
        return text[: self.max_chars]

    def _enqueue(self, text: str, urgent: bool = False) -> asyncio.Future[Vector]:
        if not isinstance(text, str):
            raise TypeError(f"can only embed str, not {type(text).__name__}")
        queue, worker = self._queue, self._worker
        if queue is None or worker is None:
            raise RuntimeError(
                f"{type(self).__name__} is not open: call `await embedder.open()` or use "
                "`async with embedder:` before embedding."
            )
        if worker.done():
            raise EmbeddingUnavailable("The embedding worker has stopped; restart the server.")
        future: asyncio.Future[Vector] = asyncio.get_running_loop().create_future()
        queue.put_nowait((0 if urgent else 1, next(self._arrivals), _Request(self._prepare(text), future, urgent)))
        return future

    # worker ----------------------------------------------------------------------------------------

    async def _run(self, queue: asyncio.PriorityQueue[_Entry]) -> None:
        while True:
            batch = [(await queue.get())[2]]
            # One yield lets callers scheduled in the same tick enqueue before the batch is cut.
            await asyncio.sleep(0)
            _take_more(queue, batch, self.batch_size)
            if self.batch_wait and len(batch) < self.batch_size:
                await self._top_up(queue, batch)
            live = [r for r in batch if not r.future.done()]
            if not live:
                continue
            self.stats.add(len(live))
            self.batch_urgent = live[0].urgent
            try:
                await self._process(live)
            except asyncio.CancelledError:
                for request in live:
                    _fail(request.future, EmbeddingUnavailable("The embedder was closed."))
                raise

    async def _top_up(self, queue: asyncio.PriorityQueue[_Entry], batch: list[_Request]) -> None:
        """Wait up to ``batch_wait`` for more texts (callers in other processes are a few ms apart).

        Short sleeps and ``get_nowait`` rather than a timed ``get()``: a timeout can never lose a request."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.batch_wait
        while len(batch) < self.batch_size and (remaining := deadline - loop.time()) > 0:
            await asyncio.sleep(min(remaining, 0.0005))
            _take_more(queue, batch, self.batch_size)

    async def _load_then_run(self, queue: asyncio.PriorityQueue[_Entry]) -> None:
        try:
            await self._load()
        except SharedMemoryError as exc:
            self._load_error = exc
        except Exception as exc:
            self._load_error = EmbeddingUnavailable(f"The embedding model failed to load ({type(exc).__name__}).")
        if self._load_error is None:
            await self._run(queue)
            return
        logger.error("embedding model failed to load: %s", self._load_error.message)
        while True:
            _fail((await queue.get())[2].future, type(self._load_error)(self._load_error.message))

    async def _process(self, requests: list[_Request]) -> None:
        unique = list(dict.fromkeys(r.text for r in requests))
        try:
            vectors = self._check(await self._embed_batch(unique), len(unique))
        except Exception as exc:
            if len(unique) > 1:
                # One caller's bad input must not fail the others batched with it: retry one by one.
                for text in unique:
                    await self._process([r for r in requests if r.text == text])
                return
            failure = self._failure(exc, len(unique))
            for request in requests:
                _fail(request.future, failure)
            return
        row = {text: i for i, text in enumerate(unique)}
        for request in requests:
            if not request.future.done():
                request.future.set_result(vectors[row[request.text]][:])

    @staticmethod
    def _failure(exc: Exception, size: int) -> SharedMemoryError:
        if isinstance(exc, SharedMemoryError):
            logger.warning("embedding batch of %d failed: %s", size, exc.message)
            return type(exc)(exc.message)
        # The original exception may carry URLs or payloads: log it, hand callers a generic message.
        logger.warning("embedding batch of %d failed", size, exc_info=True)
        return EmbeddingUnavailable(f"The embedding model failed ({type(exc).__name__}); retry later.")

    def _check(self, rows: Sequence[Any], n: int) -> list[Vector]:
        found = [vectors.as_vector(row) for row in rows]
        if len(found) != n or any(len(vector) != self.dimension for vector in found):
            sizes = "/".join(str(size) for size in sorted({len(v) for v in found}))
            raise EmbeddingUnavailable(
                f"The embedding model returned {len(found)} vectors of {sizes} dimensions, expected {n} of "
                f"{self.dimension}."
            )
        try:
            return [vectors.unit(vector) for vector in found]
        except ValueError:
            raise EmbeddingUnavailable("The embedding model returned non-finite values.") from None


def _take_more(queue: asyncio.PriorityQueue[_Entry], batch: list[_Request], size: int) -> None:
    """Fill ``batch`` from ``queue`` up to ``size`` with texts as urgent as its first: an urgent batch carries
    no background text, and a background batch stops where urgent texts wait (they lead the next one)."""
    urgent = batch[0].urgent
    while len(batch) < size and not queue.empty():
        entry = queue.get_nowait()
        if entry[2].urgent != urgent:
            queue.put_nowait(entry)  # back in its place: (priority, arrival) orders the heap
            return
        batch.append(entry[2])


def _fail(future: asyncio.Future[Vector], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
