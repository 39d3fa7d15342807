"""Policy v1's training budget is a step count, so v1 does not depend on the machine."""

from __future__ import annotations

import pytest

from examples.helpdesk.bootstrap import BootstrapConfig


def test_v1_trains_for_a_fixed_number_of_steps_by_default() -> None:
    config = BootstrapConfig().policy_config()
    assert config.max_steps == 700
    assert config.max_seconds is None  # no wall clock: same model on a busy machine


def test_a_wall_clock_budget_is_still_possible_and_says_so() -> None:
    config = BootstrapConfig(policy_steps=None, policy_seconds=120.0).policy_config()
    assert (config.max_steps, config.max_seconds) == (None, 120.0)


@pytest.mark.parametrize("budget", [{"policy_seconds": 120.0}, {"policy_steps": None}])
def test_exactly_one_budget(budget: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="one budget: policy_steps"):
        BootstrapConfig.model_validate(budget)
