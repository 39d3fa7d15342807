"""End to end over the session stack's S3 store: honest nights commit, poisoned ones never
reach the curated tables or the training files."""

import uuid
from datetime import timedelta

import pytest
from data_rule_guard import RuleGuard
from data_sim import T0, simulate

from loopwright.data.batches import BatchError, commit_batch, load_manifest
from loopwright.data.contracts import ContractConfig, validate_batch
from loopwright.data.curate import curate, load_pairs, load_sft
from loopwright.data.ingest import ingest
from loopwright.data.logs import write_log_partition
from loopwright.data.screening import screen_batch
from loopwright.data.tables import (
    FEEDBACK_SCHEMA,
    INTERACTION_SCHEMA,
    QUARANTINE_SCHEMA,
    DataLayout,
    read_table,
)
from loopwright.storage import ObjectStore
from examples.helpdesk.kb import changed_fact_ids, fact_index
from examples.helpdesk.plugin import (
    helpdesk_fact_checker,
    helpdesk_is_safe_response,
    helpdesk_screening_config,
)
from examples.helpdesk.safety import CATEGORIES
from examples.helpdesk.simulators import POISON_INJECTIONS, POISON_PII

pytestmark = pytest.mark.services


class Nightly:
    def __init__(self, store, root, folder):
        self.store, self.root, self.folder = store, root, folder
        self.out = folder / "data"
        self.guard = RuleGuard()
        self.checker = helpdesk_fact_checker(2)
        self.night = 0

    def run(self, traffic, contracts=None):
        self.night += 1
        when = T0 + timedelta(days=self.night)
        write_log_partition(self.store, self.root, traffic.interactions + traffic.feedback, when)
        ingested = ingest(self.store, self.root, self.out)
        assert ingested.reconciles and ingested.quarantined == 0
        assert ingested.batch is not None
        docs = self.folder / "docs" / f"night-{self.night}"
        validation = validate_batch(self.out, ingested.batch, docs, contracts)
        screening = None
        if validation.passed:
            screening = screen_batch(
                self.out,
                ingested.batch,
                self.guard,
                self.checker,
                helpdesk_screening_config(),
                is_refusal=helpdesk_is_safe_response,
            )
            if screening.passed:
                commit_batch(self.out, ingested.batch)
        return ingested, validation, screening


def _committed(out):
    layout = DataLayout(out)
    return read_table(layout.interactions, INTERACTION_SCHEMA), read_table(
        layout.feedback, FEEDBACK_SCHEMA
    )


def test_poisoned_batches_never_reach_training_data(stack_settings, tmp_path):
    store = ObjectStore.from_settings(stack_settings)
    root = f"s3://{stack_settings.object_store.bucket}/test-pipeline/{uuid.uuid4().hex[:10]}"
    nightly = Nightly(store, root, tmp_path)
    for seed in (51, 52, 53):
        _, validation, screening = nightly.run(simulate(150, seed=seed))
        assert validation.passed and screening is not None and screening.passed

    # 1. A wholly poisoned night fails validation (its label balance is off) ...
    poisoned = simulate(150, seed=54, poisoned=True)
    ingested, validation, _ = nightly.run(poisoned)
    assert not validation.passed
    assert any(r.startswith("feedback: label_balance") for r in validation.reasons)
    # 2. ... and with that contract relaxed, screening catches the next one.
    poisoned2 = simulate(150, seed=55, poisoned=True)
    ingested2, validation2, screening2 = nightly.run(
        poisoned2, ContractConfig(max_negative_share=1.0)
    )
    assert validation2.passed and screening2 is not None and not screening2.passed
    assert screening2.suspicious_fraction > 0.5
    assert any(r.startswith("anomaly:positive_rate_shift") for r in screening2.reasons)

    manifest = load_manifest(DataLayout(nightly.out))
    quarantine = read_table(DataLayout(nightly.out).quarantine, QUARANTINE_SCHEMA)
    for batch, traffic in ((ingested.batch, poisoned), (ingested2.batch, poisoned2)):
        assert manifest.get(batch).state == "rejected"
        with pytest.raises(BatchError):
            commit_batch(nightly.out, batch)
        rows = quarantine[quarantine["batch"] == batch]
        assert set(rows["record_id"]) == {r.id for r in traffic.interactions + traffic.feedback}
    inter, feed = _committed(nightly.out)
    bad_ids = {
        r.id
        for r in poisoned.interactions
        + poisoned.feedback
        + poisoned2.interactions
        + poisoned2.feedback
    }
    assert not bad_ids & (set(inter["id"]) | set(feed["id"]))

    # 3. A night with a few attackers among honest users passes; their poison is quarantined.
    mixed = simulate(135, seed=56)
    attackers = simulate(15, seed=57, poisoned=True, start=T0 + timedelta(hours=1))
    mixed.extend(attackers)
    _, validation3, screening3 = nightly.run(mixed)
    assert validation3.passed and screening3 is not None and screening3.passed
    assert screening3.counts["suspicious_feedback"] > 0
    inter, feed = _committed(nightly.out)
    leaked = feed[feed["id"].isin({e.id for e in attackers.feedback})]
    responses = dict(zip(inter["id"], inter["response"], strict=True))
    prompts = dict(zip(inter["id"], inter["prompt"], strict=True))
    for row in leaked.itertuples():
        # Only thumbs that teach nothing false get through: a -1, or a +1 on a true statement.
        assert row.kind == "rating"
        if row.rating > 0:
            verdict = nightly.checker(prompts[row.interaction_id], responses[row.interaction_id])
            assert verdict.verdict == "supports"

    result = curate(nightly.out, tmp_path / "curated", is_refusal=helpdesk_is_safe_response)
    assert result.counts["sft"] > 100 and result.counts["pairs"] > 20
    targets = [conv[-1]["content"] for conv in load_sft(result.sft_path)]
    targets += [p.chosen for p in load_pairs(result.pairs_path)]
    rev1, rev2 = fact_index(1), fact_index(2)
    stale = {rev1[f].answer for f in changed_fact_ids()} - {f.answer for f in rev2.values()}
    compliant = {c for cat in CATEGORIES.values() for c in cat.compliant_train}
    for text in targets:
        assert text not in stale and text not in compliant, text
        assert not any(p in text for p in POISON_INJECTIONS + POISON_PII), text
        assert nightly.checker("", text).verdict in ("supports", "unknown"), text
