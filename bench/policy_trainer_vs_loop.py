"""Hand-written policy training loop vs transformers.Trainer: same model, data, batch, steps.

Why this exists: the policy is trained with a hand-written loop (models/policy_train.py);
the rules say to prefer library trainers unless they cost speed. This measures it. Both
arms train the default 5M Llama-style model for the same number of steps on the same
encoded rows (batch 32, length-grouped), with the same precision, in one process, after a
short warm-up of each. Also compares bf16 autocast against fp32 for the loop.

Run: PYTHONPATH=. python bench/policy_trainer_vs_loop.py [--steps 40] [--threads 2]
Prints ``name: value`` lines.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from typing import Any

import torch
from transformers import Trainer, TrainingArguments

from models.policy import PolicyConfig, build_model, train_tokenizer
from models.policy_data import EncodedExample, encode_pool
from models.policy_train import LoopSettings, collate, train_loop

ATTRS = ["price", "user limit", "storage quota", "support hours", "refund window", "region"]


def synthetic_rows(n_facts: int = 200, seed: int = 0) -> list[list[dict[str, str]]]:
    """Help-desk-shaped conversations with realistic lengths (about 30-60 tokens each)."""
    rng = random.Random(seed)
    templates = [
        "What is the {a} of the {p} plan?",
        "Can you tell me the {a} for {p}?",
        "I'd like to know the {a} on the {p} tier, please.",
        "{p} plan: what's the {a}?",
        "How do I find out the {a} of {p}?",
    ]
    rows = []
    for i in range(n_facts):
        plan = f"Plan-{i // len(ATTRS)}"
        attr = ATTRS[i % len(ATTRS)]
        value = f"{rng.randrange(1, 999)} units as of revision {rng.randrange(1, 3)}"
        for t in templates:
            rows.append(
                [
                    {"role": "user", "content": t.format(a=attr, p=plan)},
                    {"role": "assistant", "content": f"The {attr} of the {plan} plan is {value}."},
                ]
            )
    return rows


class _ListDataset(torch.utils.data.Dataset):  # type: ignore[type-arg]
    def __init__(self, rows: list[EncodedExample]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        ex = self.rows[i]
        return {"input_ids": ex.input_ids, "labels": ex.labels}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = synthetic_rows()
    cfg = PolicyConfig(max_seconds=None, max_steps=args.steps)
    tok = train_tokenizer([m["content"] for c in rows for m in c], cfg.vocab_size)
    pool = encode_pool(
        tok, rows, max_positions=160, noise=None, noise_variants=0, seed=0, source="bench"
    )
    examples = [v[0] for v in pool.variants]
    pad = tok.pad_token_id

    def loop_arm(bf16: bool, steps: int) -> float:
        model = build_model(cfg, tok)
        settings = LoopSettings(
            lr=cfg.lr,
            min_lr_ratio=0.1,
            warmup_steps=10,
            weight_decay=0.1,
            batch_size=32,
            max_steps=steps,
            max_seconds=None,
            bf16=bf16,
            grad_clip=1.0,
            seed=0,
        )
        stats = train_loop(model, lambda e: examples, settings, pad_id=pad)
        return stats.steps / stats.seconds

    def trainer_arm(bf16: bool, steps: int) -> float:
        model = build_model(cfg, tok)
        with tempfile.TemporaryDirectory() as out:
            targs = TrainingArguments(
                output_dir=out,
                per_device_train_batch_size=32,
                learning_rate=cfg.lr,
                lr_scheduler_type="cosine",
                warmup_steps=10,
                weight_decay=0.1,
                max_steps=steps,
                bf16=bf16,
                use_cpu=True,
                report_to="none",
                save_strategy="no",
                logging_steps=10**6,
                disable_tqdm=True,
                train_sampling_strategy="group_by_length",
                dataloader_num_workers=0,
                seed=0,
            )
            trainer = Trainer(
                model=model,
                args=targs,
                train_dataset=_ListDataset(examples),
                data_collator=lambda feats: collate(
                    [EncodedExample(f["input_ids"], f["labels"]) for f in feats], pad
                ),
            )
            start = time.perf_counter()
            trainer.train()
            return steps / (time.perf_counter() - start)

    # Warm-up both paths (first steps pay allocator and kernel selection costs).
    loop_arm(True, 5)
    trainer_arm(True, 5)
    results = {}
    for bf16 in (True, False):
        tag = "bf16" if bf16 else "fp32"
        # Interleave arms so background load affects both alike.
        results[f"loop_{tag}"] = loop_arm(bf16, args.steps)
        results[f"trainer_{tag}"] = trainer_arm(bf16, args.steps)
    for name, value in results.items():
        print(f"{name}_steps_per_s: {value:.3f}")
    print(f"loop_over_trainer_bf16: {results['loop_bf16'] / results['trainer_bf16']:.3f}")
    print(f"loop_over_trainer_fp32: {results['loop_fp32'] / results['trainer_fp32']:.3f}")
    print(f"loop_bf16_over_fp32: {results['loop_bf16'] / results['loop_fp32']:.3f}")
    print(f"threads: {args.threads}")
    print(f"load_avg_1min: {__import__('os').getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
