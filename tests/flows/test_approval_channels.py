"""Approval inside a real flow run: an MLflow tag answers the paused run; silence times out."""

import threading
import time

import pytest
from prefect import flow

from tests.flows.reviewer import answer_when_paused, in_thread

pytestmark = pytest.mark.services


def _register(settings, tmp_path, name: str) -> str:
    import mlflow

    from loopwright.registry import log_and_register

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    mlflow.set_experiment("approval-test")
    with mlflow.start_run():
        return log_and_register(folder, name, "policy").version


@flow(name="approval-probe")
def _probe(settings, version: str, timeout_s: float):
    from datetime import timedelta

    from tasks.release import wait_for_approval

    return wait_for_approval(
        settings,
        version,
        "evidence",
        timeout=timedelta(seconds=timeout_s),
        auto_approve=False,
        poll_s=1.0,
    )


def test_mlflow_tag_approves_a_paused_run(stack_settings, tmp_path):
    from mlflow import MlflowClient

    settings = stack_settings.model_copy(update={"app": "tagapp"})
    version = _register(settings, tmp_path, "tagapp-policy")
    client = MlflowClient()

    def approve_in_the_mlflow_ui():
        time.sleep(3)
        client.set_model_version_tag("tagapp-policy", version, "approval.by", "carol")
        client.set_model_version_tag("tagapp-policy", version, "approval.reason", "ok")
        client.set_model_version_tag("tagapp-policy", version, "approval", "approved")

    threading.Thread(target=approve_in_the_mlflow_ui, daemon=True).start()
    decision = _probe(settings, version, 120)
    assert decision.approved
    assert "carol" in decision.by


def test_silence_times_out_and_never_approves(stack_settings, tmp_path):
    from mlflow import MlflowClient

    settings = stack_settings.model_copy(update={"app": "quietapp"})
    version = _register(settings, tmp_path, "quietapp-policy")
    decision = _probe(settings, version, 3)
    assert not decision.approved
    assert decision.channel == "timeout"
    tags = MlflowClient().get_model_version("quietapp-policy", version).tags
    assert tags["approval"] == "timeout"


def test_reject_through_the_api_resumes_the_run_and_never_approves(stack_settings, tmp_path):
    from mlflow import MlflowClient

    settings = stack_settings.model_copy(update={"app": "rejectapp"})
    version = _register(settings, tmp_path, "rejectapp-policy")
    stop = threading.Event()
    answer = {"approve": False, "reviewer": "dave", "reason": "too risky"}
    in_thread(answer_when_paused, "approval-probe", answer, stop)
    try:
        decision = _probe(settings, version, 120)
    finally:
        stop.set()
    assert not decision.approved
    assert "dave" in decision.by and decision.reason == "too risky"
    tags = MlflowClient().get_model_version("rejectapp-policy", version).tags
    assert tags["approval"] == "rejected"
