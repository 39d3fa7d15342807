"""The embedded default's first models: example data, then policy, guard and reward v1.

Pure training code (no MLflow, no Prefect): each function reads the files that
:func:`write_example_data` wrote, trains one model into a folder and returns what it
measured. ``tasks/bootstrap.py`` logs and registers the results.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

logger = logging.getLogger(__name__)

DOMAIN_DIR = "helpdesk"


class BootstrapConfig(BaseModel):
    """How big the example data and the v1 models are.

    Attributes:
        seed: seeds data generation and every trainer.
        scale: example-data size (1.0 = full; tests use a small fraction).
        tiny: tiny model configs that train in seconds (tests and smoke runs).
        policy_seconds: wall-clock budget of policy v1 training, seconds.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 0
    scale: float = Field(default=1.0, gt=0, le=1.0)
    tiny: bool = False
    policy_seconds: float = Field(default=270.0, gt=0)

    def policy_config(self) -> Any:
        """The policy trainer's config for this bootstrap."""
        from models.policy import PolicyConfig

        if self.tiny:
            return PolicyConfig.tiny(seed=self.seed)
        return PolicyConfig(seed=self.seed, max_seconds=self.policy_seconds)

    def guard_config(self) -> Any:
        """The guard trainer's config for this bootstrap."""
        from models.guard import GuardConfig

        if self.tiny:
            return GuardConfig.tiny(seed=self.seed, epochs=1)
        return GuardConfig(seed=self.seed)

    def reward_config(self) -> Any:
        """The reward trainer's config for this bootstrap."""
        from models.reward import RewardTrainConfig

        if self.tiny:
            return RewardTrainConfig.tiny(seed=self.seed, epochs=1)
        return RewardTrainConfig(seed=self.seed)


def write_example_data(data_root: Path, config: BootstrapConfig) -> dict[str, int]:
    """Generate the example domain's data under ``data_root/helpdesk`` (deterministic).

    Returns:
        File (relative to the domain folder) -> record count.
    """
    from models.helpdesk import build_domain, write_domain

    domain = build_domain(seed=config.seed, scale=config.scale)
    return write_domain(domain, data_root / DOMAIN_DIR)


def train_policy(data_root: Path, config: BootstrapConfig, out_dir: Path) -> dict[str, float]:
    """Train policy v1 from scratch on ``sft/v1.jsonl``; returns training metrics."""
    from models.helpdesk import read_conversations
    from models.policy import train_policy_v1

    conversations = read_conversations(data_root / DOMAIN_DIR / "sft" / "v1.jsonl")
    result = train_policy_v1(conversations, config.policy_config(), out_dir, progress=True)
    metrics: dict[str, float] = result.metrics()
    return metrics


def train_guard(data_root: Path, config: BootstrapConfig, out_dir: Path) -> dict[str, float]:
    """Train guard v1 and measure it on held-out prompts with the backend that serves."""
    from models.guard import Guard, evaluate_guard
    from models.guard import train_guard as fit_guard
    from models.helpdesk import read_labelled_prompts

    domain = data_root / DOMAIN_DIR
    result = fit_guard(
        read_labelled_prompts(domain / "guard" / "train.jsonl"), config.guard_config(), out_dir
    )
    metrics = dict(result.flat_metrics())
    heldout = evaluate_guard(
        Guard.load(out_dir), read_labelled_prompts(domain / "guard" / "heldout.jsonl")
    )
    metrics["heldout_benign_fpr"] = heldout.benign_fpr
    metrics["heldout_label_accuracy"] = heldout.label_accuracy
    metrics.update({f"heldout_recall_{k}": v for k, v in heldout.recall.items()})
    return metrics


def train_reward(
    data_root: Path, config: BootstrapConfig, out_dir: Path, init_from: Path | None = None
) -> dict[str, float]:
    """Train reward v1 with trl's RewardTrainer; measure pairwise accuracy on held-out pairs."""
    from loopwright.records import PreferencePair, read_jsonl
    from models.reward import RewardModel, pairwise_accuracy
    from models.reward import train_reward as fit_reward

    domain = data_root / DOMAIN_DIR
    pairs = list(read_jsonl(domain / "reward" / "train.jsonl", PreferencePair))
    result = fit_reward(pairs, config.reward_config(), out_dir, init_from=init_from)
    metrics = dict(result.flat_metrics())
    heldout = list(read_jsonl(domain / "reward" / "heldout.jsonl", PreferencePair))
    metrics["heldout_pairwise_accuracy"] = pairwise_accuracy(RewardModel.load(out_dir), heldout)
    return metrics
