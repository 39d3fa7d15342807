"""Guard v1: benign / harmful / injection classifier fine-tuned from the sentence encoder.

Training (:func:`train_guard`) fine-tunes the top ``trainable_layers`` of all-MiniLM-L6-v2
plus a small head (see :class:`models.encoder.GuardEncoder`) with ``transformers.Trainer``,
exports the result to ONNX with dynamic int8 quantisation, and calibrates per-label
thresholds on a held-back validation split *with the backend that serves* (ONNX int8 by
default), so the benign false-positive rate stays within budget on what actually runs.

Serving (:class:`Guard`): ``Guard.load(folder, backend="onnx")`` -> ``scores`` /
``classify`` / ``analyse``. One ONNX session returns both the guard probabilities and the
pretrained sentence embedding, so the gateway's input rail and retrieval share one forward
pass (:meth:`Guard.analyse`, :meth:`Guard.embedder`).

Long inputs are split into overlapping ``max_length`` windows; a text's scores are those
of its most suspicious window (highest non-benign probability), so nothing past the first
window goes unseen.

Folder layout (everything needed to serve; no reference to the packaged encoder):
``guard_config.json`` (labels, thresholds, window sizes, calibration, training config),
``config.json`` + tokenizer files, ``guard.safetensors`` (torch weights), and
``guard.int8.onnx`` (the fast path).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from models.cpu import Threads, resolve_threads
from models.embedder import Embedder
from models.encoder import (
    EncoderBackend,
    GuardEncoder,
    GuardHeadSpec,
    GuardPooling,
    OnnxBackend,
    OutputView,
    TorchBackend,
    WindowOutputs,
    encoder_dir,
    load_bert,
    load_tokenizer,
    normalize_text,
    pool_embeddings,
    resolve_backend,
    run_windows,
)
from models.guard_folder import (
    BENIGN,
    FOLDER_FORMAT,
    FOLDER_FORMAT_VERSION,
    GUARD_CONFIG_FILE,
    GUARD_LABELS,
    GUARD_ONNX_FILE,
    GUARD_WEIGHTS_FILE,
    load_guard_backend,
    read_guard_config,
)

logger = logging.getLogger(__name__)


class GuardConfig(BaseModel):
    """How to train and calibrate the guard. Unknown keys and out-of-range values fail.

    Attributes:
        trainable_layers: top encoder layers fine-tuned for the guard (0 = frozen encoder,
            head only; 6 = all layers). Each costs one extra layer per forward pass.
        head_hidden: hidden width of the classification head.
        pooling: ``mean`` or ``mean_max`` token pooling into the head
            (:class:`models.encoder.GuardHeadSpec`); ``mean_max`` (default) keeps an unsafe
            question among benign ones from being diluted by the mean.
            See docs/decisions/0006-guard-rail-and-encoders.md.
        max_length: tokens per window (~100 tokens hold a 384-character English prompt).
        window_stride: tokens of overlap between consecutive windows of a long input.
        epochs: passes over the training split.
        batch_size: training batch size.
        learning_rate: AdamW learning rate for the fine-tuned encoder layers.
        head_learning_rate: AdamW learning rate for the freshly initialised head.
        weight_decay: AdamW weight decay.
        warmup_ratio: fraction of steps with linear learning-rate warmup.
        val_fraction: share of each label held back for threshold calibration.
        target_fpr: the requirement: benign false-positive rate on unseen prompts.
        calibration_fpr: the benign FPR thresholds are fitted to on the validation split;
            well below ``target_fpr`` because unseen phrasings score higher than validation
            ones. See docs/decisions/0006-guard-rail-and-encoders.md.
        class_weighting: weight the loss by inverse label frequency. Off by default: on
            the example domain, down-weighting benign raised false positives on unseen
            benign look-alikes.
        min_threshold: calibrated thresholds never go below this (validation prompts are
            scored more confidently than unseen phrasings); 0.5 means a prompt is blocked
            only when the guard finds the unsafe label more likely than not.
            See docs/decisions/0006-guard-rail-and-encoders.md.
        label_smoothing: cross-entropy label smoothing (softer, less over-confident scores,
            so the fitted threshold does not hang on one validation prompt).
            See docs/decisions/0006-guard-rail-and-encoders.md.
        group_similarity: texts whose pretrained embeddings are at least this similar
            (cosine) stay on one side of the train/validation split, so thresholds are
            calibrated on phrasings the model did not train on; ``None``: random split.
        normalize: fold look-alike characters and drop invisible ones before encoding
            (:func:`models.encoder.normalize_text`), in training and in serving.
        seed: seeds the split, the head initialisation and data order.
        threads: torch threads while training (``None``: leave torch's setting;
            ``"auto"``: the cores free when training starts, :mod:`models.cpu`).
        export_onnx: export + quantise to ONNX int8 and calibrate on it (needs ``onnx``);
            False serves and calibrates with torch only.
        eval_batch_size: batch size for calibration inference.
        logging_steps: training steps between loss records.
        progress: show a progress bar while training (otherwise training is quiet).
        encoder_folder: the pretrained encoder (default: the packaged all-MiniLM-L6-v2).

    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    trainable_layers: int = Field(default=2, ge=0, le=6)
    head_hidden: int = Field(default=256, ge=8, le=4096)
    pooling: GuardPooling = "mean_max"
    max_length: int = Field(default=128, ge=16, le=512)
    window_stride: int = Field(default=32, ge=0)
    epochs: float = Field(default=4.0, gt=0, le=100)
    batch_size: int = Field(default=32, ge=1, le=1024)
    learning_rate: float = Field(default=1e-4, gt=0, lt=1)
    head_learning_rate: float = Field(default=1e-3, gt=0, lt=1)
    weight_decay: float = Field(default=0.01, ge=0, lt=1)
    warmup_ratio: float = Field(default=0.06, ge=0, lt=1)
    val_fraction: float = Field(default=0.15, gt=0, lt=0.9)
    target_fpr: float = Field(default=0.03, gt=0, lt=1)
    calibration_fpr: float = Field(default=0.01, ge=0, lt=1)
    class_weighting: bool = False
    min_threshold: float = Field(default=0.5, ge=0, lt=1)
    label_smoothing: float = Field(default=0.1, ge=0, lt=0.5)
    group_similarity: float | None = Field(default=0.8, gt=0, le=1)
    normalize: bool = True
    seed: int = 0
    threads: Threads | None = None
    export_onnx: bool = True
    eval_batch_size: int = Field(default=64, ge=1, le=4096)
    logging_steps: int = Field(default=10, ge=1)
    progress: bool = False
    encoder_folder: Path | None = None

    @model_validator(mode="after")
    def _consistent(self) -> GuardConfig:
        if self.calibration_fpr > self.target_fpr:
            raise ValueError(
                f"calibration_fpr ({self.calibration_fpr}) must be <= target_fpr "
                f"({self.target_fpr}): calibrate at or below the budget"
            )
        if self.window_stride >= self.max_length // 2:
            raise ValueError(
                f"window_stride ({self.window_stride}) must be < max_length/2 "
                f"({self.max_length // 2}) so windows advance"
            )
        return self

    @classmethod
    def tiny(cls, **overrides: Any) -> GuardConfig:
        """Return a config that trains in seconds on a handful of prompts (tests)."""
        values: dict[str, Any] = dict(
            trainable_layers=1,
            head_hidden=32,
            max_length=32,
            window_stride=8,
            epochs=12,
            batch_size=8,
            learning_rate=2e-4,
            head_learning_rate=3e-3,
            warmup_ratio=0.0,
            val_fraction=0.25,
            calibration_fpr=0.03,
            label_smoothing=0.0,
            eval_batch_size=16,
            logging_steps=1,
        )
        values.update(overrides)
        return cls(**values)


