import json
import os
import string
import subprocess
import sys
from pathlib import Path

import pytest

from loopwright.records import EvalSample, PreferencePair, read_jsonl
from models.helpdesk.generate import SUITES, build_domain, tokenizer_corpus, write_domain
from models.helpdesk.kb import (
    UNKNOWN_TEXT,
    changed_fact_ids,
    fact_index,
    knowledge_base,
    slot_of_intent,
    unknown_entities,
)
from models.helpdesk.records import read_conversations, read_labelled_prompts
from models.helpdesk.safety import CATEGORIES, covered_categories, uncovered_categories
from models.helpdesk.simulators import UserSimulator
from models.helpdesk.templates import HELDOUT_TEMPLATES, TRAIN_TEMPLATES, render
from models.helpdesk.transforms import TRANSFORMS

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def full():
    return build_domain(seed=0, scale=1.0)


@pytest.fixture(scope="module")
def tiny():
    return build_domain(seed=0, scale=0.05)


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _training_corpus(data) -> str:
    # tokenizer_corpus is the union of every training output (SFT, guard, reward, KB).
    texts = tokenizer_corpus(data)
    assert {m["content"] for c in data.sft_v1 for m in c} <= set(texts)
    assert {p.text for p in data.guard_train} <= set(texts)
    # Simulated production traffic is trained on by the nightly loop, so it counts too, and
    # so do the answered traffic look-alikes that stand in for it (outside the tokenizer's).
    texts.extend(m["content"] for c in data.sft_v2_lookalikes for m in c)
    sim = UserSimulator(2, 0.0, 0, {"ordinary": 1, "adversarial": 1, "harmful": 1})
    texts.extend(r.prompt for r in sim.requests(1500))
    return "\n".join(_norm(t) for t in texts)


def _heldout_strings() -> set[str]:
    """Every heldout-only string: renders of held-out templates and literal template parts."""
    out: set[str] = set()
    facts = knowledge_base(1)
    heldout_questions = []
    for fact in facts:
        for tmpl in HELDOUT_TEMPLATES[fact.intent]:
            q = render(tmpl, fact.slots)
            heldout_questions.append(q)
            out.add(q)
    for intent, tmpls in HELDOUT_TEMPLATES.items():
        slot = slot_of_intent(intent)
        for tmpl in tmpls:
            for entity in unknown_entities(slot, "eval") + unknown_entities(slot, "train"):
                out.add(render(tmpl, {slot: entity}))
    for cat in CATEGORIES.values():
        out.update(cat.prompts("heldout", tuple(heldout_questions[:50])))
        out.update(look.text for look in cat.lookalikes_heldout)
        out.update(cat.compliant_heldout)
    # Literal parts of every held-out template (long enough to be distinctive).
    all_heldout = [t for ts in HELDOUT_TEMPLATES.values() for t in ts]
    all_heldout += [t for c in CATEGORIES.values() for t in c.heldout_templates]
    for tmpl in all_heldout:
        for literal, *_ in string.Formatter().parse(tmpl):
            if literal and len(literal.strip()) >= 16:
                out.add(literal.strip())
    return {_norm(s) for s in out}


def test_same_seed_builds_equal_data_and_another_seed_differs(tiny):
    again = build_domain(seed=0, scale=0.05)
    assert again == tiny
    other = build_domain(seed=1, scale=0.05)
    assert other.sft_v1 != tiny.sft_v1
    assert other.eval_suites != tiny.eval_suites


def test_scale_must_be_in_range():
    with pytest.raises(ValueError, match=r"scale must be in \(0, 1\]"):
        build_domain(scale=0)
    with pytest.raises(ValueError):
        build_domain(scale=1.5)


def test_no_heldout_template_text_appears_in_any_training_output(full):
    corpus = _training_corpus(full)
    heldout = _heldout_strings()
    assert len(heldout) > 700
    leaks = sorted(s for s in heldout if s in corpus)
    assert not leaks, leaks[:10]


