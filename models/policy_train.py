"""Policy pre-training and SFT fine-tuning on ``transformers.Trainer``.

The Trainer runs the optimisation (forward/backward, clipping, fused AdamW, bf16 autocast,
device placement, progress bar). What it does not do, and this module adds:

- length-bucketed batches whose rows are re-drawn every epoch (a fresh noisy variant per
  row, a fresh replay sample for fine-tuning): an epoch-aware dataset, ordered as whole
  batches and read sequentially;
- a wall-clock budget whose cosine schedule still ends at the minimum learning rate: the
  planned step count is re-estimated from the measured step rate by a callback, and the
  schedule reads it;
- distillation of chosen rows (a fine-tune's replay) from a frozen teacher beside the
  label loss (:func:`distillation_kl`).

The Trainer runs as fast as a hand-written loop, so the library does the loop
(docs/decisions/0004-policy-training-recipe.md). Fully deterministic for a fixed step
count, seed and thread count.
"""

from __future__ import annotations

import logging
import math
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from loopwright.progress import report as report_progress
from models.cpu import Threads, resolve_threads
from models.policy_data import IGNORE_INDEX, EncodedExample, bucketed_batches

logger = logging.getLogger(__name__)

CALIBRATION_STEPS = 12
"""Steps timed before a wall-clock budget is turned into a planned step count."""

DISTILL_KEY = "distill"
"""Batch key of the per-row flag: score this row against the teacher too."""


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
        grad_accumulation: micro-batches of ``batch_size`` per optimiser step.
        gradient_checkpointing: recompute activations in the backward pass.

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
    grad_accumulation: int = 1
    gradient_checkpointing: bool = False


@dataclass
class LoopStats:
    """What a training run did.

    Attributes:
        steps: optimiser steps taken.
        seconds: wall time from the first step to the last (excludes data preparation,
            Trainer set-up and saving).
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
def torch_threads(threads: Threads) -> Iterator[None]:
    """Run with ``torch.set_num_threads``, restoring the previous count after.

    ``"auto"`` is resolved to the cores free at entry (:func:`models.cpu.resolve_threads`).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(resolve_threads(threads) or previous)
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
    """Right-pad a batch; padded positions get attention 0 and label ``IGNORE_INDEX``.

    A batch holding rows flagged ``distill`` also carries ``DISTILL_KEY``: one bool per row.
    """
    width = max(len(ex.input_ids) for ex in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ex in enumerate(batch):
        n = len(ex.input_ids)
        ids[row, :n] = torch.tensor(ex.input_ids)
        labels[row, :n] = torch.tensor(ex.labels)
        mask[row, :n] = 1
    out = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if any(ex.distill for ex in batch):
        out[DISTILL_KEY] = torch.tensor([ex.distill for ex in batch])
    return out


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
        # One fused kernel per step instead of a loop over tensors; the same optimiser the
        # transformers Trainer picks by default ("adamw_torch_fused").
        fused=True,
    )


class _EpochDataset(torch.utils.data.Dataset):
    """The rows of the current epoch, ordered as length-bucketed batches (read in order)."""

    def __init__(
        self,
        epoch_examples: Callable[[int], list[EncodedExample]],
        batch_size: int,
        rng: random.Random,
    ) -> None:
        self._draw = epoch_examples
        self._batch_size = batch_size
        self._rng = rng
        self.rows: list[EncodedExample] = []
        self.epochs = 0
        self._size = 0
        self.load(0)
        self._size = len(self.rows)

    def load(self, epoch: int) -> None:
        """Draw epoch ``epoch``'s examples and order them as bucketed batches."""
        examples = self._draw(epoch)
        if not examples:
            raise ValueError(f"epoch {epoch} has no examples")
        if self._size and len(examples) != self._size:
            raise ValueError(
                f"epoch {epoch} has {len(examples)} examples, epoch 0 had {self._size}; "
                "every epoch must have the same size"
            )
        batches = bucketed_batches(
            [len(ex.input_ids) for ex in examples], self._batch_size, self._rng
        )
        self.rows = [examples[i] for batch in batches for i in batch]
        self.epochs = epoch + 1

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> EncodedExample:
        return self.rows[index]


class _Plan:
    """Planned total steps, shared by the schedule and the budget callback."""

    def __init__(self, settings: LoopSettings) -> None:
        self.settings = settings
        self.hard_limit = settings.max_steps if settings.max_steps is not None else 10**9
        self.planned: int | None = settings.max_steps if settings.max_seconds is None else None

    def lr_factor(self, step: int) -> float:
        return lr_at(step, self.planned or self.hard_limit, self.settings) / self.settings.lr


