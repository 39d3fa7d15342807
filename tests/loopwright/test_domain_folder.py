"""A domain is a folder: `domain init` writes one that passes `domain check`; a broken one
is refused with every problem named by file and line; the loop reads it with no Python."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loopwright.cli import app
from loopwright.config import ConfigError, load_settings
from loopwright.domain import Domain, DomainError, load_domain
from loopwright.domain_check import check_domain_folder
from loopwright.domain_skeleton import init_domain_folder


@pytest.fixture(scope="module")
def skeleton(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("domains") / "shop"
    result = CliRunner().invoke(app, ["domain", "init", str(folder), "--name", "shop"])
    assert result.exit_code == 0, result.output
    return folder


@pytest.fixture
def broken(skeleton: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "broken"
    shutil.copytree(skeleton, copy)
    return copy


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new))


def test_init_writes_a_domain_that_check_accepts_and_refuses_to_overwrite(skeleton):
    result = CliRunner().invoke(app, ["domain", "check", str(skeleton)])
    assert result.exit_code == 0, result.output
    assert "suite correctness (correctness): 2 samples" in result.output
    assert "a valid domain (shop)" in result.output
    # valid, but the gate needs more samples than the skeleton's: said, not failed
    assert "2 correctness samples; the gate judges at least 30 (min_n)" in result.output
    bad_name = CliRunner().invoke(app, ["domain", "init", str(skeleton.parent / "x")])
    assert bad_name.exit_code == 1 and "give one with --name" in bad_name.output
    again = CliRunner().invoke(app, ["domain", "init", str(skeleton)])
    assert again.exit_code == 1 and "nothing was written" in again.output


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        # missing file named by domain.yaml
        (lambda d: (d / "knowledge.jsonl").unlink(), "domain.yaml: knowledge_base: file"),
        # a field with a bad value: the line and what is valid
        (
            lambda d: _edit(d / "domain.yaml", "name: shop", "name: Shop Front"),
            "domain.yaml:4: name: String should match pattern",
        ),
        # an unknown key lists the valid ones
        (
            lambda d: _edit(d / "domain.yaml", "suites: suites", "suites: suites\nsuite: x"),
            "suite: Extra inputs are not permitted; valid keys: ['app', 'canary_policy'",
        ),
        # an unknown scorer: the suite file, its line, the valid scorers
        (
            lambda d: _edit(d / "suites/correctness.yaml", "scorer: token_f1", "scorer: bleu"),
            "correctness.yaml:10: unknown scorer 'bleu'; valid scorers: behaviour_match",
        ),
        # a suite pointing at missing samples
        (
            lambda d: _edit(d / "suites/harmlessness.yaml", "eval/harmlessness", "eval/gone"),
            "harmlessness.yaml: samples file",
        ),
        # a chat template that does not render
        (
            lambda d: (
                (d / "chat.jinja").write_text("{% for m in messages %}{{ m.content }"),
                _edit(d / "domain.yaml", "# chat_template:", "chat_template: chat.jinja #"),
            ),
            "chat.jinja: chat template does not render: TemplateSyntaxError",
        ),
        # a template that renders but drops the conversation
        (
            lambda d: (
                (d / "chat.jinja").write_text("{% for m in messages %}{{ m.role }}{% endfor %}"),
                _edit(d / "domain.yaml", "# chat_template:", "chat_template: chat.jinja #"),
            ),
            "chat template drops the content of ['system', 'user', 'assistant']",
        ),
        # a hook that does not import
        (
            lambda d: _edit(
                d / "domain.yaml", "# hooks:", "hooks: {refusal_detector: 'nowhere.mod:f'}\n#"
            ),
            "hooks.refusal_detector: hook 'nowhere.mod:f': module 'nowhere.mod' cannot be",
        ),
        # a bad sample record: file and line
        (
            lambda d: (d / "eval/over_refusal.jsonl").open("a").write('{"id": "x"}\n'),
            "over_refusal.jsonl:3",
        ),
    ],
)
def test_check_names_each_problem_with_its_file_and_place(broken, breakage, expected):
    breakage(broken)
    report = check_domain_folder(broken)
    assert any(expected in problem for problem in report.problems), report.problems
    result = CliRunner().invoke(app, ["domain", "check", str(broken)])
    assert result.exit_code == 1 and expected in result.output


def test_loading_refuses_a_folder_whose_domain_yaml_is_wrong(broken):
    # Loading checks domain.yaml, its files and hooks (cheap); suites are checked where used.
    (broken / "knowledge.jsonl").unlink()
    with pytest.raises(DomainError, match="is not valid:\n.*knowledge_base: file"):
        load_domain(str(broken))


def test_a_gate_key_without_a_suite_is_a_warning(broken):
    (broken / "suites/over_refusal.yaml").unlink()
    report = check_domain_folder(broken)
    assert not report.problems
    assert any("no suite measures 'over_refusal'" in w for w in report.warnings)


def test_one_broken_suite_does_not_hide_the_problems_of_the_others(broken):
    _edit(broken / "suites/correctness.yaml", "scorer: token_f1", "scorer: bleu")
    _edit(broken / "suites/harmlessness.yaml", "eval/harmlessness", "eval/gone")
    problems = check_domain_folder(broken).problems
    assert len(problems) == 2, problems


def test_the_loop_reads_a_data_only_folder_with_generic_defaults(skeleton):
    domain = load_domain(str(skeleton))
    assert isinstance(domain, Domain)
    assert Path(domain.data_folder()).is_absolute()
    assert domain.suite_dir() == skeleton.resolve() / "suites"
    # the refusal wording, a common refusal phrasing, and not an answer
    assert domain.is_safe_response(domain.refusal_text())
    assert domain.is_safe_response("Sorry, I cannot help with that.")
    assert not domain.is_safe_response("Support is open from 9am to 5pm on weekdays.")
    # facts with a value are checked; an unknown statement cannot be judged
    check = domain.fact_checker()
    assert check(
        "When is support open?", "Support is open from 9am to 5pm on weekdays."
    ).verdict == ("supports")
    assert check("When?", "Support is open from 8am to 8pm on weekdays.").verdict == "contradicts"
    assert check("Hi", "Hello there.").verdict == "unknown"
    assert [f.id for f in domain.knowledge_facts()] == ["hours", "refund_window"]
    assert domain.system_prompt() == ("shop-v1", domain.spec.system_prompt.text)  # type: ignore[attr-defined]
    assert not hasattr(domain, "declined_alternative")


def test_hooks_replace_the_generic_rules(broken, monkeypatch):
    (broken / "shop_rules.py").write_text(
        textwrap.dedent(
            """
            from loopwright.data.factcheck import FactVerdict

            def is_refusal(text):
                return text.startswith("NO:")

            def checker():
                return lambda prompt, response: FactVerdict("stale")
            """
        )
    )
    monkeypatch.syspath_prepend(str(broken))
    _edit(
        broken / "domain.yaml",
        "# hooks:",
        "hooks: {refusal_detector: 'shop_rules:is_refusal', fact_checker: 'shop_rules:checker'}\n#",
    )
    domain = load_domain(str(broken))
    assert domain.is_safe_response("NO: not that")
    assert not domain.is_safe_response("Sorry, I cannot help with that.")
    assert domain.fact_checker()("q", "a").verdict == "stale"


def test_the_profile_serves_a_folder_its_prompt_its_app_and_its_policies(skeleton, tmp_path):
    from loopwright.gateway.settings import with_domain_defaults
    from loopwright.release import canary
    from loopwright.release.config import with_domain_policies
    from loopwright.release.gate_policy import default_policy_path

    shutil.copy(default_policy_path(), skeleton / "gate.yaml")
    _edit(skeleton / "domain.yaml", "gate_policy: policies/gate.yaml", "gate_policy: gate.yaml #")
    try:
        settings = load_settings("local", env={"LOOPWRIGHT_DOMAIN": str(skeleton)})
        assert settings.domain == str(skeleton.resolve())
        # the app is the domain's unless the profile or the environment names one
        assert settings.app == "shop"
        env = {"LOOPWRIGHT_DOMAIN": str(skeleton), "LOOPWRIGHT_APP": "mine"}
        assert load_settings("local", env=env).app == "mine"

        served = with_domain_defaults(
            settings.gateway.model_copy(update={"domain": settings.domain})
        )
        assert served.augment.system_prompt.version == "shop-v1"
        explicit = served.model_copy(
            update={
                "augment": served.augment.model_copy(
                    update={
                        "system_prompt": served.augment.system_prompt.model_copy(
                            update={"version": "mine"}
                        )
                    }
                )
            }
        )
        assert with_domain_defaults(explicit).augment.system_prompt.version == "mine"

        release = with_domain_policies(settings.release, settings.domain)
        assert release.gate_policy == skeleton.resolve() / "gate.yaml"
        assert release.canary_policy == canary.default_canary_policy_path()  # packaged
        # The profile's canary timing is checked against the policy that will judge it.
        short = skeleton / "canary.yaml"
        short.write_text(canary.default_canary_policy_path().read_text().replace("600", "5"))
        _edit(skeleton / "domain.yaml", "# canary_policy:", "canary_policy: canary.yaml #")
        env = {"LOOPWRIGHT_DOMAIN": str(skeleton), "LOOPWRIGHT_RELEASE__MAX_CANARY_S": "60"}
        assert load_settings("local", env=env).release.max_canary_s == 60
        with pytest.raises(ConfigError, match="shorter than the canary policy's min_duration_s"):
            load_settings(
                "local", env={**env, "LOOPWRIGHT_DOMAIN": "examples.helpdesk.plugin:domain"}
            )
    finally:
        _edit(
            skeleton / "domain.yaml",
            "gate_policy: gate.yaml #",
            "# gate_policy: policies/gate.yaml",
        )


def test_the_domains_recipe_fills_what_the_profile_leaves_unset(broken):
    recipe = "\nnightly:\n  finetune_steps: 50\n  replay_ratio: 2.0\n"
    (broken / "domain.yaml").write_text((broken / "domain.yaml").read_text() + recipe)
    nightly = load_settings("local", env={"LOOPWRIGHT_DOMAIN": str(broken)}).nightly
    assert (nightly.finetune_steps, nightly.replay_ratio) == (50, 2.0)
    assert nightly.max_negative_share == 0.6  # neither sets it: the default
    env = {"LOOPWRIGHT_DOMAIN": str(broken), "LOOPWRIGHT_NIGHTLY__FINETUNE_STEPS": "70"}
    nightly = load_settings("local", env=env).nightly  # the profile's (or env's) key wins
    assert (nightly.finetune_steps, nightly.replay_ratio) == (70, 2.0)

    (broken / "domain.yaml").write_text(
        (broken / "domain.yaml").read_text().replace("finetune_steps", "finetune_step")
    )
    problems = check_domain_folder(broken).problems
    assert any(
        "nightly.finetune_step: Extra inputs are not permitted; valid keys: [" in p
        and "'finetune_steps'" in p
        for p in problems
    ), problems


def test_a_setting_that_is_neither_a_folder_nor_a_module_fails_saying_both():
    with pytest.raises(ConfigError, match="not a folder .* or package.module:attribute"):
        load_settings("local", env={"LOOPWRIGHT_DOMAIN": "no/such/folder"})


def test_init_skeleton_files_are_what_the_module_docstring_promises(tmp_path):
    written = {
        p.relative_to(tmp_path / "d").as_posix() for p in init_domain_folder(tmp_path / "d", "d")
    }
    assert {
        "domain.yaml",
        "knowledge.jsonl",
        "sft/replay.jsonl",
        "suites/correctness.yaml",
    } <= written
