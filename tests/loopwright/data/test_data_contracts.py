import json

import numpy as np
import pandas as pd
import pytest
from data_sim import frames, simulate, stage

from loopwright.data.batches import (
    BatchError,
    commit_batch,
    load_manifest,
    read_staged,
    write_staged,
)
from loopwright.data.contracts import (
    ContractConfig,
    check_contracts,
    drift_report,
    population_stability_index,
    validate_batch,
)
from loopwright.data.tables import QUARANTINE_SCHEMA, DataLayout, read_table


@pytest.fixture(scope="module")
def clean():
    t = simulate(200, seed=21)
    inter, feed = frames(t)
    assert set(feed["kind"]) == {"rating", "correction", "preference", "reviewer_label"}
    return inter, feed


def _first(frame, kind):
    return frame.index[frame["kind"] == kind][0]


def test_clean_batch_passes_every_contract(clean):
    inter, feed = clean
    report = check_contracts(inter, feed, ContractConfig(), history_sizes=[1000])
    assert report.interaction_reasons == {} and report.feedback_reasons == {}
    assert report.batch_reasons == []
    assert "drift skipped: no previous snapshot" in report.notes
    assert any(n.startswith("volume skipped: 1 committed batches") for n in report.notes)
    assert all(e["success"] for e in report.expectations)


def test_each_row_contract_quarantines_exactly_its_rows(clean):
    inter, feed = clean[0].copy(), clean[1].copy()
    inter.loc[0, "route"] = "banana"
    inter.loc[1, "latency_ms"] = -5.0
    inter.loc[2, "latency_ms"] = 1e9
    inter.loc[3, "completion_tokens"] = 10**6
    inter.loc[4, "prompt"] = ""
    inter.loc[5, "tenant"] = None
    inter.loc[6, "input_action"] = "nuke"
    inter.loc[7, "response"] = None
    inter.loc[8, "id"] = inter.loc[9, "id"]
    inter.loc[10, "finish_reason"] = "exploded"
    rating, rating2 = feed.index[feed["kind"] == "rating"][:2]
    corr, corr2 = feed.index[feed["kind"] == "correction"][:2]
    feed.loc[rating, "rating"] = 0.0
    feed.loc[rating2, "rating"] = np.nan
    feed.loc[corr, "text"] = None
    feed.loc[corr2, "text"] = "x" * 5000
    feed.loc[_first(feed, "preference"), "rejected"] = None
    feed.loc[_first(feed, "reviewer_label"), "label"] = "meh"
    other = feed.index[(feed["kind"] == "rating")][5]
    feed.loc[other, "source"] = "bot"

    report = check_contracts(inter, feed, ContractConfig())
    in_set, between, not_null = (
        "expect_column_values_to_be_in_set",
        "expect_column_values_to_be_between",
        "expect_column_values_to_not_be_null",
    )
    assert report.interaction_reasons == {
        0: [f"{in_set}:route"],
        1: [f"{between}:latency_ms"],
        2: [f"{between}:latency_ms"],
        3: [f"{between}:completion_tokens"],
        4: ["expect_column_value_lengths_to_be_between:prompt"],
        5: [f"{not_null}:tenant"],
        6: [f"{in_set}:input_action"],
        7: [f"{not_null}:response"],
        8: ["expect_column_values_to_be_unique:id"],
        9: ["expect_column_values_to_be_unique:id"],
        10: [f"{in_set}:finish_reason"],
    }
    assert report.feedback_reasons == {
        rating: [f"{in_set}:rating"],
        rating2: [f"{not_null}:rating"],
        corr: [f"{not_null}:text"],
        corr2: ["expect_column_value_lengths_to_be_between:text"],
        _first(feed, "preference"): [f"{not_null}:rejected"],
        _first(feed, "reviewer_label"): [f"{in_set}:label"],
        other: [f"{in_set}:source"],
    }
    assert report.batch_reasons == []


def test_table_level_contracts_fail_the_batch(clean):
    inter, feed = clean
    config = ContractConfig()
    missing = check_contracts(inter.drop(columns=["latency_ms"]), feed, config)
    assert any("expect_table_columns_to_match_set" in r for r in missing.batch_reasons)

    flipped = feed.copy()
    flipped.loc[flipped["kind"] == "rating", "rating"] = -1.0
    bad = check_contracts(inter, flipped, config, history_sizes=[1000, 1200, 900])
    assert bad.batch_reasons == [
        "interactions: volume: 200 rows outside [250, 4000]",
        "feedback: label_balance: negative share 1.000 outside [0.000, 0.600]",
    ]
    assert bad.interaction_reasons == {} and bad.feedback_reasons == {}
    ok = check_contracts(inter, feed, config, history_sizes=[180, 220, 200])
    assert ok.batch_reasons == [] and not any("volume" in n for n in ok.notes)


def test_drift_against_the_previous_snapshot(clean):
    inter, _ = clean
    feed = clean[1]
    reference, _ = frames(simulate(200, seed=22))
    config = ContractConfig()
    psi, reasons, _ = drift_report(reference, inter, config)
    assert reasons == []
    assert set(psi) == {"prompt_chars", "response_chars", "input_action", "output_action"}
    assert max(psi.values()) < 0.25
    assert drift_report(reference, inter.head(10), config)[2][0].startswith(
        "drift skipped: needs 50 rows"
    )

    shifted = inter.copy()
    shifted["prompt"] = shifted["prompt"] + " " + "please answer in great detail " * 8
    shifted["input_action"] = "flag"
    drifted = check_contracts(shifted, feed, config, reference=reference)
    assert [r.split(" ")[0] for r in drifted.batch_reasons] == [
        "drift:prompt_chars",
        "drift:input_action",
    ]
    assert drifted.drift["prompt_chars"] > 0.25


