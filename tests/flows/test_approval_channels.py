"""Approval inside a real flow run: an MLflow tag answers the paused run; silence times out."""

import contextvars
import threading
import time

import pytest
from prefect import flow

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
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateName,
    )
    from prefect.flow_runs import resume_flow_run

    settings = stack_settings.model_copy(update={"app": "rejectapp"})
    version = _register(settings, tmp_path, "rejectapp-policy")

    def reject_in_the_prefect_ui():
        with get_client(sync_client=True) as client:
            for _ in range(240):
                paused = client.read_flow_runs(
                    flow_filter=FlowFilter(name=FlowFilterName(any_=["approval-probe"])),
                    flow_run_filter=FlowRunFilter(
                        state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Paused"]))
                    ),
                )
                if paused:
                    resume_flow_run(
                        paused[0].id,
                        run_input={"approve": False, "reviewer": "dave", "reason": "too risky"},
                    )
                    return
                time.sleep(0.5)

    # The reviewer's client has this session's Prefect settings (threads start empty).
    threading.Thread(
        target=contextvars.copy_context().run, args=(reject_in_the_prefect_ui,), daemon=True
    ).start()
    decision = _probe(settings, version, 120)
    assert not decision.approved
    assert "dave" in decision.by and decision.reason == "too risky"
    tags = MlflowClient().get_model_version("rejectapp-policy", version).tags
    assert tags["approval"] == "rejected"
