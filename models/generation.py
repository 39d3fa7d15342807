"""Generic generation for any Hugging Face causal LM folder: chat template + ``generate``.

This is the one path every caller (evaluation, gateway, fine-tuning checks) uses, so a
user's own model directory behaves exactly like the embedded example.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

logger = logging.getLogger(__name__)

ChatMessages = Sequence[dict[str, str]]


@dataclass(frozen=True)
class DecodingParams:
    """Decoding settings; greedy unless ``temperature`` > 0.

    Attributes:
        max_new_tokens: upper bound on generated tokens per prompt.
        temperature: 0 means greedy; > 0 samples with this temperature.
        top_p: nucleus mass when sampling, in (0, 1].
        seed: RNG seed used when sampling, so a repeated run reproduces.
        context_guidance: context-contrastive decoding for prompts that carry retrieved
            facts (:func:`loopwright.grounding.facts_in`): each step's log-probabilities
            become ``g * (with facts - without facts) + without facts`` (classifier-free
            guidance with the fact-less prompt as the negative prompt; Shi et al. 2023,
            "Trusting Your Evidence"). 1 is plain decoding; above 1 the reply follows the
            facts more than what the model memorised, at one more forward pass per step
            for those prompts.

    """

    max_new_tokens: int = 48
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    context_guidance: float = 1.0

    def __post_init__(self) -> None:
        if not (0 <= self.context_guidance <= 10):
            raise ValueError(
                f"context_guidance must be in [0, 10] (1 = off), got {self.context_guidance}"
            )

    def cache_key(self) -> str:
        """A stable string identifying these settings, for generation caches."""
        key = f"mnt={self.max_new_tokens};t={self.temperature};p={self.top_p};s={self.seed}"
        # Only when on, so caches written before this setting existed stay valid.
        return key if self.context_guidance == 1 else f"{key};cg={self.context_guidance}"


@dataclass
class LoadedPolicy:
    """A causal LM and its tokenizer, ready for batched generation (left padding)."""

    model: PreTrainedModel
    tokenizer: Any
    device: str = "cpu"


def load_policy(model_dir: str | Path, device: str | None = None) -> LoadedPolicy:
    """Load a causal LM folder through the standard HF path.

    Args:
        model_dir: a folder saved with ``save_pretrained`` holding model and tokenizer
            (the tokenizer must carry a chat template).
        device: ``"cuda"`` / ``"cpu"``; default: CUDA when available.

    Raises:
        ValueError: the tokenizer has no chat template.

    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{model_dir}: tokenizer has no chat_template; set one and re-save")
    # The saved tokenizer does not keep padding_side; decoder-only batching needs left padding.
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model: Any = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
    model.to(device)
    model.eval()
    return LoadedPolicy(model=model, tokenizer=tokenizer, device=device)


def render_prompts(policy: LoadedPolicy, conversations: Sequence[ChatMessages]) -> list[str]:
    """Apply the chat template with the generation prompt to each conversation."""
    return [
        policy.tokenizer.apply_chat_template(list(conv), tokenize=False, add_generation_prompt=True)
        for conv in conversations
    ]


@torch.inference_mode()
def generate_batch(
    policy: LoadedPolicy,
    conversations: Sequence[ChatMessages],
    params: DecodingParams = DecodingParams(),
    batch_size: int = 32,
) -> list[str]:
    """Generate one reply per conversation, in input order.

    Prompts are sorted by length and batched so padding stays small; outputs are
    returned in the caller's order. Greedy decoding is deterministic; sampling is
    seeded per batch from ``params.seed``. With ``params.context_guidance`` != 1, prompts
    that carry retrieved facts are decoded against their fact-less copy
    (:func:`loopwright.grounding.without_facts`) with ``transformers``' classifier-free
    guidance; prompts without facts decode as usual.

    Args:
        policy: a loaded model and tokenizer.
        conversations: chat messages per prompt (role/content dicts).
        params: decoding settings.
        batch_size: prompts per ``generate`` call.

    Returns:
        Decoded reply texts (special tokens stripped, surrounding whitespace trimmed).

    """
    if params.context_guidance == 1:
        return _generate(policy, conversations, params, batch_size)
    from loopwright.grounding import facts_in, without_facts

    # Only prompts that carry facts have a context to contrast; the rest decode as usual.
    grounded = [bool(facts_in(conv)) for conv in conversations]
    outputs = [""] * len(conversations)
    for with_context in (True, False):
        idx = [i for i, g in enumerate(grounded) if g == with_context]
        if not idx:
            continue
        convs = [conversations[i] for i in idx]
        negatives = [without_facts(c) for c in convs] if with_context else None
        texts = _generate(policy, convs, params, batch_size, negatives)
        for i, text in zip(idx, texts, strict=True):
            outputs[i] = text
    return outputs


def _generate(
    policy: LoadedPolicy,
    conversations: Sequence[ChatMessages],
    params: DecodingParams,
    batch_size: int,
    negatives: Sequence[ChatMessages] | None = None,
) -> list[str]:
    """The batched loop of :func:`generate_batch`.

    ``negatives`` holds one negative prompt per conversation: decoded with classifier-free
    guidance at ``params.context_guidance``.
    """
    prompts = render_prompts(policy, conversations)
    negative_prompts = render_prompts(policy, negatives) if negatives is not None else None
    tok = policy.tokenizer
    lengths = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])
    outputs: list[str] = [""] * len(prompts)
    max_positions = getattr(policy.model.config, "max_position_embeddings", None)

    def encode(texts: list[str]) -> Any:
        return tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(
            policy.device
        )

    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = encode([prompts[i] for i in idx])
        new_tokens = params.max_new_tokens
        if max_positions is not None:
            # Never ask for positions the model does not have (it would index out of range).
            new_tokens = max(1, min(new_tokens, max_positions - enc["input_ids"].shape[1]))
        kwargs: dict[str, Any] = {
            "max_new_tokens": new_tokens,
            "pad_token_id": tok.pad_token_id,
            "eos_token_id": tok.eos_token_id,
        }
        if params.temperature > 0:
            torch.manual_seed(params.seed + start)
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
        else:
            kwargs.update(do_sample=False)
        if negative_prompts is not None:
            negative = encode([negative_prompts[i] for i in idx])
            kwargs.update(
                guidance_scale=params.context_guidance,
                negative_prompt_ids=negative["input_ids"],
                negative_prompt_attention_mask=negative["attention_mask"],
            )
        out = cast(Any, policy.model).generate(**enc, **kwargs)
        completions = out[:, enc["input_ids"].shape[1] :]
        texts = tok.batch_decode(completions, skip_special_tokens=True)
        for i, text in zip(idx, texts, strict=True):
            outputs[i] = text.strip()
    return outputs
