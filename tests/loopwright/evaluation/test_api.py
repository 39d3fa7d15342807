"""End-to-end evaluation with hand-computed metrics.

The evaluated "model" is a real OpenAI-compatible HTTP server on loopback with scripted
replies (the endpoint target: how the gateway is evaluated), so every metric below can
be computed by hand.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from conftest import FakeOpenAI, sample, write_samples
from typer.testing import CliRunner

from loopwright.evaluation.api import EvalResult, evaluate, gate_summary, measure_noise
from loopwright.evaluation.cli import eval_app
from loopwright.evaluation.engine import EngineConfig
from models.generation import DecodingParams

PRO = "The Pro plan costs $12 per month."
TEAM = "The Team plan costs $20 per month."


def fixture_suites(root: Path, judge_url: str) -> tuple[Path, Path]:
    data = root / "data"
    write_samples(
        data / "eval/facts.jsonl",
        [
            sample("a", "price of pro?", references=[PRO], split="train"),
            sample("b", "price of team?", references=[TEAM], split="train"),
            sample("c", "refund window?", references=["14 days"], split="heldout"),
            sample("d", "RAISE", references=["x"], split="heldout"),
            sample("e", "storage?", references=["50 GB"], split="heldout"),
        ],
    )
    write_samples(
        data / "eval/para.jsonl",
        [sample(f"p{i}", f"para {i}", dimension="consistency", group="g") for i in range(3)],
    )
    write_samples(
        data / "eval/judged.jsonl",
        [
            sample(sid, text, dimension="helpfulness", references=refs)
            for sid, text, refs in [
                ("a", "price of pro?", [PRO]),
                ("c", "refund window?", ["14"]),
                ("e", "storage?", ["50 GB"]),
            ]
        ],
    )
    suites = root / "suites"
    suites.mkdir()
    (suites / "facts.yaml").write_text(
        textwrap.dedent("""\
        name: facts
        dimension: correctness
        samples: eval/facts.jsonl
        slices: [split]
        scorers:
          - scorer: exact_match
          - scorer: token_f1
        """)
    )
    (suites / "para.yaml").write_text(
        textwrap.dedent("""\
        name: para
        dimension: consistency
        samples: eval/para.jsonl
        scorers:
          - scorer: group_agreement
        """)
    )
    (suites / "judged.yaml").write_text(
        textwrap.dedent(f"""\
        name: judged
        dimension: helpfulness
        samples: eval/judged.jsonl
        scorers:
          - scorer: llm_judge
            options: {{base_url: "{judge_url}", model: judge, concurrency: 2}}
        """)
    )
    return suites, data


def script(server: FakeOpenAI) -> None:
    server.model_replies["cand"] = {
        "price of pro?": PRO,
        "price of team?": "The Team plan costs $25 per month.",
        "refund window?": "14 days",
        "para 0": "Yes.",
        "para 1": "yes",
        "para 2": "no",
    }
    server.model_replies["base"] = {
        "price of pro?": "It is free.",
        "price of team?": TEAM,
        "refund window?": "14 days",
        "storage?": "50 GB",
        "para 0": "no",
        "para 1": "no",
        "para 2": "no",
    }
    server.judge_replies.update({PRO: "9", "14 days": "7", "I don't know.": "no idea"})


@pytest.fixture()
def evaluated(fresh_server: FakeOpenAI, tmp_path: Path) -> EvalResult:
    script(fresh_server)
    suites, data = fixture_suites(tmp_path, fresh_server.base_url)
    return evaluate(
        f"{fresh_server.base_url}#cand",
        "all",
        f"{fresh_server.base_url}#base",
        suite_dir=suites,
        data_root=data,
        run_dir=tmp_path / "run",
        engine=EngineConfig(executor="local"),
        resamples=500,
    )


def test_metrics_match_hand_computed_values(evaluated: EvalResult) -> None:
    r = evaluated
    em = r.metric("correctness", "exact_match")
    assert (em.value, em.n, em.errors) == (0.5, 4, 1)  # [1, 0, 1, 0]; d raised (HTTP 500)
    assert r.metric("correctness", "token_f1").value == pytest.approx((1 + 5 / 6 + 1 + 0) / 4)
    train = r.metric("correctness", "exact_match", "split.train")
    held = r.metric("correctness", "exact_match", "split.heldout")
    assert (train.value, train.n, train.errors) == (0.5, 2, 0)
    assert (held.value, held.n, held.errors) == (0.5, 2, 1)
    assert em.ci_low <= em.value <= em.ci_high and em.ci_high - em.ci_low > 0
    agree = r.metric("consistency", "group_agreement")
    assert agree.value == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    judged = r.metric("helpfulness", "llm_judge")
    assert judged.value == pytest.approx((0.9 + 0.7) / 2)
    assert (judged.n, judged.score_errors) == (2, 1)  # "no idea" is an error, not a zero
    assert r.counts["generation_errors"] == 1 and r.counts["score_errors"] == 1
    assert r.report.errors == 2
    for m in r.metrics:  # nothing dropped silently: counts add up on every slice
        sizes = {"all": 5, "split.train": 2, "split.heldout": 3}
        total = sizes[m.slice] if m.suite == "facts" else 3
        assert m.n + m.errors + m.score_errors + m.not_applicable == total, m


def test_paired_comparison_hand_computed(evaluated: EvalResult) -> None:
    assert evaluated.comparison is not None
    p = next(c for c in evaluated.comparison if (c.metric, c.slice) == ("exact_match", "all"))
    # common samples a, b, c, e: cand [1, 0, 1, 0], base [0, 1, 1, 1]
    assert (p.candidate, p.baseline, p.delta, p.n) == (0.5, 0.75, -0.25, 4)
    assert p.win_rate == pytest.approx((1 + 0 + 0.5 + 0) / 4)
    assert p.ci_low <= -0.25 <= p.ci_high
    assert [w["sample_id"] for w in p.worst] == ["b", "e"]
    assert p.worst[0]["baseline_response"] == TEAM
    base = evaluated.baseline_metrics
    assert base is not None
    assert next(m for m in base if (m.metric, m.slice) == ("exact_match", "all")).value == 0.75


def test_files_summary_html_and_gate_view(evaluated: EvalResult) -> None:
    paths = evaluated.paths
    summary = json.loads(paths["summary"].read_text())
    cell = summary["dimensions"]["correctness"]["exact_match"]["slices"]["all"]
    assert cell["value"] == 0.5 and cell["n"] == 4 and cell["errors"] == 1
    assert summary["comparison"]["correctness"]["exact_match"]["all"]["delta"] == -0.25
    assert summary["model"]["id"].endswith("#cand")
    report = json.loads(paths["report"].read_text())
    assert report["slices"]["correctness/all"][0]["metric"] == "exact_match"  # primary first
    html = paths["html"].read_text()
    assert html.count("data:image/png;base64,") == 2 and "Worst regressed" in html
    assert len(paths["samples"].read_text().splitlines()) == 5 + 3 + 3
    gate = json.loads(paths["gate_summary"].read_text())
    assert gate["views"]["raw"]["values"]["correctness"]["value"] == 0.5
    assert gate["views"]["raw"]["values"]["correctness/split.heldout"]["n"] == 2
    assert gate["views"]["raw"]["paired"]["correctness"]["delta"] == -0.25
    both = gate_summary(evaluated, evaluated, eval_run_id="run-1")
    assert set(both["views"]) == {"raw", "gateway"} and both["errors"] == 4


def test_endpoint_requests_carry_decoding(fresh_server: FakeOpenAI, tmp_path: Path) -> None:
    suites, data = fixture_suites(tmp_path, fresh_server.base_url)
    evaluate(
        f"{fresh_server.base_url}#cand",
        ["facts"],
        suite_dir=suites,
        data_root=data,
        run_dir=tmp_path / "run",
        engine=EngineConfig(executor="local"),
        decoding=DecodingParams(max_new_tokens=7, temperature=0.5, seed=3),
        resamples=200,
    )
    body = fresh_server.requests[0]
    assert (body["model"], body["max_tokens"], body["temperature"], body["seed"]) == (
        "cand",
        7,
        0.5,
        3,
    )


def test_cli_runs_and_reports_errors(fresh_server: FakeOpenAI, tmp_path: Path) -> None:
    script(fresh_server)
    suites, data = fixture_suites(tmp_path, fresh_server.base_url)
    runner = CliRunner()
    args = [
        "--model",
        f"{fresh_server.base_url}#cand",
        "--suite",
        "facts",
        "--suite-dir",
        str(suites),
        "--data-root",
        str(data),
        "--run-dir",
        str(tmp_path / "run"),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--executor",
        "local",
    ]
    result = runner.invoke(eval_app, args)
    assert result.exit_code == 0, result.output
    assert "exact_match" in result.output and "0.500" in result.output
    assert (tmp_path / "run/summary.json").exists()
    (suites / "facts.yaml").write_text("name: facts\ndimension: nope\n")
    bad = runner.invoke(eval_app, args)
    assert bad.exit_code == 2
    assert f"{suites / 'facts.yaml'}:2: dimension: " in bad.output
    listing = runner.invoke(eval_app, ["--list-scorers"])
    assert listing.exit_code == 0 and "llm_judge" in listing.output


def test_measure_noise_repeats_with_seeds(tiny_llama: Path, tmp_path: Path) -> None:
    write_samples(
        tmp_path / "data/eval/facts.jsonl",
        [
            sample(f"s{i}", p, references=["the pro plan costs"], group=f"g{i % 2}")
            for i, p in enumerate(["pro plan", "storage limit", "refunds", "api rate limit"])
        ],
    )
    (tmp_path / "suites").mkdir()
    (tmp_path / "suites/facts.yaml").write_text(
        "name: facts\ndimension: correctness\nsamples: eval/facts.jsonl\n"
        "scorers:\n  - scorer: token_f1\n"
    )
    noise = measure_noise(
        str(tiny_llama),
        "all",
        runs=3,
        temperature=1.0,
        suite_dir=tmp_path / "suites",
        data_root=tmp_path / "data",
        run_dir=tmp_path / "run",
        engine=EngineConfig(executor="local"),
        decoding=DecodingParams(max_new_tokens=6),
    )
    (metric,) = noise.metrics
    assert len(metric.values) == 3 and noise.seeds == [0, 1, 2]
    assert metric.spread == pytest.approx(max(metric.values) - min(metric.values))
    lines = sum(len(f.read_text().splitlines()) for f in (tmp_path / "run/cache").glob("*"))
    assert lines == 3 * 4  # every run sampled anew (distinct seeds, distinct cache keys)
    assert json.loads((tmp_path / "run/noise.json").read_text())["runs"] == 3
    with pytest.raises(ValueError, match="temperature must be > 0"):
        measure_noise(
            str(tiny_llama),
            "all",
            temperature=0.0,
            suite_dir=tmp_path / "suites",
            data_root=tmp_path / "data",
            run_dir=tmp_path / "run",
        )
