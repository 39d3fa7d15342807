"""Stages of the nightly improvement loop as plain functions (the flow only composes them).

Each stage reads and writes well-known places under the data repository (``data/`` is one
DVC output) and returns a small typed record. Every stage is idempotent: a rerun after a
crash finds its own earlier output (the batch manifest, the DVC hash, the registry's
lineage tags) and does not redo or duplicate it.

Layout under ``<data_repo>/data``:
    helpdesk/     the example domain (bootstrap): replay data, frozen held-out sets, suites
    production/   ingested log tables, quarantine, watermark, batch manifest
    curated/      sft.jsonl, pairs.jsonl, regression.jsonl, gold.jsonl, gold_pairs.jsonl
                  (cumulative, deduplicated)
"""

from __future__ import annotations

import hashlib
import logging
import random
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from models.cpu import Threads

if TYPE_CHECKING:
    # Annotations only: loopwright.config imports NightlyConfig (the profile's section).
    from loopwright.config import Settings

logger = logging.getLogger(__name__)


class NightlyConfig(BaseModel):
    """Knobs of one nightly run.

    Attributes:
        seed: seeds training and splits.
        tiny: tiny training budgets (tests and smoke runs).
        finetune_seconds: wall-clock budget of the SFT fine-tune, seconds, used only when
            ``finetune_steps`` is None: the candidate then depends on how fast and busy the
            machine is. See docs/decisions/0003-nightly-fine-tune-recipe.md.
        finetune_steps: the SFT fine-tune's budget in optimiser steps, with no time limit,
            so the candidate does not depend on the machine's speed (however long that
            takes) and a rerun with the same data, seed and thread count reproduces it bit
            for bit (``models.policy.PolicyConfig.max_steps``); None: ``finetune_seconds``.
            See docs/decisions/0003-nightly-fine-tune-recipe.md.
        replay_ratio: replay rows per new row (4:1 kept old facts; 0 forgets them).
            See docs/decisions/0004-policy-training-recipe.md.
        replay_distill_weight: above 0, the replay rows are also pulled towards the
            champion's next-token distributions (``models.policy.finetune_sft``'s
            ``distill_weight``); 0 (default): off.
            See docs/decisions/0003-nightly-fine-tune-recipe.md.
        replay_file: the champion's training data, relative to the domain's data folder
            (``data/<Domain.data_folder()>``).
        boundary_dpo: after SFT, a short DPO (``PolicyConfig.dpo()``: 60 steps of 16 pairs,
            lr 5e-5, SFT term on) on refusal-boundary pairs built from the SFT's own rows in
            the prompts the gateway serves (:func:`models.policy_data.refusal_boundary_pairs`):
            answered rows prefer their answer to the refusal, declined rows their refusal to
            what the model would slip into. Off by default: it moves the refusal boundary
            rather than sharpening it. See docs/decisions/0003-nightly-fine-tune-recipe.md.
        boundary_benign_per_declined: benign pairs per declined row in that DPO.
        reward_heldout_file: frozen held-out human pairs, relative to the domain's data
            folder, judged at the knowledge the world has now (the embedded default's pairs
            at its current KB revision): pairs judged before the facts changed would score
            a refresh that learned the change as wrong.
        reward_replay_file: the first reward model's training pairs (the bootstrap's),
            relative to the domain's data folder; the curated pairs are cumulative, so the
            two together hold what every refreshed champion was trained on.
        reward_replay_ratio: replayed champion pairs per new pair in the refresh.
            See docs/decisions/0005-reward-model-training-and-refresh.md.
        reward_learning_rate: AdamW learning rate of the full-size refresh (a continuation,
            so lower than training from scratch; tiny runs keep the tiny recipe).
            See docs/decisions/0005-reward-model-training-and-refresh.md.
        reward_min_gain: the refreshed reward model must beat the old one's held-out
            pairwise accuracy by more than this to replace it.
        max_negative_share: a batch whose share of negative ratings exceeds this fails
            its contract (a poisoning or outage signal); raise it for an untrained model.
        pseudoword_share: answered rows (new and replayed) copied with one made-up word
            (see :func:`models.policy_data.with_pseudowords`); keeps the new refusals from
            spreading to benign questions in unseen wording.
            See docs/decisions/0003-nightly-fine-tune-recipe.md.
        finetune_threads: torch threads of the fine-tune; ``"auto"`` (default): the cores
            free when it starts (:mod:`models.cpu`).
            See docs/decisions/0004-policy-training-recipe.md.
        grounding_share: share of the night's new SFT rows given the facts the gateway
            retrieves for them, as served (see
            :func:`loopwright.finetune.serving_grounder`); the replayed rows carry the
            grounding they were trained with. The share the policy v1 rows got
            (``models.grounding.GroundingConfig.share``): the candidate keeps reading the
            context and keeps answering without it.
            See docs/decisions/0007-grounding-and-context-guidance.md.
        finetune_recipe: a training recipe file for the SFT fine-tune
            (:class:`loopwright.recipes.FinetuneRecipe`: method full or LoRA, dtype, learning
            rate, steps, batch and accumulation, checkpointing, replay); its keys replace
            the built-in ones. In ``domain.yaml`` the path is relative to the domain folder.
            None: the built-in recipe.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 0
    tiny: bool = False
    finetune_seconds: float = Field(default=120.0, gt=0)
    finetune_steps: int | None = Field(default=400, ge=1)
    replay_ratio: float = Field(default=4.0, ge=0)
    replay_distill_weight: float = Field(default=0.0, ge=0)
    replay_file: str = "sft/replay.jsonl"
    boundary_dpo: bool = False
    boundary_benign_per_declined: float = Field(default=1.0, ge=0)
    reward_heldout_file: str = "reward/heldout_current.jsonl"
    reward_replay_file: str = "reward/train.jsonl"
    reward_replay_ratio: float = Field(default=4.0, ge=0)
    reward_learning_rate: float = Field(default=5e-5, gt=0, lt=1)
    reward_min_gain: float = Field(default=0.0, ge=0)
    max_negative_share: float = Field(default=0.6, ge=0, le=1)
    pseudoword_share: float = Field(default=1.0, ge=0, le=1)
    finetune_threads: Threads = "auto"
    grounding_share: float = Field(default=0.7, ge=0, le=1)
    finetune_recipe: str | None = None

    def digest(self) -> str:
        """Short hash of the config: part of a candidate's identity (lineage tag)."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:12]


