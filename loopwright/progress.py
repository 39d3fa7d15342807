"""Progress of long steps (training, evaluation, traffic), for whoever shows it.

Library code calls :func:`report` as work advances; nothing is shown unless a front end
(the demo's console) has installed a :class:`Reporter` with :func:`reporting_to`. The
default reporter ignores everything, so library code never prints or configures output.
Reports may come from any thread (the demo drives traffic in a background thread).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Reporter:
    """Receives progress; this base class ignores it (subclass to show it)."""

    def stage_started(self, stage: str) -> None:
        """A stage (one step of a longer job, e.g. ``nightly 1``) has started."""

    def stage_finished(self, stage: str, result: str, status: str, seconds: float | None) -> None:
        """A stage ended.

        Args:
            stage: its name.
            result: what it did, in a few words.
            status: ``ok``, ``held`` (a safety check stopped the loop, as designed) or
                ``failed``.
            seconds: how long it ran (None: not timed, e.g. a second result of a stage).
        """

    def progress(self, label: str, done: int, total: int | None) -> None:
        """``done`` of ``total`` units of ``label`` (None: the total is not known)."""


_lock = threading.Lock()
_current = Reporter()


def reporter() -> Reporter:
    """The reporter in effect (the silent base one unless a front end installed one)."""
    return _current


def report(label: str, done: int, total: int | None) -> None:
    """Tell the reporter in effect that ``done`` of ``total`` units of ``label`` are done."""
    _current.progress(label, done, total)


@contextmanager
def reporting_to(new: Reporter) -> Iterator[Reporter]:
    """Send every report to ``new`` while the block runs (process-wide, all threads)."""
    global _current
    with _lock:
        previous, _current = _current, new
    try:
        yield new
    finally:
        with _lock:
            _current = previous
