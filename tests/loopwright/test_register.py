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


def test_a_guard_from_a_classifier_needs_a_label_map_that_fits(tmp_path):
    from tests.classifier_models import trained_guard_classifier

    folder = trained_guard_classifier(tmp_path / "their-guard")
    result = CliRunner().invoke(app, ["register", str(folder), "--kind", "guard"])
    assert result.exit_code == 1 and "map each with --label-map" in result.output
    bad = ["--label-map", "SAFE=benign", "--label-map", "UNSAFE=toxic"]
    result = CliRunner().invoke(app, ["register", str(folder), "--kind", "guard", *bad])
    assert result.exit_code == 1 and "unmapped model labels JAILBREAK" in result.output
    assert "toxic not a guard label" in result.output
    result = CliRunner().invoke(app, ["register", str(folder), "--label-map", "SAFE=benign"])
    assert result.exit_code == 1 and "for --kind guard" in result.output


@pytest.mark.services
def test_their_own_guard_and_reward_model_serve_score_and_are_not_refreshed(
    stack_settings, tmp_path
):
    """A team's classifiers, registered from the CLI, are what the loop's consumers load."""
    from stackenv import SESSION_STACK_ENV, stack_env

    from loopwright.client_env import apply_client_env
    from loopwright.config import load_settings
    from loopwright.evaluation.resources import champion_resources
    from loopwright.gateway.components import load_components
    from loopwright.gateway.settings import GatewaySettings
    from models.classifiers import ClassifierGuard, ClassifierReward
    from tasks.nightly import _reward_refresh_skipped
    from tests.classifier_models import SAFE, UNSAFE, reward_classifier, trained_guard_classifier

    env = {**SESSION_STACK_ENV, "LOOPWRIGHT_APP": "byo"}
    settings = load_settings("local", env=stack_env(env))
    mapping = ["--label-map", "SAFE=benign", "--label-map", "UNSAFE=harmful"]
    mapping += ["--label-map", "JAILBREAK=injection", "--threshold", "harmful=0.6"]
    guard_dir = trained_guard_classifier(tmp_path / "their-guard")
    runner = CliRunner()
    out = runner.invoke(
        app, ["register", str(guard_dir), "--kind", "guard", "--champion", *mapping], env=env
    )
    assert out.exit_code == 0, out.output
    assert "classifier guard (SAFE->benign, UNSAFE->harmful, JAILBREAK->injection)" in out.output
    reward_dir = reward_classifier(tmp_path / "their-reward")
    out = runner.invoke(
        app, ["register", str(reward_dir), "--kind", "reward", "--champion"], env=env
    )
    assert out.exit_code == 0 and "models:/byo-reward/1" in out.output, out.output

    # The gateway's rails run their guard (its thresholds); retrieval gets its own embedder.
    gateway = GatewaySettings.model_validate(
        {
            "routing": {
                "source": "mlflow",
                "app": "byo",
                "tracking_uri": settings.mlflow_tracking_uri,
            }
        }
    )
    comps = load_components(gateway, tmp_path / "gw")
    assert isinstance(comps.guard, ClassifierGuard) and comps.guard.thresholds["harmful"] == 0.6
    assert comps.embedder is not None
    benign, harmful = comps.guard.scores([SAFE[0], UNSAFE[0]])
    assert benign["harmful"] < 0.6 <= harmful["harmful"]

    # The evaluation's scorers score with both.
    apply_client_env(settings)
    resources = champion_resources(settings, tmp_path / "eval")
    assert isinstance(resources.guard, ClassifierGuard)
    assert isinstance(resources.reward, ClassifierReward)
    assert len(resources.reward.score([SAFE[0]], ["Open settings."])) == 1

    # The nightly does not try to retrain a reward model it did not train; it says so.
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text("")
    why = _reward_refresh_skipped(settings, heldout)
    assert why is not None and "byo-reward version 1 is a classifier registered as it is" in why
