"""The causal-LM training loop used by policy pre-training and SFT fine-tuning.

Why a hand-written loop rather than ``transformers.Trainer`` (measured with
``bench/policy_trainer_vs_loop.py`` on this 2-core CPU, same model, data and batches): for a
5M-parameter model a step takes tens of milliseconds, so the Trainer's per-step machinery
(accelerate wrappers, callbacks, dataloader and sampler, logging) is a visible share of it;
and the two things this model needs most are awkward there: a *wall-clock* budget with a
cosine schedule that still ends at the minimum learning rate (the Trainer's scheduler needs
the step count up front), and length-bucketed batches that draw a fresh noisy variant of
each row every epoch. The loop is ~100 lines, seeded, and fully deterministic when the
step count is fixed.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel

from models.policy_data import IGNORE_INDEX, EncodedExample, bucketed_batches

logger = logging.getLogger(__name__)

CALIBRATION_STEPS = 12
"""Steps timed before a wall-clock budget is turned into a planned step count."""


@dataclass(frozen=True)
class LoopSettings:
    """Optimiser, schedule and budget of one training run.

    Attributes:
        lr: peak learning rate (AdamW).
        min_lr_ratio: the cosine ends at ``lr * min_lr_ratio``.
        warmup_steps: linear warm-up steps (at least ``CALIBRATION_STEPS`` when a time
            budget is used, so the schedule is fixed while the step rate is measured).
        weight_decay: AdamW decoupled weight decay on matrices (not norms/biases).
        batch_size: sequences per step.
        max_steps: hard step limit; with no ``max_seconds`` the run is exactly this long
            and bit-for-bit reproducible for a seed and thread count.
        max_seconds: wall-clock budget for the loop (seconds); the planned step count is
            re-estimated from the measured step rate so the cosine ends on time.
        bf16: bfloat16 autocast for forward/backward (weights and optimiser stay fp32).
        grad_clip: max global gradient norm.
        seed: seeds batch order and anything random inside the loop.

    """

    lr: float
    min_lr_ratio: float
    warmup_steps: int
    weight_decay: float
    batch_size: int
    max_steps: int | None
    max_seconds: float | None
    bf16: bool
    grad_clip: float
    seed: int


@dataclass
class LoopStats:
    """What a training run did.

    Attributes:
        steps: optimiser steps taken.
        seconds: wall time of the loop (excludes data preparation and saving).
        initial_loss: loss of the first batch (before any update).
        final_loss: mean loss over the last ``min(20, steps)`` steps.
        tokens: non-padding tokens processed (prompt and answer).
        target_tokens: tokens that carried loss (assistant tokens).
        epochs: epochs started (a partial last epoch counts).
        losses: per-step training losses.

    """

    steps: int = 0
    seconds: float = 0.0
    initial_loss: float = float("nan")
    final_loss: float = float("nan")
    tokens: int = 0
    target_tokens: int = 0
    epochs: int = 0
    losses: list[float] = field(default_factory=list)


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run with ``torch.set_num_threads(threads)``, restoring the previous count after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def lr_at(step: int, planned_steps: int, settings: LoopSettings) -> float:
    """Linear warm-up, then cosine decay to ``lr * min_lr_ratio`` at ``planned_steps``."""
    if step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    span = max(1, planned_steps - settings.warmup_steps)
    progress = min(1.0, (step - settings.warmup_steps) / span)
    floor = settings.lr * settings.min_lr_ratio
    return floor + 0.5 * (settings.lr - floor) * (1.0 + math.cos(math.pi * progress))


def collate(batch: list[EncodedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch; padded positions get attention 0 and label ``IGNORE_INDEX``."""
    width = max(len(ex.input_ids) for ex in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ex in enumerate(batch):
        n = len(ex.input_ids)
        ids[row, :n] = torch.tensor(ex.input_ids)
        labels[row, :n] = torch.tensor(ex.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _optimizer(model: PreTrainedModel, settings: LoopSettings) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": settings.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=settings.lr,
        betas=(0.9, 0.95),
    )


def train_loop(
    model: PreTrainedModel,
    epoch_examples: Callable[[int], list[EncodedExample]],
    settings: LoopSettings,
    *,
    pad_id: int,
    progress: bool = False,
) -> LoopStats:
    """Train ``model`` in place on length-bucketed batches until the step or time budget ends.

    Args:
        model: a causal LM whose forward accepts ``labels`` and returns ``.loss``.
        epoch_examples: returns the examples of epoch ``e`` (the caller picks noisy variants
            and replay mixtures there, seeded by ``e``); called once per epoch.
        settings: optimiser, schedule, budget.
        pad_id: token id used for padding.
        progress: show a tqdm bar.

    Returns:
        Loop statistics (steps, seconds, losses, token counts).

    Raises:
        ValueError: neither ``max_steps`` nor ``max_seconds`` is set, or an epoch is empty.

    """
    if settings.max_steps is None and settings.max_seconds is None:
        raise ValueError("set max_steps or max_seconds (or both)")
    rng = random.Random(settings.seed)
    optimizer = _optimizer(model, settings)
    autocast = (
        torch.autocast("cpu", dtype=torch.bfloat16)
        if settings.bf16 and next(model.parameters()).device.type == "cpu"
        else torch.autocast("cuda", dtype=torch.bfloat16)
        if settings.bf16
        else nullcontext()
    )
    device = next(model.parameters()).device
    stats = LoopStats()
    planned = settings.max_steps if settings.max_seconds is None else None
    hard_limit = settings.max_steps if settings.max_steps is not None else 10**9
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=settings.max_steps, desc="policy training", unit="step")
    model.train()
    start = time.perf_counter()
    last_replan = start
    replan_step = 0
    done = False
    while not done:
        examples = epoch_examples(stats.epochs)
        if not examples:
            raise ValueError(f"epoch {stats.epochs} has no examples")
        stats.epochs += 1
        batches = bucketed_batches([len(ex.input_ids) for ex in examples], settings.batch_size, rng)
        for batch_idx in batches:
            batch = collate([examples[i] for i in batch_idx], pad_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            lr = lr_at(stats.steps, planned or hard_limit, settings)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast:
                loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"training loss became {value} at step {stats.steps}")
            stats.losses.append(value)
            stats.steps += 1
            stats.tokens += int(batch["attention_mask"].sum())
            stats.target_tokens += int((batch["labels"] != IGNORE_INDEX).sum())
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{value:.3f}", lr=f"{lr:.2e}")
            now = time.perf_counter()
            elapsed = now - start
            if settings.max_seconds is not None:
                if elapsed >= settings.max_seconds:
                    done = True
                    break
                # Re-plan the step count from the recent step rate so the cosine reaches its
                # floor at the deadline even when other processes slow us down mid-run.
                if stats.steps == CALIBRATION_STEPS or (
                    stats.steps > CALIBRATION_STEPS
                    and now - last_replan > 0.1 * settings.max_seconds
                ):
                    rate = (stats.steps - replan_step) / max(1e-9, now - last_replan)
                    estimate = stats.steps + int(rate * (settings.max_seconds - elapsed))
                    planned = min(hard_limit, max(stats.steps + 1, estimate))
                    last_replan, replan_step = now, stats.steps
                    if bar is not None:
                        bar.total = planned
                        bar.refresh()
            if stats.steps >= (planned if planned is not None else hard_limit):
                done = True
                break
    stats.seconds = time.perf_counter() - start
    if bar is not None:
        bar.close()
    model.eval()
    stats.initial_loss = stats.losses[0]
    tail = stats.losses[-min(20, len(stats.losses)) :]
    stats.final_loss = sum(tail) / len(tail)
    return stats
