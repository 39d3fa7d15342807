"""The example domain's fairness suite: counterfactual families that differ only in who asks."""

from __future__ import annotations

import random
import re
from collections import defaultdict
from pathlib import Path

import pytest

from examples.helpdesk import generate
from examples.helpdesk.generate import build_eval_suites, build_fairness_suite
from examples.helpdesk.personas import (
    ATTRIBUTES,
    FRAMES,
    NAMES,
    ORIGINS,
    Persona,
    ask_as,
    random_persona,
    swap,
)
from examples.helpdesk.safety import _PEOPLE, CATEGORIES
from loopwright.evaluation.scorers import get_scorer_info
from loopwright.evaluation.suites import load_samples, load_suite
from loopwright.records import EvalSample, write_jsonl

SUITE = Path(__file__).parents[3] / "examples" / "helpdesk" / "suites" / "fairness.yaml"
PERSONA_TAGS = ("name", "gender", "origin", "occupation")
# Which persona fields each swap may change: a gender swap also takes the paired name.
CHANGES = {"name": {"name"}, "gender": {"gender", "name"}, "origin": {"origin"}}


@pytest.fixture(scope="module")
def full() -> list[EvalSample]:
    return build_fairness_suite(seed=0, scale=1.0)


def _families(samples: list[EvalSample]) -> dict[str, dict[str, EvalSample]]:
    out: dict[str, dict[str, EvalSample]] = defaultdict(dict)
    for s in samples:
        assert s.group is not None
        assert s.tags["swapped"] not in out[s.group], f"{s.group}: swap repeated"
        out[s.group][s.tags["swapped"]] = s
    return out


def test_size_and_shape(full: list[EvalSample]) -> None:
    families = _families(full)
    # Sized for the gate's 0.05 margin (docs/decisions/0001-gate-power.md).
    assert (len(families), len(full)) == (274, 1096)
    kinds = defaultdict(int)
    for fam in families.values():
        assert set(fam) == {"none", *ATTRIBUTES}
        kinds[fam["none"].tags["kind"]] += 1
    assert dict(kinds) == {"fact": 188, "lookalike": 30, "harmful": 56}
    harmful = {s.tags["category"] for s in full if s.tags["kind"] == "harmful"}
    assert harmful == {c.name for c in CATEGORIES.values() if c.label == "harmful"}
    ids = [s.id for s in full]
    assert len(ids) == len(set(ids))
    for s in full:
        assert s.suite == s.dimension == "fairness" and s.references
        assert all(isinstance(v, str) for v in s.tags.values())
    # Every swap is represented on both sides of gender and across many origins.
    assert {s.tags["gender"] for s in full} == {"woman", "man"}
    assert len({s.tags["origin"] for s in full}) >= 15


def test_variants_differ_from_their_reference_only_in_the_swapped_attribute(
    full: list[EvalSample],
) -> None:
    for group, fam in _families(full).items():
        ref = fam["none"]
        for attribute in ATTRIBUTES:
            var = fam[attribute]
            changed = {k for k in PERSONA_TAGS if var.tags[k] != ref.tags[k]}
            assert changed == CHANGES[attribute], (group, attribute, changed)
            # Everything but the persona is the same: request, answer, behaviour, tags.
            assert var.references == ref.references
            assert var.expected_behaviour == ref.expected_behaviour
            others = {k: v for k, v in var.tags.items() if k not in {*PERSONA_TAGS, "swapped"}}
            assert others == {
                k: v for k, v in ref.tags.items() if k not in {*PERSONA_TAGS, "swapped"}
            }
            # Putting the reference's values back gives the reference prompt, word for word.
            text = var.messages[-1].content
            assert text != ref.messages[-1].content
            for key in changed:
                text = re.sub(rf"\b{re.escape(var.tags[key])}\b", ref.tags[key], text)
            assert text == ref.messages[-1].content, (group, attribute)


def test_the_prompt_is_the_persona_frame_around_an_unchanged_request(
    full: list[EvalSample],
) -> None:
    for fam in _families(full).values():
        requests = set()
        for s in fam.values():
            persona = Persona(*(s.tags[k] for k in PERSONA_TAGS))
            frame = FRAMES[int(s.tags["frame"])]
            head, _, tail = frame.partition("{request}")
            text = s.messages[-1].content
            prefix = head.format(**persona.tags())
            suffix = tail.format(**persona.tags())
            assert text.startswith(prefix) and text.endswith(suffix)
            requests.add(text[len(prefix) : len(text) - len(suffix)])
            # The persona's values appear in the prompt once each (the request names no one).
            for key in ("name", "origin"):
                assert len(re.findall(rf"\b{re.escape(s.tags[key])}\b", text)) == 1
        assert len(requests) == 1


def test_swaps_never_return_the_same_value_and_names_avoid_victims() -> None:
    rng = random.Random(0)
    victims = {p.split()[0] for p in _PEOPLE}
    assert not victims & {n for names in NAMES.values() for n in names}
    assert len(NAMES["woman"]) == len(NAMES["man"])
    for _ in range(200):
        p = random_persona(rng)
        for attribute in ATTRIBUTES:
            q = swap(p, attribute, rng)
            assert q != p and q.name in NAMES[q.gender] and q.origin in ORIGINS
        assert swap(swap(p, "gender", rng), "gender", rng) == p  # the pairing is symmetric
    with pytest.raises(ValueError, match="valid attributes"):
        swap(p, "age", rng)  # type: ignore[arg-type]
    assert ask_as(p, "Q?", 0).endswith("Q?")


def test_deterministic_and_seeded() -> None:
    assert build_fairness_suite(0, 0.05) == build_fairness_suite(0, 0.05)
    assert build_fairness_suite(1, 0.05) != build_fairness_suite(0, 0.05)
    tiny = _families(build_fairness_suite(0, 0.05))
    assert len(tiny) == 19  # every stratum keeps at least one family


def test_fairness_has_its_own_rng_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    """Adding (or removing) the fairness suite never changes another suite's samples."""
    with_fairness = build_eval_suites(0, 0.05)
    monkeypatch.setattr(generate, "build_fairness_suite", lambda seed, scale: [])
    without = build_eval_suites(0, 0.05)
    assert with_fairness["fairness"] and not without["fairness"]
    assert {k: v for k, v in with_fairness.items() if k != "fairness"} == {
        k: v for k, v in without.items() if k != "fairness"
    }


def test_suite_file_validates_over_the_generated_samples(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "eval" / "fairness.jsonl", build_fairness_suite(0, 0.05))
    suite = load_suite(SUITE, data_root=tmp_path)
    assert suite.dimension == "fairness" and suite.primary == "counterfactual_parity"
    assert suite.spec.slices == ["swapped", "kind"]
    assert get_scorer_info("counterfactual_parity").kind == "group"
    metrics = {s.metric: s for s in suite.scorers}
    assert set(metrics) == {
        "counterfactual_parity",
        "answer_parity",
        "refusal_parity",
        "task_success",
    }
    assert metrics["answer_parity"].options["compare"] == "answer"
    assert metrics["refusal_parity"].options["compare"] == "refusal"
    assert len(load_samples(suite)) == 76
