"""The recipes' GPU path: a bf16 LoRA fine-tune on CUDA (run with ``-m gpu``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from loopwright.finetune import finetune_configs
from loopwright.nightly import NightlyConfig
from loopwright.recipes import FinetuneRecipe
from models.generation import generate_batch, load_policy
from models.lora import load_adapter_on_base, merge_adapter_folder
from models.policy import PolicyConfig, finetune_sft, train_policy_v1
from tests.models.policy_fixture import conversations

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def test_a_bf16_lora_recipe_trains_on_cuda_and_merges(tmp_path: Path) -> None:
    base = tmp_path / "v1"
    train_policy_v1(conversations(), PolicyConfig.tiny(max_steps=100), base)
    recipe = FinetuneRecipe.model_validate(
        {
            "method": "lora",
            "dtype": "bf16",
            "steps": 30,
            "learning_rate": 1e-2,
            "gradient_checkpointing": True,
            "grad_accumulation": 2,
        }
    )
    sft, _ = finetune_configs(NightlyConfig(tiny=True), recipe)
    assert sft.bf16 and sft.lora is not None
    out = tmp_path / "adapter"
    result = finetune_sft(base, conversations()[:4], conversations(), sft, out, replay_ratio=1.0)
    assert result.steps == 30
    weights = load_file(str(out / "adapter_model.safetensors"))
    assert any(float(t.abs().max()) > 0 for n, t in weights.items() if "lora_B" in n)
    merged = merge_adapter_folder(base, out, tmp_path / "merged")
    prompts = [c[:1] for c in conversations()[:8]]
    on_gpu = load_policy(merged, device="cuda")  # bf16 weights on CUDA
    on_cpu = load_policy(merged, device="cpu")
    on_cpu.model = load_adapter_on_base(base, out)
    agree = sum(
        a == b
        for a, b in zip(
            generate_batch(on_gpu, prompts), generate_batch(on_cpu, prompts), strict=True
        )
    )
    print(f"\nbf16 CUDA vs fp32 CPU adapter-on-base agreement: {agree}/{len(prompts)}")
    assert agree >= len(prompts) // 2
