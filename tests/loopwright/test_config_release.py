"""The profile's nightly and release sections: loaded, overridable, and able to promote."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from loopwright.cli import app, nightly_config
from loopwright.config import ConfigError, load_settings, settings_env
from loopwright.release.canary import load_canary_policy


@pytest.mark.parametrize("profile", ["local", "cluster"])
def test_builtin_profiles_release_long_enough_for_the_canary_policy(profile):
    """A scheduled night's canary can reach the packaged policy's minimums and promote."""
    release = load_settings(profile, env={}).release
    policy = load_canary_policy(release.canary_policy)
    assert release.max_canary_s >= policy.min_duration_s
    assert release.window_s <= release.max_canary_s


def test_profile_sections_and_environment_overrides():
    settings = load_settings(
        "local",
        env={
            "LOOPWRIGHT_NIGHTLY__FINETUNE_STEPS": "3",
            "LOOPWRIGHT_RELEASE__WINDOW_S": "5",
            "LOOPWRIGHT_RELEASE__AUTO_APPROVE": "true",
        },
    )
    assert settings.nightly.finetune_steps == 3
    assert (settings.release.window_s, settings.release.auto_approve) == (5, True)
    assert load_settings("cluster", env={}).release.approval_timeout_s > 3600


def test_a_release_that_cannot_outlast_the_canary_minimum_fails_at_load_time():
    with pytest.raises(ConfigError) as err:
        load_settings("local", env={"LOOPWRIGHT_RELEASE__MAX_CANARY_S": "180"})
    message = str(err.value)
    assert "release" in message and "max_canary_s" in message and "min_duration_s" in message
    assert "valid: max_canary_s >= 600" in message


def test_a_shorter_canary_policy_allows_a_short_release(tmp_path: Path):
    quick = tmp_path / "canary.yaml"
    quick.write_text("version: q\nmin_duration_s: 20\nmin_requests_per_arm: 30\n")
    settings = load_settings(
        "local",
        env={
            "LOOPWRIGHT_RELEASE__CANARY_POLICY": str(quick),
            "LOOPWRIGHT_RELEASE__MAX_CANARY_S": "60",
        },
    )
    assert settings.release.max_canary_s == 60


def test_unknown_release_key_names_the_valid_ones(tmp_path: Path):
    profile = tmp_path / "p.yaml"
    profile.write_text("release:\n  max_windows: 3\n")
    with pytest.raises(ConfigError) as err:
        load_settings(profile, env={})
    assert "release.max_windows: unknown key" in str(err.value)
    assert "max_canary_s" in str(err.value) and "window_s" in str(err.value)


def test_settings_env_carries_changed_sections_to_a_child():
    settings = load_settings("local", env={"LOOPWRIGHT_RELEASE__WINDOW_S": "5"})
    env = settings_env(settings)
    assert env["LOOPWRIGHT_RELEASE__WINDOW_S"] == "5.0"
    assert load_settings("local", env=env).release.window_s == 5


def test_config_show_lists_the_nightly_and_release_sections(monkeypatch):
    monkeypatch.setenv("LOOPWRIGHT_RELEASE__CANARY_FRACTION", "0.2")
    result = CliRunner().invoke(app, ["config", "show"])
    assert result.exit_code == 0, result.output
    assert "\nnightly:\n" in result.output and "\nrelease:\n" in result.output
    assert "canary_fraction: 0.2" in result.output and "finetune_steps: 400" in result.output


def test_nightly_flags_override_the_profile_and_only_when_given():
    profile = load_settings("local", env={"LOOPWRIGHT_NIGHTLY__FINETUNE_STEPS": "7"}).nightly
    assert nightly_config(profile) == profile
    tiny = nightly_config(profile, tiny=True, seed=3)
    assert (tiny.tiny, tiny.seed, tiny.finetune_steps) == (True, 3, 7)
    timed = nightly_config(profile, finetune_seconds=30)
    assert (timed.finetune_steps, timed.finetune_seconds) == (None, 30)
