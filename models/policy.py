"""The embedded default's policy LM: tokenizer, v1 training from scratch, SFT with replay, DPO.

A small Llama-style causal LM (about 5M parameters at the defaults) and a byte-level BPE
tokenizer trained on the domain corpus, saved as a standard Hugging Face folder (model +
tokenizer with a chat template) so the rest of the platform treats it like any user model:
load it with :func:`models.generation.load_policy`, generate with
:func:`models.generation.generate_batch`.

The recipe follows what was measured on this kind of machine (STACK_NOTES, "Tiny policy
model from scratch"): d=256, 6 layers, 8 heads, tied embeddings, 160 positions, loss on
assistant tokens only, AdamW lr 2e-3 with cosine, batch 32, length-bucketed batches,
surface noise on user turns; fine-tuning replays old data 4:1 at lr 1e-3, because new rows
alone make the model forget nearly everything.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, cast

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from loopwright.records import PreferencePair
from models.cpu import Threads
from models.lora import LoraSettings, with_lora
from models.policy_data import (
    Conversation,
    ConversationPreference,
    EncodedExample,
    EncodedPool,
    NoiseSettings,
    drop_superseded,
    encode_pool,
    noisy_conversation,
    validate_conversations,
)
from models.policy_train import (
    CALIBRATION_STEPS,
    LoopSettings,
    LoopStats,
    torch_threads,
    train_loop,
)

logger = logging.getLogger(__name__)

PAD_TOKEN = "<|pad|>"
END_TOKEN = "<|end|>"
"""Ends every turn; it is the tokenizer's eos, so generation stops after the assistant turn."""
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
SPECIAL_TOKENS = [PAD_TOKEN, END_TOKEN, *ROLE_TOKENS.values()]

# `{% generation %}` marks the tokens that carry loss (return_assistant_tokens_mask), so the
# assistant-only label mask comes from the template itself (stock templates without the
# markers are handled by models.policy_data.assistant_spans).
# Each content starts with a space so its first word tokenizes as it does mid-sentence
# ("How" -> " How"; byte-level BPE gives the two unrelated ids). User and system text is
# lower-cased: a from-scratch model has no notion that "Monthly" and "monthly" are the same
# word, and casing carries no meaning in a help-desk question. Replies keep their case.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ ' ' + message['content'] }}{{ '<|end|>' }}{% endgeneration %}"
    "{% else %}{{ ' ' + message['content'] | lower }}{{ '<|end|>' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def template_view(role: str, content: str) -> str:
    """Render one message's content as :data:`CHAT_TEMPLATE` does (for tokenizer corpora)."""
    return " " + (content if role == "assistant" else content.lower())


TRAINING_META_FILE = "loopwright_training.json"
"""Written next to the weights: config and result of the run that produced the folder."""


