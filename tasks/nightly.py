"""Nightly tasks: each resolves its inputs, calls one library stage, records the outcome."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

from prefect import get_run_logger, task

from loopwright import finetune as nightly_finetune
from loopwright import nightly
from loopwright.config import Settings
from loopwright.datastore import snapshot
from loopwright.domain import load_domain
from loopwright.publish import find_outcome, find_version, publish_model, record_outcome
from loopwright.registry import (
    RegisteredVersion,
    download_model_folder,
    resolve_version,
    write_base_reference,
)


def current_version(settings: Settings, kind: str) -> str | None:
    """The version ``<app>-<kind>@champion`` points at, or None before the first one."""
    from mlflow.exceptions import MlflowException

    try:
        return resolve_version(f"models:/{settings.app}-{kind}@champion").version
    except MlflowException:
        return None


def _champion_dir(settings: Settings, kind: str) -> tuple[Path, str]:
    uri = f"models:/{settings.app}-{kind}@champion"
    return download_model_folder(uri, settings.run_path / "model-cache"), resolve_version(
        uri
    ).version


@task(name="ingest", retries=3, retry_delay_seconds=[2, 10, 30])
def ingest_logs(settings: Settings) -> int | None:
    """Stage what the gateway shipped since the watermark; returns the batch (None: none)."""
    result = nightly.ingest_stage(settings)
    get_run_logger().info(
        "ingest: batch %s, %d lines read = %d+%d accepted + %d quarantined + %d duplicates",
        result.batch,
        result.lines_read,
        result.accepted_interactions,
        result.accepted_feedback,
        result.quarantined,
        result.duplicates,
    )
    if result.batch is not None:
        return int(result.batch)
    resumed = nightly.open_batch(settings)  # a crashed run staged it but never finished it
    if resumed is not None:
        get_run_logger().info("resuming batch %d, left open by an earlier run", resumed)
    return resumed


@task(name="find-untrained-batch")
def untrained_batch(settings: Settings) -> int | None:
    """The newest committed batch no candidate was trained on yet (a run died after curate).

    The registry is the record: a nightly candidate carries its batch number as a tag.
    """
    batch = nightly.last_committed_batch(settings)
    if batch is None:
        return None
    done = find_version(
        settings.registered_model("policy"), {"origin": "nightly", "batch": str(batch)}
    )
    return None if done is not None else batch


@task(name="validate-and-screen")
def check_batch(
    settings: Settings, batch: int, config: nightly.NightlyConfig
) -> nightly.CheckResult:
    """Great Expectations contracts, then guard / fact / poisoning screening.

    Without a guard champion the screening runs its rules only (logged, and in the counts).
    """
    log = get_run_logger()
    guard_dir = _champion_dir(settings, "guard")[0] if current_version(settings, "guard") else None
    if guard_dir is None:
        log.warning(
            "no %s champion: screening runs its rules only", settings.registered_model("guard")
        )
    result = nightly.check_stage(settings, batch, guard_dir, config.max_negative_share)
    log.info("batch %d passed=%s %s %s", batch, result.passed, result.reasons, result.counts)
    return result


@task(name="curate")
def curate_batch(settings: Settings, batch: int) -> dict[str, int]:
    """Commit the batch; write SFT rows, preference pairs and regression cases."""
    counts: dict[str, int] = nightly.curate_stage(settings, batch).counts
    get_run_logger().info("curated: %s", counts)
    return counts


@task(name="snapshot-data", retries=2, retry_delay_seconds=5)
def snapshot_data(settings: Settings) -> str:
    """``dvc add`` + ``dvc push`` of ``data/``; returns the data version (md5)."""
    return snapshot(settings.data_repo.resolve(), settings, "data")


# log_prints=False: Prefect's print capture also swallows what dill prints to its own
# captured stdout to find a function's globals (datasets/trl hash their map functions that
# way), so under log_prints the hashes went wrong and the log filled with bytecode listings.
@task(name="reward-refresh", log_prints=False)
def reward_refresh(settings: Settings, data_version: str, config: nightly.NightlyConfig) -> str:
    """Continue the reward champion on new pairs; keep it only if it beats the old one.

    Returns:
        The reward champion's version after the refresh, or ``"none"`` when there is no
        reward champion or no held-out pairs to judge a refresh by (skipped; the reason is
        recorded as an MLflow run of the nightly experiment).
    """
    log = get_run_logger()
    experiment = f"{settings.app}-nightly"
    domain_root = nightly.data_dir(settings) / load_domain(settings.domain).data_folder()
    skipped = _reward_refresh_skipped(settings, domain_root / config.reward_heldout_file)
    if skipped is not None:
        log.warning("reward refresh skipped: %s", skipped)
        lineage = {"data_version": data_version, "origin": "nightly", "config": config.digest()}
        if find_outcome(experiment, lineage) is None:
            record_outcome(
                experiment=experiment,
                run_name="reward-refresh",
                params=config.model_dump(),
                metrics={},
                lineage=lineage,
                outcome=f"skipped: {skipped}",
            )
        return current_version(settings, "reward") or "none"
    champion_dir, champion_version = _champion_dir(settings, "reward")
    lineage = {
        "data_version": data_version,
        "parent_version": champion_version,
        "origin": "nightly",
        "config": config.digest(),
    }
    done = find_version(settings.registered_model("reward"), lineage)
    if done is not None:  # published by an earlier run; finish its promotion if it died
        _promote_internal(settings, done, champion_version, "refreshed on this data earlier")
        return done.version
    kept = find_outcome(experiment, lineage)
    if kept is not None:  # an earlier run refreshed it and kept the old one: no retraining
        log.info("reward refresh already decided for this data: %s", kept)
        return champion_version
    root = nightly.data_dir(settings)
    out_dir = settings.run_path / "models" / "reward" / f"nightly-{data_version[:8]}"
    start = time.perf_counter()
    metrics = nightly.refresh_reward(
        champion_dir,
        root / "curated" / "pairs.jsonl",
        domain_root / config.reward_heldout_file,
        config,
        out_dir,
        replay_path=domain_root / config.reward_replay_file,
    )
    metrics["stage_seconds"] = time.perf_counter() - start
    if not metrics["keep_new"]:
        why = (
            f"kept version {champion_version}: refreshed model {metrics['heldout_acc_new']:.3f}"
            f" vs old {metrics['heldout_acc_old']:.3f} on held-out pairs"
        )
        log.info("reward %s", why)
        record_outcome(
            experiment=experiment,
            run_name="reward-refresh",
            params=config.model_dump(),
            metrics=metrics,
            lineage=lineage,
            outcome=why,
        )
        return champion_version
    version = publish_model(
        settings,
        out_dir,
        "reward",
        experiment=experiment,
        run_name="reward-refresh",
        params=config.model_dump(),
        metrics=metrics,
        lineage=lineage,
    )
    reason = (
        f"held-out pairwise accuracy {metrics['heldout_acc_new']:.3f} beats "
        f"{metrics['heldout_acc_old']:.3f} of version {champion_version}"
    )
    _promote_internal(settings, version, champion_version, reason)
    return version.version


def _reward_refresh_skipped(settings: Settings, heldout: Path) -> str | None:
    """Why the reward refresh cannot run (None: it can)."""
    if current_version(settings, "reward") is None:
        return f"no {settings.registered_model('reward')} champion to refresh"
    if not heldout.is_file():
        return f"no held-out preference pairs ({heldout}) to judge a refresh by"
    from models.classifiers import is_own_reward

    folder, version = _champion_dir(settings, "reward")
    if not is_own_reward(folder):
        return (
            f"{settings.registered_model('reward')} version {version} is a classifier "
            "registered as it is: it scores, and only reward models loopwright trains are "
            "refreshed"
        )
    return None


def _promote_internal(
    settings: Settings, version: RegisteredVersion, old: str, reason: str
) -> None:
    """The reward model is internal: its held-out comparison is its gate (auto, recorded).

    Idempotent: a version that already is champion is left as it is.
    """
    from mlflow import MlflowClient

    from loopwright.release.approval import ApprovalDecision
    from loopwright.release.registry_ops import RegistryOps

    if version.version == old:
        return
    decision = ApprovalDecision(
        approved=True,
        by="loopwright:reward-gate",
        at=datetime.now(UTC),
        reason=reason,
        channel="auto",
    )
    RegistryOps(MlflowClient(), settings.app, settings.run_path / "locks").promote(
        version.name,
        version.version,
        decision,
        expected_champion=old,
        request_id=f"reward-{version.name}-{version.version}",
    )


# log_prints=False: see reward-refresh.
@task(name="finetune", log_prints=False)
def finetune(
    settings: Settings,
    batch: int,
    data_version: str,
    reward_version: str,
    config: nightly.NightlyConfig,
) -> RegisteredVersion:
    """A candidate from the policy champion (SFT with replay); registered without alias."""
    parent_dir, parent_version = _champion_dir(settings, "policy")
    _, recipe, recipe_digest = nightly_finetune.night_recipe(config)
    lineage = {
        "batch": str(batch),
        "data_version": data_version,
        "parent_version": parent_version,
        "reward_version": reward_version,
        "origin": "nightly",
        "config": config.digest(),
        "recipe": recipe_digest[:12],
        "method": recipe.method,
    }
    done = find_version(settings.registered_model("policy"), lineage)
    if done is not None:
        get_run_logger().info("candidate already registered: version %s", done.version)
        return done
    new_rows = nightly.data_dir(settings) / "curated" / "sft.jsonl"
    get_run_logger().info(
        "fine-tuning a candidate from %s v%s on %s", settings.app, parent_version, new_rows
    )
    root = nightly.data_dir(settings)
    out_dir = settings.run_path / "models" / "policy" / f"nightly-{data_version[:8]}"
    domain = load_domain(settings.domain)
    start = time.perf_counter()
    metrics = nightly_finetune.finetune_candidate(
        parent_dir,
        root / "curated" / "sft.jsonl",
        root / domain.data_folder() / config.replay_file,
        config,
        out_dir,
        domain.is_safe_response,
        ground=nightly_finetune.serving_grounder(settings, config.grounding_share, config.seed),
        refusal_text=domain.refusal_text(),
        declined_alternative=getattr(domain, "declined_alternative", None),
        pairs_path=root / "curated" / "pairs.jsonl",
        reward_dir=_champion_dir(settings, "reward")[0] if reward_version != "none" else None,
    )
    metrics["stage_seconds"] = time.perf_counter() - start
    if recipe.method == "lora":  # an adapter: the registry merges it onto its base on load
        write_base_reference(out_dir, settings.registered_model("policy"), parent_version)
    return publish_model(
        settings,
        out_dir,
        "policy",
        experiment=f"{settings.app}-nightly",
        run_name="finetune",
        params=config.model_dump(),
        metrics=metrics,
        lineage=lineage,
    )
