"""The nightly fine-tune: the SFT with replay, then an optional DPO step, from a recipe.

:func:`finetune_candidate` is the stage the nightly's ``finetune`` task calls; the recipe
file (:mod:`loopwright.recipes`) is applied by :func:`night_recipe`, and
:func:`serving_grounder` puts the gateway's served context into the night's rows.
"""

from __future__ import annotations

import logging
import random
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loopwright.nightly import NightlyConfig

if TYPE_CHECKING:
    from loopwright.config import Settings
    from loopwright.recipes import FinetuneRecipe
    from models.policy import PolicyConfig

logger = logging.getLogger(__name__)


Grounder = Callable[[list[list[dict[str, str]]]], list[list[dict[str, str]]]]
"""Puts served context (system prompt and retrieved facts) into conversations."""


def serving_grounder(settings: Settings, share: float, seed: int) -> Grounder | None:
    """Ground rows as the configured gateway serves them, or None if it injects no facts.

    Curated rows hold the user's turns only (the system prompt is the gateway's, not
    data), so a fine-tune on them alone teaches the candidate to answer bare questions
    while production sends it the gateway's prompt and facts. This retrieves, for a
    ``share`` of the rows, the facts the gateway would inject (its knowledge base, its
    embedder, ``inject_top_k``, ``min_score``, its system prompt), formatted the same way.
    """
    from loopwright.gateway.settings import with_domain_defaults

    gateway = with_domain_defaults(
        settings.gateway.model_copy(update={"domain": settings.gateway.domain or settings.domain})
    )
    augment = gateway.augment
    if not (augment.enabled and augment.retrieval and augment.inject_context):
        return None
    from loopwright.gateway.components import knowledge_facts, standalone_embedder
    from models.grounding import GroundingConfig, ground_conversations

    facts = knowledge_facts(gateway.encoders, settings.domain)
    if not facts:
        logger.info("the gateway retrieves nothing (no knowledge base): rows stay ungrounded")
        return None
    # The guard's embedding branch and the standalone encoder give the same pretrained
    # vectors (models.embedder), so retrieval here matches what the gateway retrieves.
    encoder = standalone_embedder(gateway.encoders)
    config = GroundingConfig(
        share=share,
        top_k=augment.inject_top_k,
        min_score=augment.min_score,
        counterfactual_share=0.0,
    )

    def ground(rows: list[list[dict[str, str]]]) -> list[list[dict[str, str]]]:
        grounded, stats = ground_conversations(
            rows,
            facts,
            encoder,
            augment.system_prompt.text,
            config,
            seed=seed,
        )
        logger.info("new rows grounded as served: %s", stats)
        return grounded

    return ground


def night_recipe(config: NightlyConfig) -> tuple[NightlyConfig, FinetuneRecipe, str]:
    """The night's knobs with its recipe file applied, the recipe, and the file's digest.

    Returns:
        ``(config, recipe, digest)``: without a ``finetune_recipe`` file the built-in
        recipe (every key unset) and digest ``"builtin"``.

    Raises:
        loopwright.release.strict.ConfigError: the recipe file is missing or invalid.
        ValueError: a LoRA recipe with ``boundary_dpo`` (the DPO step trains full models).
    """
    from loopwright.recipes import FinetuneRecipe, load_recipe

    if config.finetune_recipe is None:
        return config, FinetuneRecipe(), "builtin"
    recipe, digest = load_recipe(config.finetune_recipe)
    if recipe.method == "lora" and (config.boundary_dpo or recipe.preference.method != "none"):
        raise ValueError(
            f"{config.finetune_recipe}: method lora cannot be combined with boundary_dpo or "
            "a preference step (both DPO steps train the full model); turn one of them off"
        )
    if config.boundary_dpo and recipe.preference.method != "none":
        raise ValueError(
            f"{config.finetune_recipe}: boundary_dpo and a preference step both write the "
            "candidate from the SFT model; choose one"
        )
    return config.model_copy(update=recipe.nightly_overrides()), recipe, digest


def finetune_configs(
    config: NightlyConfig, recipe: FinetuneRecipe | None = None
) -> tuple[PolicyConfig, PolicyConfig]:
    """The SFT and boundary-DPO recipes of a night: tiny, step-budgeted or time-budgeted.

    Args:
        config: the night's knobs (``tiny``, ``finetune_steps``, ``finetune_seconds``,
            ``finetune_threads``, ``seed``), with the recipe's night keys applied
            (:func:`night_recipe`).
        recipe: the recipe file's optimiser keys (method, dtype, learning rate...) for the
            SFT; None: the built-in ones.

    Returns:
        ``(sft, dpo)``: the SFT has ``config.finetune_steps`` steps and no time limit when
        those are set, else ``config.finetune_seconds``; tiny runs take the tiny recipes.
    """
    from models.policy import PolicyConfig

    overrides = recipe.policy_overrides() if recipe is not None else {}
    if config.tiny:
        steps = recipe.steps if recipe is not None and recipe.steps else 20
        return (
            PolicyConfig.tiny(**{"seed": config.seed, "max_steps": steps, **overrides}),
            PolicyConfig.dpo(seed=config.seed, max_steps=4, batch_size=4, threads=1),
        )
    budget: dict[str, Any] = (
        {"max_seconds": None, "max_steps": config.finetune_steps}
        if config.finetune_steps is not None
        else {"max_seconds": config.finetune_seconds}
    )
    return (
        PolicyConfig.finetune(
            seed=config.seed, threads=config.finetune_threads, **budget, **overrides
        ),
        PolicyConfig.dpo(seed=config.seed, threads=config.finetune_threads),
    )