def with_domain_recipe(config: NightlyConfig, domain: str) -> NightlyConfig:
    """``config`` with what it leaves unset taken from the domain's recipe.

    Precedence: keys set in ``config`` (the profile's ``nightly`` section, the environment)
    over the domain's ``nightly_recipe()`` hook (``domain.yaml``'s ``nightly``) over the
    defaults. Idempotent.

    Raises:
        loopwright.domain.DomainError: ``domain`` cannot be loaded.
        pydantic.ValidationError: the merged recipe is not a valid ``NightlyConfig``.
    """
    from loopwright.domain import load_domain

    provider = getattr(load_domain(domain), "nightly_recipe", None)
    recipe = dict(provider()) if callable(provider) else {}
    if not recipe:
        return config
    return NightlyConfig.model_validate({**recipe, **config.model_dump(exclude_unset=True)})


class BatchRejected(RuntimeError):
    """The night's batch failed validation or screening; nothing may be trained on it."""


@dataclass(frozen=True)
class CheckResult:
    """Validation and screening verdict of one batch."""

    batch: int
    passed: bool
    reasons: list[str]
    docs_path: str
    counts: dict[str, Any] = field(default_factory=dict)


def data_dir(settings: Settings) -> Path:
    """``<data_repo>/data``."""
    return settings.data_repo.resolve() / "data"