class _BudgetCallback(TrainerCallback):
    """Redraws each epoch's rows, re-plans the step count from the step rate, stops on time."""

    def __init__(self, plan: _Plan, dataset: _EpochDataset, stats: LoopStats) -> None:
        self.plan = plan
        self.dataset = dataset
        self.stats = stats
        self.start = self.last_replan = 0.0
        self.replan_step = 0
        self.epoch_calls = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.start = self.last_replan = time.perf_counter()

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.epoch_calls > 0:  # epoch 0 was drawn when the dataset was built
            self.dataset.load(self.epoch_calls)
        self.epoch_calls += 1

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        step = int(state.global_step)
        now = time.perf_counter()
        elapsed = now - self.start
        budget = self.plan.settings.max_seconds
        if budget is not None:
            if elapsed >= budget:
                control.should_training_stop = True
                return
            # Re-plan from the recent step rate so the cosine reaches its floor at the
            # deadline even when other processes slow this one down mid-run.
            if step == CALIBRATION_STEPS or (
                step > CALIBRATION_STEPS and now - self.last_replan > 0.1 * budget
            ):
                rate = (step - self.replan_step) / max(1e-9, now - self.last_replan)
                estimate = step + int(rate * (budget - elapsed))
                self.plan.planned = min(self.plan.hard_limit, max(step + 1, estimate))
                self.last_replan, self.replan_step = now, step
        planned = self.plan.planned if self.plan.planned is not None else self.plan.hard_limit
        # The total is unknown while a time budget re-plans it (hard_limit is then 10**9).
        report_progress("policy training steps", step, None if budget is not None else planned)
        if step >= planned:
            control.should_training_stop = True


class _TimeBudgetProgress(TrainerCallback):
    """Progress bar over a wall-clock budget (seconds), with the step count and recent loss.

    The Trainer's own bar counts steps against ``max_steps``, which a time-budgeted run does
    not know in advance (it showed "12/1000000000").
    """

    def __init__(self, budget_s: float, losses: list[float]) -> None:
        self.budget_s = budget_s
        self.losses = losses
        self.bar: Any = None
        self.start = 0.0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        from tqdm.auto import tqdm

        self.start = time.perf_counter()
        self.bar = tqdm(
            total=round(self.budget_s),
            desc="training (time budget)",
            bar_format="{l_bar}{bar}| {n}/{total} s{postfix}",
        )

    def _advance(self) -> None:
        elapsed = min(round(time.perf_counter() - self.start), self.bar.total)
        self.bar.update(elapsed - self.bar.n)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._advance()
        if self.losses:
            self.bar.set_postfix(
                step=state.global_step, loss=f"{self.losses[-1]:.3f}", refresh=False
            )

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._advance()
        self.bar.close()


def distillation_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Mean KL(teacher || student) over the positions that predict a label token.

    Args:
        student_logits: ``[rows, length, vocab]`` logits of the model being trained.
        teacher_logits: the same shape, from the frozen parent.
        labels: ``[rows, length]``; ``IGNORE_INDEX`` marks positions not trained on. As in
            the causal LM loss, position ``t``'s logits predict token ``t + 1``.

    Returns:
        A scalar in nats per label token (0 when no position is labelled).
    """
    predicts_label = labels[:, 1:] != IGNORE_INDEX
    if not bool(predicts_label.any()):
        return student_logits.sum() * 0.0
    student = torch.log_softmax(student_logits[:, :-1][predicts_label].float(), dim=-1)
    teacher = torch.log_softmax(teacher_logits[:, :-1][predicts_label].float(), dim=-1)
    return (teacher.exp() * (teacher - student)).sum(dim=-1).mean()


class _LossRecordingTrainer(Trainer):
    """A Trainer that keeps every step's loss and can distil flagged rows from a teacher.

    With a ``teacher``, rows flagged ``EncodedExample.distill`` add ``distill_weight`` x
    :func:`distillation_kl` against the teacher's next-token distribution to the loss.
    Written here because trl's ``GKDTrainer`` replaces the label loss of every row with a
    divergence; a fine-tune needs the label loss on all rows and the teacher term on replay
    rows only (the new rows must move away from the parent).
    """

    def __init__(
        self,
        *args: Any,
        losses: list[float],
        teacher: torch.nn.Module | None = None,
        distill_weight: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._step_losses = losses
        # training_step sees micro-batches; their returned losses sum to the step's loss
        # (each is scaled by the accumulation), appended when the optimiser steps.
        self._pending_loss = 0.0
        self.add_callback(_StepLossFlush(self))
        self._teacher = teacher
        if teacher is not None:  # the Trainer placed the model; the teacher sits beside it
            teacher.to(self.args.device)
        self._distill_weight = distill_weight

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        inputs = dict(inputs)
        flagged = inputs.pop(DISTILL_KEY, None)
        if self._teacher is None or flagged is None or not bool(flagged.any()):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss, outputs = super().compute_loss(
            model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
        )
        rows = flagged.to(inputs["input_ids"].device)
        with torch.no_grad():
            teacher_logits = self._teacher(
                input_ids=inputs["input_ids"][rows], attention_mask=inputs["attention_mask"][rows]
            ).logits
        kl = distillation_kl(outputs.logits[rows], teacher_logits, inputs["labels"][rows])
        loss = loss + self._distill_weight * kl
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> Any:
        loss = super().training_step(model, inputs, num_items_in_batch)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(
                f"training loss became {value} at step {len(self._step_losses)}"
            )
        self._pending_loss += value
        return loss

    def flush_step_loss(self) -> None:
        """Record the finished optimiser step's loss (called by :class:`_StepLossFlush`)."""
        self._step_losses.append(self._pending_loss)
        self._pending_loss = 0.0


