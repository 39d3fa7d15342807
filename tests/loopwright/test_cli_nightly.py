"""``loopwright nightly``: an unknown stage fails before anything runs, listing valid ones."""

from typer.testing import CliRunner

from loopwright.cli import app


def test_unknown_stage_exits_2_and_lists_the_valid_stages():
    result = CliRunner().invoke(app, ["nightly", "--stage", "train"])
    assert result.exit_code == 2
    for stage in ("ingest", "check", "curate", "snapshot", "reward", "finetune"):
        assert stage in result.output


def test_steps_and_seconds_budgets_together_exit_2_naming_both():
    result = CliRunner().invoke(
        app, ["nightly", "--finetune-steps", "10", "--finetune-seconds", "30"]
    )
    assert result.exit_code == 2
    assert "--finetune-steps" in result.output and "--finetune-seconds" in result.output
