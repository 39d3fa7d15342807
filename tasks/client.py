"""Point this process (environment and Prefect's cached settings) at a stack for a while."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from loopwright.client_env import client_env
from loopwright.config import Settings


@contextmanager
def client_context(settings: Settings) -> Iterator[None]:
    """Inside the block this process's clients use ``settings``' stack; restored after.

    Prefect caches its settings when first imported (perhaps before this call), so its API
    URL is also overridden explicitly: flows then talk to this stack's server, never to an
    ephemeral one. Threads started inside must copy the context (``contextvars``) to see it.
    """
    saved = dict(os.environ)
    os.environ.update(client_env(settings))
    os.environ.pop("PREFECT_PROFILES_PATH", None)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    try:
        with temporary_settings(updates={PREFECT_API_URL: settings.prefect_api_url}):
            yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
