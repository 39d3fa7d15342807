"""Test tiers and the real local stack the service tests run against.

The session stack runs on its own ports and run directory (``.loopwright-test/``), so a
developer's `make demo` stack on the default ports is never touched, and it is stopped
when the session ends. Nothing here reads secrets from the machine: the object store's
credentials are generated for the test run.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from stackenv import SESSION_ROOT, SESSION_STACK_ENV, stack_env


@pytest.fixture(scope="session")
def stack_settings() -> Iterator[object]:
    """A running local stack (object store, MLflow, Prefect, Ray) for the whole session."""
    from loopwright.config import load_settings
    from loopwright.stack import Stack
    from tasks.client import client_context

    shutil.rmtree(SESSION_ROOT, ignore_errors=True)
    settings = load_settings("local", env=stack_env(SESSION_STACK_ENV))
    stack = Stack(settings)
    stack.up()
    try:
        with client_context(settings):
            yield settings
    finally:
        stack.down()


@pytest.fixture(scope="session")
def mlflow_server(stack_settings) -> str:
    """Tracking URI of the session stack's real MLflow server (SQLite store, S3 artifacts)."""
    return str(stack_settings.mlflow_tracking_uri)
