"""The Hugging Face backend: a tiny real causal LM behind the gateway, micro-batched."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from loopwright.gateway.backends import HFBackend, build_backend, find_hf_folder
from loopwright.gateway.settings import BackendSettings
from models.generation import DecodingParams

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> Path:
    """A 2-layer GPT-2 (random weights, 64 positions) with a byte-level BPE tokenizer."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-lm") / "artifacts" / "model_dir"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [
        "How much is the Pro plan? It costs $49 per month.",
        "Reset your password from the sign-in page.",
    ] * 20
    tok.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<eos>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(fast),
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.eos_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def test_hf_backend_batches_concurrent_requests_and_fits_long_prompts(tiny_lm):
    backend = HFBackend(tiny_lm, name="tiny", version="1", max_batch=8, batch_wait_ms=5)
    params = DecodingParams(max_new_tokens=6)
    convs = [
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": f"How much is plan {i}?"},
        ]
        for i in range(6)
    ]
    long_conv = [{"role": "user", "content": "x " * 400}]  # far beyond 64 positions

    async def run() -> list:
        return await asyncio.gather(*(backend.generate(c, params) for c in [*convs, long_conv]))

    first = asyncio.run(run())
    batches_first = backend.batches
    second = asyncio.run(run())
    assert batches_first < 7  # concurrent requests shared generate calls
    assert [g.text for g in first] == [g.text for g in second]  # greedy: deterministic
    for g in first:
        assert 0 < g.completion_tokens <= 6 and g.finish_reason in ("stop", "length")
        assert g.prompt_tokens + 6 <= 64  # the long prompt was trimmed to fit
    assert first[-1].prompt_tokens < 64
    backend.close()
    with pytest.raises(RuntimeError, match="closed"):
        asyncio.run(backend.generate(convs[0], params))


def test_build_backend_finds_the_model_folder_inside_registry_artifacts(tiny_lm):
    root = tiny_lm.parent.parent
    assert find_hf_folder(root) == tiny_lm
    backend = build_backend("hf", root, "tiny", "3", BackendSettings(kind="hf"))
    assert isinstance(backend, HFBackend) and backend.version == "3"
    backend.close()
    with pytest.raises(ValueError, match="valid kinds: stub, hf"):
        build_backend("vllm", None, "x", "1", BackendSettings())
    with pytest.raises(FileNotFoundError, match="no Hugging Face model folder"):
        find_hf_folder(tiny_lm.parent.parent.parent / "nothing-here")


def test_gateway_serves_the_hf_backend(make_harness, tiny_lm):
    h = make_harness(
        {
            "backend": {"kind": "hf", "default_max_tokens": 5},
            "routing": {"static_model_dir": str(tiny_lm)},
            "augment": {"system_prompt": {"text": "Be brief."}},
        }
    )
    r = h.chat(h.key(), "How much is the Pro plan?")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["usage"]["completion_tokens"] <= 5 and body["usage"]["prompt_tokens"] > 5
    record = h.interactions()[0]
    assert record["completion_tokens"] == body["usage"]["completion_tokens"]
    assert record["response"] == body["choices"][0]["message"]["content"]


def test_sampled_requests_that_differ_only_in_seed_share_a_generate_call(tiny_lm, monkeypatch):
    import models.generation as generation

    calls: list[int] = []
    real = generation.generate_batch

    def counting(policy, convs, params, batch_size=32):
        calls.append(len(convs))
        return real(policy, convs, params, batch_size=batch_size)

    monkeypatch.setattr(generation, "generate_batch", counting)
    backend = HFBackend(tiny_lm, name="tiny", version="1", max_batch=8, batch_wait_ms=5)
    conv = [{"role": "user", "content": "How much is the Pro plan?"}]
    sampled = [DecodingParams(max_new_tokens=4, temperature=0.7, seed=s) for s in range(6)]

    async def run() -> list:
        return await asyncio.gather(*(backend.generate(conv, p) for p in sampled))

    replies = asyncio.run(run())
    backend.close()
    assert len(replies) == 6 and sum(calls) == 6
    # The evaluation's sampled repeats (seed, seed+1, ...) were one call each before.
    assert len(calls) < 6 and max(calls) > 1
