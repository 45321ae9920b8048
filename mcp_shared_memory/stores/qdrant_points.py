"""Qdrant points of the facts store, as pure functions: ids, filters, payload <-> ``Fact``, the keyword
(sparse) vectors, and Qdrant's errors turned into generic messages (the detail goes to the log)."""

from __future__ import annotations

import json
import logging
import re
import unicodedata
import uuid
import zlib
from collections import Counter
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
# The named sparse vector holding a fact's term frequencies; Qdrant weighs the terms by IDF at query time.
LEXICAL = "lexical"
# The dense vector keeps Qdrant's default (unnamed) name, so collections created before LEXICAL still fit.
DENSE = ""
logger = logging.getLogger(__name__)
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


def confirmations(source_agents: Sequence[str]) -> int:
    """A fact's confirmations: the distinct agents that stated it (at least 1, for a fact of no agent)."""
    return max(1, len(set(source_agents)))


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


# The terms of a text, close to PostgreSQL's msm_lexemes (sql/008_lexical_search.sql), so both facts
# backends match the same facts: lower-cased words without PostgreSQL's english stop words, plurals
# stripped (a light stemmer, where PostgreSQL uses Snowball), and identifiers (tokens with a digit or an
# inner separator: ERR_4417, payments-api, v2.3.1, src/app/main.py) kept whole; those joined by _ or -
# also give their parts (err, 4417), as PostgreSQL's parser does.
_STOP_WORDS = (
    "i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she her hers "
    "herself it its itself they them their theirs themselves what which who whom this that these those am is "
    "are was were be been being have has had having do does did doing a an the and but if or because as until "
    "while of at by for with about against between into through during before after above below to from up "
    "down in out on off over under again further then once here there when where why how all any both each few "
    "more most other some such no nor not only own same so than too very s t can will just don should now"
)
STOP_WORDS = frozenset(_STOP_WORDS.split())
_TOKEN = re.compile(r"[\w./:@#-]+")
_IDENTIFIER = re.compile(r"[a-z0-9_./:@#-]+")
_SEPARATORS = "_./:@#-"


def _word(word: str) -> str | None:
    if not word.isalpha():
        return word  # a number, or letters and digits (v2)
    if word in STOP_WORDS:
        return None
    # Harman's S-stemmer: plurals only.
    if len(word) > 3 and word.endswith("ies") and not word.endswith(("eies", "aies")):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("es") and not word.endswith(("aes", "ees", "oes")):
        return word[:-1]
    if len(word) > 2 and word.endswith("s") and not word.endswith(("us", "ss")):
        return word[:-1]
    return word


def terms(text: str) -> Counter[str]:
    """How many times each term occurs in ``text``."""
    words: Counter[str] = Counter()
    identifiers: Counter[str] = Counter()
    for match in _TOKEN.finditer(unicodedata.normalize("NFKC", text).lower()):
        token = match.group().strip(_SEPARATORS)
        if token.isalpha():
            parts = [token]
        else:
            if _IDENTIFIER.fullmatch(token):
                identifiers[token] += 1
            parts = [] if any(c in token for c in "./:@#") else re.split(r"[_-]+", token)
        words.update(w for w in map(_word, parts) if w)
    return words | identifiers  # a number is both a word and an identifier: count it once


def _sparse(weights: Mapping[int, float]) -> models.SparseVector | None:
    if not weights:
        return None
    indices = sorted(weights)
    return models.SparseVector(indices=indices, values=[weights[i] for i in indices])


def _index(term: str) -> int:
    return zlib.crc32(term.encode())  # stable across processes and versions, unlike hash()


def lexical_vector(text: str) -> models.SparseVector | None:
    """A fact's term frequencies; None when it has no term."""
    weights: Counter[int] = Counter()
    for term, count in terms(text).items():
        weights[_index(term)] += count
    return _sparse(weights)


def query_vector(text: str) -> models.SparseVector | None:
    """A query's distinct terms, each weighing 1 (Qdrant applies the IDF); None when it has no term."""
    return _sparse({_index(term): 1.0 for term in terms(text)})


def to_fact(
    point_id: Any,
    payload: Mapping[str, Any],
    similarity: float | None = None,
    *,
    lexical: float | None = None,
    score: float | None = None,
) -> Fact:
    agents = list(dict.fromkeys(payload.get("source_agents", [])))
    return Fact(
        id=uuid.UUID(str(point_id)),
        scope_type=payload["scope_type"],
        scope_id=payload["scope_id"],
        fact=payload["fact"],
        source_event_ids=[uuid.UUID(e) for e in payload.get("source_event_ids", [])],
        source_agents=agents,
        # From the agents, not the stored count: points confirmed before confirmations counted distinct
        # agents (pgvector's rows were recounted by migration 010) read right without a rewrite.
        confirmations=confirmations(agents),
        first_seen=datetime.fromisoformat(payload["first_seen"]),
        last_seen=datetime.fromisoformat(payload["last_seen"]),
        similarity=similarity,
        lexical=lexical,
        score=score,
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
    """A generic message for callers (agents see it); Qdrant's own text, the HTTP reason and the transport's
    message are infrastructure, logged at WARNING (credentials masked), never in the message."""
    if isinstance(exc, UnexpectedResponse):
        detail = ""
        with suppress(ValueError, KeyError, TypeError):
            detail = str(json.loads(exc.content)["status"]["error"])
        if not detail:
            detail = exc.content.decode("utf-8", "replace") if isinstance(exc.content, bytes) else str(exc.content)
        logger.warning(
            "Qdrant could not %s: HTTP %s %s: %s", action, exc.status_code, exc.reason_phrase, _mask(detail)[:500]
        )
        if exc.status_code in (401, 403):
            # Configuration the operator fixes: say which setting, not where Qdrant is.
            return StoreUnavailable(f"Qdrant refused to {action} (HTTP {exc.status_code}): check MSM_QDRANT_API_KEY")
        return StoreUnavailable(f"Qdrant is unavailable (HTTP {exc.status_code}) and could not {action}; retry later")
    if isinstance(exc, ResponseHandlingException):
        exc = exc.source
    if isinstance(exc, grpc.RpcError):
        code = getattr(exc, "code", None)
        name = code().name if callable(code) else type(exc).__name__
        details = getattr(exc, "details", None)
        text = str(details() if callable(details) else exc)
        logger.warning("Qdrant could not %s: %s: %s", action, name, _mask(text)[:500])
        return StoreUnavailable(f"Qdrant is unavailable ({name}) and could not {action}; retry later")
    logger.warning("Qdrant could not %s: %s: %s", action, type(exc).__name__, _mask(str(exc))[:500])
    return StoreUnavailable(f"Qdrant is unavailable ({type(exc).__name__}) and could not {action}; retry later")


_CREDENTIAL = re.compile(
    r"(?i)((?:authorization|api[-_]?key)[\"']?\s*[:=]\s*[\"']?(?:bearer\s+|basic\s+)?|bearer\s+)[^\s\"',;}]+"
)
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]+@")


def _mask(text: str) -> str:
    """For the log: API keys, bearer tokens and URL passwords replaced by ``***``."""
    text = _CREDENTIAL.sub(lambda m: m.group(1) + "***", text)
    return _URL_USERINFO.sub(lambda m: m.group(1) + "***@", text)
