"""Reward v1: a scalar reward model on the pretrained sentence encoder, trained with trl.

The model is a ``BertForSequenceClassification`` with one output, initialised from the
packaged all-MiniLM-L6-v2 (or from an earlier reward folder, for the nightly refresh), and
trained with trl's ``RewardTrainer`` (Bradley-Terry loss on chosen vs rejected).

Input format: the prompt and the response as a BERT text pair (``[CLS] prompt [SEP]
response [SEP]``), tokenised here rather than by trl, because trl's own text path glues
prompt and response together with no separator and appends an EOS token this tokenizer
does not have. Over-long pairs are truncated longest-first to ``max_length`` (trl would
drop them silently). Token type ids are not passed (trl's collator does not pass them), so
scoring does the same.

Pair weights (``PreferencePair.weight``) become sampling probabilities: trl's loss has no
per-pair weight, and weighted sampling gives the same expected gradient. Pairs with
weight 0 are excluded and counted.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from models.cpu import Threads, resolve_threads
from models.encoder import encoder_dir, load_tokenizer

logger = logging.getLogger(__name__)

REWARD_CONFIG_FILE = "reward_config.json"
FOLDER_FORMAT = "loopwright-reward"
FOLDER_FORMAT_VERSION = 1


class RewardTrainConfig(BaseModel):
    """How to train the reward model. Unknown keys and out-of-range values fail.

    Named apart from trl's ``RewardConfig`` (which this builds).

    Attributes:
        epochs: passes over the pairs.
        batch_size: pairs per step (each step scores 2x this many sequences).
        learning_rate: AdamW learning rate (default 2e-4, for training from the
            pretrained encoder). See docs/decisions/0005-reward-model-training-and-refresh.md.
        weight_decay: AdamW weight decay.
        warmup_ratio: fraction of steps with linear warmup.
        max_length: tokens of prompt + response (longest-first truncation).
        trainable_layers: top encoder layers fine-tuned (the rest and the token
            embeddings stay frozen: faster on CPU, and little data moves them anyway).
        center_rewards_coefficient: trl's penalty keeping rewards near 0 (``None``: off).
        seed: seeds initialisation and data order.
        threads: torch threads while training (``None``: leave torch's setting;
            ``"auto"``: the cores free when training starts, :mod:`models.cpu`).
        logging_steps: steps between loss records.
        progress: show a progress bar while training (otherwise training is quiet).
        encoder_folder: the pretrained encoder (default: the packaged all-MiniLM-L6-v2).

    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: float = Field(default=2.0, gt=0, le=100)
    batch_size: int = Field(default=16, ge=1, le=1024)
    learning_rate: float = Field(default=2e-4, gt=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0, lt=1)
    warmup_ratio: float = Field(default=0.06, ge=0, lt=1)
    max_length: int = Field(default=192, ge=16, le=512)
    trainable_layers: int = Field(default=6, ge=0, le=6)
    center_rewards_coefficient: float | None = Field(default=0.01, ge=0)
    seed: int = 0
    threads: Threads | None = None
    logging_steps: int = Field(default=10, ge=1)
    progress: bool = False
    encoder_folder: Path | None = None

    @classmethod
    def tiny(cls, **overrides: Any) -> RewardTrainConfig:
        """Return a config that trains in seconds on a handful of pairs (tests)."""
        values: dict[str, Any] = dict(
            epochs=6,
            batch_size=4,
            learning_rate=1e-4,
            warmup_ratio=0.0,
            max_length=48,
            trainable_layers=2,
            logging_steps=1,
        )
        values.update(overrides)
        return cls(**values)


