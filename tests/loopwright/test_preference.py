"""The policy's preference data: every kind of pair reaches its DPO, with its source recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from loopwright.finetune import finetune_candidate
from loopwright.nightly import NightlyConfig
from loopwright.preference import (
    PREFERENCE_FILE,
    feedback_preferences,
    night_prompts,
    reward_ranked_preferences,
    source_counts,
)
from loopwright.recipes import PreferenceRecipe
from loopwright.records import PreferencePair, write_conversations
from models.policy import PolicyConfig, train_policy_v1
from models.reward import RewardTrainConfig, train_reward

# The evaluation tests' scripted OpenAI-compatible server stands in for the judge.
from tests.loopwright.evaluation.conftest import FakeOpenAI, openai_server  # noqa: F401
from tests.models.policy_fixture import REFUSAL, conversations

SOURCES = ("correction", "reviewer", "user_preference", "rating", "guard")


def _curated() -> list[PreferencePair]:
    """One curated pair of each feedback source, as ``curate`` writes them."""
    return [
        PreferencePair(
            prompt="How much is the Pro plan?",
            chosen="The Pro plan costs $12 per month.",
            rejected="The Pro plan costs $5 per month.",
            source="correction",
        ),
        PreferencePair(
            prompt="What does Team cost?",
            chosen="The Team plan costs $30 per month.",
            rejected="lol no idea",
            source="reviewer",
        ),
        PreferencePair(
            prompt="Price of the Basic plan?",
            chosen="The Basic plan costs $5 per month.",
            rejected="Whatever.",
            source="user_preference",
        ),
        PreferencePair(
            prompt="How many users can Pro have?",
            chosen="The Pro plan allows 10 users.",
            rejected="The Pro plan allows 2 users.",
            source="rating",
        ),
        PreferencePair(
            prompt="Write malware for me.",
            chosen=REFUSAL,
            rejected="Sure, here is the code.",
            source="guard",
        ),
    ]


def test_feedback_pairs_keep_their_source_and_take_the_served_prompt() -> None:
    def serve(rows: list[list[dict[str, str]]]) -> list[list[dict[str, str]]]:
        return [[{"role": "system", "content": "facts"}, *row] for row in rows]

    prefs = feedback_preferences(_curated(), ["correction", "guard"], serve)
    assert [p.source for p in prefs] == ["correction", "guard"]
    assert prefs[0].messages == [
        {"role": "system", "content": "facts"},
        {"role": "user", "content": "How much is the Pro plan?"},
    ]
    assert prefs[1].chosen == REFUSAL and prefs[1].rejected == "Sure, here is the code."
    assert len(feedback_preferences(_curated(), SOURCES)) == len(SOURCES)


def test_reward_ranking_pairs_best_over_worst_only_where_it_sees_a_gap() -> None:
    prompts = [[{"role": "user", "content": q}] for q in ("a?", "b?", "c?")]
    samples = [["x", "y", "z"], ["same", "same"], ["p", "q"]]
    scores = [[0.1, 2.0, -1.0], [1.0, 1.0], [0.0, 0.2]]
    prefs = reward_ranked_preferences(prompts, samples, scores, min_gap=0.5)
    assert len(prefs) == 1
    assert (prefs[0].chosen, prefs[0].rejected, prefs[0].source) == ("y", "z", "reward_ranked")
    assert prefs[0].margin == pytest.approx(3.0)
    assert source_counts(prefs) == {"pairs": 1, "pairs_reward_ranked": 1}
    with pytest.raises(ValueError, match="prompts"):
        reward_ranked_preferences(prompts, samples[:2], scores, min_gap=0.0)


def test_night_prompts_are_distinct_user_turns() -> None:
    rows = conversations() + conversations()
    prompts = night_prompts(rows, limit=100, seed=0)
    assert len(prompts) == len(conversations())
    assert all(p[-1]["role"] == "user" for p in prompts)
    assert len(night_prompts(rows, limit=3, seed=0)) == 3


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("preference")
    train_policy_v1(conversations(), PolicyConfig.tiny(max_steps=120), root / "policy")
    pairs = [
        PreferencePair(prompt=c[0]["content"], chosen=c[1]["content"], rejected=bad, source="x")
        for c, bad in zip(conversations(), ["lol no idea", "Whatever.", "No."] * 20, strict=False)
    ]
    train_reward(pairs, RewardTrainConfig.tiny(threads=1), root / "reward")
    return root / "policy", root / "reward"


def test_every_kind_of_pair_reaches_the_nightly_dpo_with_its_source(
    tiny_models: tuple[Path, Path],
    tmp_path: Path,
    openai_server: FakeOpenAI,  # noqa: F811 (the fixture imported above)
) -> None:
    policy, reward = tiny_models
    (tmp_path / "principles.yaml").write_text(
        "version: 3\nprinciples:\n  - Say you do not know when no fact answers the question.\n"
    )
    recipe = tmp_path / "finetune.yaml"
    recipe.write_text(
        "preference:\n  method: dpo\n  steps: 4\n  batch_size: 4\n  samples_per_prompt: 3\n"
        "  max_prompts: 8\n  temperature: 1.5\n  min_reward_gap: 0.0\n"
        "  principles: principles.yaml\n"
        f"  judge: {{base_url: '{openai_server.base_url}', model: reviser}}\n"
    )
    openai_server.requests.clear()
    sft = tmp_path / "sft.jsonl"
    write_conversations(sft, conversations()[:10])
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(p.model_dump_json() + "\n" for p in _curated()))
    out = tmp_path / "candidate"
    metrics = finetune_candidate(
        policy,
        sft,
        tmp_path / "no-replay.jsonl",
        NightlyConfig(tiny=True, finetune_recipe=str(recipe), finetune_threads=1),
        out,
        lambda text: text == REFUSAL,
        pairs_path=pairs,
        reward_dir=reward,
    )
    rows = [json.loads(line) for line in (out / PREFERENCE_FILE).read_text().splitlines()]
    assert {r["source"] for r in rows} == {*SOURCES, "reward_ranked", "principles"}
    # The judge revised each of the night's prompts' answers against the principles; its
    # revision (the scripted server's "I don't know.") is chosen over the policy's answer.
    asked = [r for r in openai_server.requests if r["model"] == "reviser"]
    assert len(asked) == 8 and "Say you do not know" in asked[0]["messages"][0]["content"]
    revised = [r for r in rows if r["source"] == "principles"]
    assert revised and all(r["chosen"] == "I don't know." and r["detail"] == "v3" for r in revised)
    assert metrics["preference_pairs"] == len(rows)
    assert metrics["preference_pairs_reward_ranked"] >= 1
    assert metrics["preference_dpo_steps"] == 4
    assert (out / "model.safetensors").is_file() and (out / "recipe.yaml").is_file()
    assert not out.with_name("candidate-sft").exists()  # the SFT model was intermediate
    ranked = [r for r in rows if r["source"] == "reward_ranked"]
    assert all(r["margin"] >= 0 and r["messages"][-1]["role"] == "user" for r in ranked)


def test_preference_recipe_refuses_what_cannot_run(tmp_path: Path) -> None:
    from loopwright.finetune import night_recipe

    recipe = tmp_path / "finetune.yaml"
    recipe.write_text("method: lora\npreference: {method: dpo}\n")
    with pytest.raises(ValueError, match="lora cannot be combined"):
        night_recipe(NightlyConfig(finetune_recipe=str(recipe)))
    assert PreferenceRecipe().method == "none"  # SFT only unless a recipe asks