def test_leak_check_would_catch_a_leak(full):
    # Guard against a vacuous leak test: a held-out question planted in SFT is found.
    fact = knowledge_base(1)[0]
    planted = render(HELDOUT_TEMPLATES[fact.intent][0], fact.slots)
    corpus = _training_corpus(full) + "\n" + _norm(planted)
    assert any(s in corpus for s in _heldout_strings())


def test_eval_suite_sizes_and_names(full):
    assert tuple(full.eval_suites) == SUITES
    total = sum(len(v) for k, v in full.eval_suites.items() if k != "fairness")
    assert 1500 <= total <= 2500
    assert len(full.eval_suites["fairness"]) <= 800  # every suite is generated 4 times a night
    assert full.eval_suites["regression"] == []
    for name, samples in full.eval_suites.items():
        if name != "regression":
            assert len(samples) >= 100, name
        ids = [s.id for s in samples]
        assert len(ids) == len(set(ids)), name
        for s in samples:
            assert s.suite == name and s.dimension == name
            assert s.references and s.messages[-1].role == "user"
            assert all(isinstance(v, str) for v in s.tags.values())
            assert s.tags["transform"] and s.tags["revision"] == "2"


def test_correctness_uses_rev2_references_keeps_stale_answer_and_both_splits(full):
    samples = full.eval_suites["correctness"]
    rev1, rev2 = fact_index(1), fact_index(2)
    splits = {s.tags["split"] for s in samples}
    assert splits == {"train_template", "heldout_template"}
    changed_seen = 0
    for s in samples:
        fid = s.tags["fact_id"]
        assert s.references == [rev2[fid].answer]
        assert s.tags["changed_in_rev2"] == str(fid in changed_fact_ids()).lower()
        if fid in changed_fact_ids():
            changed_seen += 1
            assert s.tags["stale_answer"] == rev1[fid].answer
        else:
            assert "stale_answer" not in s.tags
    assert changed_seen > 0
    assert {s.tags["fact_id"] for s in samples} == set(rev1)


def test_robustness_applies_every_transform_within_the_clean_group(full):
    groups: dict[str, set[str]] = {}
    for s in full.eval_suites["robustness"]:
        groups.setdefault(s.group, set()).add(s.tags["transform"])
    assert groups
    for transforms in groups.values():
        assert transforms == {"clean", *TRANSFORMS}
    assert {s.expected_behaviour for s in full.eval_suites["robustness"]} >= {"answer", "refuse"}


def test_consistency_groups_are_paraphrases_of_one_fact(full):
    groups: dict[str, list] = {}
    for s in full.eval_suites["consistency"]:
        groups.setdefault(s.group, []).append(s)
    for gid, members in groups.items():
        assert len(members) >= 3
        assert {m.tags["fact_id"] for m in members} == {gid}
        assert len({m.messages[0].content for m in members}) == len(members)
        assert {m.tags["split"] for m in members} == {"train_template", "heldout_template"}


def test_harmlessness_hallucination_and_over_refusal_slices(full):
    harm = full.eval_suites["harmlessness"]
    assert {s.tags["category"] for s in harm} == set(CATEGORIES)
    assert {s.tags["covered"] for s in harm} == {"true", "false"}
    assert {s.tags["split"] for s in harm} == {"train_template", "heldout_template"}
    assert all(s.expected_behaviour in ("refuse", "safe_complete") for s in harm)
    hall = full.eval_suites["hallucination"]
    kinds = {s.tags["kind"] for s in hall}
    assert kinds == {"unknown", "fact"}
    eval_entities = {
        e
        for slot in ("plan", "region", "addon", "feature", "integration", "topic", "task", "code")
        for e in unknown_entities(slot, "eval")
    }
    for s in hall:
        if s.tags["kind"] == "unknown":
            assert s.references == [UNKNOWN_TEXT]
            assert s.tags["entity"] in eval_entities
    over = full.eval_suites["over_refusal"]
    assert all(s.expected_behaviour == "answer" for s in over)
    assert {s.tags["category"] for s in over if s.tags["kind"] == "lookalike"} == set(CATEGORIES)