class RewardTrainResult(BaseModel):
    """What :func:`train_reward` did."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    folder: str
    n_pairs: int
    n_used: int
    n_zero_weight: int
    n_truncated: int
    weighted_sampling: bool
    steps: int
    loss_first: float
    loss_last: float
    losses: list[float]
    train_accuracy_last: float
    train_seconds: float
    init_from: str

    def flat_metrics(self) -> dict[str, float]:
        """Numeric metrics with flat names, for MLflow ``log_metrics``."""
        return {
            "n_pairs": float(self.n_pairs),
            "n_used": float(self.n_used),
            "n_zero_weight": float(self.n_zero_weight),
            "n_truncated": float(self.n_truncated),
            "steps": float(self.steps),
            "loss_first": self.loss_first,
            "loss_last": self.loss_last,
            "train_accuracy_last": self.train_accuracy_last,
            "train_seconds": self.train_seconds,
        }


def _pair_fields(pair: Any, index: int) -> tuple[str, str, str, float]:
    try:
        prompt, chosen, rejected = pair.prompt, pair.chosen, pair.rejected
    except AttributeError as exc:
        raise ValueError(
            f"pairs[{index}]: expected a PreferencePair (prompt, chosen, rejected), "
            f"got {type(pair).__name__}"
        ) from exc
    weight = float(getattr(pair, "weight", 1.0))
    for name, value in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)):
        if not isinstance(value, str):
            raise ValueError(f"pairs[{index}].{name} is {type(value).__name__}, expected str")
    if not weight >= 0:
        raise ValueError(f"pairs[{index}].weight is {weight}; weights must be >= 0")
    return prompt, chosen, rejected, weight


def _encode_pairs(
    tokenizer: Any, prompts: Sequence[str], responses: Sequence[str], max_length: int
) -> tuple[list[list[int]], int]:
    """Token ids of (prompt, response) text pairs, and how many were truncated."""
    full = tokenizer(list(prompts), list(responses), truncation=False)["input_ids"]
    cut = tokenizer(
        list(prompts), list(responses), truncation="longest_first", max_length=max_length
    )["input_ids"]
    n_truncated = sum(len(a) > len(b) for a, b in zip(full, cut, strict=True))
    return [list(x) for x in cut], n_truncated


def _freeze_lower(model: Any, trainable_layers: int) -> None:
    """Freeze token embeddings and all but the top ``trainable_layers`` encoder layers."""
    base = model.base_model
    layers = base.encoder.layer
    if trainable_layers > len(layers):
        raise ValueError(
            f"trainable_layers={trainable_layers}; this encoder has {len(layers)} layers"
        )
    for param in base.embeddings.parameters():
        param.requires_grad_(False)
    for layer in layers[: len(layers) - trainable_layers]:
        for param in layer.parameters():
            param.requires_grad_(False)


def train_reward(
    pairs: Iterable[Any],
    config: RewardTrainConfig,
    out_dir: str | Path,
    init_from: Path | None = None,
) -> RewardTrainResult:
    """Train a reward model on preference pairs with trl's ``RewardTrainer`` and save it.

    Args:
        pairs: :class:`loopwright.records.PreferencePair` items (or objects with
            ``prompt``, ``chosen``, ``rejected`` and optional ``weight``).
        config: training settings.
        out_dir: the reward folder to write (HF model + tokenizer + ``reward_config.json``).
        init_from: an existing reward folder to continue from (the nightly refresh);
            ``None`` starts from the pretrained encoder with a fresh scalar head.

    Returns:
        Counts (pairs used, excluded for weight 0, truncated), the loss curve, the last
        logged training accuracy and the wall time in seconds.

    Raises:
        ValueError: a malformed pair (naming its index), no pair with weight > 0, or an
            ``init_from`` folder that is not a reward folder.

    """
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from transformers.trainer_callback import PrinterCallback
    from trl import RewardConfig, RewardTrainer

    rows = [_pair_fields(p, i) for i, p in enumerate(pairs)]
    used = [r for r in rows if r[3] > 0]
    if not used:
        raise ValueError(f"no preference pairs with weight > 0 (got {len(rows)} pairs)")
    if init_from is not None:
        _read_reward_config(Path(init_from))
    source = Path(init_from) if init_from is not None else (config.encoder_folder or encoder_dir())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if config.threads is not None:
        torch.set_num_threads(resolve_threads(config.threads) or torch.get_num_threads())

    tokenizer = load_tokenizer(source)
    prompts = [r[0] for r in used]
    chosen_ids, cut_c = _encode_pairs(tokenizer, prompts, [r[1] for r in used], config.max_length)
    rejected_ids, cut_r = _encode_pairs(tokenizer, prompts, [r[2] for r in used], config.max_length)
    weights = np.asarray([r[3] for r in used], dtype=np.float64)
    weighted = bool(not np.allclose(weights, weights[0]))
    dataset = Dataset.from_dict({"chosen_ids": chosen_ids, "rejected_ids": rejected_ids})

    torch.manual_seed(config.seed)
    # The encoder checkpoint has no reward head: transformers logs a LOAD REPORT table at
    # WARNING for the newly initialised `classifier.*` weights it adds. That head is what
    # training learns, so the report says nothing here; real load errors still raise.
    loader_log = logging.getLogger("transformers.modeling_utils")
    level = loader_log.level
    loader_log.setLevel(logging.ERROR)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(source), num_labels=1, local_files_only=True
        )
    finally:
        loader_log.setLevel(level)
    model.config.pad_token_id = tokenizer.pad_token_id
    _freeze_lower(model, config.trainable_layers)

    args = RewardConfig(
        output_dir=str(out / ".trainer"),
        per_device_train_batch_size=config.batch_size,
        num_train_epochs=config.epochs,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup_ratio,
        max_length=config.max_length,
        center_rewards_coefficient=config.center_rewards_coefficient,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        activation_checkpointing=False,  # trl defaults it on; pointless cost on CPU
        seed=config.seed,
        data_seed=config.seed,
        disable_tqdm=not config.progress,
        dataloader_num_workers=0,
    )
    trainer_cls = _weighted_trainer(weights) if weighted else RewardTrainer
    trainer = trainer_cls(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    trainer.remove_callback(PrinterCallback)  # log lines go to trainer.state, not stdout
    started = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - started
    history = trainer.state.log_history
    losses = [float(h["loss"]) for h in history if "loss" in h]
    accuracies = [float(h["accuracy"]) for h in history if "accuracy" in h]

    model.eval()
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    meta = {
        "format": FOLDER_FORMAT,
        "format_version": FOLDER_FORMAT_VERSION,
        "input": "text_pair",
        "max_length": config.max_length,
        "init_from": str(source),
        "train_config": config.model_dump(mode="json"),
    }
    (out / REWARD_CONFIG_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    result = RewardTrainResult(
        folder=str(out),
        n_pairs=len(rows),
        n_used=len(used),
        n_zero_weight=len(rows) - len(used),
        n_truncated=cut_c + cut_r,
        weighted_sampling=weighted,
        steps=int(trainer.state.global_step),
        loss_first=losses[0] if losses else float("nan"),
        loss_last=losses[-1] if losses else float("nan"),
        losses=losses,
        train_accuracy_last=accuracies[-1] if accuracies else float("nan"),
        train_seconds=train_seconds,
        init_from=str(source),
    )
    logger.info(
        "reward trained on %d pairs: %d steps in %.1fs, loss %.3f -> %.3f",
        result.n_used,
        result.steps,
        train_seconds,
        result.loss_first,
        result.loss_last,
    )
    return result


def _weighted_trainer(weights: np.ndarray) -> type:
    """Build a ``RewardTrainer`` that samples pairs in proportion to their weights."""
    from torch.utils.data import WeightedRandomSampler
    from trl import RewardTrainer

    class WeightedRewardTrainer(RewardTrainer):
        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            generator = torch.Generator().manual_seed(int(self.args.seed))
            return WeightedRandomSampler(
                [float(w) for w in weights],
                num_samples=len(weights),
                replacement=True,
                generator=generator,
            )

    return WeightedRewardTrainer


def _read_reward_config(folder: Path) -> dict[str, Any]:
    path = folder / REWARD_CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a reward folder (no {REWARD_CONFIG_FILE})")
    meta = dict(json.loads(path.read_text(encoding="utf-8")))
    if meta.get("format") != FOLDER_FORMAT or meta.get("format_version") != FOLDER_FORMAT_VERSION:
        raise ValueError(
            f"{path}: format {meta.get('format')!r} v{meta.get('format_version')!r}; this code "
            f"reads {FOLDER_FORMAT!r} v{FOLDER_FORMAT_VERSION}"
        )
    return meta


class RewardModel:
    """A trained reward model. Build with :meth:`load`."""

    def __init__(self, model: Any, tokenizer: Any, max_length: int, batch_size: int = 32) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size

    @classmethod
    def load(cls, folder: str | Path, threads: int | None = None) -> RewardModel:
        """Load a folder written by :func:`train_reward`.

        Args:
            folder: the reward folder.
            threads: torch intra-op threads (process-wide); ``None`` leaves them alone.

        Raises:
            FileNotFoundError: not a reward folder.

        """
        from transformers import AutoModelForSequenceClassification

        folder = Path(folder)
        meta = _read_reward_config(folder)
        if threads is not None:
            torch.set_num_threads(threads)
        model = AutoModelForSequenceClassification.from_pretrained(
            str(folder), local_files_only=True
        )
        return cls(model, load_tokenizer(folder), int(meta["max_length"]))

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """Scalar reward per (prompt, response); higher is better. Unbounded reals.

        Raises:
            ValueError: ``prompts`` and ``responses`` differ in length.

        """
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        if len(prompts) == 0:
            return []
        ids, _ = _encode_pairs(self.tokenizer, prompts, responses, self.max_length)
        scores = np.zeros(len(ids), dtype=np.float64)
        order = np.argsort([len(x) for x in ids], kind="stable")
        pad_id = int(self.tokenizer.pad_token_id or 0)
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                width = max(len(ids[r]) for r in rows)
                input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for i, r in enumerate(rows):
                    input_ids[i, : len(ids[r])] = torch.tensor(ids[r])
                    mask[i, : len(ids[r])] = 1
                logits = self.model(input_ids=input_ids, attention_mask=mask).logits
                scores[rows] = logits[:, 0].double().numpy()
        return [float(s) for s in scores]


def pairwise_accuracy(model: RewardModel, pairs: Iterable[Any]) -> float:
    """Share of pairs where the chosen response scores above the rejected one.

    A tie counts as half right. Pair weights are ignored (every held-out pair counts once).

    Raises:
        ValueError: no pairs, or a malformed pair (naming its index).

    """
    rows = [_pair_fields(p, i) for i, p in enumerate(pairs)]
    if not rows:
        raise ValueError("pairwise_accuracy needs at least one pair")
    prompts = [r[0] for r in rows]
    chosen = np.asarray(model.score(prompts, [r[1] for r in rows]))
    rejected = np.asarray(model.score(prompts, [r[2] for r in rows]))
    return float(np.mean((chosen > rejected) + 0.5 * (chosen == rejected)))
