"""A guard folder on disk: its format, its config file and its inference engine.

Kept apart from :mod:`models.guard` (training, calibration, the :class:`~models.guard.Guard`
API) so that :mod:`models.embedder` can open a guard folder's shared graph without
importing the guard module, which imports the embedder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from models.encoder import (
    EncoderBackend,
    GuardEncoder,
    GuardHeadSpec,
    OnnxBackend,
    TorchBackend,
    bert_from_config,
)

GUARD_LABELS: tuple[str, ...] = ("benign", "harmful", "injection")
BENIGN = "benign"
GUARD_CONFIG_FILE = "guard_config.json"
GUARD_WEIGHTS_FILE = "guard.safetensors"
GUARD_ONNX_FILE = "guard.int8.onnx"
FOLDER_FORMAT = "loopwright-guard"
FOLDER_FORMAT_VERSION = 1


def read_guard_config(folder: Path) -> dict[str, Any]:
    """Read and check ``guard_config.json`` in ``folder``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a guard folder of a format this code reads.

    """
    path = folder / GUARD_CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a guard folder (no {GUARD_CONFIG_FILE})")
    meta = json.loads(path.read_text(encoding="utf-8"))
    if meta.get("format") != FOLDER_FORMAT or meta.get("format_version") != FOLDER_FORMAT_VERSION:
        raise ValueError(
            f"{path}: format {meta.get('format')!r} v{meta.get('format_version')!r}; this code "
            f"reads {FOLDER_FORMAT!r} v{FOLDER_FORMAT_VERSION}"
        )
    if tuple(meta.get("labels", ())) != GUARD_LABELS:
        raise ValueError(f"{path}: labels {meta.get('labels')} != {list(GUARD_LABELS)}")
    return meta


def load_guard_module(folder: Path, meta: dict[str, Any] | None = None) -> GuardEncoder:
    """Rebuild the torch :class:`GuardEncoder` from a guard folder's weights."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    meta = meta or read_guard_config(folder)
    config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    module = GuardEncoder(bert_from_config(config), GuardHeadSpec(**meta["spec"]))
    module.load_state_dict(load_file(str(folder / GUARD_WEIGHTS_FILE)), strict=True)
    return module.eval()


def load_guard_backend(
    folder: Path, backend: str, threads: int | None, meta: dict[str, Any] | None = None
) -> EncoderBackend:
    """Open the inference engine of a guard folder (outputs ``embedding`` and ``probs``)."""
    meta = meta or read_guard_config(folder)
    if backend == "onnx":
        onnx_file = meta.get("onnx")
        if not onnx_file:
            raise ValueError(
                f"{folder}: trained without an ONNX export (export_onnx=False); "
                "load with backend='torch' or retrain with export_onnx=True"
            )
        return OnnxBackend(folder / onnx_file, threads=threads or 1)
    return TorchBackend(load_guard_module(folder, meta), threads=threads)