def test_sft_v1_teaches_rev1_covered_refusals_and_nothing_uncovered(full):
    pairs = [(c[-2]["content"], c[-1]["content"]) for c in full.sft_v1]
    assert all(
        [m["role"] for m in c] in (["user", "assistant"], ["system", "user", "assistant"])
        for c in full.sft_v1
    )
    answers = {a for _, a in pairs}
    rev1, rev2 = fact_index(1), fact_index(2)
    for fid in changed_fact_ids():
        assert rev1[fid].answer in answers
        assert rev2[fid].answer not in answers, fid
    prompts = {_norm(q) for q, _ in pairs}
    for cat in uncovered_categories():
        for p in cat.prompts("train", ()):
            assert _norm(p) not in prompts, p
    for cat in covered_categories():
        n = sum(1 for _, a in pairs if a == cat.response)
        assert n >= 60
    clean = {q for q, _ in pairs}
    noisy = [
        q
        for q, a in pairs
        if a == rev1["plan_price.pro"].answer
        and q not in {render(t, {"plan": "Pro"}) for t in TRAIN_TEMPLATES["plan_price"]}
    ]
    assert noisy, "some training questions must carry surface noise"
    assert len(clean) > 1000


def test_sft_v2_new_teaches_rev2_changed_facts_and_uncovered_refusals(full):
    answers = {c[-1]["content"] for c in full.sft_v2_new}
    rev2 = fact_index(2)
    for fid in changed_fact_ids():
        assert rev2[fid].answer in answers
    for cat in uncovered_categories():
        assert sum(1 for c in full.sft_v2_new if c[-1]["content"] == cat.response) > 0


def test_sft_v2_lookalikes_answer_the_traffic_wording_only(full, tiny):
    traffic = {
        look.text: look.answer_at(2)
        for cat in CATEGORIES.values()
        for look in cat.lookalikes_traffic
    }
    rows = {c[-2]["content"]: c[-1]["content"] for c in full.sft_v2_lookalikes}
    clean = {q: a for q, a in rows.items() if q in traffic}
    assert clean == traffic  # every traffic question, with its revision-2 answer
    assert len(full.sft_v2_lookalikes) == 2 * len(traffic)  # plus one noisy copy each
    assert set(rows.values()) <= set(traffic.values())
    assert len(tiny.sft_v2_lookalikes) == len(traffic)  # small scales keep the clean rows
    # The tokenizer ships with v1, before production asked in these words.
    assert not set(traffic) & set(tokenizer_corpus(full))
    # And the simulator asks them, next to the training wording.
    sim = UserSimulator(2, 0.0, 0, {"ordinary": 1})
    asked = {r.prompt for r in sim.requests(3000) if r.kind == "lookalike"}
    train = {look.text for cat in CATEGORIES.values() for look in cat.lookalikes_train}
    assert asked & set(traffic) and asked & train


def test_about_half_the_sft_text_carries_the_gateways_system_prompt(full):
    from loopwright.gateway.settings import SystemPromptSettings
    from models.helpdesk.generate import SYSTEM_PROMPT

    # The gateway serves with its system prompt first; the raw view and direct callers send
    # none. The policy must have seen both, with the very text the gateway sends.
    assert SystemPromptSettings().text == SYSTEM_PROMPT
    for rows in (full.sft_v1, full.sft_v2_new, full.sft_v2_lookalikes):
        with_prompt = [c for c in rows if c[0]["role"] == "system"]
        assert {c[0]["content"] for c in with_prompt} == {SYSTEM_PROMPT}
        assert 0.4 < len(with_prompt) / len(rows) < 0.6


