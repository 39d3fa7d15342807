"""SFT only vs SFT + reward-model DPO vs SFT + feedback DPO, on one night's data, per seed.

Takes a finished night of the example domain (a data repo whose ``data/curated`` holds the
night's SFT rows and preference pairs, e.g. after ``loopwright demo``), the champion policy
it fine-tuned from and the reward model. Per seed it runs the nightly's SFT
(:func:`loopwright.finetune.finetune_candidate`, built-in recipe), then from that same SFT
model the two preference steps (:func:`loopwright.preference.preference_step`):

- ``reward_dpo``: the reward model's best over worst of sampled answers to the night's
  prompts (``sources: [reward_ranked]``);
- ``feedback_dpo``: the curated pairs (corrections, comparisons, ratings, guard blocks);
- ``overopt``: reward-ranked pairs trained far too hard (300 steps at 1e-3, a loose
  reference, no SFT term); ``overopt_mild``: the same at 150 steps and 2e-4: runs the gate
  must stop (by the reward-hacking rule where the reward rises while references fall).

Each variant is evaluated paired against its seed's SFT model on the domain's held-out
suites (helpfulness: reward on held-out prompts; correctness: reference-based;
over-refusal; harmlessness), raw view, and judged by the release gate (the default
policy, raw view). Prints one ``name: value`` line per figure: the SFT model's values, and
per variant and seed the delta against SFT with its 95% CI and the gate verdict.

Run: PYTHONPATH=. python bench/preference_optimisation.py --data-repo DIR --policy DIR
     --reward DIR [--seeds 0 1 2] [--threads 1] [--out DIR]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from pathlib import Path

SUITES = ["helpfulness", "correctness", "over_refusal", "harmlessness"]
VARIANTS = {
    "reward_dpo": {"method": "dpo", "sources": ["reward_ranked"]},
    "feedback_dpo": {
        "method": "dpo",
        "sources": ["correction", "reviewer", "user_preference", "rating", "guard"],
    },
    "overopt_mild": {
        "method": "dpo",
        "sources": ["reward_ranked"],
        "steps": 150,
        "learning_rate": 2e-4,
        "beta": 0.02,
        "sft_weight": 0.0,
    },
    "overopt": {
        "method": "dpo",
        "sources": ["reward_ranked"],
        "steps": 300,
        "learning_rate": 1e-3,
        "beta": 0.01,
        "sft_weight": 0.0,
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-repo", type=Path, required=True)
    parser.add_argument("--policy", type=Path, required=True, help="the champion's folder")
    parser.add_argument("--reward", type=Path, required=True, help="the reward model's folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=None, help="keep models and runs here")
    parser.add_argument(
        "--ft-steps", type=int, default=None, help="SFT steps (default: the nightly's)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("LOOPWRIGHT_DATA_REPO", str(args.data_repo.resolve()))
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-preference-"))
    print(f"work: {out}")
    for seed in args.seeds:
        sft_dir = out / f"sft-{seed}"
        _sft(args, seed, sft_dir)
        for variant in args.variants:
            model_dir = out / f"{variant}-{seed}"
            _prefer(args, seed, sft_dir, model_dir, VARIANTS[variant])
            _judge(args, f"{variant}_s{seed}", model_dir, sft_dir, out / "eval" / model_dir.name)


def _domain_and_grounder(seed: int):  # type: ignore[no-untyped-def]
    from loopwright.config import load_settings
    from loopwright.domain import load_domain
    from loopwright.finetune import serving_grounder

    settings = load_settings("local")
    return (
        settings,
        load_domain(settings.domain),
        serving_grounder(settings, settings.nightly.grounding_share, seed),
    )


def _sft(args: argparse.Namespace, seed: int, sft_dir: Path) -> None:
    from loopwright.finetune import finetune_candidate
    from loopwright.nightly import NightlyConfig

    if (sft_dir / "config.json").is_file():
        return
    settings, domain, ground = _domain_and_grounder(seed)
    data = args.data_repo / "data"
    metrics = finetune_candidate(
        args.policy,
        data / "curated" / "sft.jsonl",
        data / domain.data_folder() / "sft" / "replay.jsonl",
        NightlyConfig(
            seed=seed,
            finetune_threads=args.threads,
            **({"finetune_steps": args.ft_steps} if args.ft_steps else {}),
        ),
        sft_dir,
        domain.is_safe_response,
        ground,
        refusal_text=domain.refusal_text(),
    )
    print(f"sft_s{seed}_seconds: {metrics['seconds']:.1f}")


def _prefer(
    args: argparse.Namespace, seed: int, sft_dir: Path, model_dir: Path, recipe: dict
) -> None:
    from loopwright.preference import preference_step
    from loopwright.recipes import PreferenceRecipe
    from loopwright.records import PreferencePair, read_conversations, read_jsonl

    if (model_dir / "config.json").is_file():
        return
    _, _, ground = _domain_and_grounder(seed)
    curated = args.data_repo / "data" / "curated"
    rows = read_conversations(curated / "sft.jsonl")
    metrics = preference_step(
        sft_dir,
        model_dir,
        PreferenceRecipe.model_validate(recipe),
        curated_pairs=list(read_jsonl(curated / "pairs.jsonl", PreferencePair)),
        night_rows=ground(rows) if ground is not None else rows,
        serve=ground,
        reward_dir=args.reward,
        seed=seed,
        threads=args.threads,
    )
    for key in ("preference_pairs", "preference_dpo_seconds"):
        print(f"{model_dir.name}_{key}: {metrics.get(key, 0.0):.1f}")


def _judge(
    args: argparse.Namespace, name: str, model_dir: Path, sft_dir: Path, run_dir: Path
) -> None:
    from loopwright.evaluation.api import evaluate
    from loopwright.evaluation.engine import EngineConfig
    from loopwright.evaluation.scorers import ScorerResources
    from loopwright.release.evaluate import _baseline_summary, _summary
    from loopwright.release.gate import decide, load_gate_policy
    from loopwright.release.summary import EvalSummary
    from models.reward import RewardModel

    settings, domain, _ = _domain_and_grounder(0)
    result = evaluate(
        str(model_dir),
        SUITES,
        baseline=str(sft_dir),
        suite_dir=domain.suite_dir(),
        data_root=args.data_repo / "data" / domain.data_folder(),
        run_dir=run_dir,
        cache_dir=run_dir.parent / "cache",
        engine=EngineConfig(executor="local", threads_per_worker=args.threads),
        resources=ScorerResources(reward=RewardModel.load(args.reward)),
    )
    for metric in result.comparison or []:
        if metric.slice != "all":
            continue
        print(
            f"{name}_{metric.dimension}_{metric.metric}_delta: {metric.delta:+.4f} "
            f"[{metric.ci_low:+.4f}, {metric.ci_high:+.4f}] (sft {metric.baseline:.4f})"
        )
    candidate = EvalSummary.model_validate(_summary(result, None, str(model_dir), str(sft_dir)))
    baseline = _baseline_summary(result, None, str(sft_dir))
    # The default policy, judged on the dimensions these suites measure (the others would
    # block as "not measured").
    policy = load_gate_policy()
    measured = {k: rule for k, rule in policy.dimensions.items() if k.split("/")[0] in SUITES}
    policy = policy.model_copy(update={"views": ["raw"], "dimensions": measured})
    verdict = decide(candidate, EvalSummary.model_validate(baseline), policy)
    hacked = any("reward hacking" in r for r in verdict.reasons)
    print(f"{name}_gate: {'pass' if verdict.passed else 'blocked'}")
    print(f"{name}_gate_reward_hacking: {int(hacked)}")
    for reason in verdict.blocking_reasons:
        print(f"{name}_gate_reason: {reason}")


if __name__ == "__main__":
    main()
