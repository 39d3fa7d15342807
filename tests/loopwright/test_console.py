"""The demo's console: one line per stage, nothing else; the details land in its log file.

The capture works on file descriptors, which pytest's own capturing replaces, so each case
runs as its own small program and its real stdout/stderr are checked.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from stackenv import REPO, SESSION_STACK_ENV, stack_env

MARKS = ("✓", "■", "✗")

# Output of the kinds the demo's libraries write: print (MLflow's "View run"), a handler
# made before the capture (Prefect's), warnings, tqdm bars, child processes (Ray), raw fds.
NOISY_STAGES = textwrap.dedent(
    """
    import logging, os, subprocess, sys, warnings
    from pathlib import Path

    from loopwright import progress
    from loopwright.console import StageConsole, capture_output, verdict_lines
    from loopwright.demo import DemoOutcome

    logging.getLogger("noise").addHandler(logging.StreamHandler(sys.stderr))
    log_path = Path(sys.argv[1])
    with capture_output(log_path) as terminal:
        ui = StageConsole(terminal)
        out = DemoOutcome()
        with progress.reporting_to(ui):
            out.begin("bootstrap")
            print("View run smoke at: http://127.0.0.1:5050/#/runs/1")
            logging.getLogger("noise").warning("Beginning flow run 'x' for flow 'demo'")
            warnings.warn("Type hint used in the model's predict function")
            from tqdm import tqdm
            for step in tqdm(range(3), desc="Loading weights"):
                progress.report("policy training steps", step + 1, 3)
            subprocess.run(["echo", "Connected to Ray cluster."], check=True)
            os.write(2, b"raw stderr of a C extension\\n")
            out.add("bootstrap", "v1 = policy version 1", print)
            out.begin("release")
            out.add("gate", "block under demo.yaml", print, "held")
            out.hold("release", "blocked: not promoted; champion stays version 1", print)
            out.begin("poisoned night 2")
            out.fail("poisoned night 2", "NOT stopped", print)
        for line in verdict_lines(out, log_path):
            ui.text(line)
    print("stdout restored")
    """
)

NOISE = (
    "View run smoke",
    "Beginning flow run",
    "Type hint used",
    "Loading weights",
    "Connected to Ray cluster.",
    "raw stderr of a C extension",
)


def _run(script: str, *args: str, env: dict[str, str] | None = None, timeout: float = 60):
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _stage_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith(MARKS)]


def test_console_has_a_line_per_stage_and_the_log_holds_everything_else(tmp_path):
    log = tmp_path / "logs" / "demo.log"
    done = _run(NOISY_STAGES, str(log))
    assert done.returncode == 0, done.stderr

    lines = _stage_lines(done.stdout)
    assert [line.split()[1] for line in lines] == ["bootstrap", "gate", "release", "poisoned"]
    assert lines[0].startswith("✓") and "v1 = policy version 1" in lines[0]
    assert lines[2].startswith("■") and lines[3].startswith("✗")
    for noise in NOISE:
        assert noise not in done.stdout + done.stderr
    # The reason comes last; the log's path just before it.
    tail = done.stdout.splitlines()[-4:]
    assert tail == [
        f"Full log: {log}",
        "Demo FAILED.",
        "  step 'poisoned night 2' failed: NOT stopped",
        "stdout restored",
    ]

    text = log.read_text(encoding="utf-8")
    for noise in NOISE:
        assert noise in text
    assert "-> poisoned night 2: NOT stopped" in text  # the steps' own echo, too


def test_a_held_candidate_is_not_a_failure_and_a_crash_names_its_step():
    from loopwright.console import verdict_lines
    from loopwright.demo import DemoOutcome

    held = DemoOutcome()
    held.add("gate", "block under default.yaml", print, "held")
    held.hold("release", "blocked: not promoted; champion stays version 1", print)
    held.add("poisoned night 2", "stopped before training (batch 2 rejected)", print)
    assert held.ok
    lines = verdict_lines(held, None)
    assert lines[-1].startswith("Demo finished")
    assert "Note: release: blocked" in "\n".join(lines)

    crashed = DemoOutcome()
    crashed.add("bootstrap", "v1 = policy version 1", print)
    crashed.crashed("nightly 1", RuntimeError("reward model diverged"), print)
    assert not crashed.ok
    assert verdict_lines(crashed, Path("x.log"))[-2:] == [
        "Demo FAILED.",
        "  step 'nightly 1' failed: RuntimeError: reward model diverged",
    ]


# The CLI's first two demo stages for real, against the session stack: Prefect's run logs,
# MLflow's "View run" lines and Ray's connection lines all happen here.
CLI_CHECKS = textwrap.dedent(
    """
    import logging, sys
    from pathlib import Path

    from loopwright import progress
    from loopwright.cli import _demo_checks, _demo_logging
    from loopwright.config import load_settings
    from loopwright.console import StageConsole, capture_output
    from loopwright.demo import DemoOutcome

    # As the CLI's entry point configures it.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    settings = load_settings(None)
    with capture_output(Path(sys.argv[1])) as terminal:
        _demo_logging()
        ui = StageConsole(terminal)
        out = DemoOutcome()
        with progress.reporting_to(ui):
            _demo_checks(settings, out)
    print("ok" if out.ok else "FAILED")
    """
)


@pytest.mark.services
def test_demo_stack_and_smoke_stages_show_two_lines_and_log_the_details(stack_settings, tmp_path):
    log = tmp_path / "demo.log"
    done = _run(CLI_CHECKS, str(log), env=stack_env(SESSION_STACK_ENV), timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]

    lines = _stage_lines(done.stdout)
    assert [line.split("  ")[0] for line in lines] == ["✓ local stack", "✓ smoke round trips"]
    assert done.stdout.splitlines()[-1] == "ok"
    assert len(done.stdout.splitlines()) == 3  # nothing but the two stages
    assert done.stderr == ""

    text = log.read_text(encoding="utf-8")
    assert "Beginning flow run" in text and "for flow 'smoke'" in text  # Prefect
    assert "mlflow registry round trip" in text  # the smoke checks' own lines
    assert "objectstore" in text  # the status table
    # Fixed at the cause (the pyfunc's predict type hint), not only kept off the console.
    assert "type hint" not in text.lower()
