"""``export`` / ``import``: a tenant's memory as JSONL, one workspace, event or fact per line (``kind``).

An export holds workspaces, then events in ``seq`` order, then facts, each with its ids, timestamps and
provenance (agent id and type, importance, metadata, idempotency key); vectors only with ``with_vectors``.
An import validates the whole file first (a bad line is reported with its number and nothing is written),
then inserts in batches of one transaction each, skipping what is already there, so importing twice changes
nothing and an interrupted import is finished by running it again. Events keep their order per scope
(new ``seq`` numbers, the installation's own). A vector is kept when it comes from the configured model;
otherwise events are embedded by the server's back-fill, and facts (which need one) are embedded here.
"""

from __future__ import annotations

import json
import uuid
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Literal, NamedTuple, TextIO

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from ..errors import InvalidInput, SharedMemoryError, StoreUnavailable
from ..models import Scope, ScopeType, validate_identifier
from ..runtime import Connections
from ..settings import Settings
from ..stores import transfer as store
from ..vectors import Vector, as_vector

Progress = Callable[[int], None]
MAX_REPORTED_ERRORS = 10


class _Line(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tenant: str

    @model_validator(mode="after")
    def _identifiers(self) -> _Line:
        validate_identifier(self.tenant, "tenant")
        for name in ("scope_type", "agent_id", "agent_type", "created_by"):
            if name == "scope_type" and hasattr(self, "scope_id"):
                Scope(getattr(self, "scope_type"), getattr(self, "scope_id"))  # noqa: B009 - validates both
            elif name != "scope_type" and hasattr(self, name):
                validate_identifier(getattr(self, name), name)
        return self


class WorkspaceLine(_Line):
    kind: Literal["workspace"]
    id: str
    task: str
    agents: list[str]
    status: str
    context: dict[str, Any]
    created_by: str
    created_at: AwareDatetime
    updated_at: AwareDatetime


class EventLine(_Line):
    kind: Literal["event"]
    id: uuid.UUID
    seq: int
    scope_type: ScopeType
    scope_id: str
    agent_id: str
    agent_type: str
    event_type: str
    role: str | None
    content: str = Field(min_length=1)
    content_hash: str
    importance: float = Field(ge=0, le=1)
    metadata: dict[str, Any]
    idempotency_key: str | None
    consolidated: bool
    consolidated_at: AwareDatetime | None
    created_at: AwareDatetime
    embedding_model: str | None
    embedding: list[float] | None = None


class FactLine(_Line):
    kind: Literal["fact"]
    id: uuid.UUID
    scope_type: ScopeType
    scope_id: str
    fact: str = Field(min_length=1)
    source_event_ids: list[uuid.UUID]
    source_agents: list[str]
    confirmations: int = Field(ge=1)
    first_seen: AwareDatetime
    last_seen: AwareDatetime
    embedding_model: str | None
    embedding: list[float] | None = None


Line = Annotated[WorkspaceLine | EventLine | FactLine, Field(discriminator="kind")]
LINE: TypeAdapter[WorkspaceLine | EventLine | FactLine] = TypeAdapter(Line)


def _dump(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, array):  # a vector
        return value.tolist()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"cannot export a {type(value).__name__}")


async def count(connections: Connections, tenant: str, scope: Scope | None) -> int:
    return sum((await store.counts(connections.db, tenant, scope)).values())


async def export_tenant(
    settings: Settings, connections: Connections, out: TextIO, *, tenant: str, scope: Scope | None = None,
    with_vectors: bool = False, progress: Progress = lambda n: None,
) -> int:  # fmt: skip
    """Write the tenant's (or one scope's) workspaces, events and facts to ``out``; returns the lines written."""
    written = 0

    def emit(kind: str, record: dict[str, Any]) -> None:
        nonlocal written
        out.write(_dump({"kind": kind, "tenant": tenant, **record}) + "\n")
        written += 1

    for workspace in await store.read_workspaces(connections.db, tenant, scope):
        emit("workspace", workspace)
    progress(written)
    async for page in store.read_events(connections.db, tenant, scope):
        for event in page:
            vector = event.pop("embedding")
            emit("event", {**event, **({"embedding": vector} if with_vectors and vector is not None else {})})
        progress(len(page))
    if settings.qdrant_url:
        from ..stores.facts_qdrant import QdrantFactsStore

        qdrant = QdrantFactsStore.from_settings(
            settings, model_id=connections.embedder.model_id, dimension=connections.embedder.dimension
        )
        try:
            async for points in store.read_qdrant_facts(
                qdrant.client, qdrant.collection, tenant, scope, vectors=with_vectors
            ):
                for point_id, payload, vector in points:
                    emit("fact", _qdrant_fact(point_id, payload, vector))
                progress(len(points))
        finally:
            await qdrant.close()
    else:
        async for facts in store.read_pg_facts(connections.db, tenant, scope):
            for fact in facts:
                vector = fact.pop("embedding")
                emit("fact", {**fact, **({"embedding": vector} if with_vectors else {})})
            progress(len(facts))
    return written


