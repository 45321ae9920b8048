"""Vectors without numpy: pgvector's binary format as pgvector's own client writes it, cosine as PostgreSQL
computes it, and a serving process that never loads numpy."""

from __future__ import annotations

import math
import subprocess
import sys
from array import array

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pgvector import Vector as ReferenceVector

from mcp_shared_memory import vectors
from mcp_shared_memory.runtime import Connections

pytestmark = pytest.mark.anyio

FLOAT32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


@given(st.lists(FLOAT32, min_size=1, max_size=64))
def test_the_codec_is_byte_for_byte_pgvectors_own(values: list[float]) -> None:
    packed = vectors.encode(values)
    assert packed == ReferenceVector(values).to_binary()
    assert vectors.decode(packed).tolist() == ReferenceVector.from_binary(packed).to_list()
    assert vectors.encode(np.asarray(values, dtype=np.float32)) == packed == vectors.encode(array("f", values))


def test_a_malformed_binary_vector_is_refused() -> None:
    packed = vectors.encode([1.0, 2.0, 3.0])
    for bad in (packed[:-1], packed + b"\0\0\0\0", b"\0\x03\0\x01" + packed[4:]):
        with pytest.raises(ValueError, match="not a pgvector binary vector"):
            vectors.decode(bad)


def test_as_vector_takes_numpy_rows_lists_and_arrays() -> None:
    matrix = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert vectors.as_vector(matrix[1]).tolist() == [4.0, 5.0, 6.0, 7.0]
    assert vectors.as_vector(matrix[:, 1]).tolist() == [1.0, 5.0, 9.0]  # a strided column
    assert vectors.as_vector(np.asarray([0.5, 1.5])).tolist() == [0.5, 1.5]  # float64
    same = array("f", [1.0])
    assert vectors.as_vector(same) is same and vectors.as_vector([2, 3]).tolist() == [2.0, 3.0]


def test_unit_scales_to_length_one_and_refuses_non_finite_values() -> None:
    assert vectors.unit([3.0, 4.0]).tolist() == pytest.approx([0.6, 0.8])
    assert vectors.unit([0.0, 0.0]).tolist() == [0.0, 0.0]
    for bad in ([math.nan, 1.0], [math.inf, 0.0]):
        with pytest.raises(ValueError, match="non-finite"):
            vectors.unit(bad)


async def test_vectors_round_trip_through_postgres_and_cosine_matches_its_distance(connections: Connections) -> None:
    rng = np.random.default_rng(7)
    pairs = [
        (rng.standard_normal(384).astype(np.float32), rng.standard_normal(384).astype(np.float32)) for _ in range(20)
    ]
    near = rng.standard_normal(384).astype(np.float32)
    noise = (1e-4 * rng.standard_normal(384)).astype(np.float32)
    pairs += [(near, near + noise), (near, -near)]  # a near-duplicate, and opposites
    async with connections.db.connection() as conn:
        for a, b in pairs:
            row = await conn.fetchrow("SELECT $1::vector AS a, $2::vector::text AS b, 1 - ($1 <=> $2) AS cos", a, b)
            assert row is not None
            assert isinstance(row["a"], array) and np.array_equal(np.asarray(row["a"]), a)
            assert [float(x) for x in row["b"].strip("[]").split(",")] == pytest.approx(b.tolist(), rel=1e-6)
            assert vectors.cosine(row["a"], vectors.as_vector(b)) == pytest.approx(row["cos"], abs=1e-6)


def test_a_server_on_the_embedding_service_never_imports_numpy() -> None:
    """Everything a stdio server loads to serve (the runtime, every store, the service client) leaves numpy
    out: it costs ~12 MB resident and ~0.1 s of start-up per agent process. Only the in-process model uses it."""
    probe = (
        "import sys, mcp_shared_memory.cli, mcp_shared_memory.server.app, mcp_shared_memory.runtime, "
        "mcp_shared_memory.embeddings.local_service, mcp_shared_memory.embedding_queue, "
        "mcp_shared_memory.stores.facts_pg, mcp_shared_memory.consolidation; print('numpy' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "False"
