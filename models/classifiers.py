"""Bring your own guard or reward model: any Hugging Face sequence classifier.

loopwright's own guard (:mod:`models.guard`) and reward model (:mod:`models.reward`) are
folders with their own config files. A team that already has a safety classifier or a
reward model registers it as it is:

- a **guard** is any ``AutoModelForSequenceClassification`` folder plus a label map
  (``loopwright_guard.json``, written by ``loopwright register --kind guard --label-map``)
  that sends each of the model's labels to ``benign``, ``harmful`` or ``injection``, and
  the thresholds its rails block at;
- a **reward model** is any single-logit ``AutoModelForSequenceClassification`` folder;
  a (prompt, response) is rendered with the tokenizer's chat template when it has one,
  else passed as a text pair.

:func:`load_guard` and :func:`load_reward` open either kind of folder, so the gateway, the
nightly's screening and the evaluation scorers serve whichever the registry holds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

GuardLabel = Literal["benign", "harmful", "injection"]
BlockLabel = Literal["harmful", "injection"]
GUARD_TARGETS: tuple[str, ...] = ("benign", "harmful", "injection")
HF_GUARD_FILE = "loopwright_guard.json"
HF_GUARD_FORMAT: Literal["hf-sequence-classifier"] = "hf-sequence-classifier"


DEFAULT_THRESHOLDS: dict[BlockLabel, float] = {"harmful": 0.5, "injection": 0.5}


def _default_thresholds() -> dict[BlockLabel, float]:
    return dict(DEFAULT_THRESHOLDS)


class GuardMapping(BaseModel):
    """How a foreign classifier's labels read as guard labels, and where rails block.

    Attributes:
        label_map: model label (``config.id2label`` name) -> ``benign``, ``harmful`` or
            ``injection``; every model label appears once. Several model labels may send
            to one guard label (their probabilities add up; multi-label models: the largest).
        thresholds: block when P(label) is at least this (``harmful``, ``injection``).

    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["hf-sequence-classifier"] = HF_GUARD_FORMAT
    label_map: dict[str, GuardLabel]
    thresholds: dict[BlockLabel, Annotated[float, Field(gt=0.0, le=1.0)]] = Field(
        default_factory=_default_thresholds
    )


class ClassifierFolderError(ValueError):
    """A classifier folder or label map the loop cannot use; the message says why."""


def model_labels(folder: Path) -> list[str]:
    """The label names of a sequence-classifier folder, in logit order."""
    from transformers import AutoConfig

    return _labels(AutoConfig.from_pretrained(str(folder), local_files_only=True))


def _labels(config: Any) -> list[str]:
    return [str(config.id2label[i]) for i in range(int(config.num_labels))]


def guard_mapping(labels: Sequence[str], given: Mapping[str, str] | None) -> dict[str, str]:
    """Check ``given`` against the model's ``labels``; None means the labels are guard labels.

    Raises:
        ClassifierFolderError: a label mapped twice or not at all, a name the model does not
            have, a target that is not a guard label, or no label mapped to a block label.

    """
    if not given:
        if not set(labels) <= set(GUARD_TARGETS):
            raise ClassifierFolderError(
                f"the model's labels {list(labels)} are not guard labels; map each with "
                f"--label-map MODEL_LABEL=GUARD_LABEL (guard labels: {', '.join(GUARD_TARGETS)})"
            )
        given = {label: label for label in labels}
    unknown = sorted(set(given) - set(labels))
    missing = [label for label in labels if label not in given]
    bad = sorted({t for t in given.values() if t not in GUARD_TARGETS})
    problems = []
    if unknown:
        problems.append(f"the model has no label {', '.join(unknown)}")
    if missing:
        problems.append(f"unmapped model labels {', '.join(missing)}")
    if bad:
        problems.append(f"{', '.join(bad)} not a guard label")
    if not problems and set(given.values()) <= {"benign"}:
        problems.append("every label maps to benign: the guard could never block")
    if problems:
        raise ClassifierFolderError(
            "; ".join(problems) + f" (model labels: {', '.join(labels)}; guard labels: "
            f"{', '.join(GUARD_TARGETS)})"
        )
    return dict(given)