def test_guard_sets_are_labelled_and_carry_transforms(full):
    for data in (full.guard_train, full.guard_heldout):
        labels = {p.label for p in data}
        assert labels == {"benign", "harmful", "injection"}
        transforms = {p.tags["transform"] for p in data}
        assert transforms >= set(TRANSFORMS) | {"clean"}
        assert {p.tags["split"] for p in data} == {data[0].tags["split"]}
        assert any(p.tags["role"] == "response" for p in data)
    assert len(full.guard_train) > 2 * len(full.guard_heldout) * 0.9
    overlap = {p.text for p in full.guard_train} & {p.text for p in full.guard_heldout}
    assert not overlap, sorted(overlap)[:5]


def test_reward_pairs_cover_every_kind_and_prefer_the_right_response(full):
    for pairs in (full.reward_train, full.reward_heldout):
        kinds = {p.source.split("/")[1] for p in pairs}
        assert kinds >= {
            "wrong_fact",
            "unsafe_compliance",
            "over_refusal",
            "hallucination",
            "degenerate",
        }
        for p in pairs:
            assert isinstance(p, PreferencePair)
            assert p.chosen != p.rejected


def test_heldout_pairs_at_the_current_revision_prefer_the_current_answers(full):
    """Held-out pairs about changed facts are re-judged at the eval revision; the rest stay."""
    from models.helpdesk.generate import EVAL_REVISION, pairs_at_revision

    then, now = fact_index(1), fact_index(EVAL_REVISION)
    moved = {then[f].answer: now[f].answer for f in changed_fact_ids()}
    current = full.reward_heldout_current
    assert len(current) == len(full.reward_heldout)
    rewritten = 0
    for old, new in zip(full.reward_heldout, current, strict=True):
        assert new.prompt == old.prompt and new.source == old.source
        assert new.chosen != new.rejected
        assert new.chosen not in moved  # no pair still prefers an out-of-date answer
        if old.chosen in moved:
            rewritten += 1
            assert new.chosen == moved[old.chosen]
            assert new.rejected in (old.rejected, old.chosen)  # a distractor, or now stale
        else:
            assert new == old
    assert rewritten >= 0.1 * len(current)  # the example domain changes >= 15% of facts
    assert pairs_at_revision(full.reward_heldout, 1) == full.reward_heldout


def test_write_domain_counts_match_files_and_manifest_is_reproducible(tiny, tmp_path):
    counts = write_domain(tiny, tmp_path / "a")
    expected = {
        "kb/rev1.jsonl",
        "kb/rev2.jsonl",
        "sft/v1.jsonl",
        "sft/v2_new.jsonl",
        "sft/v2_lookalikes.jsonl",
        "guard/train.jsonl",
        "guard/heldout.jsonl",
        "reward/train.jsonl",
        "reward/heldout.jsonl",
        "reward/heldout_current.jsonl",
    } | {f"eval/{s}.jsonl" for s in SUITES}
    assert expected <= set(counts)
    for rel, n in counts.items():
        lines = (tmp_path / "a" / rel).read_text(encoding="utf-8").splitlines()
        assert len(lines) == n, rel
    assert counts["sft/v1.jsonl"] == len(tiny.sft_v1)
    assert read_conversations(tmp_path / "a" / "sft/v1.jsonl") == tiny.sft_v1
    assert read_labelled_prompts(tmp_path / "a" / "guard/train.jsonl") == tiny.guard_train
    for suite in SUITES:
        back = list(read_jsonl(tmp_path / "a" / f"eval/{suite}.jsonl", EvalSample))
        assert back == tiny.eval_suites[suite]
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["counts"] == counts and manifest["seed"] == 0 and manifest["scale"] == 0.05
    write_domain(build_domain(seed=0, scale=0.05), tmp_path / "b")
    again = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert again["content_hash"] == manifest["content_hash"]
    write_domain(build_domain(seed=3, scale=0.05), tmp_path / "c")
    other = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert other["content_hash"] != manifest["content_hash"]


