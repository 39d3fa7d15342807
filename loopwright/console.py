"""The demo's console: one line per stage, one live progress bar, everything else to a log.

:func:`capture_output` points the process's stdout and stderr (file descriptors 1 and 2,
so also child processes, C extensions and handlers that hold ``sys.stderr``) at a log file
and hands back a stream to the real terminal. :class:`StageConsole` writes only to that
stream: a line per finished stage and, while a stage runs, a single transient bar fed by
:mod:`loopwright.progress`. Nothing here configures logging; the CLI does.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING

from loopwright.progress import Reporter

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

    from loopwright.demo import DemoOutcome, StepRecord

MARKS = {"ok": ("✓", "green"), "held": ("■", "yellow"), "failed": ("✗", "red")}
STEP_WIDTH = 30


@contextmanager
def capture_output(log_path: Path) -> Iterator[IO[str]]:
    """Send everything written to stdout/stderr to ``log_path``; yield the real terminal.

    Works at the file-descriptor level: Python's streams, logging handlers created earlier,
    warnings, tqdm bars and child processes all end up in the log. Restored on exit.

    Args:
        log_path: the log file (created with its folder; appended to).

    Yields:
        A text stream to what stdout was before (line buffered).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(saved_out), "w", buffering=1, encoding="utf-8")
    with open(log_path, "ab", buffering=0) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield terminal
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved_out, 1)
            os.dup2(saved_err, 2)
            os.close(saved_out)
            os.close(saved_err)
            terminal.close()


def duration(seconds: float | None) -> str:
    """``seconds`` as the stage lines show it: ``4.2s``, ``3m05s``, ``1h02m`` ('' for None)."""
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


def stage_line(step: str, result: str, status: str, seconds: float | None) -> str:
    """One stage as plain text: mark, name, what it did, how long it took."""
    mark = MARKS.get(status, ("?", ""))[0]
    took = duration(seconds)
    return f"{mark} {step:<{STEP_WIDTH}} {result}" + (f"  ({took})" if took else "")


class StageConsole(Reporter):
    """Shows stages on a terminal stream: a line each, and one live bar for the running one.

    Args:
        stream: where to write (the terminal from :func:`capture_output`, or stdout).
        live: show a progress bar while a stage runs (only where ``stream`` is a terminal;
            False for ``--verbose``, whose log lines would interleave with it).
    """

    def __init__(self, stream: IO[str], live: bool = True) -> None:
        from rich.console import Console

        width = None
        if stream.isatty():  # stdout/stderr, where rich looks, may be the log file by now
            # A pseudo-terminal whose size was never set reports 0 columns.
            width = os.get_terminal_size(stream.fileno()).columns or 100
        self.console: Console = Console(file=stream, width=width, highlight=False, soft_wrap=True)
        self.live = live and self.console.is_terminal
        self.current: str | None = None
        self._lock = threading.RLock()
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._label = ""

    # -- Reporter

    def stage_started(self, stage: str) -> None:
        """Start the live bar for ``stage`` (spinner and elapsed time until progress comes)."""
        with self._lock:
            self._stop_bar()
            self.current = stage
            self._label = ""
            if not self.live:
                return
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )

            # redirect_*=False: stdout/stderr go to the log file; rich must not take them.
            self._bar = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._task = self._bar.add_task(stage, total=None)
            self._bar.start()

    def stage_finished(self, stage: str, result: str, status: str, seconds: float | None) -> None:
        """Replace the live bar by the stage's line."""
        with self._lock:
            self._stop_bar()
            if stage == self.current:
                self.current = None
            self.line(stage, result, status, seconds)

    def progress(self, label: str, done: int, total: int | None) -> None:
        """Update the live bar: ``current stage · label`` and ``done``/``total``."""
        with self._lock:
            if self._bar is None or self._task is None:
                return
            if label != self._label:
                self._label = label
                self._bar.reset(self._task, total=total, description=f"{self.current} · {label}")
            self._bar.update(self._task, completed=done, total=total)

    # -- plain output

    def line(
        self, step: str, result: str, status: str = "ok", seconds: float | None = None
    ) -> None:
        """Print one stage line (cut to the terminal's width; whole on a file or pipe)."""
        from rich.text import Text

        mark, colour = MARKS.get(status, ("?", ""))
        took = duration(seconds)
        text = Text()
        text.append(f"{mark} ", style=colour)
        text.append(f"{step:<{STEP_WIDTH}} ", style="bold")
        text.append(result)
        if took:
            text.append(f"  ({took})", style="dim")
        if self.console.is_terminal:
            self.console.print(text, no_wrap=True, overflow="ellipsis", crop=True)
        else:
            self.console.print(text)

    def text(self, message: str = "", style: str | None = None) -> None:
        """Print free text (headers, the summary, the failure reason)."""
        with self._lock:
            self._stop_bar()
            self.console.print(message, style=style, markup=False)

    def close(self) -> None:
        """Stop a bar still running (a stage that raised)."""
        with self._lock:
            self._stop_bar()

    def _stop_bar(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = self._task = None


def record_lines(records: list[StepRecord]) -> list[str]:
    """Every recorded stage as :func:`stage_line` text (for logs and tests)."""
    return [stage_line(r.step, r.result, r.status, r.seconds) for r in records]


def verdict_lines(outcome: DemoOutcome, log_path: Path | None) -> list[str]:
    """The demo's last lines: what it showed or, on a failure, which step failed and why.

    A ``held`` step (the gate or the canary stopped a candidate, as designed) is reported as
    such and is not a failure; a ``failed`` step or a crash is, and its reason comes last.
    """
    lines = []
    if log_path is not None:
        lines.append(f"Full log: {log_path}")
    failed = [r for r in outcome.records if r.status == "failed"]
    held = [r for r in outcome.records if r.status == "held"]
    if outcome.ok and not failed:
        if held:
            for r in held:
                lines.append(f"Note: {r.step}: {r.result}")
            lines.append("Demo finished: the loop held the candidate back, as its checks require.")
        else:
            lines.append("Demo finished: every step did what the loop is designed to do.")
        return lines
    lines.append("Demo FAILED.")
    for r in failed or outcome.records[-1:]:
        lines.append(f"  step {r.step!r} failed: {r.result}")
    return lines