def finetune_candidate(
    parent_dir: Path,
    sft_path: Path,
    replay_path: Path,
    config: NightlyConfig,
    out_dir: Path,
    is_safe_response: Callable[[str], bool],
    ground: Grounder | None = None,
    *,
    refusal_text: str | None = None,
    declined_alternative: Callable[[Sequence[dict[str, str]], random.Random], str] | None = None,
    pairs_path: Path | None = None,
    reward_dir: Path | None = None,
) -> dict[str, float]:
    """SFT the champion on new rows with replay, then a DPO step if the recipe has one.

    The boundary step (``config.boundary_dpo``, with ``refusal_text`` given) trains on pairs
    from the SFT's own rows (:func:`models.policy_data.refusal_boundary_pairs`); the
    recipe's preference step (:func:`loopwright.preference.preference_step`) on the night's
    curated pairs and the reward model's rankings of sampled answers. Either writes the
    candidate; the SFT model is then an intermediate folder, removed after it.

    Args:
        parent_dir: the champion's model folder.
        sft_path: curated SFT rows (the new knowledge).
        replay_path: rows the champion already knows (its training data, weighted); a
            missing file trains on the new rows alone (logged).
        config: budgets, replay ratio, pseudoword share, seed.
        out_dir: where the candidate folder is written.
        is_safe_response: the domain's refusal test; refused replay rows get no
            made-up-word copies (only answered ones do).
        ground: puts the served context into the new rows (:func:`serving_grounder`);
            None trains on them as curated.
        refusal_text: the reply benign boundary pairs reject (the domain's
            ``refusal_text()``); None skips the boundary step.
        declined_alternative: the reply a declined row's pair rejects (the domain's, if
            it has one); None: :func:`models.policy_data.context_or_answer_alternative`.
        pairs_path: the night's curated preference pairs (the preference step's feedback
            pairs; None or missing: none).
        reward_dir: the reward champion's folder (the preference step's ranking; None:
            no reward-ranked pairs).
    """
    from loopwright.preference import preference_step
    from loopwright.recipes import keep_recipe
    from loopwright.records import PreferencePair, read_conversations, read_jsonl
    from models.policy import finetune_sft, train_dpo_conversations
    from models.policy_data import (
        context_or_answer_alternative,
        refusal_boundary_pairs,
        with_pseudowords,
    )

    def answered(row: list[dict[str, str]]) -> bool:
        return not is_safe_response(row[-1]["content"])

    curated = read_conversations(sft_path)
    if not curated:
        raise ValueError(f"{sft_path}: no curated SFT rows; nothing to fine-tune on")
    # The new rows get copies too: the night's guard refusals (odd-looking prompts: encodings,
    # role-play, homoglyphs) otherwise teach "unfamiliar wording -> refuse"
    # (docs/decisions/0003-nightly-fine-tune-recipe.md).
    grounded = ground(curated) if ground is not None else curated
    new_rows = with_pseudowords(grounded, config.pseudoword_share, config.seed + 1, answered)
    if not replay_path.is_file():
        logger.warning(
            "no replay rows (%s): the candidate trains on the new rows only", replay_path
        )
    replay = with_pseudowords(
        read_conversations(replay_path) if replay_path.is_file() else [],
        config.pseudoword_share,
        config.seed,
        answered,
    )
    config, recipe, _ = night_recipe(config)
    sft_config, dpo_config = finetune_configs(config, recipe)
    trained_rows = [*new_rows, *replay]
    pairs = (
        refusal_boundary_pairs(
            trained_rows,
            is_safe_response,
            refusal_text,
            declined_alternative or context_or_answer_alternative(trained_rows, is_safe_response),
            config.seed,
            config.boundary_benign_per_declined,
        )
        if config.boundary_dpo and refusal_text is not None
        else []
    )
    prefer = recipe.preference.method == "dpo"
    sft_dir = out_dir.with_name(out_dir.name + "-sft") if pairs or prefer else out_dir
    result = finetune_sft(
        parent_dir,
        new_rows,
        replay,
        sft_config,
        sft_dir,
        replay_ratio=config.replay_ratio if replay else 0.0,
        distill_weight=config.replay_distill_weight if replay else 0.0,
    )
    metrics: dict[str, float] = result.metrics()
    if pairs:
        boundary = train_dpo_conversations(sft_dir, pairs, dpo_config, out_dir)
        shutil.rmtree(sft_dir)
        metrics.update({f"boundary_dpo_{k}": v for k, v in boundary.metrics().items()})
    if prefer:
        curated_pairs = (
            list(read_jsonl(pairs_path, PreferencePair))
            if pairs_path is not None and pairs_path.is_file()
            else []
        )
        metrics.update(
            preference_step(
                sft_dir,
                out_dir,
                recipe.preference,
                curated_pairs=curated_pairs,
                night_rows=new_rows,
                serve=ground,
                reward_dir=reward_dir,
                seed=config.seed,
                threads=config.finetune_threads,
            )
        )
        shutil.rmtree(sft_dir)
    if config.finetune_recipe is not None:
        keep_recipe(config.finetune_recipe, out_dir)
    metrics["boundary_pairs"] = float(len(pairs))
    metrics["new_rows"] = float(len(curated))
    metrics["new_rows_with_copies"] = float(len(new_rows))
    metrics["replay_rows"] = float(len(replay))
    return metrics
