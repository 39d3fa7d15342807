"""A reviewer answering a paused flow run through the Prefect API, as the UI's form does."""

from __future__ import annotations

import contextvars
import threading
import time
from typing import Any


def answer_when_paused(flow_name: str, run_input: dict[str, Any], stop: threading.Event) -> None:
    """Wait for a paused run of ``flow_name`` and resume it with ``run_input`` (the form).

    Only that flow's pause: other tests leave their own flow runs behind.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateName,
    )
    from prefect.flow_runs import resume_flow_run

    with get_client(sync_client=True) as client:
        while not stop.is_set():
            paused = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Paused"]))
                ),
            )
            if paused:
                resume_flow_run(paused[0].id, run_input=run_input)
                return
            time.sleep(0.5)


def in_thread(target: Any, *args: Any) -> threading.Thread:
    """Start ``target`` in a daemon thread that sees this test's Prefect settings.

    Threads start with an empty context; without the copy the thread's client would talk to
    Prefect's process default instead of the session stack.
    """
    thread = threading.Thread(
        target=contextvars.copy_context().run, args=(target, *args), daemon=True
    )
    thread.start()
    return thread