def ingest_stage(settings: Settings) -> Any:
    """Stage every log record shipped since the watermark as one batch (IngestResult)."""
    from loopwright.data.ingest import ingest
    from loopwright.storage import ObjectStore

    store = ObjectStore.from_settings(settings)
    result = ingest(
        store, f"s3://{settings.object_store.bucket}", data_dir(settings) / "production"
    )
    if not result.reconciles:
        raise RuntimeError(f"ingest counts do not reconcile: {result}")
    return result


def open_batch(settings: Settings) -> int | None:
    """The newest batch ingested but neither committed nor rejected (a crashed run's)."""
    from loopwright.data.batches import load_manifest
    from loopwright.data.tables import DataLayout

    open_batches = load_manifest(DataLayout(data_dir(settings) / "production")).open_batches()
    return open_batches[-1] if open_batches else None


def last_committed_batch(settings: Settings) -> int | None:
    """The newest committed batch (None before the first)."""
    from loopwright.data.batches import load_manifest
    from loopwright.data.tables import DataLayout

    committed = load_manifest(DataLayout(data_dir(settings) / "production")).committed()
    return max((record.batch for record in committed), default=None)


NightlyStage = Literal["ingest", "check", "curate", "snapshot", "reward", "finetune"]
NIGHTLY_STAGES: tuple[str, ...] = get_args(NightlyStage)


def stage_batch(settings: Settings) -> int:
    """The batch a stage run alone works on: the open one, else the newest committed.

    Raises:
        ValueError: nothing was ingested yet.
    """
    batch = open_batch(settings)
    if batch is None:
        batch = last_committed_batch(settings)
    if batch is None:
        raise ValueError(f"no batch under {data_dir(settings) / 'production'}; run ingest first")
    return batch


class _NoGuard:
    """Screening without a guard model: no text is flagged by it (the rules still run)."""

    def scores(self, texts: Sequence[str]) -> list[dict[str, float]]:
        return [{} for _ in texts]


def check_stage(
    settings: Settings, batch: int, guard_dir: Path | None, max_negative_share: float = 0.6
) -> CheckResult:
    """Validate (Great Expectations) then screen (guard, fact checker) one staged batch.

    A failed batch is rejected whole (all rows quarantined with reasons) by the data
    library, so it can never be committed; the verdict says why. Without a guard
    (``guard_dir`` None: no guard champion) screening runs its rules only and the result's
    ``counts["skipped"]`` says so.
    """
    from loopwright.data.contracts import ContractConfig, validate_batch
    from loopwright.data.screening import screen_batch
    from loopwright.domain import load_domain
    from models.classifiers import load_guard

    domain = load_domain(settings.domain)
    production = data_dir(settings) / "production"
    docs = settings.run_path / "datadocs" / f"batch-{batch}"
    contracts = ContractConfig(max_negative_share=max_negative_share)
    validation = validate_batch(production, batch, docs, contracts)
    if not validation.passed:
        return CheckResult(batch, False, list(validation.reasons), str(docs), {})
    skipped = {} if guard_dir is not None else {"guard": "no guard champion: rules only"}
    screening = screen_batch(
        production,
        batch,
        load_guard(guard_dir) if guard_dir is not None else _NoGuard(),
        domain.fact_checker(),
        domain.screening_config(),
        is_refusal=domain.is_safe_response,
    )
    return CheckResult(
        batch,
        screening.passed,
        list(screening.reasons),
        str(docs),
        {"validation": validation.counts, "screening": screening.counts, "skipped": skipped},
    )


