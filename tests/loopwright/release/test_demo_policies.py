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