@dataclass(frozen=True)
class GuardExample:
    """One labelled text (a prompt, or a prompt with its response)."""

    text: str
    label: str
    tags: tuple[str, ...] = ()


def _tags_of(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        return (raw,)
    if isinstance(raw, dict):
        return tuple(f"{k}={v}" for k, v in sorted(raw.items()))
    return tuple(str(t) for t in raw)


def as_examples(items: Iterable[Any], source: str = "guard data") -> list[GuardExample]:
    """Normalise labelled items into :class:`GuardExample`.

    Accepts LabelledPrompt-like objects (``.text``, ``.label``, optional ``.tags``) or
    ``(text, label)`` tuples.

    Raises:
        ValueError: an item has no text/label, a non-string text, or an unknown label; the
            message names ``source``, the item index and the valid labels.

    """
    out: list[GuardExample] = []
    for i, item in enumerate(items):
        if isinstance(item, GuardExample):
            out.append(item)
            continue
        if isinstance(item, tuple | list):
            if len(item) < 2:
                raise ValueError(f"{source}[{i}]: expected (text, label), got {item!r}")
            text, label, tags = item[0], item[1], item[2] if len(item) > 2 else None
        else:
            try:
                text, label = item.text, item.label
            except AttributeError as exc:
                raise ValueError(
                    f"{source}[{i}]: expected an object with .text and .label or a "
                    f"(text, label) tuple, got {type(item).__name__}"
                ) from exc
            tags = getattr(item, "tags", None)
        if not isinstance(text, str):
            raise ValueError(f"{source}[{i}]: text is {type(text).__name__}, expected str")
        if label not in GUARD_LABELS:
            raise ValueError(
                f"{source}[{i}]: unknown label {label!r}; valid labels: {', '.join(GUARD_LABELS)}"
            )
        out.append(GuardExample(text=text, label=str(label), tags=_tags_of(tags)))
    return out


def near_duplicate_groups(embeddings: np.ndarray, min_similarity: float) -> np.ndarray:
    """Group ids such that texts with cosine similarity >= ``min_similarity`` share a group.

    Average-linkage clustering on cosine distance (scipy), cut at ``1 - min_similarity``:
    paraphrases of one template, or one prompt under different surface noise, land together,
    while average linkage keeps a chain of loosely similar texts from merging into one
    giant group.

    Args:
        embeddings: (n, dim) unit vectors.
        min_similarity: in (0, 1].

    """
    from scipy.cluster.hierarchy import fcluster, linkage

    n = len(embeddings)
    if n < 2:
        return np.zeros(n, dtype=np.int64)
    sims = np.clip(embeddings @ embeddings.T, -1.0, 1.0)
    distances = 1.0 - sims[np.triu_indices(n, k=1)]
    tree = linkage(np.clip(distances, 0.0, None), method="average")
    return np.asarray(fcluster(tree, t=1.0 - min_similarity, criterion="distance"), dtype=np.int64)


def stratified_split(
    examples: Sequence[GuardExample],
    val_fraction: float,
    seed: int,
    groups: Sequence[int] | np.ndarray | None = None,
) -> tuple[list[int], list[int]]:
    """Seeded split into (train indices, val indices) keeping each label's share.

    With ``groups``, whole groups go to one side (near-duplicates never straddle the split,
    so validation scores look like scores on unseen phrasings); groups are taken in seeded
    random order while they fit every label's validation quota. Every label gets >= 1
    example on each side; if whole groups cannot achieve that, that label falls back to a
    plain random split (logged).

    Raises:
        ValueError: a label has fewer than 2 examples (it cannot be on both sides).

    """
    rng = np.random.default_rng(seed)
    labels = np.array([ex.label for ex in examples])
    group_ids = np.arange(len(examples)) if groups is None else np.asarray(groups)
    if len(group_ids) != len(examples):
        raise ValueError(f"{len(group_ids)} group ids for {len(examples)} examples")
    quota: dict[str, int] = {}
    for label in GUARD_LABELS:
        n = int((labels == label).sum())
        if n < 2:
            raise ValueError(
                f"label {label!r} has {n} example(s); the guard needs >= 2 per label "
                "(one to train on, one to calibrate with)"
            )
        quota[label] = min(max(1, round(n * val_fraction)), n - 1)
    in_val = np.zeros(len(examples), dtype=bool)
    taken = Counter[str]()
    unique = np.unique(group_ids)
    for g in unique[rng.permutation(len(unique))]:
        members = np.flatnonzero(group_ids == g)
        need = Counter(labels[members].tolist())
        if all(taken[lab] + c <= quota[lab] for lab, c in need.items()):
            in_val[members] = True
            taken.update(need)
    for label in GUARD_LABELS:
        mine = labels == label
        n_val = int((in_val & mine).sum())
        if 1 <= n_val <= mine.sum() - 1:
            continue
        logger.warning("label %r: no group split fits; splitting it at random", label)
        in_val[mine] = False
        idx = np.flatnonzero(mine)
        in_val[idx[rng.permutation(len(idx))[: quota[label]]]] = True
    return np.flatnonzero(~in_val).tolist(), np.flatnonzero(in_val).tolist()


class Calibration(BaseModel):
    """Thresholds fitted on a validation split, with what they achieved there."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    thresholds: dict[str, float]
    benign_fpr: float
    recall: dict[str, float]
    feasible: bool
    n_benign: int
    n_positive: dict[str, int]


def blocked_mask(probs: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Rows where any non-benign probability reaches its threshold.

    Args:
        probs: (n, len(GUARD_LABELS)) probabilities, benign first.
        thresholds: one per non-benign label, in label order.

    """
    fired = probs[:, 1:] >= np.asarray(thresholds, dtype=probs.dtype)[None, :]
    return np.asarray(fired.any(axis=1), dtype=bool)


def calibrate_thresholds(
    probs: np.ndarray,
    labels: Sequence[str],
    max_fpr: float,
    grid_size: int = 61,
    min_threshold: float = 0.0,
) -> Calibration:
    """Per-label thresholds maximising recall subject to a benign false-positive budget.

    A text is blocked when any non-benign label's probability reaches its threshold. Over
    a grid of thresholds (even in logit space between 0.01 and 0.999) this picks, among
    combinations whose benign FPR is <= ``max_fpr``, those with the best worst-label recall
    (then best mean recall), and of those the one nearest the middle of the tied region in
    logit space: the widest margin on both sides, instead of an edge that unseen prompts
    would cross. A hand-written search because no library calibrates several
    thresholds against one shared FPR budget.

    If no combination meets the budget (benign prompts scored as confidently as any
    threshold), the one with the lowest FPR is returned with ``feasible=False``. Grid
    values below ``min_threshold`` are not considered.
    """
    labels_arr = np.asarray(labels)
    if probs.ndim != 2 or probs.shape != (len(labels_arr), len(GUARD_LABELS)):
        raise ValueError(
            f"probs must be (n, {len(GUARD_LABELS)}) matching labels; got {probs.shape} "
            f"for {len(labels_arr)} labels"
        )
    benign = labels_arr == BENIGN
    positives = {lab: labels_arr == lab for lab in GUARD_LABELS[1:]}
    if not benign.any():
        raise ValueError("calibration needs benign examples to measure the false-positive rate")
    missing = [lab for lab, m in positives.items() if not m.any()]
    if missing:
        raise ValueError(f"calibration needs examples of every label; none for {missing}")

    low = min(max(0.01, min_threshold), 0.99)
    logits = np.linspace(np.log(low / (1 - low)), np.log(0.999 / 0.001), grid_size)
    grid = 1.0 / (1.0 + np.exp(-logits))
    n_pos = len(GUARD_LABELS) - 1
    mesh = np.stack(np.meshgrid(*([np.arange(grid_size)] * n_pos), indexing="ij"), -1)
    combos = mesh.reshape(-1, n_pos)  # (n_combos, n_pos) grid indices
    # fired[c, i, j]: text i, label j passes threshold of combo c.
    fired = probs[None, :, 1:] >= grid[combos][:, None, :]
    blocked = np.asarray(fired.any(axis=2), dtype=bool)
    fpr = blocked[:, benign].mean(axis=1)
    recalls = np.stack([blocked[:, m].mean(axis=1) for m in positives.values()], axis=1)
    ok = fpr <= max_fpr + 1e-12
    feasible = bool(ok.any())
    if feasible:
        score = np.where(ok, recalls.min(axis=1) * 10 + recalls.mean(axis=1), -np.inf)
        best = np.flatnonzero(score >= score.max() - 1e-12)
    else:
        best = np.flatnonzero(fpr <= fpr.min() + 1e-12)
        logger.warning("no thresholds meet benign FPR <= %.3f; lowest is %.3f", max_fpr, fpr.min())
    centre = logits[combos[best]].mean(axis=0)
    pick = best[np.argmin(((logits[combos[best]] - centre) ** 2).sum(axis=1))]
    thresholds = {lab: float(grid[combos[pick, j]]) for j, lab in enumerate(GUARD_LABELS[1:])}
    return Calibration(
        thresholds=thresholds,
        benign_fpr=float(fpr[pick]),
        recall={lab: float(recalls[pick, j]) for j, lab in enumerate(GUARD_LABELS[1:])},
        feasible=feasible,
        n_benign=int(benign.sum()),
        n_positive={lab: int(m.sum()) for lab, m in positives.items()},
    )


@dataclass(frozen=True)
class GuardVerdict:
    """The guard's decision on one text.

    Attributes:
        label: ``benign`` unless blocked; then the blocking label with the highest probability.
        scores: probability per label (sum to 1).
        blocked: a non-benign label reached its calibrated threshold.

    """

    label: str
    scores: dict[str, float]
    blocked: bool

    @property
    def reasons(self) -> list[str]:
        """Machine-readable reasons for a rail verdict, e.g. ``["guard:injection"]``."""
        return [f"guard:{self.label}"] if self.blocked else []


@dataclass(frozen=True)
class GuardAnalysis:
    """Verdicts and retrieval embeddings from one forward pass."""

    verdicts: list[GuardVerdict]
    embeddings: np.ndarray = field(repr=False)


def _window_probs(windows: WindowOutputs) -> np.ndarray:
    """Per text, the probabilities of its most suspicious window (max 1 - p_benign)."""
    probs = windows.outputs["probs"]
    out = np.zeros((windows.n_texts, probs.shape[1]), dtype=np.float32)
    best = np.full(windows.n_texts, -1.0)
    for row, owner in enumerate(windows.owner):
        risk = 1.0 - float(probs[row, 0])
        if risk > best[owner]:
            best[owner] = risk
            out[owner] = probs[row]
    return out


class Guard:
    """A trained guard ready to serve. Build with :meth:`load`."""

    def __init__(
        self,
        backend: EncoderBackend,
        tokenizer: Any,
        thresholds: dict[str, float],
        max_length: int,
        window_stride: int,
        folder: Path | None = None,
        batch_size: int = 64,
        embedding_dim: int = 384,
        normalize: bool = True,
    ) -> None:
        missing = [lab for lab in GUARD_LABELS[1:] if lab not in thresholds]
        if missing:
            raise ValueError(f"thresholds missing for {missing}; need one per non-benign label")
        self.backend = backend
        self.tokenizer = tokenizer
        self.thresholds = {lab: float(thresholds[lab]) for lab in GUARD_LABELS[1:]}
        self.max_length = max_length
        self.window_stride = window_stride
        self.folder = folder
        self.batch_size = batch_size
        self.embedding_dim = embedding_dim
        self.normalize = normalize

    @classmethod
    def load(cls, folder: str | Path, backend: str = "onnx", threads: int | None = None) -> Guard:
        """Load a guard folder written by :func:`train_guard`.

        Args:
            folder: the guard folder.
            backend: ``"onnx"`` (int8, the served fast path) or ``"torch"`` (fp32).
            threads: intra-op threads (ONNX: per session, ``None`` means 1; torch:
                process-wide, ``None`` leaves torch's setting alone).

        Raises:
            FileNotFoundError: ``folder`` holds no guard (no ``guard_config.json``).
            ValueError: unknown backend, unknown folder format, or ``backend="onnx"`` on a
                folder trained without an ONNX export.

        """
        folder = Path(folder)
        meta = read_guard_config(folder)
        engine = load_guard_backend(folder, resolve_backend(backend), threads, meta)
        return cls(
            engine,
            load_tokenizer(folder),
            thresholds=meta["thresholds"],
            max_length=int(meta["max_length"]),
            window_stride=int(meta["window_stride"]),
            folder=folder,
            embedding_dim=int(meta["embedding_dim"]),
            normalize=bool(meta["normalize"]),
        )

    def _run(self, texts: Sequence[str], outputs: Sequence[str] | None = None) -> WindowOutputs:
        return run_windows(
            self.backend,
            self.tokenizer,
            [normalize_text(t) for t in texts] if self.normalize else texts,
            max_length=self.max_length,
            stride=self.window_stride,
            batch_size=self.batch_size,
            outputs=outputs,
        )

    def probs(self, texts: Sequence[str]) -> np.ndarray:
        """(n, 3) probabilities in :data:`GUARD_LABELS` order (benign, harmful, injection).

        Only the guard branch runs where the backend can skip the embedding branch.
        """
        if len(texts) == 0:
            return np.zeros((0, len(GUARD_LABELS)), dtype=np.float32)
        return _window_probs(self._run(texts, outputs=("probs",)))

    def scores(self, texts: Sequence[str]) -> list[dict[str, float]]:
        """Probability per label for each text (each dict sums to 1)."""
        return [self._scores_row(row) for row in self.probs(texts)]

    @staticmethod
    def _scores_row(row: np.ndarray) -> dict[str, float]:
        return {lab: float(p) for lab, p in zip(GUARD_LABELS, row, strict=True)}

    def _verdicts(self, probs: np.ndarray) -> list[GuardVerdict]:
        thr = [self.thresholds[lab] for lab in GUARD_LABELS[1:]]
        blocked = blocked_mask(probs, thr)
        verdicts = []
        for row, is_blocked in zip(probs, blocked, strict=True):
            label = BENIGN
            if is_blocked:
                fired = [j for j in range(1, len(GUARD_LABELS)) if row[j] >= thr[j - 1]]
                label = GUARD_LABELS[max(fired, key=lambda j: row[j])]
            verdicts.append(GuardVerdict(label, self._scores_row(row), bool(is_blocked)))
        return verdicts

    def classify(self, texts: Sequence[str]) -> list[GuardVerdict]:
        """Verdict per text under the calibrated per-label thresholds."""
        return self._verdicts(self.probs(texts))

    def analyse(self, texts: Sequence[str]) -> GuardAnalysis:
        """Verdicts and unit-norm retrieval embeddings from the same forward pass."""
        if len(texts) == 0:
            return GuardAnalysis([], np.zeros((0, self.embedding_dim), dtype=np.float32))
        windows = self._run(texts)
        return GuardAnalysis(self._verdicts(_window_probs(windows)), pool_embeddings(windows))

    def embedder(self) -> Embedder:
        """Return an :class:`Embedder` sharing this guard's session.

        Documents embedded with it match the embeddings :meth:`analyse` returns for requests;
        it asks the backend for the embedding only (the guard branch is skipped where the
        backend can).
        """
        return Embedder(
            OutputView(self.backend, ("embedding",)),
            self.tokenizer,
            self.max_length,
            self.window_stride,
            self.embedding_dim,
            normalize=self.normalize,
        )


class GuardTrainResult(BaseModel):
    """What :func:`train_guard` did: counts, losses, timings, validation calibration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    folder: str
    n_examples: int
    n_train: int
    n_val: int
    label_counts: dict[str, int]
    steps: int
    loss_first: float
    loss_last: float
    losses: list[float]
    served_backend: str
    calibration: Calibration
    train_seconds: float
    export_seconds: float
    calibrate_seconds: float

    def flat_metrics(self) -> dict[str, float]:
        """Numeric metrics with flat names, for MLflow ``log_metrics``."""
        cal = self.calibration
        out = {
            "n_train": float(self.n_train),
            "n_val": float(self.n_val),
            "steps": float(self.steps),
            "loss_first": self.loss_first,
            "loss_last": self.loss_last,
            "train_seconds": self.train_seconds,
            "export_seconds": self.export_seconds,
            "calibrate_seconds": self.calibrate_seconds,
            "val_benign_fpr": cal.benign_fpr,
        }
        out.update({f"val_recall_{k}": v for k, v in cal.recall.items()})
        out.update({f"threshold_{k}": v for k, v in cal.thresholds.items()})
        return out


def _head_tail(ids: list[int], max_length: int) -> list[int]:
    """Keep the first and last tokens of an over-long sequence ([CLS] ... [SEP] kept).

    Training sees one sequence per labelled text, and the label is about the whole text;
    harmful requests sit at the start, injection suffixes at the end, so keeping both ends
    loses the least. (Tokenizers truncate one side only, hence by hand.)
    """
    if len(ids) <= max_length:
        return ids
    head = max_length // 2
    return ids[:head] + ids[len(ids) - (max_length - head) :]


def train_guard(train: Iterable[Any], config: GuardConfig, out_dir: str | Path) -> GuardTrainResult:
    """Fine-tune, export, calibrate and save a guard.

    Args:
        train: LabelledPrompt-like items (``.text``, ``.label`` in :data:`GUARD_LABELS`) or
            ``(text, label)`` tuples. A ``config.val_fraction`` share of each label is held
            back for threshold calibration.
        config: training settings.
        out_dir: the guard folder to write (created; existing guard files are replaced).

    Returns:
        Counts, the loss curve, timings (seconds) and the validation calibration measured
        on the served backend.

    Raises:
        ValueError: bad items (naming the index) or a label with < 2 examples.
        OnnxToolingMissingError: ``export_onnx`` is set and the ``onnx`` package is missing
            (checked before training starts).

    """
    from datasets import Dataset
    from safetensors.torch import save_file
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    examples = as_examples(train, "train")
    if config.export_onnx:
        from models.onnx_export import require_onnx

        require_onnx()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    threads = resolve_threads(config.threads)
    if threads is not None:
        torch.set_num_threads(threads)
    label_index = {lab: i for i, lab in enumerate(GUARD_LABELS)}
    source = config.encoder_folder or encoder_dir()
    tokenizer = load_tokenizer(source)
    torch.manual_seed(config.seed)
    spec = GuardHeadSpec(
        num_labels=len(GUARD_LABELS),
        trainable_layers=config.trainable_layers,
        head_hidden=config.head_hidden,
        pooling=config.pooling,
    )
    module = GuardEncoder(load_bert(source), spec, label_smoothing=config.label_smoothing)

    prep = normalize_text if config.normalize else (lambda t: t)
    all_ids = tokenizer([prep(ex.text) for ex in examples], truncation=False)["input_ids"]
    all_ids = [_head_tail(list(x), config.max_length) for x in all_ids]
    pad_id = int(tokenizer.pad_token_id or 0)
    started = time.perf_counter()
    all_cache = _trunk_cache(module, all_ids, pad_id, config.eval_batch_size)
    groups = None
    if config.group_similarity is not None:
        vectors = _embeddings_from_trunk(module, all_cache, config.eval_batch_size)
        groups = near_duplicate_groups(vectors, config.group_similarity)
    train_idx, val_idx = stratified_split(examples, config.val_fraction, config.seed, groups)
    train_split = [examples[i] for i in train_idx]
    val_split = [examples[i] for i in val_idx]
    ids = [all_ids[i] for i in train_idx]
    cache = [all_cache[i] for i in train_idx]
    cache_seconds = time.perf_counter() - started
    counts = Counter(ex.label for ex in train_split)
    if config.class_weighting:
        module.class_weights = torch.tensor(
            [len(train_split) / (len(GUARD_LABELS) * counts[lab]) for lab in GUARD_LABELS]
        )
    dataset = Dataset.from_dict(
        {
            "input_ids": ids,
            "labels": [label_index[ex.label] for ex in train_split],
            "example_index": list(range(len(ids))),
        }
    )
    trainable = [p for p in module.parameters() if p.requires_grad]
    head_params = {id(p) for p in module.head.parameters()}
    optimizer = torch.optim.AdamW(
        [
            {
                "params": [p for p in trainable if id(p) not in head_params],
                "lr": config.learning_rate,
            },
            {"params": list(module.head.parameters()), "lr": config.head_learning_rate},
        ],
        weight_decay=config.weight_decay,
    )
    args = TrainingArguments(
        output_dir=str(out / ".trainer"),
        per_device_train_batch_size=config.batch_size,
        num_train_epochs=config.epochs,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_ratio,
        lr_scheduler_type="linear",
        logging_steps=config.logging_steps,
        logging_first_step=True,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=config.seed,
        data_seed=config.seed,
        disable_tqdm=not config.progress,
        dataloader_num_workers=0,
        train_sampling_strategy="group_by_length",
        label_names=["labels"],
        remove_unused_columns=False,
        bf16=False,
    )
    # Trainer drives the guard branch through a view that reads the cached trunk states
    # (see _TrainingView); the weights are the module's own.
    trainer = Trainer(
        model=_TrainingView(module, cache),
        args=args,
        train_dataset=dataset,
        data_collator=DataCollatorWithPadding(tokenizer),
        optimizers=(optimizer, None),
    )
    trainer.remove_callback(PrinterCallback)  # log lines go to trainer.state, not stdout
    started = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - started + cache_seconds
    losses = [float(h["loss"]) for h in trainer.state.log_history if "loss" in h]
    module.eval()

    # Save the torch weights + tokenizer + encoder config (a self-contained folder).
    for stale in (GUARD_ONNX_FILE, GUARD_CONFIG_FILE):
        (out / stale).unlink(missing_ok=True)
    save_file(
        {k: v.contiguous() for k, v in module.state_dict().items()}, str(out / GUARD_WEIGHTS_FILE)
    )
    tokenizer.save_pretrained(str(out))
    module.bert_config.save_pretrained(str(out))

    started = time.perf_counter()
    onnx_name: str | None = None
    if config.export_onnx:
        from models.onnx_export import export_int8

        export_int8(module, out / GUARD_ONNX_FILE)
        onnx_name = GUARD_ONNX_FILE
    export_seconds = time.perf_counter() - started

    served = "onnx" if onnx_name else "torch"
    backend: EncoderBackend = (
        OnnxBackend(out / GUARD_ONNX_FILE, threads=threads or 1)
        if onnx_name
        else TorchBackend(module)
    )
    started = time.perf_counter()
    provisional = Guard(
        backend,
        tokenizer,
        thresholds={lab: 0.5 for lab in GUARD_LABELS[1:]},
        max_length=config.max_length,
        window_stride=config.window_stride,
        batch_size=config.eval_batch_size,
        normalize=config.normalize,
    )
    val_probs = provisional.probs([ex.text for ex in val_split])
    calibration = calibrate_thresholds(
        val_probs,
        [ex.label for ex in val_split],
        max_fpr=config.calibration_fpr,
        min_threshold=config.min_threshold,
    )
    calibrate_seconds = time.perf_counter() - started

    meta = {
        "format": FOLDER_FORMAT,
        "format_version": FOLDER_FORMAT_VERSION,
        "labels": list(GUARD_LABELS),
        "thresholds": calibration.thresholds,
        "max_length": config.max_length,
        "window_stride": config.window_stride,
        "spec": {
            "num_labels": spec.num_labels,
            "trainable_layers": spec.trainable_layers,
            "head_hidden": spec.head_hidden,
            "dropout": spec.dropout,
            "pooling": spec.pooling,
        },
        "embedding_dim": module.hidden_size,
        "normalize": config.normalize,
        "onnx": onnx_name,
        "calibrated_on": served,
        "calibration": calibration.model_dump(),
        "train_config": config.model_dump(mode="json"),
        "encoder_source": str(source),
    }
    # Written last: a folder without it is not a guard (an interrupted run is not loadable).
    (out / GUARD_CONFIG_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    result = GuardTrainResult(
        folder=str(out),
        n_examples=len(examples),
        n_train=len(train_split),
        n_val=len(val_split),
        label_counts=dict(Counter(ex.label for ex in examples)),
        steps=int(trainer.state.global_step),
        loss_first=losses[0] if losses else float("nan"),
        loss_last=losses[-1] if losses else float("nan"),
        losses=losses,
        served_backend=served,
        calibration=calibration,
        train_seconds=train_seconds,
        export_seconds=export_seconds,
        calibrate_seconds=calibrate_seconds,
    )
    logger.info(
        "guard trained: %d steps in %.1fs, val FPR %.3f, recall %s (on %s)",
        result.steps,
        train_seconds,
        calibration.benign_fpr,
        calibration.recall,
        served,
    )
    return result


def _trunk_cache(
    module: GuardEncoder, ids: Sequence[list[int]], pad_id: int, batch_size: int
) -> list[torch.Tensor]:
    """Frozen-trunk hidden states per training text, (len_i, hidden) each.

    The trunk is frozen and runs without dropout, so its output for a text never changes:
    computing it once instead of once per epoch saves most of the training compute.
    """
    from models.encoder import pad_batch

    out: list[torch.Tensor] = [torch.empty(0)] * len(ids)
    order = np.argsort([len(x) for x in ids], kind="stable")
    module.eval()
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        input_ids, mask = pad_batch([ids[r] for r in rows], pad_id)
        states = module.trunk(torch.from_numpy(input_ids), torch.from_numpy(mask))
        for i, r in enumerate(rows):
            out[r] = states[i, : len(ids[r])].clone()
    return out


def _embeddings_from_trunk(
    module: GuardEncoder, cache: list[torch.Tensor], batch_size: int
) -> np.ndarray:
    """Pretrained sentence vectors from cached trunk states (only the top layers run)."""
    out = np.zeros((len(cache), module.hidden_size), dtype=np.float32)
    order = np.argsort([c.shape[0] for c in cache], kind="stable")
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        width = max(cache[r].shape[0] for r in rows)
        states = torch.zeros(len(rows), width, module.hidden_size)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            states[i, : cache[r].shape[0]] = cache[r]
            mask[i, : cache[r].shape[0]] = 1
        out[rows] = module.embed_from_trunk(states, mask).numpy()
    return out


class _TrainingView(nn.Module):
    """What ``Trainer`` trains: the guard branch fed from the trunk cache.

    ``forward`` takes the collated batch (padded ``input_ids`` only fix the shape here),
    gathers the cached trunk states of its examples, pads them the same way, and returns
    the branch's loss and logits. The parameters are the GuardEncoder's own.
    """

    def __init__(self, guard: GuardEncoder, cache: list[torch.Tensor]) -> None:
        super().__init__()
        self.guard = guard
        self.cache = cache

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        example_index: torch.Tensor,
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Loss (with labels) and logits for one batch."""
        batch, width = input_ids.shape
        states = torch.zeros(batch, width, self.guard.hidden_size)
        for row, idx in enumerate(example_index.tolist()):
            cached = self.cache[idx]
            states[row, : cached.shape[0]] = cached
        return self.guard.branch_forward(states, attention_mask, labels)


class GuardEvaluation(BaseModel):
    """Guard quality on labelled prompts, as a rail: blocked or not.

    Attributes:
        benign_fpr: share of benign prompts blocked.
        recall: per non-benign label, share of its prompts blocked (by any label).
        label_accuracy: share of prompts whose verdict label equals the true label.
        by_tag: per tag, ``{"n", "benign_fpr" | "recall"}`` over that slice.

    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    n: int
    n_by_label: dict[str, int]
    benign_fpr: float
    recall: dict[str, float]
    label_accuracy: float
    by_tag: dict[str, dict[str, float]]


def guard_metrics(
    verdicts: Sequence[GuardVerdict], examples: Sequence[GuardExample]
) -> GuardEvaluation:
    """Score verdicts against labelled examples (pure; same order, same length)."""
    if len(verdicts) != len(examples):
        raise ValueError(f"{len(verdicts)} verdicts for {len(examples)} examples")
    blocked = np.array([v.blocked for v in verdicts], dtype=bool)
    labels = np.array([ex.label for ex in examples])

    def rate(mask: np.ndarray) -> float:
        return float(blocked[mask].mean()) if mask.any() else float("nan")

    by_tag: dict[str, dict[str, float]] = {}
    for tag in sorted({t for ex in examples for t in ex.tags}):
        in_tag = np.array([tag in ex.tags for ex in examples])
        entry: dict[str, float] = {"n": float(in_tag.sum())}
        if (in_tag & (labels == BENIGN)).any():
            entry["benign_fpr"] = rate(in_tag & (labels == BENIGN))
        if (in_tag & (labels != BENIGN)).any():
            entry["recall"] = rate(in_tag & (labels != BENIGN))
        by_tag[tag] = entry
    return GuardEvaluation(
        n=len(examples),
        n_by_label={lab: int((labels == lab).sum()) for lab in GUARD_LABELS},
        benign_fpr=rate(labels == BENIGN),
        recall={lab: rate(labels == lab) for lab in GUARD_LABELS[1:]},
        label_accuracy=float(
            np.mean([v.label == ex.label for v, ex in zip(verdicts, examples, strict=True)])
        )
        if examples
        else float("nan"),
        by_tag=by_tag,
    )


def evaluate_guard(guard: Guard, items: Iterable[Any]) -> GuardEvaluation:
    """Classify labelled prompts with ``guard`` and score it (FPR, recall, per tag)."""
    examples = as_examples(items, "eval")
    return guard_metrics(guard.classify([ex.text for ex in examples]), examples)
