"""Text embeddings: offline all-MiniLM-L6-v2 (default) or an OpenAI-compatible endpoint."""

from .base import Embedder
from .factory import create_embedder

__all__ = ["Embedder", "create_embedder"]
