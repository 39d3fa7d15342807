"""Hand-written policy training loop vs transformers.Trainer: same model, data, batch, steps.

Why this exists: the policy is trained with a hand-written loop (models/policy_train.py);
the rules say to prefer library trainers unless they cost speed. This measures it. Both
arms train the default 5M Llama-style model for the same number of steps on the same
encoded rows (batch 32, length-grouped), with the same precision, in one process, after a
short warm-up of each, alternating arms over several rounds. Also compares bf16 autocast
against fp32 for the loop.

Run: PYTHONPATH=. python bench/policy_trainer_vs_loop.py [--steps 10] [--rounds 3] [--threads 1]
Prints ``name: value`` lines.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

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


class _Timer(TrainerCallback):
    def __init__(self) -> None:
        self.start = self.end = 0.0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.start = time.perf_counter()

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.end = time.perf_counter()


class _ListDataset(torch.utils.data.Dataset):
    def __init__(self, rows: list[EncodedExample]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        ex = self.rows[i]
        return {"input_ids": ex.input_ids, "labels": ex.labels}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
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
            timer = _Timer()
            trainer.add_callback(timer)
            trainer.train()
            # Same span as the loop's own timer: first step to last (setup excluded).
            return steps / (timer.end - timer.start)

    # Warm-up both paths (first steps pay allocator and kernel selection costs).
    loop_arm(False, 3)
    trainer_arm(False, 3)
    # Alternate short arms over several rounds so background load (other processes share
    # this CPU) hits both alike; report medians of the per-round ratios.
    ratios, bf16_ratios, loop_rates, trainer_rates = [], [], [], []
    for _ in range(args.rounds):
        loop_rate = loop_arm(False, args.steps)
        trainer_rate = trainer_arm(False, args.steps)
        loop_bf16 = loop_arm(True, args.steps)
        loop_rates.append(loop_rate)
        trainer_rates.append(trainer_rate)
        ratios.append(loop_rate / trainer_rate)
        bf16_ratios.append(loop_bf16 / loop_rate)
    print(f"loop_fp32_steps_per_s: {statistics.median(loop_rates):.3f}")
    print(f"trainer_fp32_steps_per_s: {statistics.median(trainer_rates):.3f}")
    print(f"loop_over_trainer_fp32: {statistics.median(ratios):.3f}")
    print(f"loop_bf16_over_fp32: {statistics.median(bf16_ratios):.3f}")
    print(f"rounds: {args.rounds}")
    print(f"threads: {args.threads}")
    print(f"load_avg_1min: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
