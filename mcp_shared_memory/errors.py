"""Errors raised by mcp-shared-memory.

    SharedMemoryError (root)
    ├── ConfigError            the configuration cannot work; the message names the setting to fix
    ├── StoreUnavailable       PostgreSQL / Redis / Qdrant cannot be reached or failed
    ├── EmbeddingUnavailable   the embedding model or endpoint failed
    ├── NotFound               the named workspace / fact / token does not exist (in this tenant)
    ├── AccessDenied           the caller's binding does not allow this scope
    ├── InvalidInput           an argument is malformed or out of range; nothing was changed
    ├── Conflict               contradicts what is stored (an idempotency key reused); nothing was changed
    └── LimitExceeded          a configured limit was reached (subscriptions, listen URIs); nothing was changed
        ├── RateLimited        too many calls for this token or agent; retry after ``retry_after`` seconds
        ├── QuotaExceeded      the tenant's storage quota is full; nothing was written
        └── ResultTooLarge     a result would exceed the response size limit; ask for less

Every message is safe to show to an agent: no stack traces, no connection strings, no credentials, and no
infrastructure detail (a backend's address, host:port, file paths, its own error text or HTTP reason). Where
that detail matters, the code that raises logs it at WARNING (credentials masked) and the message stays
generic but says what to do: retry later, or which setting the operator fixes.
"""

from __future__ import annotations

from collections.abc import Iterator


class SharedMemoryError(Exception):
    """The shared memory failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or type(self).__name__).strip())

    @property
    def message(self) -> str:
        return str(self.args[0])


class ConfigError(SharedMemoryError):
    """The configuration is invalid."""


class StoreUnavailable(SharedMemoryError):
    """A storage backend is unavailable; retry later."""


class EmbeddingUnavailable(SharedMemoryError):
    """The embedding model is unavailable; retry later."""


class NotFound(SharedMemoryError):
    """Not found."""


class AccessDenied(SharedMemoryError):
    """This connection is not allowed to use that scope."""


class InvalidInput(SharedMemoryError):
    """Invalid input; nothing was changed."""


class Conflict(SharedMemoryError):
    """This request conflicts with what is already stored; nothing was changed."""


class LimitExceeded(SharedMemoryError):
    """A configured limit was reached; nothing was changed."""


class RateLimited(LimitExceeded):
    """Too many calls; retry later."""

    def __init__(self, message: str | None = None, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class QuotaExceeded(LimitExceeded):
    """The tenant's storage quota is full; nothing was written. Ask the operator to raise it."""


class ResultTooLarge(LimitExceeded):
    """The result is larger than the response size limit; ask for less."""


def sole_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to raise for what a task group raised (anyio wraps even a single error): its first
    ``SharedMemoryError``, else its first error, so callers catch and report it as if raised alone; the
    group itself when it holds a cancellation or another ``BaseException``."""
    leaves = list(_leaves(group))
    if not all(isinstance(leaf, Exception) for leaf in leaves):
        return group
    return next((leaf for leaf in leaves if isinstance(leaf, SharedMemoryError)), leaves[0])


def _leaves(error: BaseException) -> Iterator[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from _leaves(inner)
    else:
        yield error
