"""Input rules and limits, in one place: ``SharedMemory`` enforces them and the MCP tool schemas are
derived from them (and from ``Settings`` for the configurable ones), so the two can never disagree."""

from __future__ import annotations

import json
import math
from typing import Any, Literal

from .errors import InvalidInput

MAX_LIMIT = 1000
MAX_WORKSPACE_EVENTS = 200
MAX_IDENTIFIER_CHARS = 128
MAX_EVENT_TYPE_CHARS = 64
MAX_SCOPE_CHARS = 10 + MAX_IDENTIFIER_CHARS  # "workspace:" + id
MAX_FACT_ID_CHARS = 64
MAX_FILTER_VALUES = 50
MAX_FILTER_METADATA_KEYS = 10
MAX_METADATA_BYTES = 16_384
MAX_METADATA_DEPTH = 32  # far below what a JSON parser on the way back to a reader accepts
MAX_ROLE_CHARS = 64
MAX_TASK_CHARS = 8_000
MAX_QUERY_CHARS = 8_000
MAX_FACT_CHARS = 4_000
MAX_IDEMPOTENCY_KEY_CHARS = 200
MAX_AGENTS = 100
WORKSPACE_STATUSES = ("active", "paused", "completed", "failed", "cancelled")


def text(value: str, what: str, *, max_chars: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{what} must be a non-empty string")
    if len(value) > max_chars:
        raise InvalidInput(f"{what} is {len(value)} characters; the limit is {max_chars}: shorten or split it")
    _storable(value, what)
    return value


def _storable(value: str, what: str) -> None:
    """PostgreSQL text and jsonb hold neither NUL nor unpaired UTF-16 surrogates."""
    if "\x00" in value:
        raise InvalidInput(f"{what} must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(f"{what} is not valid Unicode (an unpaired surrogate at position {exc.start})") from exc


def optional_text(value: str | None, what: str, *, max_chars: int) -> str | None:
    return None if value is None else text(value, what, max_chars=max_chars)


def unit_interval(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInput(f"{what} must be a number between 0 and 1")
    if not 0.0 <= float(value) <= 1.0:
        raise InvalidInput(f"{what} must be between 0 and 1, got {value}")
    return float(value)


def similarity(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInput(f"{what} must be a number between -1 and 1")
    if not -1.0 <= float(value) <= 1.0:
        raise InvalidInput(f"{what} must be between -1 and 1, got {value}")
    return float(value)


def bounded_int(value: int, what: str, *, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(f"{what} must be an integer from {low} to {high}, got {value!r}")
    return value


def metadata(value: dict[str, Any] | None) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput("metadata must be a JSON object")
    if _nesting(value) > MAX_METADATA_DEPTH:
        raise InvalidInput(f"metadata is nested more than {MAX_METADATA_DEPTH} levels deep: flatten it")
    try:
        encoded = json.dumps(value, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"metadata must be JSON-serialisable ({exc})") from exc
    _storable(encoded.replace("\\u0000", "\x00"), "metadata")
    if len(encoded.encode()) > MAX_METADATA_BYTES:
        raise InvalidInput(f"metadata is larger than {MAX_METADATA_BYTES} bytes of JSON: keep it small")
    return value


def _nesting(value: Any) -> int:
    """How deeply objects and arrays nest in ``value``: counted without recursion (a hostile value must not
    exhaust the stack), and only to one level past the limit."""
    deepest, stack = 0, [(value, 1)]
    while stack and deepest <= MAX_METADATA_DEPTH:
        item, level = stack.pop()
        if isinstance(item, dict | list | tuple):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


SEARCH_MODES = ("hybrid", "semantic", "lexical")


def search_mode(value: str) -> Literal["hybrid", "semantic", "lexical"]:
    if value not in SEARCH_MODES:
        raise InvalidInput(f"mode must be one of {', '.join(SEARCH_MODES)}, got {value!r}")
    return value  # type: ignore[return-value]


def positive(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise InvalidInput(f"{what} must be a positive number of seconds, got {value!r}")
    return float(value)


def status(value: str) -> str:
    if value not in WORKSPACE_STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(WORKSPACE_STATUSES)}, got {value!r}")
    return value