class _StepLossFlush(TrainerCallback):
    """Appends each optimiser step's summed micro-batch loss to the recorded losses."""

    def __init__(self, trainer: _LossRecordingTrainer) -> None:
        self.trainer = trainer

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer.flush_step_loss()


def train_loop(
    model: PreTrainedModel,
    epoch_examples: Callable[[int], list[EncodedExample]],
    settings: LoopSettings,
    *,
    pad_id: int,
    progress: bool = False,
    teacher: torch.nn.Module | None = None,
    distill_weight: float = 0.0,
) -> LoopStats:
    """Train ``model`` in place on length-bucketed batches until the step or time budget ends.

    Args:
        model: a causal LM whose forward accepts ``labels`` and returns ``.loss``.
        epoch_examples: returns the examples of epoch ``e`` (the caller picks noisy variants
            and replay mixtures there, seeded by ``e``); every epoch must have the same
            number of examples. Called once per epoch, in order.
        settings: optimiser, schedule, budget.
        pad_id: token id used for padding.
        progress: show the Trainer's progress bar.
        teacher: a frozen model whose next-token distribution the rows flagged
            ``distill`` are also pulled towards (None: plain label loss everywhere).
        distill_weight: weight of that KL term (nats per label token) against the label
            loss.

    Returns:
        Loop statistics (steps, seconds, losses, token counts).

    Raises:
        ValueError: neither ``max_steps`` nor ``max_seconds`` is set, or an epoch is empty
            or differs in size from the first.
        FloatingPointError: the loss became NaN or infinite.

    """
    if settings.max_steps is None and settings.max_seconds is None:
        raise ValueError("set max_steps or max_seconds (or both)")
    stats = LoopStats()
    dataset = _EpochDataset(epoch_examples, settings.batch_size, random.Random(settings.seed))
    plan = _Plan(settings)
    optimizer = _optimizer(model, settings)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, plan.lr_factor)

    def collate_and_count(batch: list[EncodedExample]) -> dict[str, torch.Tensor]:
        out = collate(batch, pad_id)
        stats.tokens += int(out["attention_mask"].sum())
        stats.target_tokens += int((out["labels"] != IGNORE_INDEX).sum())
        return out

    with tempfile.TemporaryDirectory(prefix="policy-train-") as scratch:
        args = TrainingArguments(
            output_dir=scratch,
            per_device_train_batch_size=settings.batch_size,
            gradient_accumulation_steps=settings.grad_accumulation,
            activation_checkpointing=settings.gradient_checkpointing,
            max_steps=plan.hard_limit,
            max_grad_norm=settings.grad_clip,
            bf16=settings.bf16,
            use_cpu=not torch.cuda.is_available(),
            # Our dataset already holds whole bucketed batches in order.
            train_sampling_strategy="sequential",
            dataloader_num_workers=0,
            dataloader_pin_memory=False,
            remove_unused_columns=False,
            logging_strategy="no",
            save_strategy="no",
            report_to="none",
            disable_tqdm=not progress,
            seed=settings.seed,
        )
        budget = _BudgetCallback(plan, dataset, stats)
        trainer = _LossRecordingTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            data_collator=collate_and_count,
            optimizers=(optimizer, schedule),
            callbacks=[budget],
            losses=stats.losses,
            teacher=teacher,
            distill_weight=distill_weight,
        )
        trainer.remove_callback(PrinterCallback)  # it would print the final metrics dict
        if progress and settings.max_seconds is not None:
            trainer.remove_callback(ProgressCallback)
            trainer.add_callback(_TimeBudgetProgress(settings.max_seconds, stats.losses))
        trainer.train()
        # From the first step's start (the callback's on_train_begin): Trainer set-up and
        # saving are not training time.
        stats.seconds = time.perf_counter() - budget.start
    model.eval()
    stats.steps = len(stats.losses)
    stats.epochs = dataset.epochs
    stats.initial_loss = stats.losses[0]
    tail = stats.losses[-min(20, len(stats.losses)) :]
    stats.final_loss = sum(tail) / len(tail)
    return stats
