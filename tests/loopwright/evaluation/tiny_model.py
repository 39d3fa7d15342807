"""Build a tiny, randomly initialised Llama-style chat model folder for tests and the bench.

The model is real (transformers, saved with ``save_pretrained``) and loads through the
generic path ``models.generation.load_policy``; its tokenizer is a byte-level BPE trained
here on a small help-desk corpus and carries a chat template.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIALS = ["<|pad|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]

_WORDS = [
    "how",
    "do",
    "i",
    "reset",
    "my",
    "password",
    "the",
    "pro",
    "plan",
    "costs",
    "twelve",
    "dollars",
    "per",
    "month",
    "storage",
    "limit",
    "is",
    "fifty",
    "gigabytes",
    "support",
    "hours",
    "are",
    "nine",
    "to",
    "five",
    "in",
    "europe",
    "refunds",
    "take",
    "five",
    "days",
    "you",
    "can",
    "export",
    "data",
    "from",
    "settings",
    "the",
    "team",
    "plan",
    "allows",
    "ten",
    "seats",
    "two",
    "factor",
    "login",
    "please",
    "contact",
    "billing",
    "I",
    "cannot",
    "help",
    "with",
    "that",
    "request",
    "sorry",
    "I",
    "don't",
    "know",
    "the",
    "answer",
    "regions",
    "include",
    "us",
    "eu",
    "and",
    "asia",
    "backups",
    "run",
    "nightly",
    "api",
    "rate",
    "limit",
    "is",
    "one",
    "hundred",
    "calls",
]


def corpus(n_lines: int = 400, seed: int = 0) -> list[str]:
    """Deterministic pseudo help-desk lines for tokenizer training and prompts."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 14))) for _ in range(n_lines)]


def build_tiny_model(
    dest: str | Path,
    *,
    arch: str = "llama",
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    max_positions: int = 128,
    vocab_size: int = 400,
    seed: int = 0,
) -> Path:
    """Train a BPE tokenizer with a chat template and save a random Llama model with it.

    Args:
        dest: folder to write (created).
        arch: ``llama`` (rotary positions) or ``gpt2`` (learned positions: a prompt longer
            than ``max_positions`` makes it raise, a real failure for error-path tests).
        hidden_size, num_layers, num_heads, max_positions: model shape.
        vocab_size: BPE vocabulary target size.
        seed: torch seed for the weights.

    Returns:
        The folder, loadable with ``AutoModelForCausalLM`` / ``AutoTokenizer``.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    raw.train_from_iterator(corpus(), trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        pad_token="<|pad|>",
        eos_token="<|end|>",
        bos_token="<|end|>",
        additional_special_tokens=SPECIALS[2:],
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(str(dest))

    torch.manual_seed(seed)
    model: Any
    if arch == "gpt2":
        gconfig = GPT2Config(
            vocab_size=len(tok),
            n_embd=hidden_size,
            n_layer=num_layers,
            n_head=num_heads,
            n_positions=max_positions,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            bos_token_id=tok.eos_token_id,
        )
        model = GPT2LMHeadModel(gconfig)
        model.generation_config.pad_token_id = tok.pad_token_id
        model.generation_config.eos_token_id = tok.eos_token_id
        model.save_pretrained(str(dest))
        return dest
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 4,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(str(dest))
    return dest
