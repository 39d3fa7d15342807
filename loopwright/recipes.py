"""Training recipes as YAML: one reviewable file per stage, logged with the model it made.

A recipe names only what it changes; everything it leaves out keeps the nightly's built-in,
measured recipe (``models.policy.PolicyConfig.finetune`` and
:class:`loopwright.nightly.NightlyConfig`). A domain points at its recipe with
``nightly.finetune_recipe`` in ``domain.yaml`` (or a profile's ``nightly`` section), e.g.::

    # recipes/finetune.yaml: LoRA on every linear layer, two micro-batches per step
    method: lora
    learning_rate: 2.0e-3
    steps: 200
    batch_size: 16
    grad_accumulation: 2
    lora: {r: 8, alpha: 16, dropout: 0.0, target_modules: all-linear}

The fine-tuned folder carries a copy of the file (:data:`RECIPE_FILE`), so the registry
version shows exactly what trained it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from loopwright.online_eval_models import JudgeEndpoint
from loopwright.release.strict import (
    ConfigError,
    StrictModel,
    check_known_keys,
    load_yaml,
    parse_model,
)
from models.lora import LoraSettings

RECIPE_FILE = "recipe.yaml"


PairSource = Literal[
    "correction", "reviewer", "user_preference", "rating", "guard", "reward_ranked", "principles"
]
FEEDBACK_SOURCES: tuple[PairSource, ...] = (
    "correction",
    "reviewer",
    "user_preference",
    "rating",
    "guard",
)


class PreferenceRecipe(StrictModel):
    """The preference step after the SFT: DPO on pairs from production and the reward model.

    Attributes:
        method: ``none`` (SFT only) or ``dpo``: trl's DPO (sigmoid loss plus an SFT term on
            the chosen side) from the SFT model, with a frozen copy of it as the reference.
        sources: which pairs train the policy. The curated ones (``correction``: a user's
            or reviewer's correction over the served answer; ``reviewer`` and
            ``user_preference``: explicit comparisons; ``rating``: a well-rated answer
            over a badly rated one to the same prompt; ``guard``: the domain's safe reply
            over what the policy would have said to a blocked prompt, generated offline),
            and ``reward_ranked``: the reward model's best over its worst of
            ``samples_per_prompt`` sampled answers to the night's prompts.
        steps: DPO optimiser steps.
        learning_rate: peak learning rate of the DPO.
        batch_size: pairs per step.
        beta: DPO temperature: how far the policy may move from the reference.
        sft_weight: weight of the NLL on the chosen side (keeps outputs fluent).
        samples_per_prompt: sampled answers per prompt for ``reward_ranked``.
        max_prompts: prompts sampled for ``reward_ranked`` (the night's, seeded choice).
        temperature: sampling temperature for ``reward_ranked``.
        min_reward_gap: best minus worst reward below this makes no pair (no real
            preference to learn).
        principles: the domain's principles file (:mod:`loopwright.principles`), relative
            to the recipe file; with a ``judge``, its revisions of the policy's answers are
            chosen over them (source ``principles``).
        judge: an OpenAI-compatible chat endpoint that critiques and revises against the
            principles; None: principles are not applied (logged).
    """

    method: Literal["none", "dpo"] = "none"
    sources: tuple[PairSource, ...] = (*FEEDBACK_SOURCES, "reward_ranked", "principles")
    steps: int = Field(default=40, ge=1)
    learning_rate: float = Field(default=5e-5, gt=0, le=1)
    batch_size: int = Field(default=16, ge=1)
    beta: float = Field(default=0.1, gt=0)
    sft_weight: float = Field(default=1.0, ge=0)
    samples_per_prompt: int = Field(default=4, ge=2)
    max_prompts: int = Field(default=256, ge=1)
    temperature: float = Field(default=1.0, gt=0)
    min_reward_gap: float = Field(default=0.25, ge=0)
    principles: str | None = None
    judge: JudgeEndpoint | None = None


class FinetuneRecipe(StrictModel):
    """The nightly SFT fine-tune's recipe (validated, frozen; unset keys keep the defaults).

    Attributes:
        method: ``full`` trains every weight; ``lora`` trains low-rank adapters through peft
            with every base weight frozen, and the candidate is an adapter version whose
            base is the champion (:mod:`models.lora`).
        dtype: ``fp32``, or ``bf16`` autocast for forward and backward (weights and
            optimiser state stay fp32).
        learning_rate: peak AdamW learning rate.
        warmup_steps: linear warm-up, in optimiser steps.
        steps: optimiser steps (replaces ``NightlyConfig.finetune_steps``).
        batch_size: sequences per micro-batch.
        grad_accumulation: micro-batches per optimiser step (the effective batch is
            ``batch_size * grad_accumulation``).
        gradient_checkpointing: recompute activations in the backward pass (less memory,
            about a third more compute).
        replay_ratio: replay rows per new row (replaces ``NightlyConfig.replay_ratio``).
        pseudoword_share: made-up-word copies of answered rows (replaces
            ``NightlyConfig.pseudoword_share``).
        surface_noise: greetings, typos and casing in training copies of user turns.
        lora: rank, scale and target modules when ``method`` is ``lora``.
        preference: the preference step after the SFT (:class:`PreferenceRecipe`).
    """

    method: Literal["full", "lora"] = "full"
    dtype: Literal["fp32", "bf16"] = "fp32"
    learning_rate: float | None = Field(default=None, gt=0, le=1)
    warmup_steps: int | None = Field(default=None, ge=1)
    steps: int | None = Field(default=None, ge=1)
    batch_size: int | None = Field(default=None, ge=1)
    grad_accumulation: int = Field(default=1, ge=1)
    gradient_checkpointing: bool = False
    replay_ratio: float | None = Field(default=None, ge=0)
    pseudoword_share: float | None = Field(default=None, ge=0, le=1)
    surface_noise: bool | None = None
    lora: LoraSettings = LoraSettings()
    preference: PreferenceRecipe = PreferenceRecipe()

    @model_validator(mode="before")
    @classmethod
    def _known_lora_keys(cls, data: Any) -> Any:
        # LoraSettings lives with the models (no loopwright import there): checked here.
        if isinstance(data, dict):
            check_known_keys(data.get("lora"), LoraSettings, "lora: ")
        return data

    def policy_overrides(self) -> dict[str, Any]:
        """``PolicyConfig`` keys this recipe sets (the night's budget comes from ``steps``)."""
        values: dict[str, Any] = {
            "bf16": self.dtype == "bf16",
            "grad_accumulation": self.grad_accumulation,
            "gradient_checkpointing": self.gradient_checkpointing,
            "lora": self.lora if self.method == "lora" else None,
        }
        optional = {
            "lr": self.learning_rate,
            "warmup_steps": self.warmup_steps,
            "batch_size": self.batch_size,
            "surface_noise": self.surface_noise,
        }
        values.update({k: v for k, v in optional.items() if v is not None})
        return values

    def nightly_overrides(self) -> dict[str, Any]:
        """``NightlyConfig`` keys this recipe replaces (steps, replay, pseudowords)."""
        optional = {
            "finetune_steps": self.steps,
            "replay_ratio": self.replay_ratio,
            "pseudoword_share": self.pseudoword_share,
        }
        return {k: v for k, v in optional.items() if v is not None}


def load_recipe(path: str | Path) -> tuple[FinetuneRecipe, str]:
    """Read and strictly validate a recipe file; returns ``(recipe, sha256 of the file)``.

    Raises:
        ConfigError: the file is missing, not YAML, or has an unknown key or a bad value
            (the message names the file and lists the valid keys).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"training recipe {path} does not exist")
    data, digest = load_yaml(path)
    recipe = parse_model(FinetuneRecipe, data, str(path))
    principles = recipe.preference.principles
    if principles is not None and not Path(principles).is_absolute():
        preference = recipe.preference.model_copy(
            update={"principles": str(path.parent / principles)}
        )
        recipe = recipe.model_copy(update={"preference": preference})
    return recipe, digest


def keep_recipe(path: str | Path, model_dir: Path) -> None:
    """Copy the recipe file into the model folder it trained (logged with the version)."""
    shutil.copy2(path, Path(model_dir) / RECIPE_FILE)
