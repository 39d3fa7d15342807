"""``loopwright register``: a user's own model folder, checked as the loop loads it, then
registered once (idempotent), champion only when the model has none."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from loopwright.cli import app
from loopwright.register import ModelFolderError, check_model_folder, register_model
from tests.chat_tokenizer import chatml_tokenizer


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT-2 (random weights) with a BPE tokenizer trained here and a ChatML template."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("user-model")
    fast = chatml_tokenizer(["Which plan fits a team of five? The Team plan."] * 20, 300)
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(fast), n_positions=64, n_embd=32, n_layer=2, n_head=2)
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def test_folders_the_loop_cannot_load_are_refused_with_the_reason(gpt2_folder, tmp_path):
    assert "GPT2LMHeadModel" in check_model_folder(gpt2_folder, "policy")
    with pytest.raises(ModelFolderError, match="is not a folder"):
        check_model_folder(tmp_path / "missing", "policy")
    with pytest.raises(ModelFolderError, match="no config.json"):
        check_model_folder(tmp_path, "policy")
    with pytest.raises(ModelFolderError, match="valid: policy, guard, reward"):
        check_model_folder(gpt2_folder, "critic")  # type: ignore[arg-type]
    result = CliRunner().invoke(app, ["register", str(tmp_path), "--kind", "policy"])
    assert result.exit_code == 1 and "no config.json" in result.output


@pytest.mark.services
def test_register_once_and_champion_only_while_there_is_none(stack_settings, gpt2_folder):
    from loopwright.client_env import apply_client_env

    settings = stack_settings.model_copy(update={"app": "registertest"})
    apply_client_env(settings)
    first = register_model(settings, gpt2_folder, "policy", champion=True, actor="alice")
    assert first.created and first.champion == first.version.version
    assert first.version.name == "registertest-policy"

    again = register_model(settings, gpt2_folder, "policy")
    assert not again.created and again.version.version == first.version.version

    with pytest.raises(ModelFolderError, match="through loopwright release"):
        register_model(settings, gpt2_folder, "policy", champion=True)

    from loopwright.registry import download_model_folder

    served = download_model_folder("models:/registertest-policy@champion", settings.run_path)
    assert "GPT2LMHeadModel" in check_model_folder(served, "policy")
