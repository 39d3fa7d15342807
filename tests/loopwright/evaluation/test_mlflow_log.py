"""Logging an evaluation to a real MLflow tracking server started by the fixture."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import FakeOpenAI, free_port
from test_api import fixture_suites, script

from loopwright.evaluation.api import evaluate
from loopwright.evaluation.engine import EngineConfig
from loopwright.evaluation.mlflow_log import log_to_mlflow, metric_key

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    env = {
        **os.environ,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    proc = subprocess.Popen(
        [
            str(mlflow_bin),
            "server",
            "--backend-store-uri",
            f"sqlite:///{home}/m.db",
            "--artifacts-destination",
            str(home / "art"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=home,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(home / "log").open("w"),
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {(home / 'log').read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    else:
        raise RuntimeError("mlflow server did not become healthy")
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_evaluation_is_logged_to_mlflow(
    mlflow_server: str, fresh_server: FakeOpenAI, tmp_path: Path
) -> None:
    from mlflow.tracking import MlflowClient

    script(fresh_server)
    suites, data = fixture_suites(tmp_path, fresh_server.base_url)
    result = evaluate(
        f"{fresh_server.base_url}#cand",
        "all",
        f"{fresh_server.base_url}#base",
        suite_dir=suites,
        data_root=data,
        run_dir=tmp_path / "run",
        engine=EngineConfig(executor="local"),
        resamples=200,
        mlflow_tracking_uri=mlflow_server,
        mlflow_experiment="eval-test",
    )
    assert result.mlflow_run_id is not None
    client = MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(result.mlflow_run_id)
    metrics = run.data.metrics
    assert metrics["correctness.exact_match"] == 0.5
    assert metrics["correctness.exact_match.n"] == 4
    assert metrics[metric_key("correctness", "exact_match", "split.heldout")] == 0.5
    assert metrics["delta.correctness.exact_match"] == -0.25
    assert metrics["win_rate.correctness.exact_match"] == 0.375
    assert metrics["counts.generation_errors"] == 1
    assert run.data.params["model_uri"].endswith("#cand")
    assert run.info.status == "FINISHED"
    names = {a.path for a in client.list_artifacts(result.mlflow_run_id, "eval")}
    assert {
        "eval/summary.json",
        "eval/report.json",
        "eval/report.html",
        "eval/samples.jsonl",
        "eval/samples_table.json",
        "eval/baseline_report.json",
    } <= names
    local = client.download_artifacts(
        result.mlflow_run_id, "eval/samples_table.json", str(tmp_path / "dl")
    )
    table = json.loads(Path(local).read_text())
    assert len(table["data"]) == 11 and "score.exact_match" in table["columns"]
    summary = json.loads(
        Path(
            client.download_artifacts(
                result.mlflow_run_id, "eval/summary.json", str(tmp_path / "dl2")
            )
        ).read_text()
    )
    assert summary["dimensions"]["correctness"]["exact_match"]["slices"]["all"]["value"] == 0.5

    # logging into an existing run (e.g. the nightly flow's) leaves it open
    existing = client.create_run(run.info.experiment_id).info.run_id
    assert log_to_mlflow(result, tracking_uri=mlflow_server, run_id=existing) == existing
    assert client.get_run(existing).info.status == "RUNNING"
    assert client.get_run(existing).data.metrics["correctness.exact_match"] == 0.5