def _qdrant_fact(point_id: uuid.UUID, payload: dict[str, Any], vector: list[float] | None) -> dict[str, Any]:
    record = {
        "id": point_id, "scope_type": payload["scope_type"], "scope_id": payload["scope_id"], "fact": payload["fact"],
        "source_event_ids": payload.get("source_event_ids", []), "source_agents": payload.get("source_agents", []),
        "confirmations": max(1, len(set(payload.get("source_agents", [])))), "first_seen": payload["first_seen"],
        "last_seen": payload["last_seen"], "embedding_model": payload.get("embedding_model"),
    }  # fmt: skip
    return {**record, **({"embedding": vector} if vector is not None else {})}


def parse_lines(lines: Iterable[str]) -> list[WorkspaceLine | EventLine | FactLine]:
    """Every line validated; ``InvalidInput`` naming each bad line (the first few) when any is bad."""
    parsed, errors = [], []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            parsed.append(LINE.validate_json(text))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"][1:]) or "line"
            errors.append(f"line {number}: {where}: {first['msg']}")
        except SharedMemoryError as exc:
            errors.append(f"line {number}: {exc.message}")
    if errors:
        more = f" (and {len(errors) - MAX_REPORTED_ERRORS} more)" if len(errors) > MAX_REPORTED_ERRORS else ""
        raise InvalidInput(
            "nothing was imported: " + "; ".join(errors[:MAX_REPORTED_ERRORS]) + more + ". Fix these lines and retry"
        )
    return parsed


@dataclass
class ImportReport:
    lines: int = 0
    new: dict[str, int] = field(default_factory=lambda: {"workspace": 0, "event": 0, "fact": 0})
    present: dict[str, int] = field(default_factory=lambda: {"workspace": 0, "event": 0, "fact": 0})

    def summary(self) -> str:
        parts = [
            f"{self.new[k]} {k}s imported, {self.present[k]} already there" for k in ("workspace", "event", "fact")
        ]
        return "; ".join(parts)


def _batches(items: list[Any], size: int = store.PAGE) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def import_lines(
    settings: Settings, connections: Connections, records: list[WorkspaceLine | EventLine | FactLine], *,
    tenant: str | None = None, progress: Progress = lambda n: None,
) -> ImportReport:  # fmt: skip
    """Insert validated ``records`` (into ``tenant`` when given, else each line's own)."""
    if tenant is not None:
        validate_identifier(tenant, "tenant")
    report = ImportReport()
    try:
        await _import(settings, connections, records, tenant, report, progress)
    except StoreUnavailable as exc:
        raise StoreUnavailable(
            f"{exc.message}. Imported before the failure: {report.summary()}; run the same import again to finish "
            "(it skips what is already there)"
        ) from exc
    return report


def _id(line: EventLine | FactLine, owner: str) -> uuid.UUID:
    """A row keeps its id in its own tenant; a copy into another tenant gets one derived from (tenant, id)."""
    return line.id if owner == line.tenant else store.derived_id(owner, line.id)


