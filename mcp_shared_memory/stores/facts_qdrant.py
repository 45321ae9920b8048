"""Semantic facts in Qdrant: used when ``MSM_QDRANT_URL`` is configured.

Behaves exactly like the pgvector backend (``facts_pg.py``): the same duplicate rule, the same
confirmation rule, the same scope isolation, the same exact (complete) search in every mode. Keyword
relevance is Qdrant's own: a sparse vector of term frequencies per fact, weighed by IDF at query time (the
statistics are the collection's, across tenants); lexical and hybrid results are fused in Python
(``qdrant_search.py``); the collection's schema, and its upgrade to keyword vectors, is ``qdrant_collection.py``.

One collection per embedding model and dimension (``msm_facts__<model>__<dims>``), cosine distance,
``tenant_id`` indexed as the tenant key (Qdrant multitenancy). Every read, update and delete is filtered
by tenant AND scope type AND scope id, so a fact of another tenant or scope can never be returned,
confirmed or deleted.

Qdrant has no transactions, so concurrent writers are made safe without them:

- within a process, writes of one scope are serialised by an asyncio lock;
- across processes, a new fact gets a point id derived from (tenant, scope, normalised text) and is
  written with ``update_mode=insert_only``, so two processes storing the same new fact at the same
  instant produce one point (the loser then confirms it); a confirmation is a compare-and-set on the
  point's ``revision`` (a ``set_payload`` filtered on the revision read), retried when another writer
  got there first, so no confirmation is lost.

Remaining cross-process race: two processes storing two *different wordings* of the same new fact at the
same instant get two points (their ids differ), where PostgreSQL's advisory lock would give one.
``update_mode`` needs a recent server (Qdrant 1.17+); on a server that ignores it, the later of two
simultaneous identical inserts overwrites the earlier one (one point, one confirmation lost).
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
import weakref
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import grpc
import httpx
from qdrant_client import AsyncQdrantClient, models
from qdrant_client.http.exceptions import ApiException

from ..errors import ConfigError, StoreUnavailable
from ..models import Fact, FactWrite, Scope, SearchMode
from ..settings import Settings
from ..vectors import Vector
from .facts import Embed, lexical_weight
from .qdrant_collection import ensure_collection
from .qdrant_points import (
    COLLECTION_PREFIX,
    DENSE,
    LEXICAL,
    collection_name,
    fact_point_id,
    lexical_vector,
    query_vector,
    unavailable,
)
from .qdrant_points import confirmations as _confirmations
from .qdrant_points import fact_text as _text
from .qdrant_points import in_scope as _in_scope
from .qdrant_points import match as _match
from .qdrant_points import not_found as _not_found
from .qdrant_points import now_iso as _now
from .qdrant_points import scope_filter as _scope_filter
from .qdrant_points import to_fact as _to_fact
from .qdrant_points import union as _union
from .qdrant_search import EXACT, FUSION_POOL, ranked_search

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 5  # seconds, per HTTP request
BATCH = 64
# A confirmation that keeps losing its compare-and-set to other writers gives up after this many tries.
MAX_ATTEMPTS = 32
# Write tokens kept on a point, so a writer can tell its write applied even if another one followed it.
WRITES_KEPT = 16

TRANSPORT_ERRORS = (ApiException, httpx.HTTPError, grpc.RpcError, OSError, TimeoutError)


class QdrantFactsStore:
    def __init__(
        self,
        client: AsyncQdrantClient,
        *,
        model_id: str,
        dimension: int,
        owns_client: bool = False,
        fusion_pool: int = FUSION_POOL,
    ) -> None:
        self.client = client
        self.model_id = model_id
        self.dimension = dimension
        self.collection = collection_name(model_id, dimension)
        self._owns_client = owns_client
        self._fusion_pool = fusion_pool
        self._ready = False
        self._lexical = False  # whether the collection has keyword vectors (known once ready)
        self._ready_lock = asyncio.Lock()
        self._scope_locks: weakref.WeakValueDictionary[tuple[str, str, str], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, *, model_id: str, dimension: int, timeout: int = DEFAULT_TIMEOUT
    ) -> QdrantFactsStore:
        if not settings.qdrant_url:
            raise ConfigError("MSM_QDRANT_URL is not set")
        api_key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        # check_compatibility=False: no blocking version probe in the constructor.
        client = AsyncQdrantClient(url=settings.qdrant_url, api_key=api_key, timeout=timeout, check_compatibility=False)
        return cls(client, model_id=model_id, dimension=dimension, owns_client=True)

    # lifecycle -------------------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the collection if missing. Qdrant being down is not fatal: facts calls fail until it is
        back (and create the collection then); events keep working."""
        try:
            await self._ensure_collection()
        except StoreUnavailable as exc:
            log.warning("semantic facts unavailable: %s", exc.message)

    async def close(self) -> None:
        if self._owns_client:
            await self.client.close()

    # FactsStore ------------------------------------------------------------------------------------

    async def upsert(
        self,
        tenant: str,
        scope: Scope,
        fact: str,
        vector: Vector,
        *,
        source_event_ids: Sequence[uuid.UUID],
        source_agents: Sequence[str],
        duplicate_floor: float,
    ) -> FactWrite:
        await self._ensure_collection()
        events = [str(e) for e in dict.fromkeys(source_event_ids)]
        agents = list(dict.fromkeys(source_agents))
        point_id = str(fact_point_id(tenant, scope, fact))
        async with self._scope_lock(tenant, scope):
            for attempt in range(MAX_ATTEMPTS):
                if attempt:
                    await asyncio.sleep(random.uniform(0, 0.002 * attempt))
                target: models.ScoredPoint | models.Record | None
                target = await self._nearest_duplicate(tenant, scope, vector, duplicate_floor)
                if target is None:
                    # The same text (same id) can exist below the floor only through float rounding at
                    # floor 1.0, or because another process inserted it after our search.
                    target = await self._get(tenant, scope, point_id)
                if target is None:
                    stored = await self._insert(tenant, scope, point_id, fact, vector, events, agents)
                    if stored is not None:
                        return FactWrite(status="stored", fact=stored)
                    continue  # another writer inserted this id first: confirm it on the next pass
                confirmed = await self._confirm(tenant, scope, target, events, agents)
                if confirmed is not None:
                    return FactWrite(status="confirmed", fact=confirmed)
        raise StoreUnavailable("Qdrant: too many concurrent writers on this fact; retry later")

    async def search(
        self,
        tenant: str,
        scope: Scope,
        vector: Vector,
        *,
        query: str,
        top_k: int,
        min_similarity: float,
        mode: SearchMode = "hybrid",
    ) -> list[Fact]:
        await self._ensure_collection()
        if mode == "semantic" or not self._lexical:  # without keyword vectors: semantic (warned at open)
            points = await self._query(tenant, scope, vector, limit=top_k, score_threshold=min_similarity)
            return [_to_fact(p.id, p.payload or {}, p.score, score=p.score) for p in points]
        terms = query_vector(query)
        if terms is None and mode == "lexical":
            return []
        scoped = _scope_filter(tenant, scope, _match("embedding_model", self.model_id))
        with self._translate("search facts"):
            return await ranked_search(
                self.client, self.collection, scoped, vector, terms, top_k=top_k, floor=min_similarity,
                weight=lexical_weight(mode), lexical_only=mode == "lexical", pool=self._fusion_pool,
            )  # fmt: skip

    async def forget(self, tenant: str, scope: Scope, fact_id: uuid.UUID) -> bool:
        await self._ensure_collection()
        selector = _scope_filter(tenant, scope, models.HasIdCondition(has_id=[str(fact_id)]))
        async with self._scope_lock(tenant, scope):
            with self._translate("forget a fact"):
                found = await self.client.count(self.collection, count_filter=selector, exact=True)
                if not found.count:
                    return False
                await self.client.delete(
                    self.collection, points_selector=models.FilterSelector(filter=selector), wait=True,
                    ordering=models.WriteOrdering.STRONG,
                )  # fmt: skip
        return True

    async def reembed(self, embed: Embed) -> int:
        """Re-embed this collection's facts in place, then move the facts of every other model's
        collection (``msm_facts__*``) into this one with new vectors, keeping their ids and provenance."""
        await self._ensure_collection()
        total = 0
        async for records in self._pages(self.collection):
            vectors = await embed([_text(r) for r in records])
            with self._translate("re-embed facts"):
                try:
                    await self.client.update_vectors(
                        self.collection,
                        points=[
                            models.PointVectors(id=r.id, vector=v.tolist())
                            for r, v in zip(records, vectors, strict=True)
                        ],
                        wait=True,
                    )
                except Exception as exc:
                    # A fact forgotten meanwhile: every other point of the batch was updated.
                    if not _not_found(exc):
                        raise
                # A filter, not an id list: ids forgotten meanwhile are skipped instead of failing the batch.
                await self.client.set_payload(
                    self.collection,
                    {"embedding_model": self.model_id},
                    points=models.Filter(must=[models.HasIdCondition(has_id=[r.id for r in records])]),
                    wait=True,
                )
            total += len(records)
        with self._translate("list collections"):
            others = [
                c.name
                for c in (await self.client.get_collections()).collections
                if c.name.startswith(f"{COLLECTION_PREFIX}__") and c.name != self.collection
            ]
        for source in others:
            async for records in self._pages(source):
                vectors = await embed([_text(r) for r in records])
                points = [
                    models.PointStruct(
                        id=r.id, vector=self._vectors(v, _text(r)),
                        payload={**(r.payload or {}), "embedding_model": self.model_id},
                    )
                    for r, v in zip(records, vectors, strict=True)
                ]  # fmt: skip
                with self._translate("re-embed facts"):
                    # insert_only: a fact already written here with the new model is newer; keep it.
                    await self.client.upsert(
                        self.collection, points=points, wait=True, update_mode=models.UpdateMode.INSERT_ONLY
                    )
                    await self.client.delete(source, points_selector=[r.id for r in records], wait=True)
                total += len(records)
        return total

    # internals -------------------------------------------------------------------------------------

    @contextmanager
    def _translate(self, action: str) -> Iterator[None]:
        try:
            yield
        except TRANSPORT_ERRORS as exc:
            if _not_found(exc):
                self._ready = False  # the collection was deleted under us: recreate it on the next call
            raise unavailable(action, exc) from exc

    def _scope_lock(self, tenant: str, scope: Scope) -> asyncio.Lock:
        key = (tenant, scope.type, scope.id)
        lock = self._scope_locks.get(key)
        if lock is None:
            lock = self._scope_locks[key] = asyncio.Lock()
        return lock

    async def _ensure_collection(self) -> None:
        if self._ready:
            return
        async with self._ready_lock:
            if self._ready:
                return
            with self._translate("open the facts collection"):
                self._lexical = await ensure_collection(self.client, self.collection, dimension=self.dimension)
            self._ready = True

    def _vectors(self, dense: Vector, text: str) -> models.VectorStruct:
        values: list[float] = dense.tolist()
        sparse = lexical_vector(text) if self._lexical else None
        return values if sparse is None else {DENSE: values, LEXICAL: sparse}

    async def _query(
        self, tenant: str, scope: Scope, vector: Vector, *, limit: int, score_threshold: float
    ) -> list[models.ScoredPoint]:
        with self._translate("search facts"):
            response = await self.client.query_points(
                self.collection,
                query=vector.tolist(),
                query_filter=_scope_filter(tenant, scope, _match("embedding_model", self.model_id)),
                limit=limit,
                score_threshold=score_threshold,
                with_payload=True,
                # Exact over the scope, as in pgvector: complete results, no approximate misses of a duplicate.
                search_params=EXACT,
                consistency=models.ReadConsistencyType.MAJORITY,
            )
        return response.points

    async def _nearest_duplicate(
        self, tenant: str, scope: Scope, vector: Vector, floor: float
    ) -> models.ScoredPoint | None:
        points = await self._query(tenant, scope, vector, limit=1, score_threshold=floor)
        return points[0] if points else None

    async def _get(self, tenant: str, scope: Scope, point_id: str) -> models.Record | None:
        with self._translate("read a fact"):
            records = await self.client.retrieve(
                self.collection, [point_id], with_payload=True, consistency=models.ReadConsistencyType.MAJORITY
            )
        # The id encodes tenant and scope, but never trust a point outside the caller's scope.
        return next((r for r in records if _in_scope(r.payload, tenant, scope)), None)

    async def _applied(self, tenant: str, scope: Scope, point_id: Any, token: str) -> bool:
        current = await self._get(tenant, scope, str(point_id))
        return current is not None and token in (current.payload or {}).get("writes", [])

    async def _insert(
        self, tenant: str, scope: Scope, point_id: str, fact: str, vector: Vector,
        events: list[str], agents: list[str],
    ) -> Fact | None:  # fmt: skip
        """Insert unless a point with this id exists; the stored fact, or None if another writer won."""
        token = uuid.uuid4().hex
        now = _now()
        payload: dict[str, Any] = {
            "fact": fact, "tenant_id": tenant, "scope_type": scope.type, "scope_id": scope.id,
            "embedding_model": self.model_id, "source_event_ids": events, "source_agents": agents,
            "confirmations": 1, "first_seen": now, "last_seen": now, "revision": token, "writes": [token],
        }  # fmt: skip
        with self._translate("store a fact"):
            point = models.PointStruct(id=point_id, vector=self._vectors(vector, fact), payload=payload)
            await self.client.upsert(
                self.collection, points=[point],
                wait=True, ordering=models.WriteOrdering.STRONG, update_mode=models.UpdateMode.INSERT_ONLY,
            )  # fmt: skip
        if not await self._applied(tenant, scope, point_id, token):
            return None
        return _to_fact(point_id, payload)

    async def _confirm(
        self, tenant: str, scope: Scope, target: models.Record | models.ScoredPoint,
        events: list[str], agents: list[str],
    ) -> Fact | None:  # fmt: skip
        """Compare-and-set on the revision read; the confirmed fact, or None if the point changed or vanished."""
        old = target.payload or {}
        # Confirmations count distinct agents: an agent re-stating the fact adds its events but not a
        # confirmation, and a consolidation rerun changes nothing but last_seen.
        source_agents = _union(old.get("source_agents", []), agents)
        token = uuid.uuid4().hex
        update: dict[str, Any] = {
            "confirmations": _confirmations(source_agents),
            "last_seen": _now(),
            "source_event_ids": _union(old.get("source_event_ids", []), events),
            "source_agents": source_agents,
            "revision": token,
            "writes": [*old.get("writes", []), token][-WRITES_KEPT:],
        }
        revision = old.get("revision")
        unchanged: models.Condition = (
            _match("revision", str(revision))
            if revision
            else models.IsEmptyCondition(is_empty=models.PayloadField(key="revision"))
        )
        condition = _scope_filter(tenant, scope, models.HasIdCondition(has_id=[target.id]), unchanged)
        with self._translate("confirm a fact"):
            await self.client.set_payload(
                self.collection, update, points=condition, wait=True, ordering=models.WriteOrdering.STRONG
            )
        if not await self._applied(tenant, scope, target.id, token):
            return None
        return _to_fact(target.id, {**old, **update})

    async def _pages(self, collection: str) -> AsyncIterator[list[models.Record]]:
        offset: models.ExtendedPointId | None = None
        while True:
            with self._translate("read facts"):
                records, offset = await self.client.scroll(
                    collection, limit=BATCH, offset=offset, with_payload=True, with_vectors=False
                )
            if records:
                yield records
            if offset is None:
                return
