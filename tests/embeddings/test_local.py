"""The offline MiniLM embedder and the request coalescing of the Embedder base class."""

from __future__ import annotations

import asyncio
import shutil
import time
from array import array
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from mcp_shared_memory.embeddings import Embedder, create_embedder
from mcp_shared_memory.embeddings.local import TOKENIZER_PATH, OnnxEmbedder
from mcp_shared_memory.errors import ConfigError, EmbeddingUnavailable
from mcp_shared_memory.settings import Settings

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def embedder() -> AsyncIterator[OnnxEmbedder]:
    async with OnnxEmbedder() as e:
        yield e


class CountingOnnxEmbedder(OnnxEmbedder):
    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.batches: list[list[str]] = []

    async def _embed_batch(self, texts: list[str]) -> npt.NDArray[np.float32]:
        self.batches.append(list(texts))
        return await super()._embed_batch(texts)


class FakeEmbedder(Embedder):
    """No model: deterministic vectors, optional failures, and a gate that holds batches inside the
    "model call" until opened (``hold=True``), to test the base class."""

    model_id = "fake"
    dimension = 8

    def __init__(self, *, fail_with: Exception | None = None, hold: bool = False, batch_size: int = 32):
        super().__init__(batch_size=batch_size)
        self.fail_with = fail_with
        self.gate = asyncio.Event()
        if not hold:
            self.gate.set()
        self.batches: list[list[str]] = []
        self._entered = asyncio.Condition()

    async def inside(self, batches: int) -> None:
        """Wait until ``batches`` batches have entered the model call."""
        async with self._entered:
            await self._entered.wait_for(lambda: len(self.batches) >= batches)

    async def _embed_batch(self, texts: list[str]) -> npt.NDArray[np.float32]:
        async with self._entered:
            self.batches.append(list(texts))
            self._entered.notify_all()
        await self.gate.wait()
        if self.fail_with is not None:
            raise self.fail_with
        return np.array([[len(t) + 1.0, *([1.0] * 7)] for t in texts], dtype=np.float32)


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b))


# --- the MiniLM model -----------------------------------------------------------------------------


async def test_vectors_are_384d_normalised_and_deterministic(embedder: OnnxEmbedder) -> None:
    a = await embedder.embed("Redis keeps the recent-activity stream for each workspace.")
    b = await embedder.embed("Redis keeps the recent-activity stream for each workspace.")
    assert embedder.model_id == "all-MiniLM-L6-v2"
    assert embedder.dimension == 384
    assert len(a) == 384 and a.typecode == "f"
    assert abs(float(np.linalg.norm(a)) - 1.0) < 1e-5
    np.testing.assert_array_equal(a, b)


async def test_paraphrases_score_higher_than_unrelated_pairs(embedder: OnnxEmbedder) -> None:
    paraphrases = [
        ("The auth service uses OAuth2 PKCE", "Authentication relies on the PKCE OAuth flow"),
        (
            "We store vectors in pgvector with an HNSW index",
            "Embeddings live in Postgres using an HNSW index",
        ),
        ("Deploys are rolled back with a single command", "A single command rolls a deployment back"),
    ]
    unrelated = [
        ("The auth service uses OAuth2 PKCE", "The cafeteria serves pasta on Fridays"),
        ("We store vectors in pgvector with an HNSW index", "My cat sleeps on the windowsill"),
        ("Deploys are rolled back with a single command", "Tomatoes need plenty of sunlight"),
    ]
    for a, b in paraphrases:
        va, vb = await embedder.embed_many([a, b])
        assert cos(va, vb) > 0.5, (a, b, cos(va, vb))
    for a, b in unrelated:
        va, vb = await embedder.embed_many([a, b])
        assert cos(va, vb) < 0.3, (a, b, cos(va, vb))


async def test_concurrent_embeds_coalesce_into_few_model_calls() -> None:
    texts = [f"Fact number {i}: the cache for tenant {i} is warmed at startup." for i in range(16)]
    texts.append("A much longer fact that pads the batch: " + "the migration runs in three phases " * 12)
    async with CountingOnnxEmbedder(batch_size=32) as e:
        individual = []
        for text in texts:
            individual.append(await e.embed(text))
        e.batches.clear()
        together = await asyncio.gather(*(e.embed(t) for t in texts))
        assert len(e.batches) < len(texts)
        assert len(e.batches) <= 2
        for one, batched in zip(individual, together, strict=True):
            assert cos(one, batched) > 0.9999


async def test_batches_never_exceed_batch_size() -> None:
    async with CountingOnnxEmbedder(batch_size=8) as e:
        vectors = await e.embed_many([f"sentence {i}" for i in range(20)])
    assert len(vectors) == 20
    assert all(len(b) <= 8 for b in e.batches)
    assert sum(len(b) for b in e.batches) == 20


