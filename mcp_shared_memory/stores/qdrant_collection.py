"""The facts collection's schema in Qdrant: created when missing, checked when present, and upgraded in
place when it predates keyword search.

Layout: the dense vector under Qdrant's default (unnamed) name, cosine distance, per-tenant graphs only;
a named sparse vector (``LEXICAL``) of term frequencies that Qdrant weighs by IDF at query time; keyword
indexes on the fields every query filters by. A collection created before keyword search gets the sparse
vector added (``create_vector_name``, Qdrant 1.18+) and its points their keyword vectors; on a server that
cannot add it, facts search stays semantic (logged once).

Callers translate Qdrant's errors (these functions raise them as they come)."""

from __future__ import annotations

import logging

import grpc
from qdrant_client import AsyncQdrantClient, models
from qdrant_client.http.exceptions import UnexpectedResponse

from ..errors import ConfigError
from .qdrant_points import LEXICAL, already_exists, fact_text, lexical_vector, not_found

log = logging.getLogger(__name__)

BATCH = 64


async def ensure_collection(client: AsyncQdrantClient, collection: str, *, dimension: int) -> bool:
    """Create or check ``collection``; True if it supports keyword search."""
    if not await client.collection_exists(collection):
        try:
            await client.create_collection(
                collection,
                vectors_config=models.VectorParams(size=dimension, distance=models.Distance.COSINE),
                sparse_vectors_config={LEXICAL: models.SparseVectorParams(modifier=models.Modifier.IDF)},
                # Per-tenant graphs only (Qdrant's multitenancy layout): no global graph to build.
                hnsw_config=models.HnswConfigDiff(m=0, payload_m=16),
            )
        except Exception as exc:
            if not already_exists(exc):  # another process created it first
                raise
    info = await client.get_collection(collection)
    params = info.config.params.vectors
    if isinstance(params, models.VectorParams) and (
        params.size != dimension or params.distance != models.Distance.COSINE
    ):
        raise ConfigError(
            f"Qdrant collection {collection} holds {params.size}-dim {params.distance.value} vectors, "
            f"expected {dimension}-dim Cosine: delete it or point MSM_QDRANT_URL elsewhere"
        )
    await _create_indexes(client, collection)
    if LEXICAL not in (info.config.params.sparse_vectors or {}) and not await _add_lexical(client, collection):
        return False
    await _backfill_lexical(client, collection)
    return True


async def _create_indexes(client: AsyncQdrantClient, collection: str) -> None:
    # Idempotent on the server, also when several processes create them at once; a no-op in local mode.
    await client.create_payload_index(
        collection, "tenant_id",
        field_schema=models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True), wait=True,
    )  # fmt: skip
    for field in ("scope_type", "scope_id", "embedding_model"):
        await client.create_payload_index(collection, field, field_schema=models.PayloadSchemaType.KEYWORD, wait=True)


async def _add_lexical(client: AsyncQdrantClient, collection: str) -> bool:
    config = models.SparseVectorNameConfig(sparse=models.SparseVectorConfig(modifier=models.Modifier.IDF))
    try:
        await client.create_vector_name(collection, LEXICAL, config, wait=True)
    except Exception as exc:
        if already_exists(exc):  # another process added it first
            return True
        if not _unsupported(exc):
            raise
        log.warning(
            "Qdrant cannot add keyword vectors to the existing collection %s (it needs Qdrant 1.18+): facts "
            "search is semantic only; upgrade Qdrant, or re-create the collection to enable hybrid search",
            collection,
        )
        return False
    log.info("added keyword vectors to the Qdrant collection %s", collection)
    return True


def _unsupported(exc: BaseException) -> bool:
    """A server without ``create_vector_name`` (an unknown route or method)."""
    if isinstance(exc, UnexpectedResponse):
        return exc.status_code in (400, 404, 405, 501)
    if isinstance(exc, grpc.RpcError):
        code = getattr(exc, "code", None)
        return callable(code) and code() == grpc.StatusCode.UNIMPLEMENTED
    # qdrant-client's local mode (tests, embedded use) has no such route and says so this way.
    return isinstance(exc, NotImplementedError)


async def _backfill_lexical(client: AsyncQdrantClient, collection: str) -> None:
    """Keyword vectors for the points that lack one: written before the collection had them, or by an older
    version of this server. Cheap when there are none (a filtered scroll), so it runs at every open."""
    missing = models.Filter(must_not=[models.HasVectorCondition(has_vector=LEXICAL)])
    offset: models.ExtendedPointId | None = None
    filled = 0
    while True:
        records, offset = await client.scroll(
            collection, scroll_filter=missing, limit=BATCH, offset=offset, with_payload=["fact"], with_vectors=False
        )
        points = [
            models.PointVectors(id=r.id, vector={LEXICAL: sparse})
            for r in records
            if (sparse := lexical_vector(fact_text(r))) is not None  # a fact of stop words only has none
        ]
        if points:
            try:
                await client.update_vectors(collection, points=points, wait=True)
            except Exception as exc:
                if not not_found(exc):  # a fact forgotten meanwhile: the others were updated
                    raise
            filled += len(points)
        if offset is None:
            break
    if filled:
        log.info("gave keyword vectors to %d facts of the Qdrant collection %s", filled, collection)
