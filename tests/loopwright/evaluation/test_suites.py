from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import sample, write_samples

from loopwright.evaluation.scorers import ScorerResources
from loopwright.evaluation.suites import (
    SuiteError,
    discover_suites,
    load_samples,
    load_suite,
    needed_resources,
)
from models.generation import DecodingParams

GOOD = """\
name: facts
dimension: correctness
samples: eval/facts.jsonl
primary: exact_match
slices: [split]
decoding: {max_new_tokens: 12}
scorers:
  - scorer: exact_match
  - scorer: token_f1
"""


def suite_file(tmp_path: Path, text: str, name: str = "suite.yaml") -> Path:
    path = tmp_path / "suites" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_good_suite_loads(tmp_path: Path) -> None:
    path = suite_file(tmp_path, GOOD)
    write_samples(tmp_path / "eval/facts.jsonl", [sample("a", "q?", references=["A"])])
    suite = load_suite(path, data_root=tmp_path)
    assert suite.name == "facts" and suite.primary == "exact_match"
    assert [s.metric for s in suite.scorers] == ["exact_match", "token_f1"]
    assert suite.decoding(DecodingParams()).max_new_tokens == 12
    assert [s.id for s in load_samples(suite)] == ["a"]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (
            GOOD.replace("slices: [split]", "slices: [split"),
            6,
            "malformed YAML: expected ',' or ']', but got ':' (while parsing a flow sequence at "
            "line 5)",
        ),
        (
            GOOD.replace("dimension: correctness", "dimension: corectness"),
            2,
            "unknown dimension 'corectness'; valid dimensions: ['correctness'",
        ),
        (
            GOOD.replace("primary: exact_match", "primry: exact_match"),
            4,
            "primry: Extra inputs are not permitted; valid keys:",
        ),
        (
            GOOD.replace("  - scorer: token_f1", "  - scorer: token_f2"),
            9,
            "unknown scorer 'token_f2'; valid scorers: ",
        ),
        (
            GOOD.replace("  - scorer: token_f1", "  - scorer: token_f1\n    options: {x: 1}"),
            9,
            "unknown option(s) ['x']",
        ),
        (GOOD.replace("primary: exact_match", "primary: nope"), 4, "primary 'nope' is not"),
        (
            GOOD.replace("decoding: {max_new_tokens: 12}", "decoding: {max_new_tokens: 0}"),
            6,
            "decoding.max_new_tokens",
        ),
        (GOOD + "repeats: 3\n", 10, "repeats=3 with greedy"),
    ],
)
def test_bad_suite_file_names_file_and_line(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    path = suite_file(tmp_path, text)
    with pytest.raises(SuiteError) as exc:
        load_suite(path, data_root=tmp_path)
    assert str(exc.value).startswith(f"{path}:{line}:"), str(exc.value)
    assert message in str(exc.value)


def test_bad_samples_name_file_and_line(tmp_path: Path) -> None:
    suite = load_suite(suite_file(tmp_path, GOOD), data_root=tmp_path)
    data = tmp_path / "eval/facts.jsonl"
    data.parent.mkdir(parents=True)

    def expect(lines: list[str], line: int, message: str) -> None:
        data.write_text("\n".join(lines) + "\n", encoding="utf-8")
        with pytest.raises(SuiteError) as exc:
            load_samples(suite)
        assert str(exc.value).startswith(f"{data}:{line}:"), str(exc.value)
        assert message in str(exc.value)

    ok = json.dumps(sample("a", "q", references=["A"]))
    expect([ok, json.dumps(sample("b", "q"))], 2, "has no references but suite 'facts'")
    expect([ok, "{not json"], 2, "not valid JSON")
    expect(
        [ok, "", json.dumps(sample("c", "q", references=["C"], dimension="honesty"))],
        3,
        "dimension",
    )
    expect(
        [ok, json.dumps(sample("d", "q", references=["D"], dimension="harmlessness"))],
        2,
        "has dimension 'harmlessness', suite 'facts'",
    )
    expect([ok, ok], 2, "duplicate sample id 'a' (first at line 1)")
    # a refuse sample needs no reference even with reference-based scorers
    data.write_text(ok + "\n" + json.dumps(sample("r", "q", behaviour="refuse")) + "\n")
    assert len(load_samples(suite)) == 2


def test_missing_and_empty_samples(tmp_path: Path) -> None:
    suite = load_suite(suite_file(tmp_path, GOOD), data_root=tmp_path)
    with pytest.raises(SuiteError, match="does not exist"):
        load_samples(suite)
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval/facts.jsonl").write_text("")
    with pytest.raises(SuiteError, match="no samples"):
        load_samples(suite)
    empty_ok = load_suite(
        suite_file(tmp_path, GOOD + "allow_empty: true\n", "e.yaml"), data_root=tmp_path / "nowhere"
    )
    assert load_samples(empty_ok) == []


def test_discovery_selects_and_rejects(tmp_path: Path) -> None:
    suite_file(tmp_path, GOOD, "a.yaml")
    suite_file(tmp_path, GOOD.replace("name: facts", "name: other"), "b.yaml")
    with pytest.raises(SuiteError, match=r"metric 'exact_match' of dimension 'correctness'"):
        discover_suites(tmp_path / "suites", "all", data_root=tmp_path)
    assert [
        s.name for s in discover_suites(tmp_path / "suites", ["other"], data_root=tmp_path)
    ] == ["other"]
    with pytest.raises(
        SuiteError,
        match=r"unknown suite\(s\) \['nope'\]; valid suites .*"
        r"\['facts', 'other'\]",
    ):
        discover_suites(tmp_path / "suites", ["nope"], data_root=tmp_path)
    suite_file(tmp_path, GOOD, "c.yaml")
    with pytest.raises(SuiteError, match="suite name 'facts' also used by"):
        discover_suites(tmp_path / "suites", "all", data_root=tmp_path)


def test_helpdesk_suites_load_over_real_domain_samples(tmp_path: Path) -> None:
    """Every example-domain suite loads and validates against write_domain's files."""
    from examples.helpdesk.generate import build_domain, write_domain

    write_domain(build_domain(seed=0, scale=0.1), tmp_path)
    suite_dir = Path(__file__).parents[3] / "examples/helpdesk/suites"
    needs = needed_resources(suite_dir)
    assert needs["helpfulness"] == ["reward"] and needs["harmlessness_guard"] == ["guard"]

    class R:
        def score(self, prompts: list[str], responses: list[str]) -> list[float]:
            return [0.0] * len(prompts)

    class G:
        def scores(self, texts: list[str]) -> list[float]:
            return [0.0] * len(texts)

    suites = discover_suites(
        suite_dir, "all", data_root=tmp_path, resources=ScorerResources(reward=R(), guard=G())
    )
    dims = {s.dimension for s in suites}
    assert dims == {
        "correctness",
        "hallucination",
        "harmlessness",
        "over_refusal",
        "consistency",
        "robustness",
        "helpfulness",
        "regression",
        "gold",
        "fairness",
    }
    counts = {s.name: len(load_samples(s)) for s in suites}
    assert counts["regression"] == counts["gold"] == 0  # start empty: production fills them
    assert all(n > 0 for name, n in counts.items() if name not in ("regression", "gold")), counts
    sampling = next(s for s in suites if s.name == "consistency_sampling")
    assert sampling.spec.repeats == 5 and sampling.decoding(DecodingParams()).temperature == 0.7
