"""Reward model: trl RewardTrainer on a separable fixture, reload, continue training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from loopwright.records import PreferencePair
from models.encoder import load_bert
from models.reward import (
    REWARD_CONFIG_FILE,
    RewardModel,
    RewardTrainConfig,
    RewardTrainResult,
    pairwise_accuracy,
    train_reward,
)

PROMPTS = [
    "how do i reset my password",
    "what does the pro plan cost",
    "where is my invoice",
    "how do i add a user",
    "which regions are supported",
    "can i change my billing date",
    "how do i export my data",
    "what is the upload limit",
]
GOOD = [
    "Go to Settings, then Security, and click Reset password.",
    "The Pro plan costs 20 dollars per user per month.",
    "Invoices are listed under Billing, then History.",
    "Open Team settings and click Invite user.",
    "We host data in the EU, the US and APAC regions.",
    "Yes: change it under Billing, then Schedule.",
    "Use Settings, then Data, then Export to download everything.",
    "Single uploads can be up to 5 GB.",
]
BAD = [
    "I don't know, figure it out yourself.",
    "lol no idea",
    "Stop asking me things.",
    "Whatever.",
    "Can't help, bye.",
    "That is not my problem.",
    "Why would I tell you that?",
    "No.",
]
PAIRS = [
    PreferencePair(prompt=p, chosen=g, rejected=b, source="fixture")
    for p, g, b in zip(PROMPTS, GOOD, BAD, strict=True)
]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RewardTrainResult]:
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("reward")
    return folder, train_reward(PAIRS, RewardTrainConfig.tiny(threads=1), folder)


def test_training_lowers_the_loss_and_changes_the_top_layers(
    trained: tuple[Path, RewardTrainResult],
) -> None:
    folder, result = trained
    assert result.n_used == len(PAIRS) and result.n_zero_weight == 0
    assert result.steps > 0 and result.loss_last < result.loss_first - 0.05
    weights = load_file(str(folder / "model.safetensors"))
    pretrained = load_bert().state_dict()
    top = "encoder.layer.5.output.dense.weight"
    bottom = "encoder.layer.0.output.dense.weight"
    key = next(k for k in weights if k.endswith(top))
    assert (weights[key] - pretrained[top]).abs().max() > 1e-5
    # trainable_layers=2 in the tiny config: the bottom layers stay pretrained.
    key = next(k for k in weights if k.endswith(bottom))
    torch.testing.assert_close(weights[key], pretrained[bottom])


def test_chosen_scores_above_rejected_after_reload(
    trained: tuple[Path, RewardTrainResult],
) -> None:
    folder, _ = trained
    assert (folder / REWARD_CONFIG_FILE).is_file()
    model = RewardModel.load(folder)
    assert pairwise_accuracy(model, PAIRS) == 1.0
    chosen = model.score(PROMPTS, GOOD)
    rejected = model.score(PROMPTS, BAD)
    assert all(c > r for c, r in zip(chosen, rejected, strict=True))
    assert model.score(PROMPTS[:2], GOOD[:2]) == pytest.approx(chosen[:2], abs=1e-5)
    assert model.score([], []) == []


def test_continuing_from_a_reward_folder_starts_where_it_left_off(
    trained: tuple[Path, RewardTrainResult], tmp_path: Path
) -> None:
    folder, first = trained
    again = train_reward(
        PAIRS, RewardTrainConfig.tiny(threads=1, epochs=1), tmp_path, init_from=folder
    )
    assert again.init_from == str(folder)
    # A fresh head starts at log(2) ~ 0.69; the continued model starts well below.
    assert again.loss_first < first.loss_first - 0.05


def test_zero_weight_pairs_are_excluded_and_counted(tmp_path: Path) -> None:
    pairs = [
        p.model_copy(update={"weight": w})
        for p, w in zip(PAIRS, [0, 1, 2, 1, 1, 3, 1, 0], strict=True)
    ]
    result = train_reward(pairs, RewardTrainConfig.tiny(threads=1, epochs=1), tmp_path)
    assert (result.n_pairs, result.n_used, result.n_zero_weight) == (8, 6, 2)
    assert result.weighted_sampling


def test_bad_input_is_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"pairs\[1\]: expected a PreferencePair"):
        train_reward([PAIRS[0], ("a", "b")], RewardTrainConfig.tiny(), tmp_path)
    with pytest.raises(ValueError, match="no preference pairs with weight > 0"):
        train_reward(
            [PAIRS[0].model_copy(update={"weight": 0.0})], RewardTrainConfig.tiny(), tmp_path
        )
    with pytest.raises(FileNotFoundError, match="not a reward folder"):
        train_reward(PAIRS, RewardTrainConfig.tiny(), tmp_path / "o", init_from=tmp_path)
    with pytest.raises(ValueError, match="max_length"):
        RewardTrainConfig(max_length=4)
    with pytest.raises(ValueError, match="epoch"):
        RewardTrainConfig(epoch=1)  # type: ignore[call-arg]


def test_score_checks_lengths(trained: tuple[Path, RewardTrainResult]) -> None:
    model = RewardModel.load(trained[0])
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        model.score(PROMPTS[:2], GOOD[:1])
    with pytest.raises(ValueError, match="at least one pair"):
        pairwise_accuracy(model, [])


def test_nightly_refresh_replays_the_champions_pairs(
    trained: tuple[Path, RewardTrainResult], tmp_path: Path
) -> None:
    """The refresh trains on every new pair plus ratio x as many of the champion's own."""
    from loopwright.nightly import NightlyConfig, refresh_reward
    from loopwright.records import write_jsonl

    folder, _ = trained
    new, pool, heldout = tmp_path / "new.jsonl", tmp_path / "pool.jsonl", tmp_path / "h.jsonl"
    write_jsonl(new, PAIRS[:2])
    write_jsonl(pool, PAIRS)
    write_jsonl(heldout, PAIRS)
    config = NightlyConfig(tiny=True, reward_replay_ratio=2.0)
    m = refresh_reward(folder, new, heldout, config, tmp_path / "a", replay_path=pool)
    assert (m["n_new_pairs"], m["n_replay_pairs"], m["n_pairs"]) == (2, 4, 6)
    assert m["keep_new"] == float(m["heldout_acc_new"] > m["heldout_acc_old"])
    # More replay than the pool holds takes the whole pool; no replay file, no replay.
    big = config.model_copy(update={"reward_replay_ratio": 10.0})
    assert refresh_reward(folder, new, heldout, big, tmp_path / "b", pool)["n_replay_pairs"] == 8
    alone = refresh_reward(folder, new, heldout, config, tmp_path / "c", tmp_path / "missing")
    assert (alone["n_replay_pairs"], alone["n_pairs"]) == (0, 2)
