"""Failures curated on one night are regression cases that the gate judges the next night.

Night 1 (the shared ``nightly_candidate`` fixture: simulated production logs through the
real nightly flow) curates failures whose right behaviour is known. They must land in the
configured domain's regression suite (inside ``data/``, so in the DVC snapshot), survive a
rerun of the curate stage without duplicates, and on night 2 the release evaluation of the
candidate against the champion must score that suite paired, so the gate judges it.
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.services


def _ids(path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text(encoding="utf-8").splitlines()]


def test_a_failure_curated_on_night_1_is_a_regression_case_the_gate_judges_on_night_2(
    bootstrapped, nightly_candidate, tmp_path
) -> None:
    import dvc.api
    import torch

    from loopwright.data.batches import load_manifest
    from loopwright.data.tables import DataLayout
    from loopwright.domain import load_domain
    from loopwright.nightly import curate_stage, data_dir, regression_suite_path
    from loopwright.release.evaluate import evaluate_for_gate
    from loopwright.release.gate import decide, load_gate_policy
    from loopwright.release.summary import EvalSummary

    torch.set_num_threads(1)
    settings, repo = bootstrapped.settings, bootstrapped.repo
    assert nightly_candidate is not None
    domain = load_domain(settings.domain)
    suite_file = regression_suite_path(settings)
    assert suite_file == data_dir(settings) / domain.data_folder() / "eval" / "regression.jsonl"

    # Night 1 curated failures into the suite the release reads, and snapshotted them.
    cases = _ids(suite_file)
    assert cases, "night 1 curated no regression case"
    assert cases == _ids(data_dir(settings) / "curated" / "regression.jsonl")
    relative = suite_file.relative_to(repo).as_posix()
    assert dvc.api.read(relative, repo=str(repo)) == suite_file.read_text(encoding="utf-8")

    # The curate stage again on the same batch: every case kept, none duplicated.
    manifest = load_manifest(DataLayout(data_dir(settings) / "production"))
    batch = max(record.batch for record in manifest.committed())
    curate_stage(settings, batch)
    assert _ids(suite_file) == cases

    # Night 2: candidate vs champion on the regression suite, the release's own path.
    name = settings.registered_model("policy")
    from mlflow import MlflowClient

    champion = MlflowClient().get_model_version_by_alias(name, "champion").version
    policy = load_gate_policy().model_copy(update={"views": ["raw"]})
    cand, champ = evaluate_for_gate(
        settings,
        f"models:/{name}/{nightly_candidate.version}",
        f"models:/{name}/{champion}",
        suite_dir=domain.suite_dir(),
        data_root=data_dir(settings) / domain.data_folder(),
        run_dir=tmp_path / "eval",
        suites=["regression"],
        policy=policy,
    )
    assert champ is not None
    raw = cand["views"]["raw"]
    # The release evaluates in stages (more samples only where a CI straddles a margin),
    # so it may judge on part of the cases; paired, on the same samples for both.
    n = raw["values"]["regression"]["n"]
    assert 0 < n <= len(cases) and raw["paired"]["regression"]["n"] == n

    summary = EvalSummary.model_validate(cand)
    verdict = decide(summary, EvalSummary.model_validate(champ), policy)
    (check,) = [c for c in verdict.per_dimension if c.key == "regression" and c.view == "raw"]
    assert check.delta is not None and check.paired_n == n
    assert check.value == raw["values"]["regression"]["value"]
