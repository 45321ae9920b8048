"""The local model through the machine's shared embedding service; in-process ONNX when it cannot start.

The service (``embedded/embedding_service.py``) speaks the OpenAI-compatible API, so requests go through
``OpenAIEmbedder`` over its unix socket; this class only adds the service's lifecycle: start or attach on
load (in a worker thread, so a server answers before the model is ready), re-attach when a request fails
(a killed service is restarted), release on close, and the fallback.
"""

from __future__ import annotations

import logging
from pathlib import Path

import anyio.to_thread

from ..embedded.embedding_service import EmbeddedEmbeddingService
from ..errors import EmbeddingUnavailable
from ..vectors import Vector
from .local import OnnxEmbedder
from .openai import OpenAIEmbedder

logger = logging.getLogger(__name__)


class LocalServiceEmbedder(OpenAIEmbedder):
    """all-MiniLM-L6-v2 from the shared embedding service of ``data_dir``, the same vectors as ``OnnxEmbedder``.

    ``threads`` is for the in-process fallback; ``service`` says how to start the service if none runs.
    """

    dimension_is_static = True

    def __init__(
        self,
        *,
        service: EmbeddedEmbeddingService,
        batch_size: int = 32,
        threads: int | None = None,
        timeout: float = 30.0,
    ) -> None:
        super().__init__(
            model=OnnxEmbedder.model_id,
            batch_size=batch_size,
            timeout=timeout,
            max_retries=0,  # a failed request re-attaches (restarting a dead service) instead
            max_chars=OnnxEmbedder.max_chars,
            encoding_format="base64",
        )
        self.dimension = OnnxEmbedder.dimension
        self.service = service
        self._threads = threads
        self._fallback: OnnxEmbedder | None = None

    @property
    def in_process(self) -> bool:
        """True once this process embeds with its own model (the service could not start)."""
        return self._fallback is not None

    async def _load(self) -> None:
        try:
            self._socket_path = Path(await anyio.to_thread.run_sync(self.service.start))
        except Exception as exc:
            await self._fall_back(exc)
            return
        await super()._load()

    async def _unload(self) -> None:
        await super()._unload()
        if self._fallback is not None:
            await self._fallback._unload()
        await anyio.to_thread.run_sync(self.service.release)

    async def _embed_batch(self, texts: list[str]) -> list[Vector]:
        if self._fallback is None:
            try:
                return await super()._embed_batch(texts)
            except EmbeddingUnavailable:
                pass
            # Killed, stopped by a releasing peer that thought it was last, or hung: re-attach (a dead service
            # is restarted) and retry once.
            try:
                self._socket_path = Path(await anyio.to_thread.run_sync(self.service.start))
            except Exception as exc:
                await self._fall_back(exc)
            else:
                return await super()._embed_batch(texts)
        assert self._fallback is not None
        return await self._fallback._embed_batch(texts)

    async def _fall_back(self, exc: Exception) -> None:
        logger.warning(
            "the shared embedding service could not start (%s); this process loads its own copy of the model "
            "(~250 MB more memory). See %s, or set MSM_EMBEDDING_SERVICE=off to silence this.",
            getattr(exc, "message", None) or type(exc).__name__,
            self.service.log_path,
        )
        await anyio.to_thread.run_sync(self.service.release)
        fallback = OnnxEmbedder(batch_size=self.batch_size, threads=self._threads)
        await fallback._load()
        self._fallback = fallback
