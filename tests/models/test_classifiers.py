"""Bring your own guard and reward model: Hugging Face sequence classifiers a team already has.

The classifiers here are built tiny from config with a tokenizer trained in the test, and
the guard is trained for real (a few seconds) so that it tells the two kinds of text apart.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.classifiers import (
    ClassifierFolderError,
    ClassifierGuard,
    ClassifierReward,
    GuardMapping,
    guard_mapping,
    load_guard,
    load_reward,
    write_guard_mapping,
)
from tests.classifier_models import (
    LABELS,
    SAFE,
    UNSAFE,
    reward_classifier,
    trained_guard_classifier,
)


@pytest.fixture(scope="module")
def classifier_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_guard_classifier(tmp_path_factory.mktemp("their-guard"))


def _mapped(classifier: Path, tmp_path: Path, **thresholds: float) -> Path:
    """A copy of ``classifier`` with the label map each label its own guard label."""
    import shutil

    folder = tmp_path / "mapped"
    shutil.copytree(classifier, folder)
    write_guard_mapping(
        folder,
        GuardMapping.model_validate(
            {
                "label_map": {"SAFE": "benign", "UNSAFE": "harmful", "JAILBREAK": "injection"},
                "thresholds": thresholds or {"harmful": 0.5, "injection": 0.5},
            }
        ),
    )
    return folder


def test_a_classifier_with_a_label_map_scores_as_a_guard(classifier_folder, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification

    guard = load_guard(_mapped(classifier_folder, tmp_path, harmful=0.4))
    assert isinstance(guard, ClassifierGuard) and guard.thresholds["harmful"] == 0.4
    scores = guard.scores([SAFE[0], UNSAFE[0], UNSAFE[2]])
    assert [set(s) for s in scores] == [{"benign", "harmful", "injection"}] * 3
    assert scores[0]["benign"] > 0.5 and scores[1]["harmful"] > 0.5
    assert scores[2]["harmful"] + scores[2]["injection"] > 0.5
    # Exactly the model's softmax, column by column.
    model = AutoModelForSequenceClassification.from_pretrained(classifier_folder).eval()
    ids = guard.tokenizer([UNSAFE[0]], return_tensors="pt")
    with torch.inference_mode():
        probs = model(**ids).logits.softmax(-1)[0].numpy()
    assert np.allclose([scores[1][k] for k in ("benign", "harmful", "injection")], probs, atol=1e-5)


def test_several_model_labels_may_mean_one_guard_label(classifier_folder, tmp_path):
    import shutil

    folder = tmp_path / "merged"
    shutil.copytree(classifier_folder, folder)
    write_guard_mapping(
        folder,
        GuardMapping(label_map={"SAFE": "benign", "UNSAFE": "harmful", "JAILBREAK": "harmful"}),
    )
    merged = ClassifierGuard.load(folder).scores([UNSAFE[2]])[0]
    apart = ClassifierGuard.load(_mapped(classifier_folder, tmp_path)).scores([UNSAFE[2]])[0]
    assert merged["injection"] == 0.0
    assert merged["harmful"] == pytest.approx(apart["harmful"] + apart["injection"])


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (None, "not guard labels; map each with --label-map"),
        ({"SAFE": "benign", "UNSAFE": "harmful"}, "unmapped model labels JAILBREAK"),
        (
            {"SAFE": "benign", "UNSAFE": "harmful", "JAILBREAK": "injection", "X": "harmful"},
            "the model has no label X",
        ),
        ({"SAFE": "benign", "UNSAFE": "toxic", "JAILBREAK": "injection"}, "toxic not a guard"),
        ({"SAFE": "benign", "UNSAFE": "benign", "JAILBREAK": "benign"}, "could never block"),
    ],
)
def test_a_label_map_that_does_not_fit_says_what_is_valid(given, message):
    with pytest.raises(ClassifierFolderError, match=message) as info:
        guard_mapping(list(LABELS.values()), given)
    assert "guard labels: benign, harmful, injection" in str(info.value)


def test_labels_that_already_are_guard_labels_need_no_map():
    assert guard_mapping(["benign", "harmful"], None) == {"benign": "benign", "harmful": "harmful"}


@pytest.fixture(scope="module")
def reward_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return reward_classifier(tmp_path_factory.mktemp("their-reward"))


def test_a_single_logit_classifier_scores_as_a_reward_model(reward_folder):
    reward = load_reward(reward_folder)
    assert isinstance(reward, ClassifierReward)
    prompts = [SAFE[0], SAFE[1], SAFE[2]]
    answers = ["Open settings.", "The Team plan fits five people.", "Yes."]
    batch = reward.score(prompts, answers)
    alone = [reward.score([p], [a])[0] for p, a in zip(prompts, answers, strict=True)]
    assert batch == pytest.approx(alone, abs=1e-5)  # padding and batch order change nothing
    assert len(set(np.round(batch, 6))) == 3  # the response matters
    with pytest.raises(ValueError, match="3 prompts but 2 responses"):
        reward.score(prompts, answers[:2])


def test_a_classifier_with_several_logits_is_no_reward_model(classifier_folder):
    with pytest.raises(ClassifierFolderError, match="one output logit; this classifier has 3"):
        ClassifierReward.load(classifier_folder)


def test_a_folder_with_no_label_map_is_not_a_guard(reward_folder):
    with pytest.raises(FileNotFoundError, match="--label-map"):
        load_guard(reward_folder)