def regression_suite_path(settings: Settings, suite: str = "regression") -> Path | None:
    """Where the configured domain's regression suite reads its samples, or None.

    The suite named ``suite`` in the domain's suite folder, its ``samples`` path resolved
    under ``<data_repo>/data/<domain data folder>`` (what the release evaluation reads);
    None when the domain has no such suite.
    """
    from loopwright.domain import load_domain
    from loopwright.evaluation.suites import SuiteError, discover_suites

    domain = load_domain(settings.domain)
    try:
        (found,) = discover_suites(
            domain.suite_dir(), [suite], data_root=data_dir(settings) / domain.data_folder()
        )
    except SuiteError as exc:
        logger.warning("no %r suite in the domain (%s): curated cases stay curated", suite, exc)
        return None
    return found.sample_path


def _merge_cases(suite_file: Path | None, curated: Path) -> Path | None:
    """The file holding every case of a curated suite so far (regression, gold), or None.

    The suite holds them (hand-written ones too); cases only in the curated copy (data
    curated before the suite received them) are appended to it first.
    """
    from loopwright.records import EvalSample, read_jsonl, write_jsonl

    if suite_file is None:
        return curated if curated.is_file() else None
    if not curated.is_file():
        return suite_file if suite_file.is_file() else None
    cases = list(read_jsonl(suite_file, EvalSample)) if suite_file.is_file() else []
    known = {c.id for c in cases}
    extra = [c for c in read_jsonl(curated, EvalSample) if c.id not in known]
    if extra or not suite_file.is_file():
        suite_file.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(suite_file, [*cases, *extra])
    return suite_file


def _merge_heldout(heldout_file: Path, gold_pairs: Path) -> int:
    """Append the curated gold pairs missing from the reward model's held-out pairs.

    The held-out file is the one the reward refresh is judged by (``reward_heldout_file``
    of the domain); its pairs are kept as they are. Without one, the gold pairs stay in
    ``curated/`` only: a refresh judged by a handful of gold pairs alone would be noise.

    Returns:
        How many pairs were added.
    """
    from loopwright.records import PreferencePair, read_jsonl, write_jsonl

    if not gold_pairs.is_file():
        return 0
    if not heldout_file.is_file():
        logger.warning("no held-out pairs at %s: gold pairs stay in %s", heldout_file, gold_pairs)
        return 0
    pairs = list(read_jsonl(heldout_file, PreferencePair))
    known = {(p.prompt, p.chosen, p.rejected) for p in pairs}
    extra = [
        p
        for p in read_jsonl(gold_pairs, PreferencePair)
        if (p.prompt, p.chosen, p.rejected) not in known
    ]
    if extra:
        write_jsonl(heldout_file, [*pairs, *extra])
    return len(extra)


def champion_completer(settings: Settings) -> Callable[[list[str]], list[str]] | None:
    """What the policy champion says to prompts, generated offline (greedy), or None.

    Guard-blocked prompts were never answered (the gateway blocks before the model); their
    preference pairs reject this offline answer in favour of the domain's safe reply.
    """
    from mlflow.exceptions import MlflowException

    from loopwright.registry import download_model_folder

    try:
        folder = download_model_folder(
            f"models:/{settings.app}-policy@champion", settings.run_path / "model-cache"
        )
    except MlflowException:
        logger.info("no policy champion: guard blocks get no preference pairs")
        return None

    def complete(prompts: list[str]) -> list[str]:
        from models.generation import generate_batch, load_policy

        policy = load_policy(folder, device="cpu")
        return generate_batch(policy, [[{"role": "user", "content": p}] for p in prompts])

    return complete


