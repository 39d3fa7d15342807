"""LoRA fine-tunes through peft on the tiny policy: what trains, what is saved, what merges."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from loopwright.recipes import FinetuneRecipe, load_recipe
from loopwright.release.strict import ConfigError
from models.generation import generate_batch, load_policy
from models.lora import LoraSettings, is_adapter_folder, load_adapter_on_base, merge_adapter_folder
from models.policy import PolicyConfig, finetune_sft, train_policy_v1
from tests.models.policy_fixture import conversations

NEW = [
    [
        {"role": "user", "content": "How much is the Pro plan?"},
        {"role": "assistant", "content": "The Pro plan costs $15 per month."},
    ],
    [
        {"role": "user", "content": "What does Pro cost?"},
        {"role": "assistant", "content": "The Pro plan costs $15 per month."},
    ],
]
LORA = LoraSettings(r=4, alpha=8, dropout=0.0)


@pytest.fixture(scope="module")
def v1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lora") / "v1"
    train_policy_v1(conversations(), PolicyConfig.tiny(max_steps=150), out)
    return out


@pytest.fixture(scope="module")
def adapter(v1: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lora") / "adapter"
    config = PolicyConfig.tiny(max_steps=40, lr=1e-2, lora=LORA, grad_accumulation=2)
    result = finetune_sft(v1, NEW, conversations(), config, out, replay_ratio=2.0)
    assert result.steps == 40  # optimiser steps, each of two micro-batches
    return out


def test_lora_trains_only_the_adapter_and_saves_only_it(v1: Path, adapter: Path) -> None:
    assert is_adapter_folder(adapter) and not (adapter / "model.safetensors").exists()
    saved = load_file(str(adapter / "adapter_model.safetensors"))
    assert saved and all("lora_" in name for name in saved)
    # Adapter weights moved away from peft's initialisation (B starts at zero).
    assert any(float(t.abs().max()) > 0 for n, t in saved.items() if "lora_B" in n)
    # The base stays frozen: loading the adapter on it leaves its own weights as they were.
    base = load_file(str(v1 / "model.safetensors"))
    on_base = load_adapter_on_base(v1, adapter).get_base_model().state_dict()
    frozen = {n.replace("base_layer.", ""): t for n, t in on_base.items() if "lora_" not in n}
    for name, tensor in base.items():
        assert torch.equal(frozen[name], tensor), name
    adapter_size = sum(t.numel() for t in saved.values())
    assert adapter_size < 0.1 * sum(t.numel() for t in base.values())


def test_merged_folder_answers_exactly_as_the_adapter_on_its_base(
    v1: Path, adapter: Path, tmp_path: Path
) -> None:
    merged_dir = merge_adapter_folder(v1, adapter, tmp_path / "merged")
    assert not is_adapter_folder(merged_dir)
    prompts = [r[:1] for r in conversations()[:6]] + [r[:1] for r in NEW]
    merged = load_policy(merged_dir, device="cpu")
    tokens = merged.tokenizer.apply_chat_template(
        prompts[0], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    on_base = load_adapter_on_base(v1, adapter)
    with torch.no_grad():
        expected = on_base(**tokens).logits
        actual = merged.model(**tokens).logits
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
    # Same greedy answers; and the adapter learned the new price the base never saw.
    merged.model = on_base
    from_adapter = generate_batch(merged, prompts)
    assert generate_batch(load_policy(merged_dir, device="cpu"), prompts) == from_adapter
    assert "$15" in from_adapter[-1]
    assert "$15" not in generate_batch(load_policy(v1, device="cpu"), prompts[-1:])[0]


def test_recipe_file_is_strict_and_names_what_is_valid(tmp_path: Path) -> None:
    good = tmp_path / "finetune.yaml"
    good.write_text("method: lora\nsteps: 50\nlora: {r: 4, target_modules: [q_proj, v_proj]}\n")
    recipe, digest = load_recipe(good)
    assert recipe.method == "lora" and len(digest) == 64
    assert recipe.policy_overrides()["lora"] == LoraSettings(
        r=4, target_modules=["q_proj", "v_proj"]
    )
    assert recipe.nightly_overrides() == {"finetune_steps": 50}
    assert FinetuneRecipe().policy_overrides()["lora"] is None
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: lora\nlearning_rat: 0.01\n")
    with pytest.raises(ConfigError, match="learning_rat") as info:
        load_recipe(bad)
    assert "learning_rate" in str(info.value)  # the valid keys are listed
    bad.write_text("method: qlora\n")
    with pytest.raises(ConfigError, match="full.*lora"):
        load_recipe(bad)
    bad.write_text("method: lora\nlora: {rank: 4}\n")
    with pytest.raises(ConfigError, match="rank.*valid keys.*target_modules"):
        load_recipe(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")
    # The commented recipe `loopwright domain init` writes is valid as written.
    from loopwright.domain_skeleton import FINETUNE_RECIPE

    good.write_text(FINETUNE_RECIPE)
    assert load_recipe(good)[0].gradient_checkpointing
