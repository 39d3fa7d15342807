"""The embedded default's first models: example data, then policy, guard and reward v1.

Pure training code (no MLflow, no Prefect): each function reads the files that
:func:`write_example_data` wrote, trains one model into a folder and returns what it
measured. ``examples/helpdesk/bootstrap_tasks.py`` logs and registers the results.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from examples.helpdesk.plugin import DOMAIN_DIR
from models.cpu import Threads
from models.grounding import Conversation, GroundingConfig

logger = logging.getLogger(__name__)


class BootstrapConfig(BaseModel):
    """How big the example data and the v1 models are.

    Attributes:
        seed: seeds data generation and every trainer.
        scale: example-data size (1.0 = full; tests use a small fraction).
        tiny: tiny model configs that train in seconds (tests and smoke runs).
        policy_steps: optimiser steps of policy v1 training (default 700, the budget every
            quality floor of the example was measured with on seeds 0, 1, 2 and 5). A step
            count makes v1 the same model on any machine, busy or idle, for a given seed.
        policy_seconds: a wall-clock budget instead (seconds; set ``policy_steps`` to None):
            v1 then depends on how fast the machine is.
        threads: torch threads of every v1 trainer (policy, guard, reward); ``"auto"``
            (the default): the cores free when each starts (:mod:`models.cpu`). Grounded
            rows trained at 3.1 steps/s on 2 idle threads against 1.7 on 1 (2-core
            machine, same rows), but 2 threads run ~4x slower than 1 when another process
            keeps a core busy.
        grounding: how policy v1's training rows get the facts the gateway retrieves.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 0
    scale: float = Field(default=1.0, gt=0, le=1.0)
    tiny: bool = False
    policy_steps: int | None = Field(default=700, ge=1)
    policy_seconds: float | None = Field(default=None, gt=0)
    threads: Threads = "auto"
    grounding: GroundingConfig = GroundingConfig()

    @model_validator(mode="after")
    def _one_budget(self) -> BootstrapConfig:
        if (self.policy_steps is None) == (self.policy_seconds is None):
            raise ValueError(
                "give policy v1 one budget: policy_steps (default 700) or policy_seconds "
                f"(with policy_steps None); got steps={self.policy_steps}, "
                f"seconds={self.policy_seconds}"
            )
        return self

    def policy_config(self) -> Any:
        """The policy trainer's config for this bootstrap."""
        from models.policy import PolicyConfig

        if self.tiny:
            return PolicyConfig.tiny(seed=self.seed)
        return PolicyConfig(
            seed=self.seed,
            max_steps=self.policy_steps,
            max_seconds=self.policy_seconds,
            threads=self.threads,
        )

    def guard_config(self) -> Any:
        """The guard trainer's config for this bootstrap."""
        from models.guard import GuardConfig

        if self.tiny:
            return GuardConfig.tiny(seed=self.seed, epochs=1)
        return GuardConfig(seed=self.seed, threads=self.threads)

    def reward_config(self) -> Any:
        """The reward trainer's config for this bootstrap."""
        from models.reward import RewardTrainConfig

        if self.tiny:
            return RewardTrainConfig.tiny(seed=self.seed, epochs=1)
        return RewardTrainConfig(seed=self.seed, threads=self.threads)


def write_example_data(data_root: Path, config: BootstrapConfig) -> dict[str, int]:
    """Generate the example domain's data under ``data_root/helpdesk`` (deterministic).

    Returns:
        File (relative to the domain folder) -> record count.
    """
    from examples.helpdesk import build_domain, write_domain

    domain = build_domain(seed=config.seed, scale=config.scale)
    domain.sft_v1, replay = grounded_training_rows(domain, config)
    return write_domain(domain, data_root / DOMAIN_DIR, replay=replay)


def grounded_training_rows(
    domain: Any, config: BootstrapConfig
) -> tuple[list[Conversation], list[Conversation]]:
    """Policy v1's rows and the replay, with revision-1 facts retrieved as the gateway would.

    Retrieval uses the packaged sentence encoder, the one the guard shares with the
    gateway; counterfactual rows use the domain's wrong answers (never a later revision's).
    The replay (:func:`examples.helpdesk.generate.replay_rows`) is chosen from the bare rows
    and then grounded with the same seed: it starts with v1's rows, which get exactly the
    grounding v1 trained on, and its weighted look-alike copies are found by their answers
    before a counterfactual could change them.

    Args:
        domain: the example domain's data (:class:`examples.helpdesk.generate.DomainData`).
        config: seed and grounding settings.

    Returns:
        ``(v1 rows, replay rows)``.
    """
    from examples.helpdesk.generate import SYSTEM_PROMPT, counterfactual_answers, replay_rows
    from examples.helpdesk.plugin import helpdesk_retrieval_facts
    from models.embedder import Embedder
    from models.grounding import ground_conversations

    encoder = Embedder.load(None, backend="torch")
    replay, stats = ground_conversations(
        replay_rows(domain),
        helpdesk_retrieval_facts(1),
        encoder,
        SYSTEM_PROMPT,
        config.grounding,
        seed=config.seed,
        counterfactual=counterfactual_answers(1),
    )
    logger.info("policy v1 rows and replay grounded: %s", stats)
    v1_rows = replay[: len(domain.sft_v1)]
    return v1_rows, replay


def train_policy(data_root: Path, config: BootstrapConfig, out_dir: Path) -> dict[str, float]:
    """Train policy v1 from scratch on ``sft/v1.jsonl``; returns training metrics."""
    from loopwright.records import read_conversations
    from models.policy import train_policy_v1

    conversations = read_conversations(data_root / DOMAIN_DIR / "sft" / "v1.jsonl")
    result = train_policy_v1(conversations, config.policy_config(), out_dir, progress=True)
    metrics: dict[str, float] = result.metrics()
    return metrics


def train_guard(data_root: Path, config: BootstrapConfig, out_dir: Path) -> dict[str, float]:
    """Train guard v1 and measure it on held-out prompts with the backend that serves."""
    from examples.helpdesk import read_labelled_prompts
    from models.guard import Guard, evaluate_guard
    from models.guard import train_guard as fit_guard

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