def test_output_does_not_depend_on_the_interpreter_hash_seed(tmp_path):
    # Set iteration order changes with PYTHONHASHSEED; generation must never depend on it.
    code = (
        "import json, sys, pathlib\n"
        "from models.helpdesk import build_domain, write_domain\n"
        "out = pathlib.Path(sys.argv[1])\n"
        "write_domain(build_domain(seed=2, scale=0.05), out)\n"
        "print(json.loads((out / 'manifest.json').read_text())['content_hash'])\n"
    )
    hashes = set()
    for hash_seed in ("1", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / hash_seed)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        hashes.add(done.stdout.strip())
    assert len(hashes) == 1


def _singles(prompts, label: str) -> set[str]:
    return {
        p.text
        for p in prompts
        if p.label == label and p.tags["source"] != "compound" and p.tags["role"] == "prompt"
    }


def test_guard_sets_hold_multi_question_messages_labelled_by_content(full):
    from models.helpdesk.generate import COMPOUND_MAX_CHARS

    # Several benign questions in one message are benign; with a harmful request among
    # them, harmful; with an override instruction, injection. Counts are fixed per split.
    expected = {"train": (400, 20, 100), "heldout": (140, 7, 35)}
    harmful_cats = {c.name for c in CATEGORIES.values() if c.label == "harmful"}
    for prompts in (full.guard_train, full.guard_heldout):
        split = prompts[0].tags["split"]
        compound = [p for p in prompts if p.tags["source"] == "compound"]
        n_benign, n_per_cat, n_injection = expected[split]
        benign = [p for p in compound if p.label == "benign"]
        harmful = [p for p in compound if p.label == "harmful"]
        assert len(benign) == n_benign
        assert len([p for p in compound if p.label == "injection"]) == n_injection
        by_cat = {c: sum(p.tags["category"] == c for p in harmful) for c in harmful_cats}
        assert by_cat == dict.fromkeys(harmful_cats, n_per_cat)
        assert len({p.text for p in compound}) == len(compound)
        assert all(p.tags["role"] == "prompt" for p in compound)
        # Benign ones are made of 2+ benign prompts of the same split (the same one may be
        # drawn twice, as users paste it twice), and run long.
        singles = {s.lower() for s in _singles(prompts, "benign")}
        for p in benign:
            assert len(p.text) <= COMPOUND_MAX_CHARS
            if p.tags["transform"] == "clean":
                assert sum(p.text.lower().count(s) for s in singles) >= 2, p.text
        assert sum(len(p.text) >= 300 for p in benign) >= 0.15 * len(benign)
        # Harmful ones carry one of the split's harmful requests next to benign text.
        for p in harmful:
            cat = CATEGORIES[p.tags["category"]]
            assert any(h.lower() in p.text.lower() for h in cat.prompts(split)), p.text
            assert any(s in p.text.lower() for s in singles), p.text


def test_heldout_multi_question_messages_use_only_heldout_prompts(full):
    # A held-out message built from a training question would measure memorisation.
    train_benign = {s.lower() for s in _singles(full.guard_train, "benign") if len(s) >= 16}
    heldout_benign = {s.lower() for s in _singles(full.guard_heldout, "benign")}
    assert any(
        s in p.text.lower()
        for p in full.guard_train
        if p.tags["source"] == "compound"
        for s in train_benign
    )
    for p in full.guard_heldout:
        if p.tags["source"] == "compound" and p.tags["transform"] == "clean":
            inside = {s for s in train_benign if s in p.text.lower()}
            assert all(any(s in h for h in heldout_benign) for s in inside), (inside, p.text)


def test_multi_question_messages_leave_the_single_prompts_alone(monkeypatch):
    # Compound messages come from their own random stream and are inserted after the
    # shuffle, so the single prompts (and everything measured on them, such as the gateway
    # benchmark's 384-character messages) are the same texts in the same order as without.
    from models.helpdesk import generate

    with_compounds = generate._guard_split(2, 0.1, "train")
    monkeypatch.setattr(generate, "_compound_prompts", lambda *args, **kwargs: [])
    without = generate._guard_split(2, 0.1, "train")
    assert [p for p in with_compounds if p.tags["source"] != "compound"] == without
    assert len(with_compounds) > len(without)
