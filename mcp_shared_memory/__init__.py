"""Shared memory for fleets of AI agents: an MCP server over PostgreSQL+pgvector and Redis.

The public names load on first use: a stdio server imports only what answers its first requests before
the database, Redis and embedding clients are needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
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

_HOMES = {
    "format_shared_context": "context",
    "AccessDenied": "errors",
    "ConfigError": "errors",
    "EmbeddingUnavailable": "errors",
    "InvalidInput": "errors",
    "NotFound": "errors",
    "SharedMemoryError": "errors",
    "StoreUnavailable": "errors",
    "SharedMemory": "memory",
    "Event": "models",
    "Fact": "models",
    "Principal": "models",
    "Scope": "models",
    "Workspace": "models",
    "WriteResult": "models",
    "open_memory": "runtime",
    "open_runtime": "runtime",
    "Settings": "settings",
}

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


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