async def test_embedding_does_not_block_the_event_loop(embedder: OnnxEmbedder) -> None:
    texts = [f"Sentence {i} about the shared memory of a fleet of agents, " * 6 for i in range(96)]
    ticks: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.005)

    task = asyncio.create_task(ticker())
    start = time.perf_counter()
    await embedder.embed_many(texts)
    elapsed = time.perf_counter() - start
    done.set()
    await task
    gaps = np.diff(ticks)
    assert elapsed > 0.1  # the batch was big enough to matter
    # A blocked loop shows one gap as long as the whole batch; allow for a busy 2-core machine.
    assert len(ticks) > elapsed / 0.005 * 0.2
    assert gaps.max() < 0.25


async def test_very_long_and_empty_texts(embedder: OnnxEmbedder) -> None:
    huge = "word " * 200_000
    start = time.perf_counter()
    long_vec, empty_vec = await embedder.embed_many([huge, ""])
    assert time.perf_counter() - start < 5
    assert len(long_vec) == len(empty_vec) == 384
    assert np.isfinite(long_vec).all() and np.isfinite(empty_vec).all()


async def test_embed_many_of_nothing(embedder: OnnxEmbedder) -> None:
    assert await embedder.embed_many([]) == []


async def test_tampered_tokenizer_is_a_config_error(tmp_path: Path) -> None:
    copy = tmp_path / "tokenizer.json"
    shutil.copyfile(TOKENIZER_PATH, copy)
    data = bytearray(copy.read_bytes())
    data[100] ^= 0x01
    copy.write_bytes(bytes(data))
    e = OnnxEmbedder(tokenizer_path=copy)
    with pytest.raises(ConfigError, match=r"tokenizer.*reinstall"):
        await e.open()
    assert not e.is_open


async def test_tampered_model_is_a_config_error(tmp_path: Path) -> None:
    fake = tmp_path / "model.onnx"
    fake.write_bytes(b"not a model")
    with pytest.raises(ConfigError, match=r"embedding model.*reinstall"):
        await OnnxEmbedder(model_path=fake).open()
    with pytest.raises(ConfigError, match="missing"):
        await OnnxEmbedder(model_path=tmp_path / "absent.onnx").open()


async def test_embed_before_open_is_a_clear_error() -> None:
    e = OnnxEmbedder()
    with pytest.raises(RuntimeError, match=r"not open.*open\(\)"):
        await e.embed("hello")
    with pytest.raises(RuntimeError, match="not open"):
        await e.embed_many(["hello"])


async def test_factory_builds_the_local_embedder() -> None:
    settings = Settings(embedding_provider="local", embedding_batch_size=7, embedding_threads=1)
    e = create_embedder(settings.model_copy(update={"embedding_service": "off"}))
    assert isinstance(e, OnnxEmbedder) and e.batch_size == 7
    shared = create_embedder(settings)  # by default through the machine's embedding service (test_service.py)
    assert shared.model_id == e.model_id and shared.dimension == e.dimension and shared.batch_size == 7
    with pytest.raises(ConfigError, match="384"):
        create_embedder(Settings(embedding_provider="local", embedding_dimensions=1536))


# --- the coalescing worker (no model) -------------------------------------------------------------


async def test_batch_failure_reaches_every_caller_with_a_safe_message() -> None:
    e = FakeEmbedder(fail_with=RuntimeError("boom at https://user:sk-secret@example.com"))
    async with e:
        results = await asyncio.gather(*(e.embed(f"t{i}") for i in range(5)), return_exceptions=True)
        assert len(e.batches) == 1 + 5  # the failed batch, then each text alone (isolating a bad input)
        for result in results:
            assert isinstance(result, EmbeddingUnavailable)
            assert "sk-secret" not in result.message and "example.com" not in result.message
        # the worker survives and serves the next batch
        e.fail_with = None
        assert len(await e.embed("ok")) == 8


async def test_one_bad_input_fails_only_its_own_caller() -> None:
    class PickyEmbedder(FakeEmbedder):
        async def _embed_batch(self, texts: list[str]) -> npt.NDArray[np.floating]:
            if "poison" in texts:
                raise RuntimeError("the model rejects one input")
            return await super()._embed_batch(texts)

    async with PickyEmbedder() as e:
        results = await asyncio.gather(*(e.embed(t) for t in ["a", "poison", "b"]), return_exceptions=True)

    assert isinstance(results[1], EmbeddingUnavailable)
    assert all(isinstance(r, array) and len(r) == 8 for r in (results[0], results[2]))


async def test_provider_errors_pass_through_unchanged() -> None:
    async with FakeEmbedder(fail_with=ConfigError("check OPENAI_API_KEY")) as e:
        with pytest.raises(ConfigError, match="check OPENAI_API_KEY"):
            await e.embed("x")