async def _import(
    settings: Settings, connections: Connections, records: list[WorkspaceLine | EventLine | FactLine],
    tenant: str | None, report: ImportReport, progress: Progress,
) -> None:  # fmt: skip
    db, embedder = connections.db, connections.embedder
    workspaces = [r for r in records if isinstance(r, WorkspaceLine)]
    events = sorted((r for r in records if isinstance(r, EventLine)), key=lambda e: e.seq)
    facts = [r for r in records if isinstance(r, FactLine)]

    rows: list[tuple[Any, ...]] = [
        (tenant or w.tenant, w.id, w.task, w.agents, w.status, w.context, w.created_by, w.created_at, w.updated_at)
        for w in workspaces
    ]
    _count(report, "workspace", len(rows), await store.insert_rows(db, "workspace", rows))
    progress(len(rows))

    scopes: dict[str, set[Scope]] = {}
    for batch in _batches(events):
        rows = []
        for e in batch:
            owner = tenant or e.tenant
            vector = _vector(e.embedding, e.embedding_model, embedder.model_id, embedder.dimension)
            scopes.setdefault(owner, set()).add(Scope(e.scope_type, e.scope_id))
            rows.append((
                _id(e, owner), owner, e.scope_type, e.scope_id, e.agent_id, e.agent_type, e.event_type, e.role,
                e.content, e.content_hash, e.importance, e.metadata, e.idempotency_key, e.consolidated,
                e.consolidated_at, e.created_at, embedder.model_id if vector is not None else None, vector,
            ))  # fmt: skip
        _count(report, "event", len(rows), await store.insert_rows(db, "event", rows))
        progress(len(batch))

    for batch in _batches(facts):
        vectors = [_vector(f.embedding, f.embedding_model, embedder.model_id, embedder.dimension) for f in batch]
        missing = [i for i, v in enumerate(vectors) if v is None]
        for i, v in zip(missing, await embedder.embed_many([batch[i].fact for i in missing]), strict=True):
            vectors[i] = v
        fact_rows = [_fact_row(f, tenant or f.tenant, v) for f, v in zip(batch, vectors, strict=True)]
        _count(report, "fact", len(fact_rows), await _insert_facts(settings, connections, fact_rows))
        progress(len(batch))

    for owner, owned in scopes.items():
        await store.drop_cached(
            connections.redis, prefix=settings.redis_prefix, tenant=owner, scopes=sorted(owned, key=str)
        )


def _fact_row(f: FactLine, owner: str, vector: Vector | None) -> FactRow:
    assert vector is not None
    sources = [e if owner == f.tenant else store.derived_id(owner, e) for e in f.source_event_ids]
    return FactRow(_id(f, owner), owner, f.scope_type, f.scope_id, f.fact, sources, f.source_agents, f.confirmations,
                   f.first_seen, f.last_seen, vector)  # fmt: skip


async def _insert_facts(settings: Settings, connections: Connections, rows: list[FactRow]) -> int:
    embedder = connections.embedder
    if not settings.qdrant_url:
        return await store.insert_rows(connections.db, "fact", [(*r[:10], embedder.model_id, r.vector) for r in rows])
    from ..stores.facts_qdrant import QdrantFactsStore

    qdrant = QdrantFactsStore.from_settings(settings, model_id=embedder.model_id, dimension=embedder.dimension)
    points = []
    for r in rows:
        token = uuid.uuid4().hex
        payload = {
            "fact": r.fact, "tenant_id": r.tenant, "scope_type": r.scope_type, "scope_id": r.scope_id,
            "embedding_model": embedder.model_id, "source_event_ids": [str(e) for e in r.source_event_ids],
            "source_agents": r.source_agents, "confirmations": r.confirmations,
            "first_seen": r.first_seen.isoformat(), "last_seen": r.last_seen.isoformat(), "revision": token,
            "writes": [token],
        }  # fmt: skip
        points.append((r.id, payload, r.vector))
    try:
        return await store.write_qdrant_facts(
            qdrant.client, qdrant.collection, dimension=embedder.dimension, facts=points
        )
    finally:
        await qdrant.close()


class FactRow(NamedTuple):
    id: uuid.UUID
    tenant: str
    scope_type: str
    scope_id: str
    fact: str
    source_event_ids: list[uuid.UUID]
    source_agents: list[str]
    confirmations: int
    first_seen: datetime
    last_seen: datetime
    vector: Vector


def _vector(values: list[float] | None, model: str | None, model_id: str, dimension: int) -> Vector | None:
    if values is None or model != model_id or len(values) != dimension:
        return None
    return as_vector(values)


def _count(report: ImportReport, kind: str, lines: int, new: int) -> None:
    report.lines += lines
    report.new[kind] += new
    report.present[kind] += lines - new
