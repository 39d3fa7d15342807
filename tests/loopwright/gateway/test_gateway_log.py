"""The interaction log: write-ahead spool, shipping, store outages, crashes and restarts."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest

from loopwright.gateway.app import create_app
from loopwright.gateway.service import Gateway
from loopwright.gateway.settings import GatewaySettings
from loopwright.gateway.spool import Spool, object_uri
from loopwright.storage import ObjectStore, S3Credentials
from tests.loopwright.gateway.gateway_helpers import LiveServer, spool_records


def _list(store: ObjectStore, prefix: str) -> list[str]:
    # file:// listings may percent-escape "=" in partition names; compare unescaped.
    return sorted(unquote(u) for u in store.list(prefix))


def _lines(store: ObjectStore, prefix: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for uri in _list(store, prefix):
        out.extend(json.loads(line) for line in store.get_bytes(uri).decode().split("\n") if line)
    return out


def _file_store(tmp_path: Path) -> tuple[ObjectStore, str]:
    root = tmp_path / "store"
    root.mkdir()
    return ObjectStore(), f"file://{root}"


def test_segments_ship_to_time_partitioned_deterministic_objects(tmp_path):
    store, base = _file_store(tmp_path)
    clock = [1_790_000_000.0]  # 2026-09-21 14:13:20 UTC
    spool = Spool(
        tmp_path / "spool",
        kind="interactions",
        store=store,
        store_uri=base,
        max_records=3,
        max_age_s=10,
        clock=lambda: clock[0],
    )
    for i in range(7):
        spool.append(json.dumps({"i": i}))
    assert spool.ship_once() == 2  # two full segments; the third is still open
    clock[0] += 11
    assert spool.ship_once() == 1  # now too old: sealed and shipped
    uris = _list(store, base + "/logs/interactions/")
    assert len(uris) == 3
    assert all("/logs/interactions/date=2026-09-21/hour=14/" in u for u in uris)
    assert [r["i"] for r in _lines(store, base + "/logs/")] == list(range(7))
    manifest = [
        json.loads(x) for x in (tmp_path / "spool" / "shipped.jsonl").read_text().splitlines()
    ]
    assert [m["records"] for m in manifest] == [3, 3, 1]
    assert [m["uri"] for m in manifest] == uris
    assert object_uri(base, "interactions", manifest[0]["segment"]) == uris[0]


def test_crash_between_put_and_manifest_reships_to_the_same_object(tmp_path):
    store, base = _file_store(tmp_path)
    spool = Spool(tmp_path / "spool", kind="feedback", store=store, store_uri=base, max_records=2)
    for i in range(2):
        spool.append(json.dumps({"i": i}))
    sealed = spool.pending()[0]
    # The process put the object, then died before recording it in the manifest.
    store.put_bytes(object_uri(base, "feedback", sealed.stem), sealed.read_bytes())
    del spool
    again = Spool(tmp_path / "spool", kind="feedback", store=store, store_uri=base)
    assert again.ship_once() == 1
    assert len(_list(store, base + "/logs/feedback/")) == 1
    assert [r["i"] for r in _lines(store, base + "/logs/")] == [0, 1]


def test_torn_last_record_of_a_crashed_segment_is_cut_and_the_rest_kept(tmp_path):
    spool = Spool(tmp_path / "spool", kind="interactions")
    spool.append('{"i": 0}')
    spool.append('{"i": 1}')
    open_seg = next((tmp_path / "spool" / "open").glob("*.jsonl"))
    with open_seg.open("ab") as handle:
        handle.write(b'{"i": 2, "trunc')  # the crash hit mid-write: never acknowledged
    recovered = Spool(tmp_path / "spool", kind="interactions")
    sealed = recovered.pending()
    assert len(sealed) == 1 and sealed[0].read_text() == '{"i": 0}\n{"i": 1}\n'
    recovered.append('{"i": 3}')
    recovered.seal()
    assert len(recovered.pending()) == 2
    ids = {p.stem for p in recovered.pending()}
    assert len(ids) == 2  # a new segment id, never a reused one


def test_store_stopped_during_load_then_restarted_logs_every_request_once(weed, tmp_path):
    store = ObjectStore(
        weed.endpoint,
        S3Credentials(weed.access_key, weed.secret_key),
        connect_timeout=1,
        max_attempts=1,
    )
    store.ensure_bucket("s3://lw-logs")
    settings = GatewaySettings.model_validate(
        {
            "rate_limit": {"requests_per_s": 10_000, "burst": 10_000},
            "log": {
                "store_uri": "s3://lw-logs/prod",
                "segment_max_records": 25,
                "segment_max_age_s": 0.5,
                "ship_interval_s": 0.2,
            },
        }
    )
    run_dir = tmp_path / "run"
    gw = Gateway(settings, run_dir, store=store)
    _, key = gw.keys.create("acme")
    sent: list[str] = []
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    stop = threading.Event()

    def worker(i: int) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            n = 0
            while not stop.is_set():
                n += 1
                auth = {} if n % 7 == 0 else {"Authorization": f"Bearer {key}"}  # some 401s
                content = "bad\x00" if n % 11 == 0 else f"q {i}-{n}"  # some 422s
                r = http.post(
                    "/v1/chat/completions",
                    headers=auth,
                    json={
                        "model": "loopwright-policy",
                        "messages": [{"role": "user", "content": content}],
                    },
                )
                with lock:
                    sent.append(r.headers["x-loopwright-interaction-id"])
                    statuses[r.status_code] += 1
                time.sleep(0.005)

    with LiveServer(create_app(gw)) as server:
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        weed.stop()  # the object store goes away under load
        down_at = len(sent)
        time.sleep(2.5)
        served_while_down = len(sent) - down_at
        weed.start()
        time.sleep(1.5)
        stop.set()
        for t in threads:
            t.join()
        failures_seen = gw.interaction_log.ship_failures
    # The server has stopped: the gateway sealed and shipped what was left.
    assert served_while_down > 20, "the gateway must keep serving while the store is down"
    assert failures_seen > 0, "the outage must have been felt by the shipper"
    assert statuses[200] and statuses[401] and statuses[422]
    shipped = _lines(store, "s3://lw-logs/prod/logs/interactions/")
    ids = Counter(r["id"] for r in shipped)
    assert len(shipped) == len(sent)
    assert ids == Counter(sent)  # every request exactly once
    assert Counter(r["status_code"] for r in shipped) == statuses
    assert gw.interaction_log.pending() == []


def test_restart_after_a_crash_ships_what_the_dead_process_left(weed, tmp_path):
    store = ObjectStore(
        weed.endpoint,
        S3Credentials(weed.access_key, weed.secret_key),
        connect_timeout=1,
        max_attempts=1,
    )
    store.ensure_bucket("s3://lw-logs")
    settings = GatewaySettings.model_validate(
        {
            "log": {
                "store_uri": "s3://lw-logs/crash",
                "segment_max_records": 1000,
                "segment_max_age_s": 3600,
                "ship_interval_s": 3600,
            }
        }
    )
    from fastapi.testclient import TestClient

    first = Gateway(settings, tmp_path / "run", store=store)
    _, key = first.keys.create("acme")
    client = TestClient(create_app(first, manage_lifecycle=False))
    ids = [
        client.post(
            "/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "loopwright-policy", "messages": [{"role": "user", "content": f"q{i}"}]},
        ).json()["id"]
        for i in range(5)
    ]
    # The process dies here: no close, no seal, no ship. A new one starts on the same dir.
    second = Gateway(settings, tmp_path / "run", store=store)
    assert second.interaction_log.ship_once() == 1
    second.interaction_log.ship_once()
    shipped = _lines(store, "s3://lw-logs/crash/logs/interactions/")
    assert [r["id"] for r in shipped] == ids
    second.stop()
    assert len(_lines(store, "s3://lw-logs/crash/logs/interactions/")) == 5


def test_spool_lines_survive_any_line_splitter(tmp_path):
    spool = Spool(tmp_path / "spool", kind="interactions")
    record = {"text": "a\u2028b\u2029c\x85d"}
    spool.append(json.dumps(record, ensure_ascii=False))
    spool.seal()
    raw = spool.pending()[0].read_text()
    assert raw.splitlines() == [raw.rstrip("\n")]
    assert json.loads(raw) == record


def test_a_request_cancelled_while_its_record_waits_for_the_disk_is_still_logged(
    tmp_path, monkeypatch
):
    # A client that hangs up right after the last SSE event cancels the request's task
    # while its record may still be queued behind another write; the record must land.
    gw = Gateway(GatewaySettings(), tmp_path / "run")
    gw.start()
    first_write_started, release_disk = threading.Event(), threading.Event()
    real_append = Spool.append

    def slow_first_append(self: Spool, line: str) -> None:
        if not first_write_started.is_set():
            first_write_started.set()
            release_disk.wait(timeout=30)
        real_append(self, line)

    monkeypatch.setattr(Spool, "append", slow_first_append)

    async def two_requests_the_second_cancelled() -> list[str]:
        first, second = gw.new_context("chat"), gw.new_context("chat")
        first.status_code = second.status_code = 200
        writing = asyncio.create_task(gw.finish(first))
        while not first_write_started.is_set():
            await asyncio.sleep(0.01)
        queued = asyncio.create_task(gw.finish(second))
        await asyncio.sleep(0.05)  # the second record is now queued behind the first
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        release_disk.set()
        await writing
        return [first.interaction_id, second.interaction_id]

    ids = asyncio.run(two_requests_the_second_cancelled())
    gw.stop()
    assert [r["id"] for r in spool_records(tmp_path / "run")] == ids
