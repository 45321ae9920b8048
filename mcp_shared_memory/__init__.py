"""Shared memory for fleets of AI agents: an MCP server over PostgreSQL+pgvector and Redis."""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import (  # noqa: E402
    AccessDenied,
    ConfigError,
    EmbeddingUnavailable,
    InvalidInput,
    NotFound,
    SharedMemoryError,
    StoreUnavailable,
)
from .memory import SharedMemory, format_shared_context  # noqa: E402
from .models import Event, Fact, Principal, Scope, Workspace, WriteResult  # noqa: E402
from .runtime import open_memory  # noqa: E402
from .settings import Settings  # noqa: E402

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
    "SharedMemory",
    "SharedMemoryError",
    "Settings",
    "StoreUnavailable",
    "Workspace",
    "WriteResult",
    "__version__",
    "format_shared_context",
    "open_memory",
]
