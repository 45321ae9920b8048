"""Build the configured embedder; provider modules are imported only when chosen."""

from __future__ import annotations

from ..errors import ConfigError
from ..settings import Settings
from .base import Embedder


def create_embedder(settings: Settings) -> Embedder:
    if settings.embedding_provider == "local":
        from .local import OnnxEmbedder

        if settings.embedding_dimensions not in (None, OnnxEmbedder.dimension):
            raise ConfigError(
                f"The local model {OnnxEmbedder.model_id} has {OnnxEmbedder.dimension} dimensions; "
                "unset MSM_EMBEDDING_DIMENSIONS or use MSM_EMBEDDING_PROVIDER=openai."
            )
        if settings.embedding_service == "auto":
            return _service_embedder(settings)
        return OnnxEmbedder(batch_size=settings.embedding_batch_size, threads=settings.embedding_threads)

    settings.require_openai_key()
    from .openai import OpenAIEmbedder

    return OpenAIEmbedder(
        model=settings.embedding_model,
        api_key=settings.openai_api_key,
        base_url=settings.openai_base_url,
        dimensions=settings.embedding_dimensions,
        batch_size=settings.embedding_batch_size,
    )


def _service_embedder(settings: Settings) -> Embedder:
    """The local model through the machine's shared embedding service (in-process if it cannot start)."""
    from ..embedded.embedding_service import EmbeddedEmbeddingService
    from .local_service import LocalServiceEmbedder

    service = EmbeddedEmbeddingService(
        settings.data_dir,
        model=settings.embedding_service_model,
        threads=settings.embedding_service_threads,
        batch_size=settings.embedding_service_batch_size,
        batch_wait=settings.embedding_service_batch_wait_ms / 1000,
    )
    return LocalServiceEmbedder(
        service=service, batch_size=settings.embedding_batch_size, threads=settings.embedding_threads
    )
