"""Guard, reward and retrieval quality on the example domain's held-out data, plus train times.

One run does what the bootstrap does for these models (issue 3 items 4-6) and measures
what issues 3 and 5 ask:

- guard v1 trained on ``guard_train``; on ``guard_heldout``, with the backend that serves
  (ONNX int8, 1 thread) and, for comparison, torch fp32: benign false-positive rate and
  recall on harmful and on injection at the calibrated thresholds, plus slices;
- reward v1 trained with trl's RewardTrainer on ``reward_train``; pairwise accuracy on
  ``reward_heldout`` (overall and per pair source);
- refresh (``--parts refresh``): the nightly's reward refresh of reward v1 on the
  domain's reviewer pairs, without and with replay of v1's pairs, judged on the held-out
  pairs at the current KB revision (as the nightly judges it);
- retrieval: KB revision-2 answers as documents, the correctness suite's questions as
  queries; recall@1/@3 with the pretrained torch embedder (baseline) and with the guard's
  shared int8 embedding (what the gateway gets from the one forward pass);
- training wall and CPU seconds for guard and reward.

Prints one ``name: value`` line per figure. Usage:
``python bench/guard_quality.py [--out DIR] [--threads 2] [--scale 1.0] [--parts LIST]
[--guard-config JSON] [--reward-config JSON]``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from examples.helpdesk.generate import DomainData  # noqa: E402
from models.embedder import Embedder, top_k  # noqa: E402
from models.guard import Guard, GuardConfig, evaluate_guard, train_guard  # noqa: E402
from models.reward import (  # noqa: E402
    RewardModel,
    RewardTrainConfig,
    pairwise_accuracy,
    train_reward,
)

T = TypeVar("T")


def timed(fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, float, float]:
    """Run ``fn``; return (result, wall seconds, CPU seconds of this process)."""
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="keep the trained folders here")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--parts",
        default="guard,reward,retrieval",
        help="comma list: guard,reward,retrieval,refresh (refresh: the nightly reward refresh "
        "on the domain's reviewer pairs, with and without replay; implies reward)",
    )
    parser.add_argument(
        "--guard-config", default=None, help="JSON overrides, e.g. '{\"epochs\": 4}'"
    )
    parser.add_argument(
        "--reward-config", default=None, help="JSON overrides, e.g. '{\"epochs\": 3}'"
    )
    args = parser.parse_args()

    from examples.helpdesk import build_domain

    torch.set_num_threads(args.threads)
    domain = build_domain(args.seed, args.scale)
    tmp = tempfile.TemporaryDirectory(prefix="lw-bench-")
    out = args.out or Path(tmp.name)
    print(f"machine_load_1min_start: {os.getloadavg()[0]:.2f}")

    parts = set(args.parts.split(","))
    if "retrieval" in parts:
        parts.add("guard")
    if "refresh" in parts:
        parts.add("reward")
    if "guard" in parts:
        run_guard(domain, out, args)
    if "reward" in parts:
        run_reward(domain, out, args)
    if "refresh" in parts:
        run_refresh(domain, out, args)
    if "retrieval" in parts:
        run_retrieval(domain, out)
    print(f"machine_load_1min_end: {os.getloadavg()[0]:.2f}")
    tmp.cleanup()


def run_guard(domain: DomainData, out: Path, args: argparse.Namespace) -> None:
    overrides = json.loads(args.guard_config) if args.guard_config else {}
    guard_cfg = GuardConfig(threads=args.threads, seed=args.seed, **overrides)
    print(f"guard_config: {guard_cfg.model_dump_json(exclude={'progress', 'encoder_folder'})}")
    result, wall, cpu = timed(train_guard, domain.guard_train, guard_cfg, out / "guard")
    print(f"guard_train_examples: {result.n_train}")
    print(f"guard_val_examples: {result.n_val}")
    print(f"guard_train_wall_s: {wall:.1f}")
    print(f"guard_train_cpu_s: {cpu:.1f}")
    print(f"guard_export_wall_s: {result.export_seconds:.1f}")
    print(f"guard_loss_first: {result.loss_first:.3f}")
    print(f"guard_loss_last: {result.loss_last:.3f}")
    for lab, thr in result.calibration.thresholds.items():
        print(f"guard_threshold_{lab}: {thr:.3f}")
    print(f"guard_val_benign_fpr: {result.calibration.benign_fpr:.3f}")
    heldout = domain.guard_heldout
    for backend, threads in (("onnx", 1), ("torch", args.threads)):
        guard = Guard.load(out / "guard", backend=backend, threads=threads)
        report = evaluate_guard(guard, heldout)
        tag = f"guard_heldout_{backend}"
        print(f"{tag}_n: {report.n}")
        print(f"{tag}_benign_fpr: {report.benign_fpr:.3f}")
        for lab, rec in report.recall.items():
            print(f"{tag}_recall_{lab}: {rec:.3f}")
        print(f"{tag}_label_accuracy: {report.label_accuracy:.3f}")
        if backend == "onnx":
            for key, entry in report.by_tag.items():
                if key.split("=")[0] in ("transform", "source", "role"):
                    for metric, value in entry.items():
                        print(f"{tag}_slice[{key}]_{metric}: {value:.3f}")
    torch.set_num_threads(args.threads)


def run_reward(domain: DomainData, out: Path, args: argparse.Namespace) -> None:
    overrides = json.loads(args.reward_config) if args.reward_config else {}
    reward_cfg = RewardTrainConfig(threads=args.threads, seed=args.seed, **overrides)
    print(f"reward_config: {reward_cfg.model_dump_json(exclude={'progress', 'encoder_folder'})}")
    rresult, wall, cpu = timed(train_reward, domain.reward_train, reward_cfg, out / "reward")
    print(f"reward_train_pairs: {rresult.n_used}")
    print(f"reward_train_wall_s: {wall:.1f}")
    print(f"reward_train_cpu_s: {cpu:.1f}")
    print(f"reward_loss_first: {rresult.loss_first:.3f}")
    print(f"reward_loss_last: {rresult.loss_last:.3f}")
    model = RewardModel.load(out / "reward")
    print(f"reward_heldout_pairs: {len(domain.reward_heldout)}")
    print(
        f"reward_heldout_pairwise_accuracy: {pairwise_accuracy(model, domain.reward_heldout):.3f}"
    )
    by_source = defaultdict(list)
    for pair in domain.reward_heldout:
        by_source[pair.source].append(pair)
    for source, pairs in sorted(by_source.items()):
        name = source.split("/")[-1]
        print(
            f"reward_heldout_accuracy[{name}]_n{len(pairs)}: {pairwise_accuracy(model, pairs):.3f}"
        )


def run_refresh(domain: DomainData, out: Path, args: argparse.Namespace) -> None:
    """The nightly's ``refresh_reward`` continuing reward v1 on the reviewer pairs.

    New pairs: ``reward_v2_new`` (stale facts, uncovered categories). Judged, as the nightly
    judges it, on the held-out pairs at the current KB revision; also on the revision-1
    held-out pairs and on the new pairs themselves (did it learn them?). Arms: no replay at
    the old learning rate 2e-4 (the recipe before replay), the default (replay, its rate),
    and replay at 2e-4.
    """
    from loopwright.nightly import NightlyConfig, refresh_reward
    from loopwright.records import write_jsonl

    files = {
        "new": (out / "refresh" / "new.jsonl", domain.reward_v2_new),
        "replay": (out / "refresh" / "replay.jsonl", domain.reward_train),
        "heldout": (out / "refresh" / "heldout_current.jsonl", domain.reward_heldout_current),
    }
    for path, pairs in files.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(path, pairs)
    default = NightlyConfig(seed=args.seed)
    arms = {
        "no_replay_lr2e-4": default.model_copy(
            update={"reward_replay_ratio": 0.0, "reward_learning_rate": 2e-4}
        ),
        "default": default,
        "replay_lr2e-4": default.model_copy(update={"reward_learning_rate": 2e-4}),
    }
    print(f"refresh_new_pairs: {len(domain.reward_v2_new)}")
    print(f"refresh_default_replay_ratio: {default.reward_replay_ratio}")
    print(f"refresh_default_learning_rate: {default.reward_learning_rate}")
    v1 = RewardModel.load(out / "reward")
    print(f"refresh_v1_heldout_rev1: {pairwise_accuracy(v1, domain.reward_heldout):.3f}")
    print(f"refresh_v1_new_pairs: {pairwise_accuracy(v1, domain.reward_v2_new):.3f}")
    for name, config in arms.items():
        folder = out / "refresh" / name
        metrics, wall, _ = timed(
            refresh_reward,
            out / "reward",
            files["new"][0],
            files["heldout"][0],
            config,
            folder,
            replay_path=files["replay"][0],
        )
        model = RewardModel.load(folder)
        print(f"refresh_{name}_replay_pairs: {metrics['n_replay_pairs']:.0f}")
        print(f"refresh_{name}_wall_s: {wall:.1f}")
        print(f"refresh_{name}_heldout_current_old: {metrics['heldout_acc_old']:.3f}")
        print(f"refresh_{name}_heldout_current_new: {metrics['heldout_acc_new']:.3f}")
        print(f"refresh_{name}_kept: {metrics['keep_new']:.0f}")
        heldout_rev1 = pairwise_accuracy(model, domain.reward_heldout)
        print(f"refresh_{name}_heldout_rev1: {heldout_rev1:.3f}")
        print(f"refresh_{name}_new_pairs: {pairwise_accuracy(model, domain.reward_v2_new):.3f}")


def run_retrieval(domain: DomainData, out: Path) -> None:
    """Does the guard's shared int8 embedding retrieve like the pretrained encoder?"""
    from examples.helpdesk.kb import knowledge_base

    facts = knowledge_base(2)
    docs = [f.answer for f in facts]
    index = {f.id: i for i, f in enumerate(facts)}
    samples = [s for s in domain.eval_suites["correctness"] if s.tags.get("fact_id") in index]
    queries = [s.messages[-1].content for s in samples]
    target = np.array([index[s.tags["fact_id"]] for s in samples])
    for name, embedder in (
        ("pretrained_torch", Embedder.load(None, backend="torch")),
        ("guard_shared_onnx", Guard.load(out / "guard", backend="onnx").embedder()),
    ):
        idx, _ = top_k(embedder.encode(queries), embedder.encode(docs), k=3)
        print(f"retrieval_{name}_recall_at_1: {(idx[:, 0] == target).mean():.3f}")
        print(f"retrieval_{name}_recall_at_3: {(idx == target[:, None]).any(axis=1).mean():.3f}")
    print(f"retrieval_queries: {len(queries)}")


if __name__ == "__main__":
    main()
