"""The offline gate's two views against the real stack: raw, and through the control stack.

Registered copies of the tiny bootstrap's champions under their own app (``gv``) keep the
registry of the other flow tests untouched: the candidate is a second version of the
policy with no alias, the champion the first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.services

APP = "gv"


def _copy_version(client: Any, kind: str, source_name: str) -> str:
    """Register the bootstrap champion's logged model again as a new version of ``gv-<kind>``."""
    import mlflow

    src = client.get_model_version_by_alias(source_name, "champion")
    return str(mlflow.register_model(src.source, f"{APP}-{kind}").version)


@pytest.fixture(scope="module")
def gv(bootstrapped) -> tuple[Any, str, str]:
    """Settings for app ``gv`` with policy/guard/reward champions, and a candidate version."""
    from mlflow import MlflowClient

    client = MlflowClient()
    for kind in ("policy", "guard", "reward"):
        version = _copy_version(client, kind, f"boot-{kind}")
        client.set_registered_model_alias(f"{APP}-{kind}", "champion", version)
    champion = client.get_model_version_by_alias(f"{APP}-policy", "champion").version
    candidate = _copy_version(client, "policy", "boot-policy")
    settings = bootstrapped.settings.model_copy(update={"app": APP})
    return settings, str(candidate), str(champion)


def _aliases(client: Any) -> dict[str, dict[str, str]]:
    names = [f"{app}-{kind}" for app in (APP, "boot") for kind in ("policy", "guard", "reward")]
    return {n: dict(client.get_registered_model(n).aliases) for n in names}


def _spooled(folder: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for path in sorted(folder.rglob("*.jsonl"))
        for line in path.read_text(encoding="utf-8").splitlines()
        if line
    ]


# slow: ~40 s; the default tier is at its 15-minute budget (clean-clone CI 870-943 s), and
# the tiny demo and the second-domain test there judge the gateway view end to end, and the
# gateway-only test below serves the candidate behind the controls.
@pytest.mark.slow
def test_gateway_view_judges_pinned_versions_behind_the_controls(gv, tmp_path, caplog) -> None:
    import logging

    import torch
    from mlflow import MlflowClient

    from loopwright.domain import load_domain
    from loopwright.release.evaluate import evaluate_for_gate
    from loopwright.release.gate import decide, load_gate_policy
    from loopwright.release.gateway_view import EVAL_TENANT
    from loopwright.release.summary import EvalSummary

    torch.set_num_threads(1)
    caplog.set_level(logging.INFO, logger="loopwright.release.evaluate")
    settings, candidate, champion = gv
    client = MlflowClient()
    before = _aliases(client)
    run_dir = tmp_path / "eval"
    cand, champ = evaluate_for_gate(
        settings,
        f"models:/{APP}-policy/{candidate}",
        f"models:/{APP}-policy/{champion}",
        suite_dir=load_domain(settings.domain).suite_dir(),
        data_root=settings.data_repo.resolve() / "data" / "helpdesk",
        run_dir=run_dir,
        suites=["harmlessness"],
    )
    summary = EvalSummary.model_validate(cand)
    assert champ is not None
    baseline = EvalSummary.model_validate(champ)

    # Both views, on the same samples, paired against the champion in each.
    assert set(summary.views) == set(baseline.views) == {"raw", "gateway"}
    assert summary.model_uri == f"models:/{APP}-policy/{candidate}"
    assert summary.baseline_uri == f"models:/{APP}-policy/{champion}"
    raw = summary.views["raw"].values["harmlessness"]
    gateway = summary.views["gateway"].values["harmlessness"]
    assert raw.n == gateway.n > 0
    assert summary.views["gateway"].paired["harmlessness"].n == gateway.n
    # The guard and the fallback refuse harmful requests the tiny model alone answers.
    print(f"\nharmlessness raw={raw.value:.3f} gateway={gateway.value:.3f} n={raw.n}")
    assert gateway.value > raw.value
    print(" ".join(r.getMessage() for r in caplog.records if "view took" in r.getMessage()))

    # Evaluation never moves an alias, and the candidate (no alias) was really served.
    assert _aliases(client) == before
    log_root = run_dir / "gateway" / "interaction-log"
    for version in (candidate, champion):
        records = _spooled(log_root / f"v{version}")
        assert len(records) == gateway.n  # one request per sample, every one logged
        assert {r["tenant"] for r in records} == {EVAL_TENANT}
        served = {r["model_version"] for r in records if r["model_version"] is not None}
        assert served <= {version}
        # Every request went through the input rails: some were blocked, and the guard
        # model scored every one the rules let through. (Whether the tiny guard blocks is
        # its own tests' business; since the multi-question guard data, the tiny one blocks
        # little of this tiny suite while the full-size one carries harmlessness to 0.995.)
        assert any(r["input_verdict"]["action"] == "block" for r in records)
        passed = [r for r in records if r["input_verdict"]["action"] != "block"]
        assert passed and all("guard_harmful" in r["input_verdict"]["scores"] for r in passed)

    # The default policy judges both views: none is reported missing.
    verdict = decide(summary, baseline, load_gate_policy())
    assert not [r for r in verdict.reasons if "view missing" in r]


def _first_run(settings, candidate: str, run_dir, view: str):
    """The harmlessness suite for a candidate with no champion, in one view."""
    from loopwright.domain import load_domain
    from loopwright.release.evaluate import evaluate_for_gate
    from loopwright.release.gate import load_gate_policy

    return evaluate_for_gate(
        settings,
        f"models:/{APP}-policy/{candidate}",
        None,
        suite_dir=load_domain(settings.domain).suite_dir(),
        data_root=settings.data_repo.resolve() / "data" / "helpdesk",
        run_dir=run_dir,
        suites=["harmlessness"],
        policy=load_gate_policy().model_copy(update={"views": [view]}),
    )


# slow: ~10 s; the default tier is at its 15-minute budget (a clean-clone CI run measured
# 905 s), and the release's default views (raw and gateway) are judged there end to end.
@pytest.mark.slow
def test_raw_only_view_starts_no_gateway(gv, tmp_path) -> None:
    import torch

    torch.set_num_threads(1)
    settings, candidate, _ = gv
    cand, champ = _first_run(settings, candidate, tmp_path / "eval", "raw")
    assert champ is None  # the first-run path: nothing to pair with
    assert set(cand["views"]) == {"raw"} and cand["baseline_uri"] is None
    assert not (tmp_path / "eval" / "gateway").exists()


def test_gateway_only_first_run_reuses_generations_by_what_serves(gv, tmp_path) -> None:
    import torch

    from loopwright.release.summary import EvalSummary

    torch.set_num_threads(1)
    settings, candidate, _ = gv
    _first_run(settings, candidate, tmp_path / "first", "gateway")
    run_dir = tmp_path / "again"
    cand, champ = _first_run(settings, candidate, run_dir, "gateway")
    summary = EvalSummary.model_validate(cand)
    assert champ is None and set(summary.views) == {"gateway"}
    assert summary.model_uri == f"models:/{APP}-policy/{candidate}"
    assert summary.views["gateway"].values["harmlessness"].n > 0
    # Same policy, guard and settings as the run before, on a new port: all from the cache.
    counts = json.loads((run_dir / "gateway" / "summary.json").read_text())["counts"]
    assert counts["cached"] == counts["generations"] > 0 and counts["generated"] == 0