def write_guard_mapping(folder: Path, mapping: GuardMapping) -> None:
    """Write ``loopwright_guard.json`` into ``folder``."""
    (folder / HF_GUARD_FILE).write_text(mapping.model_dump_json(indent=2), encoding="utf-8")


def read_guard_mapping(folder: Path) -> GuardMapping:
    """Read ``loopwright_guard.json`` from ``folder``.

    Raises:
        FileNotFoundError: no such file.
        pydantic.ValidationError: the file is not a guard mapping.

    """
    return GuardMapping.model_validate_json((folder / HF_GUARD_FILE).read_text("utf-8"))


def _load_classifier(folder: Path, threads: int | None) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if threads is not None:
        torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(str(folder), local_files_only=True)
    if tokenizer.pad_token is None:
        # Decoder classifiers (GPT-2, Llama) read the last non-pad token: they need a pad id.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer


def _forward(model: Any, batch: Any) -> Any:
    """The model's logits for a tokenizer batch, passing only the inputs it takes.

    A fast tokenizer may add ``token_type_ids`` that decoder classifiers (Llama, Qwen)
    refuse; BERT-style encoders use them.
    """
    import inspect

    accepted = inspect.signature(model.forward).parameters
    return model(**{k: v for k, v in batch.items() if k in accepted}).logits


def _max_length(tokenizer: Any, model: Any) -> int:
    limit = getattr(model.config, "max_position_embeddings", None) or 512
    return int(min(tokenizer.model_max_length or limit, limit, 512))


class ClassifierGuard:
    """A Hugging Face sequence classifier serving as the guard. Build with :meth:`load`."""

    def __init__(
        self, model: Any, tokenizer: Any, mapping: GuardMapping, batch_size: int = 32
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.mapping = mapping
        self.thresholds = dict(mapping.thresholds)
        self.batch_size = batch_size
        self._targets = [mapping.label_map[label] for label in _labels(model.config)]
        self._multi_label = model.config.problem_type == "multi_label_classification"
        self._max_length = _max_length(tokenizer, model)

    @classmethod
    def load(cls, folder: str | Path, threads: int | None = None) -> ClassifierGuard:
        """Load a classifier folder holding ``loopwright_guard.json``.

        Raises:
            FileNotFoundError: no ``loopwright_guard.json``.
            ClassifierFolderError: the label map does not fit the model.

        """
        folder = Path(folder)
        mapping = read_guard_mapping(folder)
        model, tokenizer = _load_classifier(folder, threads)
        guard_mapping(_labels(model.config), mapping.label_map)
        return cls(model, tokenizer, mapping)

    def probs(self, texts: Sequence[str]) -> np.ndarray:
        """(n, 3) probabilities in ``benign, harmful, injection`` order."""
        import torch

        out = np.zeros((len(texts), len(GUARD_TARGETS)), dtype=np.float64)
        order = np.argsort([len(t) for t in texts], kind="stable")
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                batch = self.tokenizer(
                    [texts[r] for r in rows],
                    padding=True,
                    truncation=True,
                    max_length=self._max_length,
                    return_tensors="pt",
                )
                logits = _forward(self.model, batch).double()
                label_p = torch.sigmoid(logits) if self._multi_label else logits.softmax(-1)
                for j, target in enumerate(self._targets):
                    col = GUARD_TARGETS.index(target)
                    p = label_p[:, j].numpy()
                    if self._multi_label:
                        out[rows, col] = np.maximum(out[rows, col], p)
                    else:
                        out[rows, col] += p
        if self._multi_label:  # no benign output of its own: what the risks leave
            out[:, 0] = 1.0 - out[:, 1:].max(axis=1)
        return out

    def scores(self, texts: Sequence[str]) -> list[dict[str, float]]:
        """Probability per guard label for each text."""
        return [
            {label: float(p) for label, p in zip(GUARD_TARGETS, row, strict=True)}
            for row in self.probs(texts)
        ]


class ClassifierReward:
    """A single-logit Hugging Face sequence classifier as reward model; see :meth:`load`."""

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 16) -> None:
        if int(model.config.num_labels) != 1:
            raise ClassifierFolderError(
                f"a reward model has one output logit; this classifier has "
                f"{model.config.num_labels} ({', '.join(map(str, model.config.id2label.values()))})"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self._max_length = _max_length(tokenizer, model)

    @classmethod
    def load(cls, folder: str | Path, threads: int | None = None) -> ClassifierReward:
        """Load a single-logit classifier folder (model and tokenizer)."""
        model, tokenizer = _load_classifier(Path(folder), threads)
        return cls(model, tokenizer)

    def _encode(self, prompts: Sequence[str], responses: Sequence[str]) -> Any:
        kw: dict[str, Any] = dict(
            padding=True, truncation=True, max_length=self._max_length, return_tensors="pt"
        )
        if getattr(self.tokenizer, "chat_template", None):
            chats = [
                self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": p}, {"role": "assistant", "content": r}],
                    tokenize=False,
                )
                for p, r in zip(prompts, responses, strict=True)
            ]
            return self.tokenizer(chats, add_special_tokens=False, **kw)
        return self.tokenizer(list(prompts), list(responses), **kw)

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """Scalar reward per (prompt, response); higher is better. Unbounded reals.

        Raises:
            ValueError: ``prompts`` and ``responses`` differ in length.

        """
        import torch

        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        out = np.zeros(len(prompts), dtype=np.float64)
        order = np.argsort([len(p) + len(r) for p, r in zip(prompts, responses, strict=True)])
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                batch = self._encode([prompts[r] for r in rows], [responses[r] for r in rows])
                out[rows] = _forward(self.model, batch)[:, 0].double().numpy()
        return [float(s) for s in out]


