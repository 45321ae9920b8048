"""Shared memory for fleets of AI agents: an MCP server over PostgreSQL+pgvector and Redis."""

from __future__ import annotations

__version__ = "0.1.0"

from .context import format_shared_context
from .errors import (
    AccessDenied,
    ConfigError,
    EmbeddingUnavailable,
    InvalidInput,
    NotFound,
    SharedMemoryError,
    StoreUnavailable,
)
from .memory import SharedMemory
from .models import Event, Fact, Principal, Scope, Workspace, WriteResult
from .runtime import open_memory, open_runtime
from .settings import Settings

__all__ = [
    "AccessDenied",
    "ConfigError",
    "EmbeddingUnavailable",
    "Event",
    "Fact",
    "InvalidInput",
    "NotFound",
    "Principal",
    "Scope",
    "Settings",
    "SharedMemory",
    "SharedMemoryError",
    "StoreUnavailable",
    "Workspace",
    "WriteResult",
    "__version__",
    "format_shared_context",
    "open_memory",
    "open_runtime",
]
