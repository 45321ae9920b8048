"""Qdrant points of the facts store, as pure functions: ids, filters, payload <-> ``Fact``, and Qdrant's
errors turned into safe messages (never the URL or the API key)."""

from __future__ import annotations

import json
import re
import unicodedata
import uuid
from collections.abc import Mapping, Sequence
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any

import grpc
from qdrant_client import models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from ..errors import StoreUnavailable
from ..models import Fact, Scope

COLLECTION_PREFIX = "msm_facts"
_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "mcp-shared-memory/semantic-facts")


def collection_name(model_id: str, dimension: int) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", model_id.lower()).strip("-")[:100] or "model"
    return f"{COLLECTION_PREFIX}__{slug}__{dimension}"


def normalise_fact(text: str) -> str:
    text = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    return text.strip(" .,;:!?\"'")


def fact_point_id(tenant: str, scope: Scope, fact: str) -> uuid.UUID:
    """The id a new fact gets: identical facts of one scope collapse into one point, across processes."""
    return uuid.uuid5(_ID_NAMESPACE, "\x1f".join((tenant, scope.type, scope.id, normalise_fact(fact))))


def match(key: str, value: str) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


def scope_filter(tenant: str, scope: Scope, *extra: models.Condition) -> models.Filter:
    return models.Filter(
        must=[match("tenant_id", tenant), match("scope_type", scope.type), match("scope_id", scope.id), *extra]
    )


def union(old: Sequence[str], new: Sequence[str]) -> list[str]:
    return list(dict.fromkeys([*old, *new]))


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def to_fact(point_id: Any, payload: Mapping[str, Any], similarity: float | None = None) -> Fact:
    return Fact(
        id=uuid.UUID(str(point_id)),
        scope_type=payload["scope_type"],
        scope_id=payload["scope_id"],
        fact=payload["fact"],
        source_event_ids=[uuid.UUID(e) for e in payload.get("source_event_ids", [])],
        source_agents=list(payload.get("source_agents", [])),
        confirmations=int(payload.get("confirmations", 1)),
        first_seen=datetime.fromisoformat(payload["first_seen"]),
        last_seen=datetime.fromisoformat(payload["last_seen"]),
        similarity=similarity,
    )


def fact_text(record: models.Record) -> str:
    return str((record.payload or {}).get("fact", ""))


def in_scope(payload: Mapping[str, Any] | None, tenant: str, scope: Scope) -> bool:
    if not payload:
        return False
    return (payload.get("tenant_id"), payload.get("scope_type"), payload.get("scope_id")) == (
        tenant,
        scope.type,
        scope.id,
    )


def already_exists(exc: BaseException) -> bool:
    if isinstance(exc, UnexpectedResponse):
        # 409 since Qdrant 1.8, 400 before.
        return exc.status_code == 409 or (exc.status_code == 400 and b"already exists" in exc.content)
    if isinstance(exc, grpc.RpcError):
        code = getattr(exc, "code", None)
        return callable(code) and code() == grpc.StatusCode.ALREADY_EXISTS
    # Local mode (tests) raises ValueError("Collection ... already exists").
    return isinstance(exc, ValueError) and "already exists" in str(exc)


def not_found(exc: BaseException) -> bool:
    if isinstance(exc, UnexpectedResponse):
        return exc.status_code == 404
    return isinstance(exc, KeyError)  # local mode: update of a point that no longer exists


def unavailable(action: str, exc: BaseException) -> StoreUnavailable:
    """A safe message: status and Qdrant's own error text, never the URL or the API key."""
    if isinstance(exc, UnexpectedResponse):
        status = f"HTTP {exc.status_code} {exc.reason_phrase}".strip()
        if exc.status_code in (401, 403):
            return StoreUnavailable(f"Qdrant refused to {action} ({status}): check MSM_QDRANT_API_KEY")
        detail = ""
        with suppress(ValueError, KeyError, TypeError):
            detail = str(json.loads(exc.content)["status"]["error"])[:200]
        suffix = f": {detail}" if detail else ""
        return StoreUnavailable(f"Qdrant failed to {action} ({status}){suffix}; retry later")
    if isinstance(exc, ResponseHandlingException):
        exc = exc.source
    if isinstance(exc, grpc.RpcError):
        code = getattr(exc, "code", None)
        name = code().name if callable(code) else type(exc).__name__
        return StoreUnavailable(f"Qdrant is unavailable ({name}) and could not {action}; retry later")
    return StoreUnavailable(f"Qdrant is unavailable ({type(exc).__name__}) and could not {action}; retry later")
