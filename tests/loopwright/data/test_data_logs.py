from datetime import UTC, datetime, timedelta, timezone

import pytest
from data_sim import T0, simulate

from loopwright.data.ingest import ingest
from loopwright.data.logs import parse_log_uri, segment_uri, write_log_partition
from loopwright.storage import ObjectStore


def test_write_log_partition_uses_the_gateway_layout(tmp_path):
    store = ObjectStore()
    root = (tmp_path / "store").as_uri()
    t = simulate(5, seed=0)
    when = datetime(2026, 3, 1, 23, 59, 58, tzinfo=timezone(timedelta(hours=2)))  # 21:59 UTC
    uris = write_log_partition(store, root, t.interactions + t.feedback, when, seq=3)
    assert uris == [
        f"{root}/logs/interactions/date=2026-03-01/hour=21/20260301T215958-sim-000003.jsonl",
        f"{root}/logs/feedback/date=2026-03-01/hour=21/20260301T215958-sim-000003.jsonl",
    ]
    lines = store.get_bytes(uris[0]).decode().splitlines()
    assert [line for line in lines] == [i.model_dump_json() for i in t.interactions]
    parsed = parse_log_uri(uris[1])
    assert parsed is not None
    assert (parsed.kind, parsed.day.isoformat(), parsed.hour) == ("feedback", "2026-03-01", 21)
    assert parsed.segment == "20260301T215958-sim-000003"


def test_layout_rejects_bad_input():
    with pytest.raises(ValueError, match="timezone-aware"):
        segment_uri("s3://b", "interactions", "seg", datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="unknown log kind"):
        segment_uri("s3://b", "metrics", "seg", T0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Interaction or FeedbackEvent"):
        write_log_partition(ObjectStore(), "file:///tmp/x", ["not a record"], T0)  # type: ignore[list-item]
    assert parse_log_uri("s3://b/logs/interactions/date=2026-13-01/hour=01/s.jsonl") is None
    assert parse_log_uri("s3://b/logs/interactions/date=2026-01-01/hour=24/s.jsonl") is None
    assert parse_log_uri("s3://b/logs/other/date=2026-01-01/hour=01/s.jsonl") is None


def test_ingest_reads_a_local_folder_store(tmp_path):
    # file:// stores list percent-encoded names ("date%3D..."); ingest must still read them.
    store = ObjectStore()
    root = (tmp_path / "store").as_uri()
    t = simulate(20, seed=3)
    write_log_partition(store, root, t.interactions + t.feedback, T0.astimezone(UTC))
    result = ingest(store, root, tmp_path / "data")
    assert result.objects_read == 2
    assert result.accepted_interactions == 20
    assert result.accepted_feedback == len(t.feedback)
    assert result.ignored_objects == ()
