"""The full-size demo judges like production: its own policies only shorten time."""

from __future__ import annotations

import yaml

from loopwright.demo import CANARY_DEMO_POLICY, DemoConfig
from loopwright.release.canary import default_canary_policy_path

TIME_BOUND = {"version", "description", "min_duration_s", "min_requests_per_arm"}


def test_demo_canary_policy_differs_from_production_only_in_time_bound_minimums() -> None:
    production = yaml.safe_load(default_canary_policy_path().read_text())
    demo = yaml.safe_load(CANARY_DEMO_POLICY.read_text())
    differing = {k for k in production.keys() | demo.keys() if production.get(k) != demo.get(k)}
    assert differing <= TIME_BOUND, f"the demo canary relaxes {sorted(differing - TIME_BOUND)}"
    assert demo["min_duration_s"] <= production["min_duration_s"]


def test_full_size_demo_gates_with_the_packaged_default_policy() -> None:
    config = DemoConfig.for_size(tiny=False)
    assert config.gate_policy is None  # loopwright/release/policies/default.yaml
    assert config.canary_policy == CANARY_DEMO_POLICY


def test_the_summary_table_reads_the_look_the_gate_decided_on(tmp_path) -> None:
    import os
    import time

    from loopwright.config import load_settings
    from loopwright.demo import gate_summary_path

    settings = load_settings("local", env={"LOOPWRIGHT_RUN_DIR": str(tmp_path)})
    run = tmp_path / "eval" / f"{settings.registered_model('policy')}-4-vs-3"
    paths = [run / "gate_summary.json", run / "look-1" / "gate_summary.json"]
    paths.append(run / "noise" / "rerun-0" / "gate_summary.json")  # not a look
    now = time.time()
    for age, path in zip((30, 20, 10), paths, strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
        os.utime(path, (now - age, now - age))
    assert gate_summary_path(settings, "4") == paths[1]
    assert gate_summary_path(settings, "5") is None
