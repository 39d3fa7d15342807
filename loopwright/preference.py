"""The policy's preference data: pairs from production feedback and from the reward model.

Pure core: :func:`feedback_preferences` turns curated pairs (corrections, comparisons,
ratings, guard blocks; see :mod:`loopwright.data.curate`) into preferences in the prompt the
policy is served, and :func:`reward_ranked_preferences` turns sampled answers and their
reward scores into best-over-worst preferences. Every preference keeps its source, and
:func:`write_preference_file` writes them beside the model they trained, so a version shows
what it was optimised on. :func:`preference_step` is the shell that samples, scores and
trains (trl's DPO through :func:`models.policy.train_dpo_conversations`).
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loopwright.recipes import PreferenceRecipe
from loopwright.records import PreferencePair

logger = logging.getLogger(__name__)

Conversation = list[dict[str, str]]
PREFERENCE_FILE = "preference_pairs.jsonl"


@dataclass(frozen=True)
class SourcedPreference:
    """A preference in the served prompt, with where it came from.

    Attributes:
        messages: the conversation up to the user's turn, as the policy is served it.
        chosen / rejected: the preferred and the rejected assistant reply.
        source: the pair's origin (a curated pair's source, or ``reward_ranked``).
        margin: reward score of ``chosen`` minus ``rejected`` (``reward_ranked`` only).
        detail: what else identifies the origin (``principles``: the file's version).
    """

    messages: Conversation
    chosen: str
    rejected: str
    source: str
    margin: float | None = None
    detail: str | None = None


def feedback_preferences(
    pairs: Sequence[PreferencePair],
    sources: Sequence[str],
    serve: Callable[[list[Conversation]], list[Conversation]] | None = None,
) -> list[SourcedPreference]:
    """The curated pairs of the chosen sources, in the prompt the policy is served.

    Args:
        pairs: curated preference pairs (``curated/pairs.jsonl``).
        sources: the sources to keep (others are left out).
        serve: puts the served context around a user turn (e.g. the system prompt and the
            retrieved facts: :func:`loopwright.finetune.serving_grounder`); it receives
            ``[user, assistant]`` conversations and returns them with context. None: the
            user's message alone.

    Returns:
        One preference per kept pair, in input order.
    """
    kept = [p for p in pairs if p.source in set(sources) and p.chosen != p.rejected]
    conversations = [
        [{"role": "user", "content": p.prompt}, {"role": "assistant", "content": p.chosen}]
        for p in kept
    ]
    served = serve(conversations) if serve is not None and conversations else conversations
    return [
        SourcedPreference(conv[:-1], p.chosen, p.rejected, p.source)
        for conv, p in zip(served, kept, strict=True)
    ]


def reward_ranked_preferences(
    prompts: Sequence[Conversation],
    samples: Sequence[Sequence[str]],
    scores: Sequence[Sequence[float]],
    min_gap: float,
) -> list[SourcedPreference]:
    """Best over worst of each prompt's sampled answers, where the reward model sees a gap.

    Args:
        prompts: served conversations ending with the user's turn.
        samples: the sampled answers per prompt.
        scores: the reward model's score per sampled answer (same shape as ``samples``).
        min_gap: a prompt whose best and worst differ by less makes no pair.

    Raises:
        ValueError: the three do not line up.
    """
    if not len(prompts) == len(samples) == len(scores):
        raise ValueError(f"{len(prompts)} prompts, {len(samples)} sample sets, {len(scores)}")
    out = []
    for prompt, answers, rewards in zip(prompts, samples, scores, strict=True):
        if len(answers) != len(rewards):
            raise ValueError(f"{len(answers)} answers but {len(rewards)} scores")
        ranked = sorted(zip(rewards, answers, strict=True), key=lambda r: r[0])
        (low, worst), (high, best) = ranked[0], ranked[-1]
        if high - low >= min_gap and best != worst and best.strip():
            out.append(SourcedPreference(list(prompt), best, worst, "reward_ranked", high - low))
    return out


def night_prompts(rows: Sequence[Conversation], limit: int, seed: int) -> list[Conversation]:
    """Distinct user prompts of the night's rows (without the answer), a seeded choice."""
    unique: dict[str, Conversation] = {}
    for row in rows:
        prefix = [dict(m) for m in row[:-1]] if row and row[-1]["role"] == "assistant" else row
        if prefix and prefix[-1]["role"] == "user":
            unique.setdefault(json.dumps(prefix, sort_keys=True), prefix)
    prompts = list(unique.values())
    random.Random(f"{seed}:preference-prompts").shuffle(prompts)
    return prompts[:limit]


def source_counts(preferences: Sequence[SourcedPreference]) -> dict[str, int]:
    """How many preferences each source gave (``pairs_<source>``) and in all (``pairs``)."""
    counts = Counter(f"pairs_{p.source}" for p in preferences)
    return {"pairs": len(preferences), **dict(sorted(counts.items()))}


def write_preference_file(preferences: Sequence[SourcedPreference], folder: Path) -> Path:
    """Write the preferences (with their sources) into ``folder/preference_pairs.jsonl``."""
    path = Path(folder) / PREFERENCE_FILE
    with path.open("w", encoding="utf-8") as out:
        for p in preferences:
            row: dict[str, Any] = {
                "messages": p.messages,
                "chosen": p.chosen,
                "rejected": p.rejected,
                "source": p.source,
            }
            if p.margin is not None:
                row["margin"] = round(p.margin, 6)
            if p.detail is not None:
                row["detail"] = p.detail
            out.write(json.dumps(row) + "\n")
    return path


def preference_step(
    sft_dir: Path,
    out_dir: Path,
    recipe: PreferenceRecipe,
    *,
    curated_pairs: Sequence[PreferencePair],
    night_rows: Sequence[Conversation],
    serve: Callable[[list[Conversation]], list[Conversation]] | None,
    reward_dir: Path | None,
    seed: int,
    threads: int | str = "auto",
) -> dict[str, float]:
    """DPO the SFT model on the night's preferences; writes the candidate to ``out_dir``.

    Args:
        sft_dir: the SFT model (a full model folder).
        out_dir: where the optimised policy goes, with :data:`PREFERENCE_FILE`.
        recipe: which sources, how many samples, the DPO's budget.
        curated_pairs: the night's curated pairs.
        night_rows: the night's served SFT rows (their prompts are sampled for
            ``reward_ranked``).
        serve: puts the served context around curated prompts (see
            :func:`feedback_preferences`).
        reward_dir: the reward champion's folder; None skips ``reward_ranked`` (logged).
        seed: seeds the prompt choice, the sampling and the DPO.
        threads: torch threads of sampling and training.

    Returns:
        Metrics: pair counts per source (``pairs_<source>``) and the DPO's own.

    Raises:
        ValueError: no preference at all to learn from.
    """
    from models.policy import ConversationPreference, PolicyConfig, train_dpo_conversations

    preferences = feedback_preferences(curated_pairs, recipe.sources, serve)
    # The same seeded choice of the night's prompts for the reward model and the judge.
    prompts = night_prompts(night_rows, recipe.max_prompts, seed)
    if "reward_ranked" in recipe.sources:
        if reward_dir is None:
            logger.warning("no reward model: reward-ranked preference pairs skipped")
        else:
            samples = sample_answers(sft_dir, prompts, recipe, seed)
            scores = score_answers(reward_dir, prompts, samples)
            preferences += reward_ranked_preferences(
                prompts, samples, scores, recipe.min_reward_gap
            )
    if "principles" in recipe.sources and recipe.principles is not None:
        preferences += principle_preferences(sft_dir, prompts, recipe)
    if not preferences:
        raise ValueError("preference step: no pairs from any source; nothing to learn")
    config = PolicyConfig.dpo(
        seed=seed,
        threads=threads,
        max_steps=recipe.steps,
        lr=recipe.learning_rate,
        batch_size=recipe.batch_size,
        dpo_beta=recipe.beta,
        dpo_sft_weight=recipe.sft_weight,
    )
    rows = [ConversationPreference(p.messages, p.chosen, p.rejected) for p in preferences]
    result = train_dpo_conversations(sft_dir, rows, config, out_dir)
    write_preference_file(preferences, out_dir)
    counts = source_counts(preferences)
    logger.info("preference step: %s", counts)
    metrics = {f"preference_{k}": float(v) for k, v in counts.items()}
    metrics.update({f"preference_dpo_{k}": v for k, v in result.metrics().items()})
    return metrics


def sample_answers(
    policy_dir: Path, prompts: Sequence[Conversation], recipe: PreferenceRecipe, seed: int
) -> list[list[str]]:
    """``recipe.samples_per_prompt`` sampled answers per prompt (each draw its own seed)."""
    from models.generation import DecodingParams, generate_batch, load_policy

    policy = load_policy(policy_dir, device="cpu")
    draws = [
        generate_batch(
            policy, prompts, DecodingParams(temperature=recipe.temperature, seed=seed * 1000 + k)
        )
        for k in range(recipe.samples_per_prompt)
    ]
    return [list(answers) for answers in zip(*draws, strict=True)]


def score_answers(
    reward_dir: Path, prompts: Sequence[Conversation], samples: Sequence[Sequence[str]]
) -> list[list[float]]:
    """The reward model's score of every sampled answer, judged on the user's last turn."""
    from models.reward import RewardModel

    reward = RewardModel.load(reward_dir)
    flat_prompts = [
        conv[-1]["content"] for conv, answers in zip(prompts, samples, strict=True) for _ in answers
    ]
    flat = reward.score(flat_prompts, [a for answers in samples for a in answers])
    out, i = [], 0
    for answers in samples:
        out.append(flat[i : i + len(answers)])
        i += len(answers)
    return out


def principle_preferences(
    policy_dir: Path, prompts: Sequence[Conversation], recipe: PreferenceRecipe
) -> list[SourcedPreference]:
    """The judge's revisions of the policy's greedy answers, chosen over them.

    Without a judge nothing can read the principles: no pairs (logged).
    """
    from loopwright.principles import endpoint_reviser, load_principles, revision_pairs
    from models.generation import generate_batch, load_policy

    assert recipe.principles is not None
    principles = load_principles(recipe.principles)
    if recipe.judge is None:
        logger.warning(
            "principles v%s: no judge configured to revise against them; no principle pairs",
            principles.version,
        )
        return []
    answers = generate_batch(load_policy(policy_dir, device="cpu"), prompts)
    revise = endpoint_reviser(
        recipe.judge.base_url,
        recipe.judge.model,
        recipe.judge.api_key_env,
        principles.revise_prompt,
    )
    revisions = revise([p[-1]["content"] for p in prompts], answers, principles.text())
    return [
        SourcedPreference(
            list(prompts[i]), revised, original, "principles", detail=f"v{principles.version}"
        )
        for i, revised, original in revision_pairs(answers, revisions)
    ]