def is_own_guard(folder: Path) -> bool:
    """Whether ``folder`` is a loopwright-trained guard (else a classifier with a label map)."""
    from models.guard_folder import GUARD_CONFIG_FILE

    return (folder / GUARD_CONFIG_FILE).is_file()


def is_own_reward(folder: Path) -> bool:
    """Whether ``folder`` is a loopwright-trained reward model (the nightly can refresh it)."""
    from models.reward import REWARD_CONFIG_FILE

    return (folder / REWARD_CONFIG_FILE).is_file()


def load_guard(folder: str | Path, backend: str = "onnx", threads: int | None = None) -> Any:
    """Open a guard folder of either kind; both offer ``scores(texts)`` and ``thresholds``.

    Args:
        folder: a loopwright guard folder or a classifier folder with a label map.
        backend: for loopwright guards, ``onnx`` or ``torch`` (a classifier runs in torch).
        threads: intra-op threads.

    Raises:
        FileNotFoundError: neither ``guard_config.json`` nor ``loopwright_guard.json``.

    """
    folder = Path(folder)
    if is_own_guard(folder):
        from models.guard import Guard

        return Guard.load(folder, backend=backend, threads=threads)
    if not (folder / HF_GUARD_FILE).is_file():
        raise FileNotFoundError(
            f"{folder}: not a guard folder (no guard_config.json and no {HF_GUARD_FILE}; "
            "register a classifier with loopwright register --kind guard --label-map ...)"
        )
    return ClassifierGuard.load(folder, threads=threads)


def load_reward(folder: str | Path, threads: int | None = None) -> Any:
    """Open a reward folder of either kind; both offer ``score(prompts, responses)``."""
    folder = Path(folder)
    if is_own_reward(folder):
        from models.reward import RewardModel

        return RewardModel.load(folder, threads=threads)
    return ClassifierReward.load(folder, threads=threads)


def find_guard_folder(root: Path) -> Path:
    """The shallowest guard folder (either kind) under ``root`` (a downloaded artifact).

    Raises:
        FileNotFoundError: none inside.

    """
    from models.guard_folder import GUARD_CONFIG_FILE

    hits = [*root.rglob(GUARD_CONFIG_FILE), *root.rglob(HF_GUARD_FILE)]
    if not hits:
        raise FileNotFoundError(f"{root}: no guard folder inside")
    return min(hits, key=lambda p: len(p.parts)).parent
