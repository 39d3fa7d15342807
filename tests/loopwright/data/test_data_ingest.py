"""Ingest against the session stack's real S3 store (SeaweedFS), in the gateway's layout."""

import hashlib
import json
import uuid
from datetime import timedelta

import pandas as pd
import pytest
from data_sim import T0, simulate

from loopwright.data.batches import read_staged
from loopwright.data.ingest import Watermark, ingest
from loopwright.data.logs import segment_uri, write_log_partition
from loopwright.data.tables import QUARANTINE_SCHEMA, DataLayout, read_table
from loopwright.records import FeedbackEvent
from loopwright.storage import ObjectStore

pytestmark = pytest.mark.services


@pytest.fixture()
def store(stack_settings) -> ObjectStore:
    return ObjectStore.from_settings(stack_settings)


@pytest.fixture()
def root(stack_settings) -> str:
    return f"s3://{stack_settings.object_store.bucket}/test-data/{uuid.uuid4().hex[:10]}"


def _digests(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_ingest_is_idempotent_and_incremental(store, root, tmp_path):
    night = simulate(60, seed=1)
    later = simulate(40, seed=2, start=T0 + timedelta(hours=1))
    write_log_partition(store, root, night.interactions + night.feedback, T0)
    write_log_partition(store, root, later.interactions + later.feedback, T0 + timedelta(hours=1))
    out = tmp_path / "data"

    first = ingest(store, root, out)
    assert (first.batch, first.objects_read) == (1, 4)
    assert first.accepted_interactions == 100
    assert first.accepted_feedback == len(night.feedback) + len(later.feedback)
    assert (first.quarantined, first.duplicates) == (0, 0)
    assert first.reconciles
    staged_i, staged_f = read_staged(DataLayout(out), 1)
    assert sorted(staged_i["id"]) == sorted(i.id for i in night.interactions + later.interactions)
    watermark = json.loads((out / "watermark.json").read_text())
    assert len(watermark["consumed"]) == 4

    before = _digests(out)
    second = ingest(store, root, out)
    assert (second.objects_read, second.lines_read, second.accepted) == (0, 0, 0)
    assert _digests(out) == before  # nothing rewritten

    # Re-reading every partition from scratch changes no row: all lines are duplicates.
    again = ingest(store, root, out, Watermark(log_root=root))
    assert again.objects_read == 4
    assert again.duplicates == again.lines_read == first.lines_read
    assert again.accepted == again.quarantined == 0
    re_i, re_f = read_staged(DataLayout(out), 1)
    pd.testing.assert_frame_equal(re_i, staged_i)
    pd.testing.assert_frame_equal(re_f, staged_f)


def test_reshipped_and_late_segments(store, root, tmp_path):
    night = simulate(30, seed=4)
    write_log_partition(store, root, night.interactions + night.feedback, T0)
    out = tmp_path / "data"
    ingest(store, root, out)

    # The spool re-ships the same segment (same object name, same bytes): not read again.
    write_log_partition(store, root, night.interactions + night.feedback, T0)
    assert ingest(store, root, out).objects_read == 0
    # After a crash the same records land in a new segment: read, and all duplicates.
    write_log_partition(store, root, night.interactions[:10], T0 + timedelta(minutes=5), seq=1)
    crash = ingest(store, root, out)
    assert (crash.objects_read, crash.duplicates, crash.accepted) == (1, 10, 0)
    # A segment that ships late into an hour already ingested is still picked up.
    late = simulate(5, seed=5, start=T0 - timedelta(hours=3))
    write_log_partition(store, root, late.interactions, T0 - timedelta(hours=3))
    result = ingest(store, root, out)
    assert (result.objects_read, result.accepted_interactions) == (1, 5)
    staged_i, _ = read_staged(DataLayout(out), 1)
    assert len(staged_i) == 35 and staged_i["id"].is_unique


def test_bad_lines_are_quarantined_with_object_and_line(store, root, tmp_path):
    t = simulate(4, seed=6)
    good = [i.model_dump_json() for i in t.interactions]
    newer = json.loads(good[2])
    newer["schema_version"] = 99
    no_tenant = json.loads(good[3])
    del no_tenant["tenant"]
    conflicting = json.loads(good[0])
    conflicting["response"] = "something else entirely"
    lines = [
        good[0],  # 1 ok
        "{not json",  # 2
        "[1, 2, 3]",  # 3
        json.dumps(newer),  # 4 unknown schema version
        json.dumps(no_tenant),  # 5 invalid record
        "",  # 6 blank: skipped, not a record
        json.dumps(conflicting),  # 7 same id, other content
        good[0],  # 8 exact duplicate
        good[1],  # 9 ok
    ]
    uri_i = segment_uri(root, "interactions", "20260301T020000-x-000000", T0)
    store.put_bytes(uri_i, ("\n".join(lines) + "\n").encode())
    on_known = FeedbackEvent(
        id="fb-1",
        interaction_id=t.interactions[0].id,
        kind="rating",
        value=1,
        source="user",
        author="u1",
        timestamp=T0,
    )
    orphan = on_known.model_copy(update={"id": "fb-2", "interaction_id": "nope"})
    bad_kind = json.loads(on_known.model_dump_json()) | {"id": "fb-3", "kind": "emoji"}
    uri_f = segment_uri(root, "feedback", "20260301T020000-x-000000", T0)
    store.put_bytes(
        uri_f,
        "\n".join(
            [on_known.model_dump_json(), orphan.model_dump_json(), json.dumps(bad_kind)]
        ).encode(),
    )
    store.put_bytes(f"{root}/logs/interactions/README.txt", b"stray")

    out = tmp_path / "data"
    result = ingest(store, root, out)
    assert result.lines_read == 11 and result.blank_lines == 1
    assert (result.accepted_interactions, result.accepted_feedback) == (2, 1)
    assert result.duplicates == 1 and result.quarantined == 7
    assert result.reconciles
    assert result.ignored_objects == (f"{root}/logs/interactions/README.txt",)

    q = read_table(DataLayout(out).quarantine, QUARANTINE_SCHEMA)
    got = {(row.source_object, row.source_line, row.reason) for row in q.itertuples()}
    assert got == {
        (uri_i, 2, "malformed_json"),
        (uri_i, 3, "not_an_object"),
        (uri_i, 4, "unknown_schema_version"),
        (uri_i, 5, "invalid_record"),
        (uri_i, 7, "conflicting_duplicate"),
        (uri_f, 2, "unknown_interaction"),
        (uri_f, 3, "invalid_record"),
    }
    details = dict(zip(q["reason"] + "@" + q["source_object"], q["detail"], strict=True))
    assert f"{uri_i}:5" in details[f"invalid_record@{uri_i}"]
    assert "tenant" in details[f"invalid_record@{uri_i}"]
    assert "99" in details[f"unknown_schema_version@{uri_i}"]
    assert (q["raw"] == "{not json").any()  # the line itself is kept

    # Re-reading the same objects adds no quarantine row.
    ingest(store, root, out, Watermark(log_root=root))
    assert len(read_table(DataLayout(out).quarantine, QUARANTINE_SCHEMA)) == 7


def test_orphan_feedback_is_released_when_its_interaction_arrives(store, root, tmp_path):
    t = simulate(20, seed=7)
    assert t.feedback
    out = tmp_path / "data"
    write_log_partition(store, root, t.feedback, T0)  # the feedback spool shipped first
    early = ingest(store, root, out)
    assert early.quarantine_reasons == {"unknown_interaction": len(t.feedback)}
    assert early.batch is None and early.reconciles

    write_log_partition(store, root, t.interactions, T0 + timedelta(minutes=1))
    result = ingest(store, root, out)
    assert result.accepted_interactions == 20
    assert result.released == len(t.feedback)
    assert result.batch is not None
    _, staged_f = read_staged(DataLayout(out), result.batch)
    assert sorted(staged_f["id"]) == sorted(e.id for e in t.feedback)
    assert read_table(DataLayout(out).quarantine, QUARANTINE_SCHEMA).empty


def test_watermark_of_another_root_is_refused(store, root, tmp_path):
    with pytest.raises(ValueError, match="separate data folder"):
        ingest(store, root, tmp_path, Watermark(log_root="s3://other-bucket"))
