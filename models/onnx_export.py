"""Export an encoder module to ONNX and quantise it dynamically to int8.

The int8 ONNX path is what keeps the gateway's encoders (guard, embedder) within its latency
floor on CPU. Choices:

- TorchScript-based exporter (``dynamo=False``): the dynamo exporter needs ``onnxscript``,
  which the stack does not ship; both need the ``onnx`` package.
- ``per_channel=True`` int8 weights (the closest to the fp32 embeddings).

The measurements behind the int8 path are in docs/decisions/0006-guard-rail-and-encoders.md.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

OPSET = 17


class OnnxToolingMissingError(RuntimeError):
    """The ``onnx`` package (needed to export and quantise, not to serve) is not installed."""


def require_onnx() -> None:
    """Fail early, naming the fix, when the ``onnx`` package is missing.

    Raises:
        OnnxToolingMissingError: ``import onnx`` fails.

    """
    try:
        import onnx  # noqa: F401
    except ImportError as exc:
        raise OnnxToolingMissingError(
            "exporting to ONNX and int8 quantisation need the `onnx` package "
            "(`pip install onnx`); serving an exported model needs only onnxruntime. "
            "Or train with export_onnx=False and serve with backend='torch'."
        ) from exc


def export_int8(module: nn.Module, out_path: str | Path, *, keep_fp32: bool = False) -> Path:
    """Export ``module`` (inputs ``input_ids``, ``attention_mask``) to int8 ONNX.

    Args:
        module: an encoder module whose ``forward(input_ids, attention_mask)`` returns a
            tuple of tensors named by its ``output_names`` attribute; batch and sequence
            axes are exported as dynamic.
        out_path: where the quantised model is written (parent folders are created).
        keep_fp32: also keep the fp32 export beside it as ``<stem>.fp32.onnx``.

    Returns:
        ``out_path``.

    Raises:
        OnnxToolingMissingError: the ``onnx`` package is missing.

    """
    require_onnx()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    output_names = list(module.output_names)  # type: ignore[arg-type]
    module = module.eval()
    # Two rows of different lengths so the traced graph cannot bake in a shape.
    input_ids = torch.tensor([[101, 7592, 2088, 2182, 102], [101, 7592, 102, 0, 0]])
    attention_mask = (input_ids != 0).long()
    dynamic_axes: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch", 1: "seq"},
        "attention_mask": {0: "batch", 1: "seq"},
    }
    for name in output_names:
        dynamic_axes[name] = {0: "batch"}
    with tempfile.TemporaryDirectory(prefix="lw-onnx-") as tmp:
        fp32 = Path(tmp) / "model.fp32.onnx"
        with torch.no_grad():
            torch.onnx.export(
                module,
                (input_ids, attention_mask),
                str(fp32),
                dynamo=False,
                input_names=["input_ids", "attention_mask"],
                output_names=output_names,
                dynamic_axes=dynamic_axes,
                opset_version=OPSET,
            )
        quantize_dynamic(str(fp32), str(out_path), weight_type=QuantType.QInt8, per_channel=True)
        if keep_fp32:
            fp32_out = out_path.with_name(f"{out_path.stem}.fp32.onnx")
            fp32_out.write_bytes(fp32.read_bytes())
    logger.info("exported %s (%.1f MB int8)", out_path, out_path.stat().st_size / 1e6)
    return out_path
