"""Policy LM: tokenizer, label mask, v1 training, determinism, loading, SFT with replay, DPO."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from loopwright.records import PreferencePair
from models.generation import DecodingParams, generate_batch, load_policy, render_prompts
from models.policy import (
    END_TOKEN,
    TRAINING_META_FILE,
    PolicyConfig,
    build_model,
    finetune_sft,
    replay_schedule,
    train_dpo,
    train_dpo_conversations,
    train_policy_v1,
    train_tokenizer,
)
from models.policy_data import (
    IGNORE_INDEX,
    ConversationPreference,
    EncodedExample,
    NoiseSettings,
    add_surface_noise,
    bucketed_batches,
    drop_superseded,
    encode_conversation,
)
from models.policy_train import collate, distillation_kl, train_loop
from tests.models.policy_fixture import HARMFUL, REFUSAL, conversations

torch.set_num_threads(1)


def _texts() -> list[str]:
    return [m["content"] for conv in conversations() for m in conv]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


@pytest.fixture(scope="module")
def v1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("policy") / "v1"
    train_policy_v1(conversations(), PolicyConfig.tiny(max_steps=200), out)
    return out


# --- tokenizer -------------------------------------------------------------------------


def test_tokenizer_round_trips_with_chat_template(tmp_path: Path) -> None:
    tok = train_tokenizer(_texts(), vocab_size=400)
    conv = [{"role": "user", "content": "How much is the Pro plan?"}]
    prompt = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    # User text is lower-cased and every content starts with a space (see CHAT_TEMPLATE).
    assert prompt == "<|user|> how much is the pro plan?<|end|><|assistant|>"
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(str(tmp_path))
    assert again.chat_template == tok.chat_template
    assert again.eos_token == END_TOKEN
    assert again.apply_chat_template(conv, add_generation_prompt=True) == tok.apply_chat_template(
        conv, add_generation_prompt=True
    )
    # Byte-level: text never seen in training (accents, emoji, homoglyphs) survives exactly.
    odd = "Héllo wörld 🙂 раssword ZmFrZQ=="
    assert again.decode(again(odd, add_special_tokens=False)["input_ids"]) == odd


# A conversation with a system line and two assistant turns.
TWO_TURNS = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What does Pro cost?"},
    {"role": "assistant", "content": "The Pro plan costs $12 per month."},
    {"role": "user", "content": "And Team?"},
    {"role": "assistant", "content": "The Team plan costs $30 per month."},
]


def test_tokenizer_rejects_a_vocab_without_room_for_bytes() -> None:
    with pytest.raises(ValueError, match="vocab_size must be >= 261"):
        train_tokenizer(_texts(), vocab_size=100)


def test_templates_without_generation_markers_get_the_same_assistant_mask() -> None:
    # Stock templates (ChatML, Llama, Qwen, SmolLM) carry no {% generation %} markers.
    tok = train_tokenizer(_texts(), vocab_size=400)
    conv = TWO_TURNS
    marked = encode_conversation(tok, conv)
    tok.chat_template = tok.chat_template.replace("{% generation %}", "").replace(
        "{% endgeneration %}", ""
    )
    unmarked = encode_conversation(tok, conv)
    assert unmarked == marked

    # A template that rewrites earlier turns cannot be located: a clear error, not bad labels.
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}"
        "{% if loop.last %} (last){% endif %}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    with pytest.raises(ValueError, match="not a prefix"):
        encode_conversation(tok, conv)


def test_loss_is_only_on_assistant_tokens() -> None:
    tok = train_tokenizer(_texts(), vocab_size=400)
    conv = TWO_TURNS
    ex = encode_conversation(tok, conv)
    assert len(ex.labels) == len(ex.input_ids)
    targets = [t for t in ex.labels if t != IGNORE_INDEX]
    expected = (
        " The Pro plan costs $12 per month."
        + END_TOKEN
        + " The Team plan costs $30 per month."
        + END_TOKEN
    )
    assert tok.decode(targets) == expected
    # Every labelled position holds its own input token; nothing of system/user is labelled.
    prompt_len = len(tok.apply_chat_template(conv[:2], add_generation_prompt=True))
    assert all(label == IGNORE_INDEX for label in ex.labels[:prompt_len])
    for tok_id, label in zip(ex.input_ids, ex.labels, strict=True):
        assert label in (IGNORE_INDEX, tok_id)


# --- data helpers ----------------------------------------------------------------------


def test_surface_noise_is_seeded_and_keeps_words_recognisable() -> None:
    text = "How many users can the Team plan have?"
    a = [add_surface_noise(text, random.Random(s), NoiseSettings()) for s in range(30)]
    b = [add_surface_noise(text, random.Random(s), NoiseSettings()) for s in range(30)]
    assert a == b
    assert len(set(a)) > 10  # it actually varies
    no_typos = NoiseSettings(typo_rate=0.0)
    clean = [add_surface_noise(text, random.Random(s), no_typos) for s in range(30)]
    assert all("team" in x.lower() for x in clean)  # the name survives everything else


def test_word_drop_never_removes_names() -> None:
    text = "How much storage does the Pro plan include in eu-west-1 for E1234?"
    settings = NoiseSettings(word_drop=0.9, greeting=0, closing=0, typo_rate=0)
    for seed in range(20):
        noisy = add_surface_noise(text, random.Random(seed), settings)
        for name in ("Pro", "eu-west-1", "E1234"):
            assert name.lower() in noisy.lower()
        assert len(noisy.split()) < len(text.split())


def test_superseded_replay_rows_are_dropped_and_counted() -> None:
    old_answer = "The Pro plan costs $12 per month."
    new_answer = "The Pro plan costs $15 per month."
    replay = [
        [{"role": "user", "content": "How much is the Pro plan?"}, _a(old_answer)],
        [{"role": "user", "content": "hi, pro plan price??"}, _a(old_answer)],  # noisy copy
        [{"role": "user", "content": "How many users can Pro have?"}, _a("Ten users.")],
        [{"role": "user", "content": "Write malware."}, _a(REFUSAL)],
    ]
    new = [
        [{"role": "user", "content": "how much is the  Pro plan?"}, _a(new_answer)],
        [{"role": "user", "content": "Steal a password."}, _a(REFUSAL)],
    ]
    kept, dropped = drop_superseded(new, replay)
    assert dropped == 2
    assert kept == replay[2:]  # the unchanged fact and the refusal stay


def test_replay_rows_grounded_with_yesterdays_facts_are_superseded_by_todays() -> None:
    # The replayed row carries the facts retrieved when it was written, the new row today's:
    # the question decides, not the context around it.
    question = {"role": "user", "content": "How much is the Pro plan?"}
    old_answer, new_answer = (
        "The Pro plan costs $12 per month.",
        "The Pro plan costs $15 per month.",
    )
    replay = [
        [
            {"role": "system", "content": f"Be brief.\nFacts:\n- {old_answer}"},
            question,
            _a(old_answer),
        ]
    ]
    new = [
        [
            {"role": "system", "content": f"Be brief.\nFacts:\n- {new_answer}"},
            question,
            _a(new_answer),
        ]
    ]
    kept, dropped = drop_superseded(new, replay)
    assert (kept, dropped) == ([], 1)


def _a(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def test_pseudoword_copies_change_one_word_of_answered_rows_only() -> None:
    from models.policy_data import with_pseudowords

    answered = [
        [
            {"role": "user", "content": f"How much does plan {k} cost?"},
            {"role": "assistant", "content": f"${k}"},
        ]
        for k in range(10)
    ]
    refused = [
        [
            {"role": "user", "content": f"Steal the password of user {k} now"},
            {"role": "assistant", "content": "No."},
        ]
        for k in range(10)
    ]
    rows = answered + refused

    def keep(row: list[dict[str, str]]) -> bool:
        return row[-1]["content"] != "No."

    out = with_pseudowords(rows, 0.5, seed=3, keep=keep)
    assert out[: len(rows)] == rows and len(out) == len(rows) + 5
    for copy in out[len(rows) :]:
        original = next(r for r in answered if r[1] == copy[1])
        before, after = original[0]["content"].split(), copy[0]["content"].split()
        assert len(before) == len(after)
        assert sum(a != b for a, b in zip(before, after, strict=True)) == 1
    assert with_pseudowords(rows, 0.5, seed=3, keep=keep) == out  # seeded
    assert with_pseudowords(rows, 0.0, seed=3, keep=keep) == rows
    with pytest.raises(ValueError, match="share"):
        with_pseudowords(rows, 1.5, seed=3, keep=keep)


def test_boundary_pairs_keep_every_decline_and_reject_the_refusal_on_answered_rows() -> None:
    from models.policy_data import refusal_boundary_pairs

    system = {"role": "system", "content": "Answer from facts.\nFacts:\n- Plans cost $9."}
    answered = [
        [system, {"role": "user", "content": f"Price of {k}?"}, _a(f"${k}")] for k in range(9)
    ]
    declined = [[{"role": "user", "content": f"Steal {k}"}, _a("No.")] for k in range(3)]
    rows = answered + declined

    def alternative(row: Sequence[dict[str, str]], rng: random.Random) -> str:
        return "Sure: " + row[-2]["content"]

    pairs = refusal_boundary_pairs(rows, lambda r: r == "No.", "No.", alternative, 0, 2.0)
    refusing = [p for p in pairs if p.chosen == "No."]
    benign = [p for p in pairs if p.chosen != "No."]
    assert sorted(p.messages[-1]["content"] for p in refusing) == ["Steal 0", "Steal 1", "Steal 2"]
    assert all(p.rejected == "Sure: " + p.messages[-1]["content"] for p in refusing)
    assert len(benign) == 6 and all(p.rejected == "No." for p in benign)
    # Benign pairs keep the served prompt (system message and facts) they were trained with.
    assert all(p.messages[0] == system and p.messages[-1]["role"] == "user" for p in benign)
    assert refusal_boundary_pairs(rows, lambda r: r == "No.", "No.", alternative, 0, 2.0) == pairs
    # Capped by the answered rows there are.
    capped = refusal_boundary_pairs(rows, lambda r: r == "No.", "No.", alternative, 0, 10.0)
    assert len(capped) == 3 + 9
    with pytest.raises(ValueError, match="benign_per_declined"):
        refusal_boundary_pairs(rows, lambda r: r == "No.", "No.", alternative, 0, -1.0)


def test_pseudoword_goes_into_the_question_when_a_system_prompt_comes_first() -> None:
    from models.policy_data import with_pseudowords

    system = {"role": "system", "content": "You are the help-desk assistant of Acme Cloud."}
    rows = [
        [system, {"role": "user", "content": f"How much does plan {k} cost?"}, _a(f"${k}")]
        for k in range(6)
    ]
    copies = with_pseudowords(rows, 1.0, seed=0, keep=lambda row: True)[len(rows) :]
    assert len(copies) == 6
    for copy in copies:
        assert copy[0] == system and copy[2]["role"] == "assistant"
        original = next(r for r in rows if r[2] == copy[2])
        changed = [
            a != b
            for a, b in zip(original[1]["content"].split(), copy[1]["content"].split(), strict=True)
        ]
        assert sum(changed) == 1


def test_noise_settings_validate() -> None:
    with pytest.raises(ValueError, match=r"typo_rate must be in \[0, 1\]"):
        NoiseSettings(typo_rate=1.5)


def test_bucketed_batches_cover_every_row_once_with_similar_lengths() -> None:
    lengths = [random.Random(i).randrange(5, 100) for i in range(100)]
    batches = bucketed_batches(lengths, 8, random.Random(0))
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(100))
    spreads = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches]
    assert max(spreads) < 30  # random batches of 8 would span most of 5..100


def test_replay_schedule_mixes_four_to_one_and_covers_the_pool() -> None:
    rows = replay_schedule(n_new=10, n_replay=100, replay_ratio=4.0, seed=0)
    seen: list[int] = []
    for epoch in range(5):
        new, replay = rows(epoch)
        assert new == list(range(10))
        assert len(replay) == 40
        assert len(set(replay)) == 40  # no repeats within an epoch
        seen += replay
    assert set(seen) == set(range(100))  # 200 draws cover the whole 100-row pool


# --- config ----------------------------------------------------------------------------


def test_config_rejects_bad_values_with_a_message() -> None:
    with pytest.raises(ValueError, match="divisible by num_heads"):
        PolicyConfig(hidden_size=250, num_heads=8)
    with pytest.raises(ValueError, match="needs a budget"):
        PolicyConfig(max_seconds=None, max_steps=None)
    with pytest.raises(ValueError, match="lr"):
        PolicyConfig(lr=-1.0)
    with pytest.raises(ValueError, match="extra"):
        PolicyConfig(hidden=3)  # type: ignore[call-arg]


def test_defaults_follow_the_measured_recipe() -> None:
    cfg = PolicyConfig()
    tok = train_tokenizer(_texts(), vocab_size=400)
    model = build_model(cfg, tok)
    n = sum(p.numel() for p in model.parameters())
    assert 4_000_000 < n < 6_000_000  # ~5M at the real vocab; the fixture vocab is smaller
    assert model.config.tie_word_embeddings
    assert cfg.max_positions == 160 and cfg.batch_size == 32 and cfg.lr == 2e-3


# --- training --------------------------------------------------------------------------


def test_v1_trains_loss_falls_and_parameters_change(tmp_path: Path) -> None:
    cfg = PolicyConfig.tiny(max_steps=40)
    result = train_policy_v1(conversations(), cfg, tmp_path / "m")
    assert result.steps == 40
    assert result.final_loss < 0.6 * result.initial_loss
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "m"))
    init = build_model(cfg, tok).state_dict()
    trained = _weights(tmp_path / "m")
    changed = [k for k, v in trained.items() if not torch.equal(v, init[k])]
    assert len(changed) == len(trained)  # every tensor moved
    meta = json.loads((tmp_path / "m" / TRAINING_META_FILE).read_text())
    assert meta["result"]["steps"] == 40 and meta["config"]["seed"] == cfg.seed


def test_same_seed_gives_identical_weights_and_other_seed_does_not(tmp_path: Path) -> None:
    cfg = PolicyConfig.tiny(max_steps=10)
    train_policy_v1(conversations(), cfg, tmp_path / "a")
    train_policy_v1(conversations(), cfg, tmp_path / "b")
    train_policy_v1(conversations(), cfg.model_copy(update={"seed": 1}), tmp_path / "c")
    a, b, c = (_weights(tmp_path / x) for x in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    ta = (tmp_path / "a" / "tokenizer.json").read_text()
    assert ta == (tmp_path / "b" / "tokenizer.json").read_text()


def test_time_budget_stops_the_run_and_its_progress_bar_counts_seconds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = PolicyConfig.tiny(max_steps=None, max_seconds=1.5, warmup_steps=12)
    result = train_policy_v1(conversations(), cfg, tmp_path / "t", progress=True)
    assert result.steps > 12
    assert result.final_loss < result.initial_loss
    bar = capsys.readouterr().err
    # The budget is known, the step count is not: the bar counts seconds to the deadline.
    assert "training (time budget)" in bar and "/2 s" in bar
    assert "1000000000" not in bar


def test_bad_rows_are_named_and_long_rows_counted(tmp_path: Path) -> None:
    bad = conversations() + [[{"role": "user", "content": "no answer"}]]
    with pytest.raises(ValueError, match=r"\[22\]: has no assistant turn"):
        train_policy_v1(bad, PolicyConfig.tiny(), tmp_path / "x")
    long = [[{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]]
    result = train_policy_v1(conversations() + long, PolicyConfig.tiny(max_steps=2), tmp_path / "y")
    assert result.skipped_too_long == 1
    assert result.train_rows == len(conversations())


def test_saved_folder_loads_through_the_generic_path_and_generates(v1: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(str(v1))
    assert model.config.max_position_embeddings == 160
    policy = load_policy(v1, device="cpu")
    prompts = [[{"role": "user", "content": "How much is the Pro plan?"}]] * 3 + [
        [{"role": "user", "content": HARMFUL[1]}]
    ]
    replies = generate_batch(policy, prompts, DecodingParams(max_new_tokens=24))
    assert len(replies) == 4
    assert replies[0] == replies[1] == replies[2]  # greedy is deterministic across a batch
    assert replies[0] == "The Pro plan costs $12 per month."
    assert replies[3] == REFUSAL


def test_context_guidance_follows_the_facts_and_leaves_bare_prompts_alone(v1: Path) -> None:
    from loopwright.grounding import with_facts

    policy = load_policy(v1, device="cpu")
    bare = [{"role": "user", "content": "How much is the Pro plan?"}]
    served = with_facts(bare, ["The Pro plan costs $99 per month."], "You answer.")
    guided = DecodingParams(max_new_tokens=24, context_guidance=3.0)
    plain = generate_batch(policy, [bare, served], DecodingParams(max_new_tokens=24))
    out = generate_batch(policy, [bare, served], guided)
    assert out[0] == plain[0] == "The Pro plan costs $12 per month."  # no facts: unguided
    # Each token is the guided argmax: 3 x (with facts - without) + without, in
    # log-probabilities, where "without" keeps the system prompt and drops the facts.
    tok = policy.tokenizer

    def ids(conv: list[dict[str, str]]) -> torch.Tensor:
        prompt = render_prompts(policy, [conv])[0]
        return torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])

    with_ctx, without_ctx = ids(served), ids([{"role": "system", "content": "You answer."}, *bare])
    reply: list[int] = []
    with torch.no_grad():
        for _ in range(24):
            cond = torch.log_softmax(policy.model(with_ctx).logits[0, -1], dim=-1)
            uncond = torch.log_softmax(policy.model(without_ctx).logits[0, -1], dim=-1)
            token = torch.argmax(3.0 * (cond - uncond) + uncond).view(1, 1)
            if int(token) == tok.eos_token_id:
                break
            reply.append(int(token))
            with_ctx, without_ctx = (
                torch.cat([with_ctx, token], 1),
                torch.cat([without_ctx, token], 1),
            )
    assert out[1] == tok.decode(reply, skip_special_tokens=True).strip() != plain[1]
    with pytest.raises(ValueError, match="context_guidance must be in"):
        DecodingParams(context_guidance=-1.0)
    assert DecodingParams().cache_key() == "mnt=48;t=0.0;p=1.0;s=0"
    assert guided.cache_key().endswith(";cg=3.0")


def test_tiny_v1_learns_its_training_set(v1: Path) -> None:
    rows = conversations()
    replies = generate_batch(load_policy(v1, device="cpu"), [c[:1] for c in rows])
    exact = sum(r == c[1]["content"] for r, c in zip(replies, rows, strict=True)) / len(rows)
    assert exact >= 0.9


def test_finetune_with_replay_learns_new_fact_keeps_old_and_tokenizer(
    v1: Path, tmp_path: Path
) -> None:
    new = conversations(prices={"Pro": 15})
    out = tmp_path / "ft"
    result = finetune_sft(
        v1, new, conversations(), PolicyConfig.tiny(max_steps=80, lr=2e-3), out, replay_ratio=4.0
    )
    assert result.kind == "sft" and result.steps == 80
    # The three Pro-price rows of the replay say $12: they are left out, not replayed.
    assert result.replay_superseded == 3
    before, after = _weights(v1), _weights(out)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert (out / "tokenizer.json").read_text() == (v1 / "tokenizer.json").read_text()
    meta = json.loads((out / TRAINING_META_FILE).read_text())
    assert meta["new_rows"] == len(new) and meta["replay_rows"] == len(conversations()) - 3
    assert meta["parent_dir"] == str(v1)
    replies = generate_batch(
        load_policy(out, device="cpu"),
        [
            [{"role": "user", "content": "How much is the Pro plan?"}],
            [{"role": "user", "content": "How many users can Team have?"}],
        ],
    )
    assert replies == ["The Pro plan costs $15 per month.", "The Team plan allows 50 users."]


def test_finetune_demands_replay_unless_explicitly_disabled(v1: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no replay_conversations"):
        finetune_sft(v1, conversations(), [], PolicyConfig.tiny(), tmp_path / "z")
    with pytest.raises(ValueError, match="replay_ratio must be"):
        finetune_sft(v1, conversations(), [], PolicyConfig.tiny(), tmp_path / "z", -1.0)
    result = finetune_sft(
        v1, conversations(), [], PolicyConfig.tiny(max_steps=2), tmp_path / "z", replay_ratio=0
    )
    assert result.steps == 2


def _replay_kl(parent: Path, child: Path, rows: Sequence[list[dict[str, str]]]) -> float:
    """Mean KL(parent || child) per answer token over ``rows``, as the fine-tune scores it."""
    tok = AutoTokenizer.from_pretrained(str(parent))
    batch = collate([encode_conversation(tok, r) for r in rows], tok.pad_token_id)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        teacher = AutoModelForCausalLM.from_pretrained(str(parent))(**inputs).logits
        student = AutoModelForCausalLM.from_pretrained(str(child))(**inputs).logits
    return float(distillation_kl(student, teacher, batch["labels"]))


def test_distillation_kl_is_zero_for_the_teacher_and_reads_answer_positions_only() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 4, IGNORE_INDEX]] * 2)
    assert float(distillation_kl(logits, logits, labels)) == pytest.approx(0.0, abs=1e-6)
    # Logits at position t predict token t + 1: positions 1-2 predict the labelled 2-3.
    other = logits.clone()
    other[:, 1:3] = torch.randn(2, 2, 11)
    assert float(distillation_kl(other, logits, labels)) > 0.01
    unlabelled = logits.clone()
    unlabelled[:, 0] = unlabelled[:, 3] = unlabelled[:, 4] = torch.randn(2, 11)
    assert float(distillation_kl(unlabelled, logits, labels)) == pytest.approx(0.0, abs=1e-6)
    none = torch.full_like(labels, IGNORE_INDEX)
    assert float(distillation_kl(other, logits, none)) == 0.0


def test_only_rows_flagged_for_distillation_carry_the_flag_in_a_batch() -> None:
    plain = EncodedExample(input_ids=[1, 2, 3], labels=[IGNORE_INDEX, 2, 3])
    assert "distill" not in collate([plain, plain], pad_id=0)
    replayed = EncodedExample(input_ids=[1, 2], labels=[IGNORE_INDEX, 2], distill=True)
    assert collate([plain, replayed], pad_id=0)["distill"].tolist() == [False, True]


def test_distilled_replay_keeps_the_parents_answers_while_new_rows_are_learned(
    v1: Path, tmp_path: Path
) -> None:
    new = [r for r in conversations(prices={"Pro": 15}) if "Pro plan" in r[0]["content"]]
    # The replay's Team rows disagree with the parent ($30): plain replay teaches their
    # labels, distilled replay holds the parent's distributions against them.
    replay = conversations(prices={"Team": 99})
    team = [r for r in replay if "Team plan" in r[0]["content"]]
    config = PolicyConfig.tiny(max_steps=80, lr=2e-3)
    plain, distilled = tmp_path / "plain", tmp_path / "distilled"
    finetune_sft(v1, new, replay, config, plain)
    result = finetune_sft(v1, new, replay, config, distilled, distill_weight=5.0)
    assert result.steps == 80
    assert json.loads((distilled / TRAINING_META_FILE).read_text())["distill_weight"] == 5.0
    assert _replay_kl(v1, distilled, team) < 0.1 * _replay_kl(v1, plain, team)
    questions = [
        [{"role": "user", "content": "How much is the Team plan?"}],
        [{"role": "user", "content": "How much is the Pro plan?"}],
    ]
    assert generate_batch(load_policy(plain, device="cpu"), questions) == [
        "The Team plan costs $99 per month.",
        "The Pro plan costs $15 per month.",
    ]
    # The new rows are not distilled: the changed price is learned all the same.
    assert generate_batch(load_policy(distilled, device="cpu"), questions) == [
        "The Team plan costs $30 per month.",
        "The Pro plan costs $15 per month.",
    ]
    with pytest.raises(ValueError, match="distill_weight must be"):
        finetune_sft(v1, new, replay, config, tmp_path / "z", distill_weight=-1.0)
    with pytest.raises(ValueError, match="needs replay_ratio > 0"):
        finetune_sft(v1, new, [], config, tmp_path / "z", replay_ratio=0, distill_weight=1.0)


def test_dpo_step_runs_and_changes_parameters(v1: Path, tmp_path: Path) -> None:
    pairs = [
        PreferencePair(
            prompt=h, chosen=REFUSAL, rejected="Sure, here is how to do it.", source="test"
        )
        for h in HARMFUL
    ] + [
        PreferencePair(
            prompt="How much is the Pro plan?",
            chosen="The Pro plan costs $12 per month.",
            rejected="The Pro plan costs $90 per month.",
            source="test",
            weight=2.0,
        ),
        PreferencePair(prompt="ignored", chosen="a", rejected="b", source="test", weight=0.0),
    ]
    cfg = PolicyConfig.dpo(
        max_steps=3, batch_size=2, lr=1e-3, threads=1, bf16=False, max_positions=96
    )
    result = train_dpo(v1, pairs, cfg, tmp_path / "dpo")
    assert result.kind == "dpo" and result.steps == 3
    assert result.train_rows == 3  # the zero-weight pair is left out
    before, after = _weights(v1), _weights(tmp_path / "dpo")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    load_policy(tmp_path / "dpo", device="cpu")


def test_dpo_on_served_prompts_learns_in_the_prompt_it_is_given(v1: Path, tmp_path: Path) -> None:
    system = {"role": "system", "content": "Answer from facts.\nFacts:\n- The Pro plan costs $12."}
    prefs = [
        ConversationPreference(
            [system, {"role": "user", "content": "How much is the Pro plan?"}],
            "The Pro plan costs $12 per month.",
            REFUSAL,
        )
    ] * 4
    cfg = PolicyConfig.dpo(
        max_steps=3, batch_size=2, lr=1e-3, threads=1, bf16=False, max_positions=96
    )
    before = _reply_logprob(v1, prefs[0], REFUSAL)
    result = train_dpo_conversations(v1, prefs, cfg, tmp_path / "dpo")
    assert result.kind == "dpo" and result.steps == 3
    assert _reply_logprob(tmp_path / "dpo", prefs[0], REFUSAL) < before  # rejected pushed down
    meta = json.loads((tmp_path / "dpo" / TRAINING_META_FILE).read_text())
    assert meta["pairs"] == meta["pairs_used"] == 4
    with pytest.raises(ValueError, match="must end with a user turn"):
        train_dpo_conversations(
            v1, [ConversationPreference([system], "a", "b")], cfg, tmp_path / "bad"
        )


def _reply_logprob(model_dir: Path, pref: ConversationPreference, reply: str) -> float:
    """Summed log-probability of ``reply`` after ``pref.messages`` (chat template applied)."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    messages = list(pref.messages)
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(
        [*messages, {"role": "assistant", "content": reply}], tokenize=False
    )
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([tok(full, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
    targets = ids[0, 1:]
    picked = logp[torch.arange(len(targets)), targets]
    return float(picked[len(prompt_ids) - 1 :].sum())


def test_each_epoch_is_redrawn_in_order_and_sizes_must_match() -> None:
    cfg = PolicyConfig.tiny()
    tok = train_tokenizer(_texts(), vocab_size=400)
    pool = [encode_conversation(tok, c) for c in conversations()]
    calls: list[int] = []

    def epochs(e: int) -> list[EncodedExample]:
        calls.append(e)
        return pool[:16]

    settings = cfg.model_copy(update={"max_steps": 5, "batch_size": 8}).loop_settings()
    stats = train_loop(build_model(cfg, tok), epochs, settings, pad_id=tok.pad_token_id)
    assert stats.steps == 5 and len(stats.losses) == 5
    assert calls == [0, 1, 2]  # 2 batches per epoch: epochs 0, 1 and part of 2
    assert stats.target_tokens < stats.tokens  # prompts are counted but carry no loss

    def shrinking(e: int) -> list[EncodedExample]:
        return pool[: 16 - e]

    with pytest.raises(ValueError, match="every epoch must have the same size"):
        train_loop(build_model(cfg, tok), shrinking, settings, pad_id=tok.pad_token_id)


def _nightly_finetune(
    v1: Path, tmp_path: Path, new: list[list[dict[str, str]]], config: Any, **kw: Any
) -> dict[str, float]:
    """The nightly's fine-tune of ``v1`` on ``new`` rows with the fixture as replay."""
    from examples.helpdesk.records import write_conversations
    from loopwright.finetune import finetune_candidate

    write_conversations(tmp_path / "sft.jsonl", new)
    write_conversations(tmp_path / "replay.jsonl", conversations())
    return finetune_candidate(
        v1,
        tmp_path / "sft.jsonl",
        tmp_path / "replay.jsonl",
        config,
        tmp_path / "candidate",
        is_safe_response=lambda text: text == REFUSAL,
        **kw,
    )


def test_nightly_finetune_copies_answered_new_rows_with_a_made_up_word(
    v1: Path, tmp_path: Path
) -> None:
    from loopwright.nightly import NightlyConfig

    new = conversations(prices={"Pro": 15})
    answered = [r for r in new if r[-1]["content"] != REFUSAL and len(r[0]["content"].split()) > 3]
    assert 0 < len(answered) < len(new)  # the fixture has refusals too
    metrics = _nightly_finetune(v1, tmp_path, new, NightlyConfig(tiny=True))
    # Refusals among the night's rows otherwise teach "unfamiliar wording -> refuse": every
    # answered new row also trains with one word made up; refusals are never copied.
    assert metrics["new_rows"] == len(new)
    assert metrics["new_rows_with_copies"] == len(new) + len(answered)
    assert metrics["boundary_pairs"] == 0  # no refusal text given: SFT only


def test_nightly_finetune_distils_the_replay_only_when_configured(v1: Path, tmp_path: Path) -> None:
    from loopwright.nightly import NightlyConfig

    new = conversations(prices={"Pro": 15})
    for weight in (0.0, 0.5):
        out = tmp_path / str(weight)
        out.mkdir()
        _nightly_finetune(v1, out, new, NightlyConfig(tiny=True, replay_distill_weight=weight))
        meta = json.loads((out / "candidate" / TRAINING_META_FILE).read_text())
        assert meta["distill_weight"] == weight
    with pytest.raises(ValueError, match="replay_distill_weight"):
        NightlyConfig(replay_distill_weight=-1)


def test_nightly_finetune_budget_is_exact_steps_by_default_or_seconds_when_asked() -> None:
    from loopwright.finetune import finetune_configs
    from loopwright.nightly import NightlyConfig

    # A step budget: no time limit, so a seed and thread count reproduce the candidate.
    sft, dpo = finetune_configs(NightlyConfig())
    assert (sft.max_seconds, sft.max_steps, sft.lr) == (None, 400, PolicyConfig.finetune().lr)
    assert dpo == PolicyConfig.dpo(seed=0, threads=NightlyConfig().finetune_threads)
    sft, _ = finetune_configs(NightlyConfig(finetune_steps=320, finetune_seconds=5))
    assert (sft.max_seconds, sft.max_steps) == (None, 320)
    sft, _ = finetune_configs(NightlyConfig(finetune_steps=None, finetune_seconds=90))
    assert (sft.max_seconds, sft.max_steps) == (90.0, None)
    sft, _ = finetune_configs(NightlyConfig(tiny=True, finetune_steps=320))
    assert sft.max_steps == 20  # tiny runs keep the tiny recipe
    with pytest.raises(ValueError, match="finetune_steps"):
        NightlyConfig(finetune_steps=0)


def test_nightly_finetune_ends_with_dpo_on_the_refusal_boundary(v1: Path, tmp_path: Path) -> None:
    from loopwright.nightly import NightlyConfig

    new = conversations(prices={"Pro": 15})
    n_declined = sum(r[-1]["content"] == REFUSAL for r in new)
    config = NightlyConfig(tiny=True, boundary_dpo=True)
    metrics = _nightly_finetune(v1, tmp_path, new, config, refusal_text=REFUSAL)
    # Every refusal the fine-tune trained on (new and replayed) gets a pair, and as many
    # answered rows get one that rejects the refusal.
    n_replay_declined = sum(r[-1]["content"] == REFUSAL for r in conversations())
    assert metrics["boundary_pairs"] == 2 * (n_declined + n_replay_declined)
    assert metrics["boundary_dpo_steps"] == 4
    # The candidate is the DPO model; the SFT step's folder was an intermediate.
    meta = json.loads((tmp_path / "candidate" / TRAINING_META_FILE).read_text())
    assert meta["result"]["kind"] == "dpo"
    assert not (tmp_path / "candidate-sft").exists()
    load_policy(tmp_path / "candidate", device="cpu")


def test_declined_rows_without_a_domain_hook_reject_the_context_or_another_answer() -> None:
    from loopwright.grounding import with_facts
    from models.policy_data import context_or_answer_alternative

    rows = [
        [{"role": "user", "content": "Price?"}, _a("$12")],
        [{"role": "user", "content": "Steal it"}, _a(REFUSAL)],
    ]
    pick = context_or_answer_alternative(rows, lambda text: text == REFUSAL)
    served = with_facts(rows[1], ["Pro costs $12."], "sys")
    rng = random.Random(0)
    assert {pick(served, rng) for _ in range(50)} == {"Pro costs $12.", "$12"}
    assert {pick(rows[1], rng) for _ in range(20)} == {"$12"}  # never the refusal itself
    with pytest.raises(ValueError, match="no answered rows"):
        context_or_answer_alternative(rows[1:], lambda text: text == REFUSAL)