def test_output_drift_is_only_judged_within_the_same_model_versions(clean):
    inter, _ = clean
    reference, _ = frames(simulate(200, seed=22))
    config = ContractConfig()
    # A new champion answers differently (longer, more flags): not drift in the traffic.
    promoted = inter.copy()
    promoted["model_version"] = promoted["model_version"].where(
        promoted["model_version"].isna(), "2"
    )
    promoted["response"] = promoted["response"] + " " + "and some more detail" * 10
    promoted["output_action"] = "flag"
    psi, reasons, notes = drift_report(reference, promoted, config)
    assert reasons == []
    assert set(psi) == {"prompt_chars", "input_action"}
    assert any(n.startswith("drift:output_action skipped") for n in notes)
    # The same change under the same version is drift.
    same = promoted.assign(model_version=inter["model_version"])
    _, reasons, _ = drift_report(reference, same, config)
    assert {r.split(" ")[0] for r in reasons} == {"drift:response_chars", "drift:output_action"}


def test_population_stability_index():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, 5000)
    assert population_stability_index(a, rng.normal(0, 1, 5000)) < 0.02
    assert population_stability_index(a, rng.normal(1.5, 1, 5000)) > 0.25
    cats = ["allow"] * 90 + ["block"] * 10
    assert population_stability_index(cats, cats, categorical=True) == pytest.approx(0.0)
    assert (
        population_stability_index(cats, ["block"] * 60 + ["allow"] * 40, categorical=True) > 0.25
    )
    with pytest.raises(ValueError, match="both sides"):
        population_stability_index([], [1.0])


def test_config_rejects_inconsistent_values():
    with pytest.raises(ValueError, match="volume_min_ratio"):
        ContractConfig(volume_min_ratio=5, volume_max_ratio=2)
    with pytest.raises(ValueError, match="unknown drift_columns"):
        ContractConfig(drift_columns=("nope",))
    with pytest.raises(ValueError, match="less than or equal to 1"):
        ContractConfig(max_bad_fraction=1.5)


def test_validate_batch_quarantines_bad_rows_and_builds_docs(tmp_path):
    t = simulate(120, seed=23)
    batch = stage(tmp_path, t).batch
    layout = DataLayout(tmp_path / "data")
    inter, feed = read_staged(layout, batch)
    bad_id = inter.loc[3, "id"]
    inter.loc[3, "route"] = "banana"
    inter.loc[4, "latency_ms"] = -1.0
    write_staged(layout, batch, inter, feed)
    followers = int((feed["interaction_id"] == bad_id).sum())

    docs = tmp_path / "docs" / "batch-1"
    result = validate_batch(layout.root, batch, docs)
    assert result.passed and result.reasons == []
    assert result.counts["interactions_quarantined"] == 2
    assert result.counts["feedback_quarantined"] >= followers
    assert result.counts["accepted"] + result.counts["quarantined"] == result.counts["ingested"]
    assert result.counts["ingested"] == len(inter) + len(feed)
    assert result.docs_path == docs and (docs / "index.html").is_file()
    assert list(docs.glob("validations/interactions/**/*.html"))
    saved = json.loads((docs / "validation.json").read_text())
    assert saved["passed"] is True and saved["expectations"]

    q = read_table(layout.quarantine, QUARANTINE_SCHEMA)
    reasons = dict(zip(q["record_id"], q["reason"], strict=True))
    assert reasons[bad_id] == "expect_column_values_to_be_in_set:route"
    assert reasons[inter.loc[4, "id"]] == "expect_column_values_to_be_between:latency_ms"
    assert (q["stage"] == "validate").all()
    kept_i, kept_f = read_staged(layout, batch)
    assert bad_id not in set(kept_i["id"]) and bad_id not in set(kept_f["interaction_id"])
    assert len(kept_i) + len(kept_f) == result.counts["accepted"]
    assert load_manifest(layout).get(batch).state == "validated"
    assert validate_batch(layout.root, batch, docs) == result  # idempotent


def test_batch_over_the_bad_fraction_fails_and_can_never_be_committed(tmp_path):
    t = simulate(100, seed=24)
    batch = stage(tmp_path, t).batch
    layout = DataLayout(tmp_path / "data")
    inter, feed = read_staged(layout, batch)
    inter.loc[inter.index[:20], "latency_ms"] = -1.0
    write_staged(layout, batch, inter, feed)
    ingested = len(inter) + len(feed)

    result = validate_batch(
        layout.root, batch, tmp_path / "docs", ContractConfig(max_bad_fraction=0.05)
    )
    assert not result.passed
    assert result.bad_fraction > 0.05
    assert any(r.startswith("bad_fraction") for r in result.reasons)
    assert result.counts["accepted"] == 0 and result.counts["quarantined"] == ingested
    q = read_table(layout.quarantine, QUARANTINE_SCHEMA)
    assert len(q) == ingested
    assert (q["reason"] == "batch_rejected:validate").sum() == ingested - result.counts[
        "row_quarantined"
    ]
    assert load_manifest(layout).get(batch).state == "rejected"
    assert not layout.staging(batch).exists()
    with pytest.raises(BatchError, match="rejected"):
        commit_batch(layout.root, batch)
    assert not layout.interactions.exists()
    assert pd.read_parquet(layout.quarantine)["record_id"].is_unique