class PolicyConfig(BaseModel):
    """Architecture, optimisation and budget of a policy training run (validated, frozen).

    Architecture fields are used by :func:`train_policy_v1` only; fine-tuning and DPO keep
    the parent's architecture and tokenizer.

    Attributes:
        hidden_size: model width (d_model); must be divisible by ``num_heads``.
        num_layers: transformer blocks.
        num_heads: attention heads.
        intermediate_size: SwiGLU hidden width.
        vocab_size: BPE target size, including the special tokens (the corpus may support
            fewer merges; the trained size is what the model gets).
        max_positions: context length in tokens; longer conversations are skipped and
            counted.
        lr: peak learning rate (cosine to ``lr * min_lr_ratio``).
        min_lr_ratio: final learning rate as a fraction of ``lr``.
        warmup_steps: linear warm-up steps.
        weight_decay: AdamW decoupled weight decay on weight matrices.
        batch_size: sequences per optimiser step.
        grad_clip: max global gradient norm.
        max_seconds: wall-clock budget of the training loop in seconds (None: steps only).
        max_steps: step limit (None: time only). With ``max_steps`` and no ``max_seconds``
            a run is reproducible bit for bit for a seed and thread count.
        seed: seeds tokenizer corpus noise, initialisation, batch order and noise.
        threads: torch intra-op threads during training, or ``"auto"`` (the default): the
            cores free when the run starts (:mod:`models.cpu`); more threads than free
            cores make every step wait (OpenMP threads wait on each other when a core is
            taken). A thread count is part of what makes a run reproducible.
            See docs/decisions/0004-policy-training-recipe.md.
        bf16: bfloat16 autocast for forward/backward (weights stay fp32). Off by default:
            slower than fp32 on the shared CPU, and fp32 is exact.
            See docs/decisions/0004-policy-training-recipe.md.
        surface_noise: add greetings, typos and casing to user turns in training copies.
        noise_variants: noisy copies per row prepared up front.
        noise_prob: chance that an epoch uses a noisy copy of a row instead of the clean one.
        tokenizer_min_frequency: BPE merge threshold.
        dpo_beta: DPO temperature (deviation from the reference model).
        dpo_sft_weight: weight of the SFT (NLL on chosen) term added to the DPO loss;
            without it the tiny model's outputs degenerate.
        grad_accumulation: micro-batches of ``batch_size`` per optimiser step.
        gradient_checkpointing: recompute activations in the backward pass (memory for
            compute).
        lora: fine-tunes train these low-rank adapters (peft) with the parent's weights
            frozen and write an adapter folder (:mod:`models.lora`); None: every weight.

    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    hidden_size: int = Field(default=256, ge=8)
    num_layers: int = Field(default=6, ge=1)
    num_heads: int = Field(default=8, ge=1)
    intermediate_size: int = Field(default=688, ge=8)
    vocab_size: int = Field(default=4096, ge=300)
    max_positions: int = Field(default=160, ge=16)
    lr: float = Field(default=2e-3, gt=0, le=1.0)
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    warmup_steps: int = Field(default=30, ge=1)
    weight_decay: float = Field(default=0.1, ge=0)
    batch_size: int = Field(default=32, ge=1)
    grad_clip: float = Field(default=1.0, gt=0)
    max_seconds: float | None = Field(default=270.0, gt=0)
    max_steps: int | None = Field(default=None, ge=1)
    seed: int = 0
    threads: Threads = "auto"
    bf16: bool = False
    surface_noise: bool = True
    noise_variants: int = Field(default=3, ge=0)
    noise_prob: float = Field(default=0.5, ge=0, le=1)
    tokenizer_min_frequency: int = Field(default=2, ge=1)
    dpo_beta: float = Field(default=0.1, gt=0)
    dpo_sft_weight: float = Field(default=1.0, ge=0)
    grad_accumulation: int = Field(default=1, ge=1)
    gradient_checkpointing: bool = False
    lora: LoraSettings | None = None

    @model_validator(mode="after")
    def _consistent(self) -> PolicyConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_heads "
                f"({self.num_heads})"
            )
        if (self.hidden_size // self.num_heads) % 2:
            raise ValueError("hidden_size / num_heads must be even (rotary embeddings)")
        if self.max_seconds is None and self.max_steps is None:
            raise ValueError("set max_seconds, max_steps, or both; a run needs a budget")
        if self.max_seconds is not None and self.warmup_steps < CALIBRATION_STEPS:
            raise ValueError(
                f"warmup_steps must be >= {CALIBRATION_STEPS} with a time budget (the "
                "schedule stays in warm-up while the step rate is measured)"
            )
        return self

    @classmethod
    def tiny(cls, **overrides: Any) -> PolicyConfig:
        """Return a model config that trains in a few seconds on one thread, for tests."""
        values: dict[str, Any] = dict(
            hidden_size=64,
            num_layers=2,
            num_heads=2,
            intermediate_size=128,
            vocab_size=400,
            # The gateway's prompt with one retrieved fact takes 52-82 tokens at this
            # vocabulary (tiny demo, revision-2 facts); 96 positions left no room to answer.
            max_positions=160,
            lr=5e-3,
            warmup_steps=5,
            batch_size=8,
            max_seconds=None,
            max_steps=30,
            threads=1,
            bf16=False,
            noise_variants=1,
        )
        values.update(overrides)
        return cls(**values)

    @classmethod
    def finetune(cls, **overrides: Any) -> PolicyConfig:
        """Return the fine-tuning recipe that kept old facts: lr 1e-3, about 2 minutes."""
        values: dict[str, Any] = dict(lr=1e-3, max_seconds=120.0, warmup_steps=20)
        values.update(overrides)
        return cls(**values)

    @classmethod
    def dpo(cls, **overrides: Any) -> PolicyConfig:
        """Return a conservative DPO recipe: low lr, SFT term on, short."""
        values: dict[str, Any] = dict(
            lr=5e-5, max_seconds=None, max_steps=60, batch_size=16, warmup_steps=5
        )
        values.update(overrides)
        return cls(**values)

    def loop_settings(self) -> LoopSettings:
        """Return the subset of settings the training loop needs."""
        return LoopSettings(
            lr=self.lr,
            min_lr_ratio=self.min_lr_ratio,
            warmup_steps=self.warmup_steps,
            weight_decay=self.weight_decay,
            batch_size=self.batch_size,
            max_steps=self.max_steps,
            max_seconds=self.max_seconds,
            bf16=self.bf16,
            grad_clip=self.grad_clip,
            seed=self.seed,
            grad_accumulation=self.grad_accumulation,
            gradient_checkpointing=self.gradient_checkpointing,
        )


@dataclass(frozen=True)
class TrainResult:
    """What one training run produced (all times in seconds, rates per second).

    Attributes:
        kind: ``"v1"``, ``"sft"`` or ``"dpo"``.
        out_dir: the saved model folder.
        steps: optimiser steps taken.
        seconds: wall time of the optimisation loop.
        initial_loss: loss on the first batch (before any update).
        final_loss: mean loss over the last steps (up to 20).
        tokens_per_second: non-padding tokens processed per second of the loop.
        param_count: parameters of the model (tied embeddings counted once).
        train_rows: conversations (or pairs) used.
        skipped_too_long: conversations dropped for exceeding ``max_positions``.
        epochs: passes over the data started.
        replay_superseded: replay rows left out because the new rows contradict them.

    """

    kind: str
    out_dir: Path
    steps: int
    seconds: float
    initial_loss: float
    final_loss: float
    tokens_per_second: float
    param_count: int
    train_rows: int
    skipped_too_long: int
    epochs: int
    replay_superseded: int = 0

    def metrics(self) -> dict[str, float]:
        """Numeric fields, for logging to MLflow."""
        return {k: float(v) for k, v in asdict(self).items() if isinstance(v, int | float)}


def _chat_template_tokenizer(tok: Any, max_positions: int | None = None) -> PreTrainedTokenizerFast:
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=END_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=list(ROLE_TOKENS.values()),
        model_max_length=max_positions or 1_000_000,
        padding_side="left",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, *, min_frequency: int = 2
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer with our special tokens and chat template.

    Byte-level means any input (typos, homoglyphs, base64) encodes without unknown tokens.
    The template renders ``<|role|>content<|end|>`` per message and, with
    ``add_generation_prompt=True``, ends on ``<|assistant|>``; ``<|end|>`` is the eos, so
    generation stops at the end of the assistant turn.

    Args:
        texts: training corpus (message contents).
        vocab_size: target size including special tokens and the 256 byte symbols; the
            corpus may support fewer merges.
        min_frequency: minimum pair count for a merge.

    Returns:
        A fast tokenizer that round-trips through ``save_pretrained`` /
        ``AutoTokenizer.from_pretrained`` with its chat template.

    Raises:
        ValueError: ``vocab_size`` leaves no room beyond the byte alphabet and specials.

    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    floor = 256 + len(SPECIAL_TOKENS)
    if vocab_size < floor:
        raise ValueError(f"vocab_size must be >= {floor} (256 bytes + specials), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return _chat_template_tokenizer(tok)


def build_model(config: PolicyConfig, tokenizer: PreTrainedTokenizerBase) -> LlamaForCausalLM:
    """Build a fresh Llama-style model for ``tokenizer``, initialised from ``config.seed``."""
    torch.manual_seed(config.seed)
    return LlamaForCausalLM(_model_config(config, tokenizer))


def _model_config(config: PolicyConfig, tokenizer: PreTrainedTokenizerBase) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,
        max_position_embeddings=config.max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
    )


def param_count(model: PreTrainedModel) -> int:
    """Distinct parameters (tied input/output embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _save(
    model: PreTrainedModel,
    tokenizer: Any,
    out_dir: Path,
    config: PolicyConfig,
    result: TrainResult,
    extra: dict[str, Any] | None = None,
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    max_positions = int(model.config.max_position_embeddings)
    # A peft model saves its adapter only; the generation settings live on its base.
    base: PreTrainedModel = (
        cast(Any, model).get_base_model() if hasattr(model, "peft_config") else model
    )
    base.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        # The library default (256 new tokens) exceeds this model's positions and crashes.
        max_new_tokens=min(64, max_positions // 2),
        do_sample=False,
    )
    model.save_pretrained(out_dir)
    if base is not model:
        base.generation_config.save_pretrained(out_dir)
    tokenizer.model_max_length = max_positions
    tokenizer.save_pretrained(out_dir)
    meta = {
        "config": config.model_dump(),
        "result": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(result).items()},
        **(extra or {}),
    }
    (out_dir / TRAINING_META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")


def _encode(
    tokenizer: Any,
    conversations: Sequence[Conversation],
    config: PolicyConfig,
    max_positions: int,
    seed: int,
    source: str,
) -> EncodedPool:
    return encode_pool(
        tokenizer,
        conversations,
        max_positions=max_positions,
        noise=NoiseSettings() if config.surface_noise else None,
        noise_variants=config.noise_variants if config.surface_noise else 0,
        seed=seed,
        source=source,
    )


def _pick_variants(
    pool: EncodedPool, rows: Sequence[int], rng: random.Random, noise_prob: float
) -> list[EncodedExample]:
    out = []
    for i in rows:
        variants = pool.variants[i]
        noisy = len(variants) > 1 and rng.random() < noise_prob
        out.append(variants[rng.randrange(1, len(variants))] if noisy else variants[0])
    return out


def _result(
    kind: str, out_dir: Path, stats: LoopStats, model: PreTrainedModel, rows: int, skipped: int
) -> TrainResult:
    return TrainResult(
        kind=kind,
        out_dir=out_dir,
        steps=stats.steps,
        seconds=stats.seconds,
        initial_loss=stats.initial_loss,
        final_loss=stats.final_loss,
        tokens_per_second=stats.tokens / max(stats.seconds, 1e-9),
        param_count=param_count(model),
        train_rows=rows,
        skipped_too_long=skipped,
        epochs=stats.epochs,
    )


def train_policy_v1(
    conversations: list[list[dict[str, str]]],
    config: PolicyConfig,
    out_dir: Path,
    progress: bool = False,
    *,
    tokenizer_texts: Iterable[str] | None = None,
) -> TrainResult:
    """Train tokenizer and model from scratch on ``conversations`` and save an HF folder.

    Args:
        conversations: chat conversations (``[{"role", "content"}, ...]``), each with at
            least one assistant turn; loss is taken on assistant tokens only.
        config: sizes, optimiser and budget.
        out_dir: folder to write (model weights, tokenizer with chat template, generation
            config, ``loopwright_training.json``); created if missing.
        progress: show a progress bar.
        tokenizer_texts: extra texts for the tokenizer corpus only (e.g. the domain's
            ``tokenizer_corpus``, so words that later fine-tunes need get merges too);
            never held-out evaluation text.

    Returns:
        Steps, time, losses, throughput and size of the run.

    Raises:
        ValueError: malformed conversations (naming the row), or none fits
            ``max_positions``.

    """
    validate_conversations(conversations, "train_policy_v1.conversations")
    out_dir = Path(out_dir)
    with torch_threads(config.threads):
        corpus_rng = random.Random(config.seed)
        noise = NoiseSettings()

        def corpus() -> Iterable[str]:
            # Texts as the chat template renders them (leading space; user text lower-cased),
            # so merges are learned for the strings the model will actually see.
            for conv in conversations:
                for msg in conv:
                    yield template_view(msg["role"], msg["content"])
                if config.surface_noise:
                    # Noisy copies in the tokenizer corpus so typos still get sensible merges.
                    for msg in noisy_conversation(conv, corpus_rng, noise):
                        if msg["role"] == "user":
                            yield template_view("user", msg["content"])
            if tokenizer_texts is not None:
                for text in tokenizer_texts:
                    yield " " + text
                    yield " " + text.lower()

        tokenizer = train_tokenizer(
            corpus(), config.vocab_size, min_frequency=config.tokenizer_min_frequency
        )
        tokenizer.model_max_length = config.max_positions
        pool = _encode(
            tokenizer, conversations, config, config.max_positions, config.seed, "conversations"
        )
        model = build_model(config, tokenizer)
        logger.info(
            "policy v1: %d params, vocab %d, %d rows",
            param_count(model),
            len(tokenizer),
            len(pool.variants),
        )
        rows = list(range(len(pool.variants)))

        def epoch_examples(epoch: int) -> list[EncodedExample]:
            rng = random.Random(f"{config.seed}:v1:{epoch}")
            return _pick_variants(pool, rows, rng, config.noise_prob)

        stats = train_loop(
            model,
            epoch_examples,
            config.loop_settings(),
            pad_id=tokenizer.pad_token_id,
            progress=progress,
        )
    result = _result("v1", out_dir, stats, model, len(pool.variants), pool.skipped_too_long)
    _save(model, tokenizer, out_dir, config, result)
    logger.info(
        "policy v1 saved to %s: %d steps in %.0f s, loss %.3f -> %.3f",
        out_dir,
        result.steps,
        result.seconds,
        result.initial_loss,
        result.final_loss,
    )
    return result


def _load_parent(parent_dir: Path) -> tuple[PreTrainedModel, Any]:
    parent_dir = Path(parent_dir)
    if not (parent_dir / "config.json").is_file():
        raise FileNotFoundError(f"{parent_dir}: not a saved model folder (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(str(parent_dir))
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{parent_dir}: tokenizer has no chat_template")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(parent_dir), dtype=torch.float32)
    return model, tokenizer


def replay_schedule(
    n_new: int, n_replay: int, replay_ratio: float, seed: int
) -> Callable[[int], tuple[list[int], list[int]]]:
    """Choose the rows of each fine-tuning epoch: every new row plus ``replay_ratio`` x replay.

    Replay rows are drawn without replacement from a reshuffled cycle, so over successive
    epochs all of the replay pool is seen about equally often. Epochs must be requested in
    order (0, 1, 2, ...): the cycle position carries over.
    """
    per_epoch = round(replay_ratio * n_new)
    rng = random.Random(f"{seed}:replay")
    cycle: list[int] = []

    def rows(epoch: int) -> tuple[list[int], list[int]]:
        picked: list[int] = []
        while len(picked) < per_epoch and n_replay:
            if not cycle:
                fresh = list(range(n_replay))
                rng.shuffle(fresh)
                # Rows already drawn this epoch go to the far end (pop takes from the back),
                # so an epoch repeats a row only when the pool is smaller than its share.
                taken = set(picked)
                cycle.extend(
                    [r for r in fresh if r in taken] + [r for r in fresh if r not in taken]
                )
            picked.append(cycle.pop())
        return list(range(n_new)), picked

    return rows


def finetune_sft(
    parent_dir: Path,
    new_conversations: list[list[dict[str, str]]],
    replay_conversations: list[list[dict[str, str]]],
    config: PolicyConfig,
    out_dir: Path,
    replay_ratio: float = 4.0,
    progress: bool = False,
    *,
    drop_superseded_replay: bool = True,
    distill_weight: float = 0.0,
) -> TrainResult:
    """Continue a saved policy on new rows mixed with replay of what it already knows.

    Each epoch holds every new row once plus ``replay_ratio`` times as many replay rows.
    Without replay a fine-tune on new facts alone wipes out the old ones
    (docs/decisions/0004-policy-training-recipe.md). The tokenizer is the parent's,
    unchanged; architecture fields of ``config`` are ignored.

    Args:
        parent_dir: a policy folder (from :func:`train_policy_v1` or any HF causal LM folder
            with a chat template; see :func:`models.policy_data.encode_conversation`).
        new_conversations: rows to learn.
        replay_conversations: rows to keep (the parent's training data or samples of it);
            may repeat rows to weight them up (e.g. benign look-alikes).
        config: optimiser and budget (``PolicyConfig.finetune()`` is the measured recipe).
        out_dir: folder to write.
        replay_ratio: replay rows per new row per epoch; 0 disables replay.
        progress: show a progress bar.
        drop_superseded_replay: leave out replay rows whose answers the new rows replace
            (see :func:`models.policy_data.drop_superseded`); without it the stale answer
            is replayed against the new one.
        distill_weight: above 0, replay rows are also pulled towards the parent's
            next-token distributions (KL, nats per answer token, this weight against the
            label loss; the parent runs frozen beside the model, about a third more
            compute per step). Labels keep the parent's answers on the replayed wording
            only; the distributions carry how it answers the rest.

    Raises:
        ValueError: malformed rows, a negative ratio or distillation weight,
            ``replay_ratio > 0`` with no replay rows, or distillation without replay.

    """
    if replay_ratio < 0 or not math.isfinite(replay_ratio):
        raise ValueError(f"replay_ratio must be a finite number >= 0, got {replay_ratio}")
    if distill_weight < 0 or not math.isfinite(distill_weight):
        raise ValueError(f"distill_weight must be a finite number >= 0, got {distill_weight}")
    if distill_weight > 0 and replay_ratio == 0:
        raise ValueError("distill_weight > 0 distils the replay rows; it needs replay_ratio > 0")
    validate_conversations(new_conversations, "finetune_sft.new_conversations")
    if replay_ratio > 0:
        if not replay_conversations:
            raise ValueError(
                "finetune_sft: replay_ratio > 0 but no replay_conversations; pass the "
                "parent's training rows (or set replay_ratio=0 to knowingly forget)"
            )
        validate_conversations(replay_conversations, "finetune_sft.replay_conversations")
    superseded = 0
    replay_rows: Sequence[Conversation] = replay_conversations
    if drop_superseded_replay and replay_ratio > 0:
        replay_rows, superseded = drop_superseded(new_conversations, replay_conversations)
        logger.info("finetune_sft: %d replay rows superseded by new rows", superseded)
        if not replay_rows:
            raise ValueError("finetune_sft: every replay row is superseded by the new rows")
    out_dir = Path(out_dir)
    with torch_threads(config.threads):
        model, tokenizer = _load_parent(parent_dir)
        max_positions = int(model.config.max_position_embeddings)
        new_pool = _encode(
            tokenizer, new_conversations, config, max_positions, config.seed, "new_conversations"
        )
        replay_pool = (
            _encode(
                tokenizer,
                replay_rows,
                config,
                max_positions,
                config.seed + 1,
                "replay_conversations",
            )
            if replay_ratio > 0
            else EncodedPool(variants=[], skipped_too_long=0)
        )
        teacher = None
        if distill_weight > 0:
            replay_pool = replace(
                replay_pool,
                variants=[
                    [replace(ex, distill=True) for ex in variants]
                    for variants in replay_pool.variants
                ],
            )
            teacher = copy.deepcopy(model).eval().requires_grad_(False)
        schedule = replay_schedule(
            len(new_pool.variants), len(replay_pool.variants), replay_ratio, config.seed
        )

        def epoch_examples(epoch: int) -> list[EncodedExample]:
            rng = random.Random(f"{config.seed}:sft:{epoch}")
            new_idx, replay_idx = schedule(epoch)
            return _pick_variants(new_pool, new_idx, rng, config.noise_prob) + _pick_variants(
                replay_pool, replay_idx, rng, config.noise_prob
            )

        torch.manual_seed(config.seed)
        if config.lora is not None:
            model = with_lora(model, config.lora)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        stats = train_loop(
            model,
            epoch_examples,
            config.loop_settings(),
            pad_id=tokenizer.pad_token_id,
            progress=progress,
            teacher=teacher,
            distill_weight=distill_weight,
        )
    rows = len(new_pool.variants) + len(replay_pool.variants)
    skipped = new_pool.skipped_too_long + replay_pool.skipped_too_long
    result = replace(
        _result("sft", out_dir, stats, model, rows, skipped), replay_superseded=superseded
    )
    _save(
        model,
        tokenizer,
        out_dir,
        config,
        result,
        extra={
            "parent_dir": str(parent_dir),
            "new_rows": len(new_pool.variants),
            "replay_rows": len(replay_pool.variants),
            "replay_ratio": replay_ratio,
            "replay_superseded": superseded,
            "distill_weight": distill_weight,
            "method": "lora" if config.lora is not None else "full",
            "trainable_params": trainable,
        },
    )
    return result


def _weighted_pairs(pairs: Sequence[PreferencePair], seed: int) -> list[PreferencePair]:
    """Turn pair weights into sampling frequency (DPOTrainer has no per-row loss weight).

    Zero-weight pairs are left out; if weights differ, the same number of rows is drawn
    with replacement in proportion to weight, so the expected loss equals the weighted one.
    """
    kept = [p for p in pairs if p.weight > 0]
    if len(kept) < len(pairs):
        logger.info("train_dpo: %d zero-weight pairs left out", len(pairs) - len(kept))
    if not kept:
        raise ValueError("train_dpo: every pair has weight 0; nothing to learn")
    weights = [p.weight for p in kept]
    if max(weights) == min(weights):
        return kept
    return random.Random(f"{seed}:dpo-weights").choices(kept, weights=weights, k=len(kept))


def train_dpo(
    parent_dir: Path,
    pairs: list[PreferencePair],
    config: PolicyConfig,
    out_dir: Path,
    progress: bool = False,
) -> TrainResult:
    """Preference-optimise a saved policy with trl's ``DPOTrainer`` (plus an SFT term).

    The loss is ``sigmoid DPO + dpo_sft_weight * NLL(chosen)``: on this model DPO alone
    made outputs degenerate (docs/decisions/0004-policy-training-recipe.md). Keep the result
    only where evaluation shows it helps. The reference model is a frozen copy of the parent.

    Args:
        parent_dir: the policy folder to start from (usually the SFT candidate).
        pairs: preference pairs; ``prompt`` is the user message, ``chosen``/``rejected``
            the assistant replies; ``weight`` becomes sampling frequency (0 drops a pair).
        config: ``lr``, ``batch_size``, ``max_steps``/``max_seconds``, ``seed``, ``threads``,
            ``dpo_beta``, ``dpo_sft_weight`` (``PolicyConfig.dpo()`` is a safe start).
        out_dir: folder to write.
        progress: show the trainer's progress bar.

    Raises:
        ValueError: no pairs, or all of weight 0.

    """
    if not pairs:
        raise ValueError("train_dpo: no preference pairs given")
    rows = [
        ConversationPreference([{"role": "user", "content": p.prompt}], p.chosen, p.rejected)
        for p in _weighted_pairs(pairs, config.seed)
    ]
    return train_dpo_conversations(
        parent_dir, rows, config, out_dir, progress, pairs_given=len(pairs)
    )


def train_dpo_conversations(
    parent_dir: Path,
    preferences: Sequence[ConversationPreference],
    config: PolicyConfig,
    out_dir: Path,
    progress: bool = False,
    *,
    pairs_given: int | None = None,
) -> TrainResult:
    """:func:`train_dpo` on whole conversation prefixes (system prompt, served context).

    Use this where the model is served with more than the user's message: the pairs are
    then learned in the prompt the model will see (e.g. the gateway's system prompt and
    retrieved facts).

    Args:
        parent_dir: the policy folder to start from.
        preferences: prefixes with the preferred and the rejected next assistant turn.
        config: as for :func:`train_dpo`.
        out_dir: folder to write.
        progress: show the trainer's progress bar.
        pairs_given: pairs before weighting (recorded; defaults to ``len(preferences)``).

    Raises:
        ValueError: no preferences, or a prefix that does not end with a user turn.

    """
    from datasets import Dataset
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import DPOConfig, DPOTrainer

    if not preferences:
        raise ValueError("train_dpo: no preference pairs given")
    for i, pref in enumerate(preferences):
        if not pref.messages or pref.messages[-1]["role"] != "user":
            raise ValueError(f"train_dpo: preference {i} must end with a user turn")
    out_dir = Path(out_dir)
    rows = list(preferences)
    dataset = Dataset.from_list(
        [
            {
                "prompt": [dict(m) for m in p.messages],
                "chosen": [{"role": "assistant", "content": p.chosen}],
                "rejected": [{"role": "assistant", "content": p.rejected}],
            }
            for p in rows
        ]
    )
    with torch_threads(config.threads), tempfile.TemporaryDirectory() as scratch:
        torch.manual_seed(config.seed)
        model, tokenizer = _load_parent(parent_dir)
        max_positions = int(model.config.max_position_embeddings)
        steps = config.max_steps
        if steps is None:
            # Time budget only: plan generously, the callback below stops on time.
            steps = 10**6
        args = DPOConfig(
            output_dir=scratch,
            per_device_train_batch_size=config.batch_size,
            learning_rate=config.lr,
            lr_scheduler_type="cosine",
            warmup_steps=min(config.warmup_steps, max(steps // 10, 1)),
            weight_decay=config.weight_decay,
            max_grad_norm=config.grad_clip,
            max_steps=steps,
            beta=config.dpo_beta,
            loss_type=["sigmoid", "sft"],
            loss_weights=[1.0, config.dpo_sft_weight],
            max_length=max_positions,
            # trl's defaults (bf16, gradient checkpointing) are slower on CPU and inexact.
            bf16=False,
            activation_checkpointing=False,
            use_cpu=not torch.cuda.is_available(),
            report_to="none",
            save_strategy="no",
            logging_steps=1,
            seed=config.seed,
            data_seed=config.seed,
            disable_tqdm=not progress,
            dataloader_num_workers=0,
        )
        deadline = config.max_seconds

        class _Budget(TrainerCallback):
            """Stops training when the wall-clock budget is spent."""

            def __init__(self) -> None:
                self.start = 0.0

            def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                import time

                self.start = time.perf_counter()

            def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                import time

                if deadline is not None and time.perf_counter() - self.start >= deadline:
                    control.should_training_stop = True

        trainer = DPOTrainer(
            model=model,
            ref_model=None,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[_Budget()],
        )
        # With the progress bar off the Trainer prints every log line (one per step).
        trainer.remove_callback(PrinterCallback)
        output = trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        trained = trainer.model
        if not isinstance(trained, PreTrainedModel):
            raise TypeError(f"DPOTrainer returned {type(trained).__name__}, not a PreTrainedModel")
    # trl logs the running count of non-padding tokens (chosen + rejected sequences).
    n_tokens = int(max((h.get("num_tokens", 0) for h in trainer.state.log_history), default=0))
    stats = LoopStats(
        steps=int(trainer.state.global_step),
        seconds=float(output.metrics.get("train_runtime", 0.0)),
        initial_loss=losses[0] if losses else float("nan"),
        final_loss=(sum(losses[-20:]) / len(losses[-20:])) if losses else float("nan"),
        tokens=n_tokens,
        epochs=math.ceil(float(trainer.state.epoch or 0)),
        losses=losses,
    )
    result = _result("dpo", out_dir, stats, trained, len(rows), 0)
    _save(
        trained,
        tokenizer,
        out_dir,
        config,
        result,
        extra={
            "parent_dir": str(parent_dir),
            "pairs": len(rows) if pairs_given is None else pairs_given,
            "pairs_used": len(rows),
        },
    )
    return result