async def test_cancelling_one_caller_does_not_break_the_worker() -> None:
    async with FakeEmbedder(hold=True) as e:
        first = asyncio.create_task(e.embed("first"))
        await e.inside(1)  # "first" is now inside the model call
        victim = asyncio.create_task(e.embed("victim"))
        others = [asyncio.create_task(e.embed(f"other {i}")) for i in range(3)]
        await asyncio.sleep(0)  # one turn of the loop: they are queued behind "first"
        victim.cancel()
        e.gate.set()
        results = await asyncio.gather(first, *others)
        assert victim.cancelled()
        assert all(len(r) == 8 for r in results)
        assert "victim" not in [t for batch in e.batches for t in batch]
        assert len(await e.embed("after")) == 8

        # a caller cancelled while its text is inside the model call
        e.gate.clear()
        in_flight = asyncio.create_task(e.embed("in flight"))
        neighbour = asyncio.create_task(e.embed("neighbour"))
        await e.inside(len(e.batches) + 1)
        assert e.batches[-1] == ["in flight", "neighbour"]
        in_flight.cancel()
        e.gate.set()
        assert len(await neighbour) == 8
        assert in_flight.cancelled()
        assert len(await e.embed("after again")) == 8


async def test_an_urgent_text_goes_ahead_of_the_backlog_in_a_batch_of_its_own() -> None:
    async with FakeEmbedder(hold=True, batch_size=4) as e:
        backlog = asyncio.create_task(e.embed_many([f"backlog {i}" for i in range(40)]))
        await e.inside(1)  # the backlog's first batch is inside the model call, 36 texts queued behind it
        question = asyncio.create_task(e.embed("what broke the deploy?", urgent=True))
        await asyncio.sleep(0)  # one turn of the loop: the question is queued
        e.gate.set()
        await asyncio.gather(backlog, question)
    assert e.batches[1] == ["what broke the deploy?"]  # after the running batch only, not the 36 queued
    assert sum(len(batch) for batch in e.batches) == 41


async def test_urgent_and_background_texts_never_share_a_batch() -> None:
    async with FakeEmbedder(batch_size=8) as e:
        calls = [e.embed(f"text {i}", urgent=i % 3 == 0) for i in range(30)]
        await asyncio.gather(*calls)
    for batch in e.batches:
        urgent = [int(text.split()[1]) % 3 == 0 for text in batch]
        assert len(set(urgent)) == 1, batch
    assert [t for t in e.batches[0]] == [f"text {i}" for i in range(0, 24, 3)]  # the urgent ones lead


async def test_duplicates_in_a_batch_are_embedded_once() -> None:
    async with FakeEmbedder() as e:
        a, b = await asyncio.gather(e.embed("same"), e.embed("same"))
        np.testing.assert_array_equal(a, b)
        assert e.batches == [["same"]]
        a[0] = 42.0  # callers get their own arrays
        assert b[0] != 42.0


async def test_close_fails_waiting_callers_and_reopen_works() -> None:
    e = FakeEmbedder(hold=True)
    await e.open()
    pending = asyncio.create_task(e.embed("slow"))
    await e.inside(1)
    await e.close()
    with pytest.raises(EmbeddingUnavailable, match="closed"):
        await pending
    with pytest.raises(RuntimeError, match="not open"):
        await e.embed("x")
    e.gate.set()
    async with e:
        assert len(await e.embed("again")) == 8


async def test_wrong_shape_from_a_provider_is_unavailable() -> None:
    class Broken(FakeEmbedder):
        async def _embed_batch(self, texts: list[str]) -> npt.NDArray[np.float32]:
            return np.ones((len(texts), 3), dtype=np.float32)

    async with Broken() as e:
        with pytest.raises(EmbeddingUnavailable, match="3 dimensions, expected 1 of 8"):
            await e.embed("x")


async def test_results_are_normalised_by_the_base_class() -> None:
    async with FakeEmbedder() as e:
        v = await e.embed("abc")
    assert abs(float(np.linalg.norm(v)) - 1.0) < 1e-6


async def test_background_open_queues_requests_until_the_model_is_loaded() -> None:
    embedder = OnnxEmbedder()
    await embedder.open(wait=False)
    try:
        vector = await embedder.embed("queued before the model finished loading")
        assert len(vector) == 384
    finally:
        await embedder.close()


async def test_background_open_hands_a_load_failure_to_every_request(tmp_path: Path) -> None:
    broken = tmp_path / "tokenizer.json"
    broken.write_text("{}")
    embedder = OnnxEmbedder(tokenizer_path=broken)
    await embedder.open(wait=False)
    try:
        for _ in range(2):
            with pytest.raises(ConfigError):
                await embedder.embed("x")
    finally:
        await embedder.close()
