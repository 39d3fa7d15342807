"""Trainer vs a hand-written loop for the policy; our Trainer setup vs a plain Trainer.

Why this exists: the rules prefer library trainers unless they cost speed. Three arms
train the default 5M Llama-style model for the same number of steps on identical
length-bucketed batches (batch 32, same order), fp32, fused AdamW, in one process, after a
warm-up, alternating over several rounds (other processes share this CPU):

- ``hand``: a minimal hand-written loop (forward, backward, clip, step);
- ``trainer``: a plain ``transformers.Trainer`` reading the same batches in order;
- ``policy``: ``models.policy_train.train_loop`` (Trainer + epoch-aware dataset + budget
  callback + per-step loss recording), i.e. what the policy trains with.

Also: bf16 autocast against fp32 for ``policy``.

Run: PYTHONPATH=. python bench/policy_trainer_vs_loop.py [--steps 8] [--rounds 3] [--threads 1]
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
from transformers.trainer_callback import PrinterCallback

from models.policy import PolicyConfig, build_model, train_tokenizer
from models.policy_data import EncodedExample, bucketed_batches, encode_pool
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
    parser.add_argument("--steps", type=int, default=8)
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
    # train_loop's first-epoch batches (its rng is Random(seed=0)); the other arms read the
    # rows in exactly this order, so all arms see identical batches.
    loop_batches = bucketed_batches([len(e.input_ids) for e in examples], 32, random.Random(0))
    trainer_order = [examples[i] for batch in loop_batches for i in batch]

    def settings(bf16: bool, steps: int) -> LoopSettings:
        return LoopSettings(
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

    def policy_arm(bf16: bool, steps: int) -> float:
        model = build_model(cfg, tok)
        stats = train_loop(model, lambda e: examples, settings(bf16, steps), pad_id=pad)
        return stats.steps / stats.seconds

    def hand_arm(steps: int) -> float:
        model = build_model(cfg, tok)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, fused=True)
        start = time.perf_counter()
        for batch_idx in loop_batches[:steps]:
            loss = model(**collate([examples[i] for i in batch_idx], pad)).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            float(loss.detach())
        return steps / (time.perf_counter() - start)

    def trainer_arm(steps: int) -> float:
        model = build_model(cfg, tok)
        with tempfile.TemporaryDirectory() as out:
            targs = TrainingArguments(
                output_dir=out,
                per_device_train_batch_size=32,
                learning_rate=cfg.lr,
                lr_scheduler_type="cosine",
                warmup_steps=10,
                max_steps=steps,
                use_cpu=True,
                report_to="none",
                save_strategy="no",
                logging_strategy="no",
                disable_tqdm=True,
                train_sampling_strategy="sequential",
                dataloader_num_workers=0,
                seed=0,
            )
            trainer = Trainer(
                model=model,
                args=targs,
                train_dataset=_ListDataset(trainer_order),
                data_collator=lambda feats: collate(
                    [EncodedExample(f["input_ids"], f["labels"]) for f in feats], pad
                ),
            )
            timer = _Timer()
            trainer.add_callback(timer)
            trainer.remove_callback(PrinterCallback)
            trainer.train()
            return steps / (timer.end - timer.start)

    # Warm-up (first steps pay allocator and kernel selection costs).
    hand_arm(3)
    trainer_arm(3)
    policy_arm(False, 3)
    rates: dict[str, list[float]] = {"hand": [], "trainer": [], "policy": [], "policy_bf16": []}
    for _ in range(args.rounds):
        rates["hand"].append(hand_arm(args.steps))
        rates["trainer"].append(trainer_arm(args.steps))
        rates["policy"].append(policy_arm(False, args.steps))
        rates["policy_bf16"].append(policy_arm(True, args.steps))

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(rates[a], rates[b], strict=True))

    for name, values in rates.items():
        print(f"{name}_steps_per_s: {statistics.median(values):.3f}")
    print(f"hand_over_trainer: {ratio('hand', 'trainer'):.3f}")
    print(f"policy_over_trainer: {ratio('policy', 'trainer'):.3f}")
    print(f"policy_bf16_over_fp32: {ratio('policy_bf16', 'policy'):.3f}")
    print(f"rounds: {args.rounds}")
    print(f"threads: {args.threads}")
    print(f"load_avg_1min: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
