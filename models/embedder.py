"""Sentence embeddings for retrieval grounding: all-MiniLM-L6-v2, mean pooled, unit norm.

``Embedder.load()`` serves the packaged encoder in torch; ``export_embedder(folder)`` writes
an int8 ONNX copy for the fast path (``Embedder.load(folder, backend="onnx")``). A guard
folder is also an embedder folder: its ONNX graph outputs the same pretrained embedding
beside the guard probabilities, and :meth:`models.guard.Guard.embedder` shares the
guard's session so the gateway embeds a request and classifies it in one forward pass.

Long texts are embedded window by window (``max_length`` tokens, overlapping) and the
window vectors averaged by token count, so no text is silently cut short.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.encoder import (
    EmbeddingEncoder,
    EncoderBackend,
    OnnxBackend,
    TorchBackend,
    encoder_dir,
    load_bert,
    load_tokenizer,
    normalize_text,
    pool_embeddings,
    resolve_backend,
    run_windows,
)

logger = logging.getLogger(__name__)

EMBEDDER_CONFIG_FILE = "embedder_config.json"
EMBEDDER_ONNX_FILE = "embedder.int8.onnx"
DEFAULT_MAX_LENGTH = 128
DEFAULT_STRIDE = 32


class Embedder:
    """Encodes texts to L2-normalised float32 vectors. Build with :meth:`load`.

    With ``normalize`` (the default) texts pass through
    :func:`models.encoder.normalize_text` first, as the guard's do, so a disguised query
    still lands near the clean document it asks about.
    """

    def __init__(
        self,
        backend: EncoderBackend,
        tokenizer: Any,
        max_length: int = DEFAULT_MAX_LENGTH,
        window_stride: int = DEFAULT_STRIDE,
        dim: int = 384,
        batch_size: int = 64,
        normalize: bool = True,
    ) -> None:
        if "embedding" not in backend.output_names:
            raise ValueError(
                f"backend outputs {backend.output_names}; an embedder needs an 'embedding' output"
            )
        self.backend = backend
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.window_stride = window_stride
        self.dim = dim
        self.batch_size = batch_size
        self.normalize = normalize

    @classmethod
    def load(
        cls,
        folder: str | Path | None = None,
        backend: str = "torch",
        threads: int | None = None,
    ) -> Embedder:
        """Load an embedder.

        Args:
            folder: ``None`` for the packaged encoder; a folder from
                :func:`export_embedder`; a guard folder (its shared graph); or any Hugging
                Face BERT-style model folder (torch backend only).
            backend: ``"torch"`` (fp32) or ``"onnx"`` (int8; needs an exported folder).
            threads: intra-op threads (ONNX: per session, default 1; torch: process-wide,
                ``None`` leaves torch's setting alone).

        Raises:
            ValueError: unknown backend, or ``"onnx"`` for a folder without an ONNX export.

        """
        from models.guard_folder import GUARD_CONFIG_FILE, load_guard_backend, read_guard_config

        resolve_backend(backend)
        path = Path(folder) if folder is not None else encoder_dir()
        if (path / GUARD_CONFIG_FILE).is_file():
            guard_meta = read_guard_config(path)
            engine = load_guard_backend(path, backend, threads, guard_meta)
            return cls(
                engine,
                load_tokenizer(path),
                int(guard_meta["max_length"]),
                int(guard_meta["window_stride"]),
                int(guard_meta["embedding_dim"]),
                normalize=bool(guard_meta["normalize"]),
            )
        meta = _read_embedder_config(path)
        if backend == "onnx":
            if meta is None:
                raise ValueError(
                    f"{path}: no {EMBEDDER_CONFIG_FILE}; write an ONNX embedder with "
                    "export_embedder(folder) or use backend='torch'"
                )
            onnx_engine: EncoderBackend = OnnxBackend(path / meta["onnx"], threads=threads or 1)
            return cls(
                onnx_engine,
                load_tokenizer(path),
                int(meta["max_length"]),
                int(meta["window_stride"]),
                int(meta["dim"]),
            )
        module = EmbeddingEncoder(load_bert(path))
        return cls(
            TorchBackend(module, threads=threads),
            load_tokenizer(path),
            int(meta["max_length"]) if meta else DEFAULT_MAX_LENGTH,
            int(meta["window_stride"]) if meta else DEFAULT_STRIDE,
            module.hidden_size,
        )

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts.

        Returns:
            (len(texts), dim) float32, each row of unit L2 norm (cosine = dot product).

        """
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        windows = run_windows(
            self.backend,
            self.tokenizer,
            [normalize_text(t) for t in texts] if self.normalize else texts,
            max_length=self.max_length,
            stride=self.window_stride,
            batch_size=self.batch_size,
        )
        return pool_embeddings(windows)


def _read_embedder_config(folder: Path) -> dict[str, Any] | None:
    path = folder / EMBEDDER_CONFIG_FILE
    if not path.is_file():
        return None
    return dict(json.loads(path.read_text(encoding="utf-8")))


def export_embedder(
    out_dir: str | Path,
    encoder_folder: str | Path | None = None,
    max_length: int = DEFAULT_MAX_LENGTH,
    window_stride: int = DEFAULT_STRIDE,
) -> Path:
    """Write an embedder folder: tokenizer, encoder config + weights, int8 ONNX graph.

    The folder serves with either backend (torch reads the HF weights, ONNX the int8 graph).

    Raises:
        OnnxToolingMissingError: the ``onnx`` package is missing.

    """
    from models.onnx_export import export_int8, require_onnx

    require_onnx()
    if not 0 <= window_stride < max_length // 2:
        raise ValueError(
            f"window_stride must be in [0, max_length/2); got {window_stride} for {max_length}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    source = encoder_folder or encoder_dir()
    bert = load_bert(source)
    bert.save_pretrained(str(out))
    load_tokenizer(source).save_pretrained(str(out))
    module = EmbeddingEncoder(bert)
    export_int8(module, out / EMBEDDER_ONNX_FILE)
    meta = {
        "onnx": EMBEDDER_ONNX_FILE,
        "max_length": max_length,
        "window_stride": window_stride,
        "dim": module.hidden_size,
        "encoder_source": str(source),
    }
    (out / EMBEDDER_CONFIG_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return out


def top_k(query_vecs: np.ndarray, doc_vecs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Nearest documents by cosine similarity (rows are assumed unit norm).

    Args:
        query_vecs: (q, dim) or (dim,) query vectors.
        doc_vecs: (d, dim) document vectors.
        k: neighbours per query; capped at d.

    Returns:
        ``(indices, scores)``, each (q, min(k, d)), best first; ties keep document order.

    Raises:
        ValueError: k < 1 or the dimensions differ.

    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    queries = np.atleast_2d(np.asarray(query_vecs, dtype=np.float32))
    docs = np.atleast_2d(np.asarray(doc_vecs, dtype=np.float32))
    if docs.shape[0] == 0:
        return (
            np.zeros((len(queries), 0), dtype=np.int64),
            np.zeros((len(queries), 0), np.float32),
        )
    if queries.shape[1] != docs.shape[1]:
        raise ValueError(f"query dim {queries.shape[1]} != document dim {docs.shape[1]}")
    sims = queries @ docs.T
    k = min(k, docs.shape[0])
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return order.astype(np.int64), np.take_along_axis(sims, order, axis=1)