def curate_stage(settings: Settings, batch: int) -> Any:
    """Commit the checked batch and curate SFT rows, preference pairs, regression and gold.

    The regression cases (failures whose right behaviour is known) are written to
    ``curated/regression.jsonl`` and to the domain's regression suite
    (:func:`regression_suite_path`), which is inside ``data/`` (so in the DVC snapshot) and
    is what the next release evaluation scores: a failure becomes a case the gate judges.
    The suite's cases are kept, new prompts only are added, so a rerun adds nothing.

    Gold items (marked by a reviewer) go the same way into ``curated/gold.jsonl`` and the
    domain's ``gold`` suite, and their pairs (correction chosen over the served answer)
    into ``curated/gold_pairs.jsonl`` and the domain's held-out reward pairs
    (``settings.nightly.reward_heldout_file``), never into the training pairs.
    """
    from loopwright.data.batches import commit_batch
    from loopwright.data.curate import CurateConfig, curate
    from loopwright.domain import load_domain

    root = data_dir(settings)
    commit_batch(root / "production", batch)
    curated = root / "curated"
    config = CurateConfig()
    suite_file = regression_suite_path(settings, config.regression_suite)
    existing = _merge_cases(suite_file, curated / "regression.jsonl")
    gold_file = regression_suite_path(settings, config.gold_suite)
    existing_gold = _merge_cases(gold_file, curated / "gold.jsonl")
    domain = load_domain(settings.domain)
    result = curate(
        root / "production",
        curated,
        config,
        is_refusal=domain.is_safe_response,
        existing_regression=existing,
        guard_refusal=domain.refusal_text(),
        existing_gold=existing_gold,
        complete_blocked=champion_completer(settings),
    )
    for produced, suite in ((result.regression_path, suite_file), (result.gold_path, gold_file)):
        if suite is not None and produced is not None:
            suite.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(produced, suite)
    if result.gold_pairs_path is not None:
        heldout = root / domain.data_folder() / settings.nightly.reward_heldout_file
        added = _merge_heldout(heldout, result.gold_pairs_path)
        logger.info("gold: %d new held-out reward pairs in %s", added, heldout)
    return result


def refresh_reward(
    champion_dir: Path,
    pairs_path: Path,
    heldout_path: Path,
    config: NightlyConfig,
    out_dir: Path,
    replay_path: Path | None = None,
) -> dict[str, float]:
    """Continue the reward champion on the new pairs with replay; measure old and new.

    The refresh trains on every new pair plus ``config.reward_replay_ratio`` times as many
    pairs sampled (seeded) from ``replay_path``, the champion's own training pairs: on new
    pairs alone it forgets what it knew. A missing replay file means no replay.
    See docs/decisions/0005-reward-model-training-and-refresh.md.

    Returns:
        Metrics including ``heldout_acc_old``, ``heldout_acc_new``, ``keep_new`` (1.0 when
        the new model beats the old by more than ``reward_min_gain``), ``n_new_pairs`` and
        ``n_replay_pairs``.
    """
    from loopwright.records import PreferencePair, read_jsonl
    from models.reward import RewardModel, RewardTrainConfig, pairwise_accuracy, train_reward

    pairs = list(read_jsonl(pairs_path, PreferencePair))
    heldout = list(read_jsonl(heldout_path, PreferencePair))
    old = pairwise_accuracy(RewardModel.load(champion_dir), heldout)
    if not pairs:
        return {"heldout_acc_old": old, "heldout_acc_new": old, "keep_new": 0.0, "n_pairs": 0.0}
    pool = (
        list(read_jsonl(replay_path, PreferencePair))
        if replay_path is not None and replay_path.is_file()
        else []
    )
    wanted = min(len(pool), round(config.reward_replay_ratio * len(pairs)))
    replay = random.Random(f"{config.seed}:reward-replay").sample(pool, wanted)
    train_config = (
        RewardTrainConfig.tiny(seed=config.seed, epochs=1)
        if config.tiny
        else RewardTrainConfig(
            seed=config.seed, epochs=1, learning_rate=config.reward_learning_rate
        )
    )
    result = train_reward([*pairs, *replay], train_config, out_dir, init_from=champion_dir)
    new = pairwise_accuracy(RewardModel.load(out_dir), heldout)
    metrics = dict(result.flat_metrics())
    metrics.update(
        heldout_acc_old=old,
        heldout_acc_new=new,
        keep_new=float(new > old + config.reward_min_gain),
        n_new_pairs=float(len(pairs)),
        n_replay_pairs=float(len(replay)),
    )
    return metrics
