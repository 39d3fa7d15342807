"""Per-input latency of the guard at 384-character inputs: torch fp32 vs ONNX Runtime int8.

Baseline and candidate run in the same process on the same distinct inputs, interleaved
input by input so a load spike on a shared machine hits both alike:

- ``torch_fp32_2t``: the guard's torch module (fp32, 2 intra-op threads);
- ``onnx_int8_1t``: the served fast path (dynamic int8, 1 thread);
- ``onnx_int8_1t_embed_only``: the embedder alone, to show what the shared pass adds;

each measured through the full ``Guard.analyse`` path (normalisation, tokenisation, one
forward pass, verdict + embedding). Prints one ``name: value`` line per figure: wall
p50/p99 in ms, CPU ms per input (robust to other processes' load), and the ratios.

Usage: ``python bench/guard_latency.py [--guard DIR] [--n 300]``. Without ``--guard`` the
pretrained encoder with an untrained head is used: weights do not change the cost.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from models.embedder import Embedder  # noqa: E402
from models.encoder import (  # noqa: E402
    EmbeddingEncoder,
    GuardEncoder,
    GuardHeadSpec,
    OnnxBackend,
    TorchBackend,
    load_bert,
    load_tokenizer,
)
from models.guard import GUARD_LABELS, Guard  # noqa: E402
from models.guard_folder import load_guard_module, read_guard_config  # noqa: E402
from models.onnx_export import export_int8  # noqa: E402

CHARS = 384


def make_inputs(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct 384-character prompts built from the example domain's prompts."""
    from examples.helpdesk import build_domain

    pool = [x.text for x in build_domain(seed, 0.3).guard_heldout]
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        text = ""
        while len(text) < CHARS:
            text += rng.choice(pool) + " "
        out.append(text[:CHARS])
    return out


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guard", type=Path, default=None, help="a trained guard folder")
    parser.add_argument("--n", type=int, default=300, help="measured inputs per backend")
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()

    tokenizer = load_tokenizer()
    with tempfile.TemporaryDirectory(prefix="lw-bench-") as tmp:
        if args.guard is not None:
            meta = read_guard_config(args.guard)
            module = load_guard_module(args.guard, meta)
            thresholds = meta["thresholds"]
        else:
            torch.manual_seed(0)
            spec = GuardHeadSpec(num_labels=3, trainable_layers=2, head_hidden=256)
            module = GuardEncoder(load_bert(), spec).eval()
            thresholds = {lab: 0.5 for lab in GUARD_LABELS[1:]}
        guard_onnx = export_int8(module, Path(tmp) / "guard.int8.onnx")
        embed_onnx = export_int8(EmbeddingEncoder(load_bert()), Path(tmp) / "embed.int8.onnx")
        max_length, stride = 128, 32

        def guard_with(backend: object) -> Guard:
            return Guard(backend, tokenizer, thresholds, max_length, stride)  # type: ignore[arg-type]

        torch_guard = guard_with(TorchBackend(module, threads=2))
        onnx_guard = guard_with(OnnxBackend(guard_onnx, threads=1))
        embed_only = Embedder(OnnxBackend(embed_onnx, threads=1), tokenizer, max_length, stride)

        candidates: dict[str, Callable[[list[str]], object]] = {
            "torch_fp32_2t": torch_guard.analyse,
            "onnx_int8_1t": onnx_guard.analyse,
            "onnx_int8_1t_embed_only": embed_only.encode,
        }
        inputs = make_inputs(args.n + args.warmup)
        n_tokens = [len(tokenizer(t)["input_ids"]) for t in inputs]
        wall: dict[str, list[float]] = {k: [] for k in candidates}
        cpu: dict[str, list[float]] = {k: [] for k in candidates}
        names = list(candidates)
        for i, text in enumerate(inputs):
            # torch's thread count is process-wide; set it for the torch run only.
            order = names if i % 2 == 0 else names[::-1]
            for name in order:
                torch.set_num_threads(2 if name.startswith("torch") else 1)
                c0, t0 = time.process_time(), time.perf_counter()
                candidates[name]([text])
                t1, c1 = time.perf_counter(), time.process_time()
                if i >= args.warmup:
                    wall[name].append((t1 - t0) * 1e3)
                    cpu[name].append((c1 - c0) * 1e3)

    print(f"inputs: {args.n}")
    print(f"input_chars: {CHARS}")
    print(f"input_tokens_mean: {statistics.mean(n_tokens):.1f}")
    print(f"machine_load_1min: {os.getloadavg()[0]:.2f}")
    for name in names:
        print(f"{name}_p50_ms: {percentile(wall[name], 50):.2f}")
        print(f"{name}_p99_ms: {percentile(wall[name], 99):.2f}")
        print(f"{name}_cpu_ms_mean: {statistics.mean(cpu[name]):.2f}")
    base, fast = "torch_fp32_2t", "onnx_int8_1t"
    print(
        f"speedup_p50_onnx_vs_torch: {percentile(wall[base], 50) / percentile(wall[fast], 50):.2f}"
    )
    print(
        f"speedup_p99_onnx_vs_torch: {percentile(wall[base], 99) / percentile(wall[fast], 99):.2f}"
    )
    print(f"cpu_ratio_torch_vs_onnx: {statistics.mean(cpu[base]) / statistics.mean(cpu[fast]):.2f}")
    print(
        "shared_pass_cost_vs_embed_only_p50: "
        f"{percentile(wall[fast], 50) / percentile(wall['onnx_int8_1t_embed_only'], 50):.2f}"
    )


if __name__ == "__main__":
    main()
