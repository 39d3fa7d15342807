"""Embedder: unit vectors, retrieval finds the matching document, ONNX agrees with torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.embedder import EMBEDDER_CONFIG_FILE, Embedder, export_embedder, top_k

DOCS = [
    "To reset your password, open Settings, then Security, and click Reset password.",
    "The Pro plan costs 20 dollars per user per month, billed monthly or yearly.",
    "Invoices can be downloaded from Billing, then History.",
    "Workspaces can be hosted in the EU, US or APAC regions.",
    "Files larger than 5 GB cannot be uploaded in one piece.",
]
QUERIES = [
    "I forgot my password, how do I change it?",
    "how much is the pro subscription",
    "where do I get a copy of my bill",
    "which data centre locations can I choose",
    "what's the biggest file I can upload",
]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def torch_embedder() -> Embedder:
    return Embedder.load(None, backend="torch")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    return export_embedder(tmp_path_factory.mktemp("embedder"))


def test_vectors_are_unit_norm_float32(torch_embedder: Embedder) -> None:
    vecs = torch_embedder.encode(DOCS + ["", "x" * 2000])
    assert vecs.shape == (len(DOCS) + 2, 384) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert torch_embedder.encode([]).shape == (0, 384)


def test_retrieval_finds_the_matching_document(torch_embedder: Embedder) -> None:
    idx, scores = top_k(torch_embedder.encode(QUERIES), torch_embedder.encode(DOCS), k=2)
    assert idx[:, 0].tolist() == list(range(len(DOCS)))
    assert (scores[:, 0] > scores[:, 1]).all()


def test_onnx_int8_agrees_with_torch(exported: Path, torch_embedder: Embedder) -> None:
    assert (exported / EMBEDDER_CONFIG_FILE).is_file()
    fast = Embedder.load(exported, backend="onnx", threads=1)
    a, b = fast.encode(QUERIES + DOCS), torch_embedder.encode(QUERIES + DOCS)
    assert ((a * b).sum(axis=1) > 0.98).all()
    idx, _ = top_k(fast.encode(QUERIES), fast.encode(DOCS), k=1)
    assert idx[:, 0].tolist() == list(range(len(DOCS)))


def test_exported_folder_also_serves_torch(exported: Path, torch_embedder: Embedder) -> None:
    reloaded = Embedder.load(exported, backend="torch")
    np.testing.assert_allclose(reloaded.encode(DOCS), torch_embedder.encode(DOCS), atol=1e-5)


def test_a_plain_folder_has_no_onnx_backend(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="export_embedder"):
        Embedder.load(tmp_path, backend="onnx")
    with pytest.raises(ValueError, match="valid backends"):
        Embedder.load(None, backend="openvino")


def test_long_text_pools_its_windows(torch_embedder: Embedder) -> None:
    long_doc = " ".join([DOCS[0]] * 40)  # ~800 tokens: several windows
    vec = torch_embedder.encode([long_doc])
    assert vec.shape == (1, 384)
    np.testing.assert_allclose(np.linalg.norm(vec), 1.0, atol=1e-5)
    idx, scores = top_k(vec, torch_embedder.encode(DOCS), k=2)
    assert idx[0, 0] == 0 and scores[0, 0] > 0.8 and scores[0, 0] - scores[0, 1] > 0.2


def test_disguised_queries_are_normalised(torch_embedder: Embedder) -> None:
    clean = torch_embedder.encode(["reset my password"])
    disguised = torch_embedder.encode(["r\u0435s\u0435t m\u0443\u200b p\u0430ssword"])
    np.testing.assert_allclose(clean, disguised, atol=1e-6)


def test_top_k_contract() -> None:
    docs = np.eye(3, dtype=np.float32)
    idx, scores = top_k(np.array([0.0, 1.0, 0.0]), docs, k=5)
    assert idx.shape == (1, 3) and idx[0, 0] == 1 and scores[0, 0] == 1.0
    assert idx[0, 1:].tolist() == [0, 2]  # ties keep document order
    with pytest.raises(ValueError, match="k must be >= 1"):
        top_k(docs, docs, k=0)
    with pytest.raises(ValueError, match="query dim 2 != document dim 3"):
        top_k(np.ones((1, 2)), docs, k=1)
    empty_idx, _ = top_k(docs, np.zeros((0, 3)), k=2)
    assert empty_idx.shape == (3, 0)
