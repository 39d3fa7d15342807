"""Thread counts of CPU training runs: measured free cores, not a fixed number."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from models.cpu import free_cores, resolve_threads, usable_cores
from models.policy import PolicyConfig


def test_a_busy_core_is_not_counted_as_free():
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        free = free_cores(sample_s=1.0)
    finally:
        spinner.kill()
        spinner.wait()
    # Another process spinning takes one core away (however busy the rest of the machine).
    assert 1 <= free <= max(1, usable_cores() - 1)


def test_auto_resolves_to_a_count_and_explicit_counts_pass_through():
    assert 1 <= resolve_threads("auto") <= usable_cores()  # type: ignore[operator]
    assert resolve_threads(3) == 3
    assert resolve_threads(None) is None


def test_policy_threads_take_auto_or_a_positive_count():
    assert PolicyConfig().threads == "auto"
    assert PolicyConfig(threads=2).threads == 2
    with pytest.raises(ValidationError, match="auto"):
        PolicyConfig(threads="many")
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        PolicyConfig(threads=0)
