"""How many torch threads a CPU training run should use, given what else the machine runs.

torch's intra-op pool (OpenMP) makes every thread wait for the slowest at each parallel
region. On a 2-core machine where another process keeps one core busy, a 2-thread policy
run measured ~4x slower per step than a 1-thread one (guard fine-tune: 284 s busy vs
60.5 s idle for the same 288 steps; see ``docs/decisions/0002-demo-time.md``), while on
idle cores 2 threads are ~1.8x faster than 1. So the count is decided per run from the
cores that are free when it starts, not fixed in a config.
"""

from __future__ import annotations

import logging
import os
from typing import Annotated, Literal

from pydantic import Field

logger = logging.getLogger(__name__)

Threads = Annotated[int, Field(ge=1)] | Literal["auto"]
"""A thread count, or ``"auto"``: the cores free when training starts (:func:`free_cores`)."""

BUSY_SAMPLE_S = 0.5
"""Seconds over which other processes' CPU use is sampled."""


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, not the machine's total)."""
    return len(os.sched_getaffinity(0))


def free_cores(sample_s: float = BUSY_SAMPLE_S) -> int:
    """Cores not kept busy by other processes, measured over ``sample_s`` seconds.

    Busy cores are the machine's total CPU use (psutil, all processes) over the sample,
    rounded to whole cores; this process is idle while it samples.

    Returns:
        At least 1, at most :func:`usable_cores`.
    """
    import psutil

    usable = usable_cores()
    busy = sum(psutil.cpu_percent(interval=sample_s, percpu=True)) / 100.0
    return max(1, min(usable, round(usable - busy)))


def resolve_threads(threads: Threads | None) -> int | None:
    """A concrete thread count: ``"auto"`` measured now, an int as given, None as None."""
    if threads != "auto":
        return threads
    count = free_cores()
    logger.info("torch threads: %d (%d usable cores, measured free)", count, usable_cores())
    return count
