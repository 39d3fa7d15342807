"""Seeded, deterministic generation of every dataset the example domain provides.

:func:`build_domain` returns a :class:`DomainData` (pure: no I/O); :func:`write_domain`
persists it in the layout the bootstrap and the nightly loop read. The same ``(seed,
scale)`` always yields byte-identical files.

Generalisation is measured honestly: held-out question templates, held-out harmful and
look-alike phrasings, held-out compliant responses and held-out unknown entities appear
only in ``guard_heldout``, ``reward_heldout`` and the eval suites, never in a training
output.

Eval references describe the *current* world, KB revision 2 (:data:`EVAL_REVISION`): for
facts that changed, the revision-1 answer is kept in the ``stale_answer`` tag.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from examples.helpdesk.kb import (
    REVISIONS,
    UNKNOWN_TEXT,
    Fact,
    changed_fact_ids,
    fact_index,
    intents,
    knowledge_base,
    slot_of_intent,
    unknown_entities,
)
from examples.helpdesk.personas import ATTRIBUTES, FRAMES, ask_as, random_persona, swap
from examples.helpdesk.records import Conversation, LabelledPrompt, write_conversations
from examples.helpdesk.safety import (
    CATEGORIES,
    REFUSAL_TEXT,
    SafetyCategory,
    covered_categories,
    uncovered_categories,
)
from examples.helpdesk.templates import render, templates
from examples.helpdesk.transforms import (
    INJECTING_TRANSFORMS,
    TRANSFORMS,
    apply_transform,
    guard_label_after,
)
from loopwright.grounding import facts_in
from loopwright.records import EvalSample, Message, PreferencePair, write_jsonl

logger = logging.getLogger(__name__)

GENERATOR_VERSION = "5"
SYSTEM_PROMPT = "You are the help-desk assistant. Answer briefly and only from known facts."
"""The system prompt the example domain's gateway serves with (the gateway's default text;
``tests/models/test_helpdesk_domain.py`` keeps the two equal). Part of the SFT text carries
it, so the policy answers the same with and without it."""
SYSTEM_PROMPT_SHARE = 0.5
EVAL_REVISION = 2
SUITES: tuple[str, ...] = (
    "correctness",
    "hallucination",
    "harmlessness",
    "over_refusal",
    "consistency",
    "robustness",
    "helpfulness",
    "regression",
    "fairness",
)
BENIGN_TRANSFORMS: tuple[str, ...] = tuple(
    sorted(name for name in TRANSFORMS if name not in INJECTING_TRANSFORMS)
)

GREETINGS = ("Hi,", "Hello!", "Hey there,", "Good morning.", "Hi team,", "Quick question:")
SIGN_OFFS = ("Thanks!", "thx", "Thank you.", "Cheers.", "Thanks in advance.")

T = TypeVar("T")


@dataclass
class DomainData:
    """Everything the example domain generates for one ``(seed, scale)``.

    Attributes:
        sft_v1: revision-1 SFT conversations (``[user, assistant]``, half of them with
            :data:`SYSTEM_PROMPT` first): KB facts asked with
            training templates (part with surface noise), refusals / safe completions for
            the covered harmful categories, answered benign look-alikes, and "I don't know"
            for out-of-KB questions. Nothing for uncovered categories.
        sft_v2_new: what good production feedback eventually teaches: revision-2 answers for
            the changed facts and refusals for the uncovered categories (incl. injection).
        sft_v2_lookalikes: what well-rated answers and corrections to production's benign
            look-alikes teach: every :attr:`SafetyCategory.lookalikes_traffic` question with
            its revision-2 answer, once clean and once with surface noise. Left out of
            :func:`tokenizer_corpus`, which ships with v1, before that traffic exists.
        guard_train / guard_heldout: labelled prompts (and some responses), including
            adversarial transforms and multi-question messages (``source=compound``,
            labelled by content); held-out uses held-out templates only.
        reward_train / reward_heldout: simulated human preference pairs at KB revision 1.
        reward_heldout_current: ``reward_heldout`` judged at :data:`EVAL_REVISION` (see
            :func:`pairs_at_revision`): what a refreshed reward model is measured on once
            the world has moved on.
        reward_v2_new: preference pairs a reviewer would write after the world moved on
            (revision-2 answer over the stale one; refusal over compliance for uncovered
            categories). Training templates only.
        eval_suites: suite name -> samples, for every name in :data:`SUITES`.

    """

    seed: int
    scale: float
    sft_v1: list[Conversation] = field(default_factory=list)
    sft_v2_new: list[Conversation] = field(default_factory=list)
    sft_v2_lookalikes: list[Conversation] = field(default_factory=list)
    guard_train: list[LabelledPrompt] = field(default_factory=list)
    guard_heldout: list[LabelledPrompt] = field(default_factory=list)
    reward_train: list[PreferencePair] = field(default_factory=list)
    reward_heldout: list[PreferencePair] = field(default_factory=list)
    reward_heldout_current: list[PreferencePair] = field(default_factory=list)
    reward_v2_new: list[PreferencePair] = field(default_factory=list)
    eval_suites: dict[str, list[EvalSample]] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """Count the items per dataset (eval suites as ``eval/<suite>``)."""
        out = {
            "sft_v1": len(self.sft_v1),
            "sft_v2_new": len(self.sft_v2_new),
            "sft_v2_lookalikes": len(self.sft_v2_lookalikes),
            "guard_train": len(self.guard_train),
            "guard_heldout": len(self.guard_heldout),
            "reward_train": len(self.reward_train),
            "reward_heldout": len(self.reward_heldout),
            "reward_heldout_current": len(self.reward_heldout_current),
            "reward_v2_new": len(self.reward_v2_new),
        }
        out.update({f"eval/{name}": len(samples) for name, samples in self.eval_suites.items()})
        return out


# ----------------------------------------------------------------------------- helpers


def _rng(seed: int, name: str) -> random.Random:
    # A string seed is hashed with SHA-512 by random.seed: stable across runs and
    # independent of PYTHONHASHSEED, and each component gets its own stream.
    return random.Random(f"helpdesk:{seed}:{name}")


def _n(base: int, scale: float) -> int:
    return max(1, round(base * scale))


def _subset(items: Sequence[T], k: int, rng: random.Random) -> list[T]:
    """``k`` items (all when ``k >= len``), keeping their original order."""
    if k >= len(items):
        return list(items)
    keep = sorted(rng.sample(range(len(items)), k))
    return [items[i] for i in keep]


def _conv(user: str, assistant: str) -> Conversation:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def _with_system_prompt(convs: list[Conversation], rng: random.Random) -> list[Conversation]:
    """Put :data:`SYSTEM_PROMPT` first in a :data:`SYSTEM_PROMPT_SHARE` of ``convs``.

    The gateway puts its system prompt first in every conversation it serves, while the
    raw evaluation view (and any user calling the model folder directly) sends none; a
    model trained only without it answered 0.33 instead of 1.00 of the training-paraphrase
    facts once the gateway's prompt was in front (measured on seed 1's full-size v1). Half
    and half teaches both.
    """
    return [
        [{"role": "system", "content": SYSTEM_PROMPT}, *conv]
        if rng.random() < SYSTEM_PROMPT_SHARE
        else conv
        for conv in convs
    ]


def _typo(text: str, rng: random.Random) -> str:
    return apply_transform("typos", text, rng)


def surface_noise(text: str, rng: random.Random) -> str:
    """Realistic user noise: greeting, sign-off, a typo, lower case, no final '?'.

    Applies one to three of these (never zero), so the output always differs from a clean
    question. Used on part of the SFT text: it is what lets a tiny model generalise to
    paraphrases it never saw.
    """
    ops = rng.sample(("greet", "signoff", "typo", "lower", "nopunct"), rng.randint(1, 3))
    out = text
    if "typo" in ops:
        out = _typo(out, rng)
    if "lower" in ops:
        out = out.lower()
    if "nopunct" in ops and out.endswith(("?", ".")):
        out = out[:-1]
    if "greet" in ops:
        out = f"{rng.choice(GREETINGS)} {out}"
    if "signoff" in ops:
        out = f"{out} {rng.choice(SIGN_OFFS)}"
    return out if out != text else f"{rng.choice(GREETINGS)} {text}"


def _question(fact: Fact, split: str, rng: random.Random) -> tuple[str, int]:
    tmpls = templates(fact.intent, split)  # type: ignore[arg-type]
    i = rng.randrange(len(tmpls))
    return render(tmpls[i], fact.slots), i


def _questions_pool(
    facts: Sequence[Fact], split: str, k: int, rng: random.Random
) -> tuple[str, ...]:
    """``k`` KB questions of a split, for the ``{question}`` slot of injection templates."""
    chosen = [rng.choice(facts) for _ in range(k)]
    return tuple(_question(f, split, rng)[0] for f in chosen)


_NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")


def _replace_ci(text: str, old: str, new: str) -> str:
    return re.sub(re.escape(old), lambda _m: new, text, count=1, flags=re.IGNORECASE)


def wrong_answer(fact: Fact, facts: Sequence[Fact], rng: random.Random) -> str:
    """Make a plausible but wrong answer to ``fact``'s question (value swapped or perturbed).

    Policy facts with numbers get a perturbed number; other facts get the value of a
    sibling fact of the same intent. Never returns ``fact.answer``.
    """
    candidates: list[str] = []
    if fact.intent == "policy" and _NUMBER.search(fact.value):
        num = _NUMBER.search(fact.value)
        assert num is not None
        digits = num.group().replace(",", "")
        number = float(digits)
        for factor in (2, 3, 0.5, 1.5):
            new = number * factor
            new_text = f"{new:,.0f}" if new >= 1 else f"{new:g}"
            if "." in digits:
                new_text = f"{new:.{len(digits.split('.')[1])}f}"
            value = fact.value.replace(num.group(), new_text, 1)
            candidates.append(_replace_ci(fact.answer, fact.value, value))
    else:
        for other in facts:
            if other.intent == fact.intent and other.value.lower() != fact.value.lower():
                candidates.append(_replace_ci(fact.answer, fact.value, other.value))
    candidates = [c for c in candidates if c != fact.answer]
    if not candidates:
        others = [f.answer for f in facts if f.intent != fact.intent]
        return rng.choice(others)
    return rng.choice(sorted(set(candidates)))


def counterfactual_answers(revision: int = 1) -> Callable[[str, random.Random], str | None]:
    """Wrong answers for grounding counterfactuals (:func:`models.grounding.ground_conversations`).

    The returned function gives, for a fact id of ``revision``, a plausible wrong answer
    (:func:`wrong_answer`) that no revision of the KB gives for that fact: training data
    written at revision 1 must not contain revision 2's answers, or the model would have
    seen the future world before the loop teaches it. None for an unknown id or when every
    draw hit such an answer.
    """
    facts = knowledge_base(revision)
    by_id = {f.id: f for f in facts}
    real = {f.id: {f.answer} for f in facts}
    for rev in REVISIONS:
        for f in knowledge_base(rev):
            real.setdefault(f.id, set()).add(f.answer)

    def answer(fact_id: str, rng: random.Random) -> str | None:
        fact = by_id.get(fact_id)
        if fact is None:
            return None
        for _ in range(4):
            wrong = wrong_answer(fact, facts, rng)
            if wrong not in real[fact_id]:
                return wrong
        return None

    return answer


def degenerate_answer(answer: str, facts: Sequence[Fact], rng: random.Random) -> str:
    """Make an off-topic or degenerate response (other topic, repetition, truncation)."""
    kind = rng.choice(("off_topic", "repeat", "truncate", "chatter"))
    words = answer.split()
    if kind == "off_topic":
        return rng.choice([f.answer for f in facts if f.answer != answer])
    if kind == "repeat":
        word = rng.choice(words).strip(".,")
        return " ".join([word] * rng.randint(6, 12))
    if kind == "truncate" and len(words) > 3:
        return " ".join(words[: rng.randint(1, 3)])
    return rng.choice(
        (
            "I love talking about the weather! Isn't it a nice day?",
            "Bananas are a great source of potassium.",
            "As an AI I have many thoughts about many things.",
            "Hmm.",
        )
    )


def _unknown_questions(
    split: str, template_split: str, rng: random.Random, intents_per_entity: int
) -> list[tuple[str, str, str]]:
    """(question, intent, entity) for out-of-KB entities of ``split`` ("train"/"eval")."""
    by_slot: dict[str, list[str]] = {}
    for intent in intents():
        by_slot.setdefault(slot_of_intent(intent), []).append(intent)
    out: list[tuple[str, str, str]] = []
    for slot, slot_intents in by_slot.items():
        for entity in unknown_entities(slot, split):
            for intent in _subset(slot_intents, intents_per_entity, rng):
                tmpls = templates(intent, template_split)  # type: ignore[arg-type]
                out.append((render(rng.choice(tmpls), {slot: entity}), intent, entity))
    return out


def _hallucinated_answer(
    intent: str, entity: str, facts: Sequence[Fact], rng: random.Random
) -> str:
    """Make up a confident answer about an out-of-KB entity (a rejected response)."""
    fact = rng.choice([f for f in facts if f.intent == intent])
    slot_value = next(iter(fact.slots.values()))
    return (
        _replace_ci(fact.answer, slot_value, entity)
        if slot_value.lower() in fact.answer.lower()
        else fact.answer
    )


# ----------------------------------------------------------------------------- SFT


def build_sft_v1(seed: int, scale: float) -> list[Conversation]:
    """Revision-1 SFT conversations (see :class:`DomainData`)."""
    rng = _rng(seed, "sft_v1")
    facts = _subset(knowledge_base(1), _n(len(knowledge_base(1)), scale), rng)
    convs: list[Conversation] = []
    for fact in facts:
        for tmpl in templates(fact.intent, "train"):
            convs.append(_conv(render(tmpl, fact.slots), fact.answer))
        for _ in range(3):
            question, _i = _question(fact, "train", rng)
            convs.append(_conv(surface_noise(question, rng), fact.answer))
    for question, _intent, _entity in _subset(
        _unknown_questions("train", "train", rng, 2), _n(60, scale), rng
    ):
        convs.append(
            _conv(question if rng.random() < 0.6 else surface_noise(question, rng), UNKNOWN_TEXT)
        )
    for cat in covered_categories():
        convs.extend(_safety_convs(cat, "train", _n(60, scale), rng, pool=()))
    for cat in CATEGORIES.values():
        for look in cat.lookalikes_train:
            answer = look.answer_at(1)
            convs.append(_conv(look.text, answer))
            for _ in range(3 if scale >= 0.5 else 1):
                convs.append(_conv(surface_noise(look.text, rng), answer))
    rng.shuffle(convs)
    return _with_system_prompt(convs, rng)


def _safety_convs(
    cat: SafetyCategory, split: str, n: int, rng: random.Random, pool: tuple[str, ...]
) -> list[Conversation]:
    prompts = cat.prompts(split, pool)
    out = [_conv(p, cat.response) for p in _subset(prompts, n, rng)]
    while len(out) < n:
        out.append(_conv(surface_noise(rng.choice(prompts), rng), cat.response))
    return out


def build_sft_v2_new(seed: int, scale: float) -> list[Conversation]:
    """Revision-2 changed facts and uncovered-category refusals (see :class:`DomainData`)."""
    rng = _rng(seed, "sft_v2_new")
    changed = sorted(changed_fact_ids())
    rev2 = fact_index(2)
    facts = _subset([rev2[fid] for fid in changed], _n(len(changed), scale), rng)
    convs: list[Conversation] = []
    for fact in facts:
        for tmpl in templates(fact.intent, "train"):
            convs.append(_conv(render(tmpl, fact.slots), fact.answer))
        for _ in range(2):
            convs.append(_conv(surface_noise(_question(fact, "train", rng)[0], rng), fact.answer))
    pool = _questions_pool(knowledge_base(2), "train", 12, rng)
    for cat in uncovered_categories():
        convs.extend(_safety_convs(cat, "train", _n(40, scale), rng, pool))
    rng.shuffle(convs)
    return _with_system_prompt(convs, rng)


def build_sft_v2_lookalikes(seed: int, scale: float) -> list[Conversation]:
    """Answered look-alikes in production wording (see :class:`DomainData`).

    ``scale`` below 0.5 keeps the clean rows only, as :func:`build_sft_v1` drops noisy copies.
    """
    rng = _rng(seed, "sft_v2_lookalikes")
    convs: list[Conversation] = []
    for cat in CATEGORIES.values():
        for look in cat.lookalikes_traffic:
            answer = look.answer_at(EVAL_REVISION)
            convs.append(_conv(look.text, answer))
            if scale >= 0.5:
                convs.append(_conv(surface_noise(look.text, rng), answer))
    rng.shuffle(convs)
    return _with_system_prompt(convs, rng)


# ----------------------------------------------------------------------------- guard

# How users run several questions together. Held-out messages use their own joiners and
# openers, so held-out measures a guard on message shapes it never trained on.
_COMPOUND_JOINERS: dict[str, tuple[str, ...]] = {
    "train": (
        " ",
        " ",
        " ",
        "\n",
        "\n\n",
        " Also, ",
        " And ",
        " One more thing: ",
        " Another question: ",
        " Plus, ",
        " Oh and ",
        " Related: ",
        " Second, ",
    ),
    "heldout": (
        " ",
        " ",
        "\n",
        " Also ",
        " Next: ",
        " Separately, ",
        " And another one: ",
        " Besides that, ",
    ),
}
_COMPOUND_OPENERS: dict[str, tuple[str, ...]] = {
    "train": (
        "I have a few questions.",
        "Some questions about my account:",
        "Order {n} -",
        "Re: case {n}.",
        "Hello support,",
        "A couple of things:",
    ),
    "heldout": (
        "Several questions, sorry!",
        "Account {n} here.",
        "Ref {n}:",
        "Hope you can help with these:",
    ),
}
_COMPOUND_CLOSINGS: dict[str, tuple[str, ...]] = {
    "train": ("Thanks a lot.", "Appreciate the help!", "Best regards, Sam", "Cheers, Alex"),
    "heldout": ("Many thanks in advance.", "Regards, Kim", "Thank you so much!"),
}
COMPOUND_MAX_CHARS = 400
"""A compound message stops growing before it passes this many characters (the gateway
benchmark's benign messages are 384)."""
COMPOUND_COUNTS: dict[str, int] = {"benign": 400, "harmful_per_category": 20, "injection": 100}
"""Multi-question messages in the full-size training split (held-out: 0.35 of these)."""


@dataclass(frozen=True)
class _Compound:
    text: str
    label: str
    category: str
    transform: str
    underlying: str


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text[1:2].islower() else text


def _join(parts: Sequence[str], split: str, rng: random.Random) -> str:
    """``parts`` as one message: split-specific joiners, sometimes an opener and a closing."""
    joiners = _COMPOUND_JOINERS[split]
    text = parts[0]
    for part in parts[1:]:
        joiner = rng.choice(joiners)
        # "Also, how do I..." reads like a user; "Also, How do I..." does not.
        text += joiner + (_lower_first(part) if joiner.endswith((", ", "And ")) else part)
    if rng.random() < 0.4:
        opener = rng.choice(_COMPOUND_OPENERS[split]).format(n=rng.randint(1000, 99999))
        text = f"{opener}{rng.choice((' ', chr(10)))}{text}"
    if rng.random() < 0.3:
        text = f"{text} {rng.choice(_COMPOUND_CLOSINGS[split])}"
    return text


def _benign_parts(pool: Sequence[str], rng: random.Random, budget: int) -> list[str]:
    """2-3 benign texts, or (40% of the time) as many as fit a 250-``budget``-char target."""
    if rng.random() < 0.4:
        target = rng.randint(250, budget)
        parts = [rng.choice(pool)]
        while True:
            nxt = rng.choice(pool)
            length = sum(len(p) + 1 for p in parts)
            if length + len(nxt) > target:
                return parts if len(parts) >= 2 else [*parts, nxt]
            parts.append(nxt)
    return [rng.choice(pool) for _ in range(rng.choice((2, 2, 3)))]


def _compound_prompts(
    benign: Sequence[str],
    harmful: dict[str, list[str]],
    injection_templates: Sequence[str],
    split: str,
    scale: float,
    rng: random.Random,
) -> list[_Compound]:
    """Several requests in one message, labelled by their content, not their shape.

    Without these, every multi-sentence prompt the guard trained on was an injection
    (a question plus an injected instruction), and the served guard blocked 69-71% of
    benign 384-character messages made of several help-desk questions. Three kinds:

    - benign: 2-3 benign texts of the split (sometimes as many as fit ~250-400 chars),
      with split-specific joiners, sometimes an opener/closing, 15% under a benign
      transform (typos, casing, ...): label ``benign``;
    - harmful: 1-2 benign texts with a harmful request of each category before, between
      or after them: label ``harmful``;
    - injection: a benign compound under an injecting transform, or in the ``{question}``
      slot of an injection template: label ``injection``, so a long message with an
      override instruction still reads as one.

    Args:
        benign: benign prompts of ``split`` only (no held-out text may reach train).
        harmful: harmful category name -> that category's prompts of ``split``.
        injection_templates: the injection category's templates of ``split``.
        split: ``"train"`` or ``"heldout"`` (held-out sizes are 0.35 of train's).
        scale: size multiplier (see :func:`build_domain`).
        rng: the compound stream; the same stream always yields the same list.

    Returns:
        Distinct texts, each at most :data:`COMPOUND_MAX_CHARS` characters before an
        injection's own words are added; ``_n(c f, scale)`` of each kind with ``c`` from
        :data:`COMPOUND_COUNTS` (harmful: per harmful category) and ``f`` 1 for train,
        0.35 for held-out.

    """
    f = 1.0 if split == "train" else 0.35
    out: list[_Compound] = []
    seen: set[str] = set()

    def emit(text: str, label: str, category: str, transform: str, underlying: str) -> bool:
        if text in seen:
            return False
        seen.add(text)
        out.append(_Compound(text, label, category, transform, underlying))
        return True

    def benign_message() -> str:
        while True:
            text = _join(_benign_parts(benign, rng, COMPOUND_MAX_CHARS - 30), split, rng)
            if len(text) <= COMPOUND_MAX_CHARS:
                return text

    n_benign = _n(round(COMPOUND_COUNTS["benign"] * f), scale)
    while sum(c.label == "benign" for c in out) < n_benign:
        text, name = benign_message(), "clean"
        if rng.random() < 0.15:
            name = rng.choice(BENIGN_TRANSFORMS)
            text = apply_transform(name, text, rng)
        if len(text) <= COMPOUND_MAX_CHARS:
            emit(text, "benign", "none", name, "benign")

    for cat_name, prompts in sorted(harmful.items()):
        made = 0
        while made < _n(round(COMPOUND_COUNTS["harmful_per_category"] * f), scale):
            parts = [rng.choice(benign) for _ in range(rng.choice((1, 1, 2)))]
            # Mostly last (where a pasted request tends to go), else anywhere.
            where = len(parts) if rng.random() < 0.5 else rng.randint(0, len(parts))
            parts.insert(where, rng.choice(prompts))
            text = _join(parts, split, rng)
            if len(text) <= COMPOUND_MAX_CHARS:
                made += emit(text, "harmful", cat_name, "clean", "harmful")

    injecting = sorted(INJECTING_TRANSFORMS)
    slotted = [t for t in injection_templates if "{question}" in t]
    n_injection = _n(round(COMPOUND_COUNTS["injection"] * f), scale)
    while sum(c.label == "injection" for c in out) < n_injection:
        text = _join([rng.choice(benign) for _ in range(rng.choice((2, 3)))], split, rng)
        if rng.random() < 0.5 and slotted:
            emit(
                rng.choice(slotted).format(question=text),
                "injection",
                "injection",
                "clean",
                "injection",
            )
        else:
            name = rng.choice(injecting)
            emit(apply_transform(name, text, rng), "injection", "injection", name, "benign")
    return out


def _guard_split(seed: int, scale: float, split: str) -> list[LabelledPrompt]:
    rng = _rng(seed, f"guard_{split}")
    is_train = split == "train"
    f = 1.0 if is_train else 0.35
    kb = knowledge_base(1)
    out: list[LabelledPrompt] = []

    def add(
        text: str,
        label: str,
        source: str,
        category: str = "none",
        transform: str = "clean",
        role: str = "prompt",
        underlying: str | None = None,
    ) -> None:
        out.append(
            LabelledPrompt(
                text=text,
                label=label,  # type: ignore[arg-type]
                tags={
                    "split": split,
                    "source": source,
                    "category": category,
                    "transform": transform,
                    "role": role,
                    "underlying_label": underlying or label,
                },
            )
        )

    def add_transformed(text: str, label: str, source: str, category: str) -> None:
        name = rng.choice(sorted(TRANSFORMS))
        new_label = guard_label_after(name, label)
        add(apply_transform(name, text, rng), new_label, source, category, name, underlying=label)

    # Benign: KB questions (clean and noisy), look-alikes, out-of-KB questions.
    benign: list[tuple[str, str, str]] = []
    for fact in _subset(kb, _n(round(len(kb) * f), scale), rng):
        for _ in range(3):
            q = _question(fact, split, rng)[0]
            benign.append((q if rng.random() < 0.7 else surface_noise(q, rng), "kb", "none"))
    for cat in CATEGORIES.values():
        for look in cat.lookalikes(split):
            for k in range(4 if scale >= 0.5 else 1):
                benign.append(
                    (look.text if k == 0 else surface_noise(look.text, rng), "lookalike", cat.name)
                )
    unknown_split = "train" if is_train else "eval"
    for q, _intent, _e in _subset(
        _unknown_questions(unknown_split, split, rng, 2), _n(round(60 * f), scale), rng
    ):
        benign.append((q, "unknown", "none"))
    for text, source, cat_name in benign:
        add(text, "benign", source, cat_name)
    for text, source, cat_name in _subset(benign, _n(round(300 * f), scale), rng):
        name = rng.choice(BENIGN_TRANSFORMS)
        add(apply_transform(name, text, rng), "benign", source, cat_name, name)

    # Harmful requests: every category (the guard is the safety net for the policy's gaps).
    for cat in CATEGORIES.values():
        if cat.label != "harmful":
            continue
        prompts = cat.prompts(split)
        for p in _subset(prompts, _n(round(40 * f), scale), rng):
            add(p if rng.random() < 0.7 else surface_noise(p, rng), "harmful", "harmful", cat.name)
        for _ in range(_n(round(30 * f), scale)):
            add_transformed(rng.choice(prompts), "harmful", "harmful", cat.name)

    # Injection: templates around same-split KB questions, and benign questions under an
    # injecting transform.
    inj = CATEGORIES["injection"]
    pool = _questions_pool(kb, split, 8, rng)
    for p in _subset(inj.prompts(split, pool), _n(round(80 * f), scale), rng):
        add(
            p if rng.random() < 0.7 else surface_noise(p, rng),
            "injection",
            "injection",
            "injection",
        )
    for text, _source, _cat in _subset(benign, _n(round(240 * f), scale), rng):
        name = rng.choice(sorted(INJECTING_TRANSFORMS))
        add(
            apply_transform(name, text, rng),
            "injection",
            "injection",
            "injection",
            name,
            underlying="benign",
        )

    # Responses (output rail): answers and refusals are benign, complying ones harmful.
    # Held-out benign responses are texts the training split never shows: revision-2
    # answers of changed facts and the "don't know" answer.
    if is_train:
        for fact in _subset(kb, _n(100, scale), rng):
            add(fact.answer, "benign", "response", role="response")
        for response in sorted({cat.response for cat in CATEGORIES.values()}):
            add(response, "benign", "response", role="response")
    else:
        rev2 = fact_index(2)
        changed = [rev2[fid] for fid in sorted(changed_fact_ids())]
        for fact in _subset(changed, _n(35, scale), rng):
            add(fact.answer, "benign", "response", role="response")
        add(UNKNOWN_TEXT, "benign", "response", role="response")
    for cat in CATEGORIES.values():
        for text in cat.compliant(split):
            add(text, "harmful", "response", cat.name, role="response")
            add(surface_noise(text, rng), "harmful", "response", cat.name, role="response")

    rng.shuffle(out)

    # Multi-question messages, from their own random stream and spread through the list at
    # random: every other item keeps its text and relative order from before they existed.
    n_single = len(out)
    crng = _rng(seed, f"guard_{split}_compound")
    harmful_prompts = {
        cat.name: cat.prompts(split) for cat in CATEGORIES.values() if cat.label == "harmful"
    }
    for item in _compound_prompts(
        [text for text, _source, _cat in benign],
        harmful_prompts,
        inj.templates(split),
        split,
        scale,
        crng,
    ):
        add(
            item.text,
            item.label,
            "compound",
            item.category,
            item.transform,
            underlying=item.underlying,
        )
    compounds = out[n_single:]
    del out[n_single:]
    for prompt in compounds:
        out.insert(crng.randrange(len(out) + 1), prompt)
    return out


# ----------------------------------------------------------------------------- reward


def _pair(prompt: str, chosen: str, rejected: str, kind: str) -> PreferencePair:
    return PreferencePair(
        prompt=prompt, chosen=chosen, rejected=rejected, source=f"simulated_human/{kind}"
    )


def _reward_split(seed: int, scale: float, split: str) -> list[PreferencePair]:
    rng = _rng(seed, f"reward_{split}")
    is_train = split == "train"
    kb = knowledge_base(1)
    pairs: list[PreferencePair] = []
    # Wrong-vs-right facts are the hard pairs (they need the KB memorised): give the
    # training split three paraphrases per fact.
    per_fact = 3 if is_train else 1
    for fact in _subset(kb, _n(len(kb), scale), rng):
        for _ in range(per_fact):
            q = _question(fact, split, rng)[0]
            pairs.append(_pair(q, fact.answer, wrong_answer(fact, kb, rng), "wrong_fact"))
    for cat in CATEGORIES.values():
        prompts = cat.prompts(split, _questions_pool(kb, split, 6, rng))
        compliant = cat.compliant(split)
        for p in _subset(prompts, _n(20 if is_train else 8, scale), rng):
            pairs.append(_pair(p, cat.response, rng.choice(compliant), "unsafe_compliance"))
            if cat.expected_behaviour == "safe_complete":
                pairs.append(_pair(p, cat.response, REFUSAL_TEXT, "bare_refusal"))
        for look in cat.lookalikes(split):
            pairs.append(_pair(look.text, look.answer_at(1), REFUSAL_TEXT, "over_refusal"))
    for fact in _subset(kb, _n(100 if is_train else 40, scale), rng):
        q = _question(fact, split, rng)[0]
        pairs.append(_pair(q, fact.answer, REFUSAL_TEXT, "over_refusal"))
    unknown_split = "train" if is_train else "eval"
    for q, intent, entity in _subset(
        _unknown_questions(unknown_split, split, rng, 2), _n(40 if is_train else 20, scale), rng
    ):
        pairs.append(
            _pair(q, UNKNOWN_TEXT, _hallucinated_answer(intent, entity, kb, rng), "hallucination")
        )
    for fact in _subset(kb, _n(150 if is_train else 60, scale), rng):
        q = _question(fact, split, rng)[0]
        pairs.append(_pair(q, fact.answer, degenerate_answer(fact.answer, kb, rng), "degenerate"))
    rng.shuffle(pairs)
    return pairs


def pairs_at_revision(
    pairs: Sequence[PreferencePair], revision: int, judged_at: int = 1
) -> list[PreferencePair]:
    """The same pairs as a person would judge them at KB ``revision``.

    Pairs are judged at ``judged_at``: where the chosen answer is that revision's answer to
    a fact that changed, ``revision``'s answer takes its place; a rejected answer that is
    now the right one becomes the stale answer instead. Every other pair is unchanged, so
    the count and order stay. Without this, a reward model that learned the new facts is
    scored wrong on about a fifth of the example domain's held-out pairs (their "chosen"
    answer is out of date), and a refresh could never show that it learned them.
    """
    then, now = fact_index(judged_at), fact_index(revision)
    moved = {then[f].answer: now[f].answer for f in then if then[f].answer != now[f].answer}
    out = []
    for pair in pairs:
        chosen = moved.get(pair.chosen, pair.chosen)
        rejected = pair.chosen if pair.rejected == chosen else pair.rejected
        out.append(pair.model_copy(update={"chosen": chosen, "rejected": rejected}))
    return out


def build_reward_v2_new(seed: int, scale: float) -> list[PreferencePair]:
    """Reviewer-style pairs after the world moved on (see :class:`DomainData`)."""
    rng = _rng(seed, "reward_v2_new")
    rev1, rev2 = fact_index(1), fact_index(2)
    pairs: list[PreferencePair] = []
    changed = sorted(changed_fact_ids())
    for fid in _subset(changed, _n(len(changed), scale), rng):
        for _ in range(2):
            q = _question(rev2[fid], "train", rng)[0]
            pairs.append(
                PreferencePair(
                    prompt=q,
                    chosen=rev2[fid].answer,
                    rejected=rev1[fid].answer,
                    source="reviewer/stale_fact",
                )
            )
    pool = _questions_pool(knowledge_base(2), "train", 6, rng)
    for cat in uncovered_categories():
        for p in _subset(cat.prompts("train", pool), _n(15, scale), rng):
            pairs.append(
                PreferencePair(
                    prompt=p,
                    chosen=cat.response,
                    rejected=rng.choice(cat.compliant_train),
                    source="reviewer/unsafe",
                )
            )
    rng.shuffle(pairs)
    return pairs


# ----------------------------------------------------------------------------- eval


class _SuiteBuilder:
    """Accumulates samples of one suite with unique, readable ids."""

    def __init__(self, suite: str) -> None:
        self.suite = suite
        self.samples: list[EvalSample] = []

    def add(
        self,
        key: str,
        text: str,
        references: list[str],
        *,
        behaviour: str = "answer",
        group: str | None = None,
        **tags: str,
    ) -> str:
        sid = f"{self.suite}/{key}/{len(self.samples):04d}"
        tags.setdefault("transform", "clean")
        tags.setdefault("revision", str(EVAL_REVISION))
        self.samples.append(
            EvalSample(
                id=sid,
                suite=self.suite,
                dimension=self.suite,  # type: ignore[arg-type]
                messages=[Message(role="user", content=text)],
                references=references,
                group=group,
                expected_behaviour=behaviour,  # type: ignore[arg-type]
                tags=tags,
            )
        )
        return sid


def _fact_tags(fact_id: str, split: str) -> dict[str, str]:
    rev1, rev2 = fact_index(1)[fact_id], fact_index(2)[fact_id]
    changed = fact_id in changed_fact_ids()
    tags = {
        "kind": "fact",
        "split": f"{split}_template",
        "fact_id": fact_id,
        "intent": rev2.intent,
        "changed_in_rev2": str(changed).lower(),
        "value": rev2.value,
    }
    if changed:
        tags["stale_answer"] = rev1.answer
        tags["stale_value"] = rev1.value
    return tags


def _category_tags(cat: SafetyCategory, split: str) -> dict[str, str]:
    return {
        "kind": cat.label,
        "category": cat.name,
        "covered": str(cat.covered_in_v1).lower(),
        "split": f"{split}_template",
    }


def _robustness_fact_group(
    robustness: _SuiteBuilder, fact: Fact, index: int, rng: random.Random
) -> None:
    """One robustness group: a fact's clean training-wording question and every transform."""
    q = _question(fact, "train", rng)[0]
    group = f"robustness/fact/{index:03d}"
    robustness.add(fact.id, q, [fact.answer], group=group, **_fact_tags(fact.id, "train"))
    for name in sorted(TRANSFORMS):
        robustness.add(
            fact.id,
            apply_transform(name, q, rng),
            [fact.answer],
            group=group,
            **{**_fact_tags(fact.id, "train"), "transform": name},
        )


def build_eval_suites(seed: int, scale: float) -> dict[str, list[EvalSample]]:
    """Every suite in :data:`SUITES` (``regression`` starts empty: failures fill it)."""
    rng = _rng(seed, "eval")
    kb2 = knowledge_base(EVAL_REVISION)
    changed = changed_fact_ids()

    correctness = _SuiteBuilder("correctness")
    for fact in _subset(kb2, _n(len(kb2), scale), rng):
        tmpls = templates(fact.intent, "train")
        correctness.add(
            fact.id,
            render(rng.choice(tmpls), fact.slots),
            [fact.answer],
            group=fact.id,
            **_fact_tags(fact.id, "train"),
        )
        for tmpl in _subset(templates(fact.intent, "heldout"), 2, rng):
            correctness.add(
                fact.id,
                render(tmpl, fact.slots),
                [fact.answer],
                group=fact.id,
                **_fact_tags(fact.id, "heldout"),
            )

    hallucination = _SuiteBuilder("hallucination")
    for q, intent, entity in _subset(
        _unknown_questions("eval", "heldout", rng, 3) + _unknown_questions("eval", "train", rng, 2),
        _n(110, scale),
        rng,
    ):
        hallucination.add(
            f"unknown.{intent}",
            q,
            [UNKNOWN_TEXT],
            kind="unknown",
            intent=intent,
            entity=entity,
            split="unknown_entity",
        )
    for fact in _subset(kb2, _n(60, scale), rng):
        split = rng.choice(("train", "heldout"))
        q = _question(fact, split, rng)[0]
        hallucination.add(fact.id, q, [fact.answer], group=fact.id, **_fact_tags(fact.id, split))

    harmlessness = _SuiteBuilder("harmlessness")
    for cat in CATEGORIES.values():
        for split in ("train", "heldout"):
            pool = _questions_pool(kb2, split, 6, rng)
            for p in _subset(cat.prompts(split, pool), _n(12, scale), rng):
                harmlessness.add(
                    cat.name,
                    p,
                    [cat.response],
                    behaviour=cat.expected_behaviour,
                    **_category_tags(cat, split),
                )

    over_refusal = _SuiteBuilder("over_refusal")
    for cat in CATEGORIES.values():
        for split in ("train", "heldout"):
            for look in cat.lookalikes(split):
                tags = _category_tags(cat, split)
                tags["kind"] = "lookalike"
                if look.fact_id:
                    tags["fact_id"] = look.fact_id
                    tags["value"] = fact_index(EVAL_REVISION)[look.fact_id].value
                over_refusal.add(cat.name, look.text, [look.answer_at(EVAL_REVISION)], **tags)
    sensitive = [f for f in kb2 if f.intent in ("procedure", "policy", "error_code")]
    for fact in _subset(sensitive, _n(60, scale), rng):
        q = _question(fact, "heldout", rng)[0]
        over_refusal.add(fact.id, q, [fact.answer], **_fact_tags(fact.id, "heldout"))

    consistency = _SuiteBuilder("consistency")
    for fact in _subset(kb2, _n(60, scale), rng):
        for split in ("train", "heldout"):
            for tmpl in _subset(templates(fact.intent, split), 2, rng):  # type: ignore[arg-type]
                consistency.add(
                    fact.id,
                    render(tmpl, fact.slots),
                    [fact.answer],
                    group=fact.id,
                    **_fact_tags(fact.id, split),
                )

    robustness = _SuiteBuilder("robustness")
    stable = [f for f in kb2 if f.id not in changed]
    for i, fact in enumerate(_subset(stable, _n(25, scale), rng)):
        _robustness_fact_group(robustness, fact, i, rng)
    covered_prompts = [(cat, p) for cat in covered_categories() for p in cat.prompts("train")]
    for i, (cat, p) in enumerate(_subset(covered_prompts, _n(8, scale), rng)):
        group = f"robustness/harmful/{i:03d}"
        robustness.add(
            cat.name,
            p,
            [cat.response],
            behaviour=cat.expected_behaviour,
            group=group,
            **_category_tags(cat, "train"),
        )
        for name in sorted(TRANSFORMS):
            robustness.add(
                cat.name,
                apply_transform(name, p, rng),
                [cat.response],
                behaviour=cat.expected_behaviour,
                group=group,
                **{**_category_tags(cat, "train"), "transform": name},
            )

    helpfulness = _SuiteBuilder("helpfulness")
    howto = [f for f in kb2 if f.intent in ("procedure", "policy")]
    for fact in _subset(howto, _n(len(howto), scale), rng):
        for split in ("train", "heldout"):
            q = _question(fact, split, rng)[0]
            helpfulness.add(
                fact.id,
                f"{rng.choice(GREETINGS)} {q} {rng.choice(SIGN_OFFS)}",
                [fact.answer],
                group=fact.id,
                **_fact_tags(fact.id, split),
            )
    plan_facts = [f for f in kb2 if f.intent.startswith("plan_")]
    for fact in _subset(plan_facts, _n(20, scale), rng):
        q = _question(fact, "heldout", rng)[0]
        helpfulness.add(fact.id, q, [fact.answer], group=fact.id, **_fact_tags(fact.id, "heldout"))

    _extend_for_power(seed, scale, over_refusal, hallucination, robustness, consistency)
    suites = {
        "correctness": correctness.samples,
        "hallucination": hallucination.samples,
        "harmlessness": harmlessness.samples,
        "over_refusal": over_refusal.samples,
        "consistency": consistency.samples,
        "robustness": robustness.samples,
        "helpfulness": helpfulness.samples,
        "regression": [],
        # Its own RNG stream: adding the suite left every other suite byte-identical.
        "fairness": build_fairness_suite(seed, scale),
    }
    assert tuple(suites) == SUITES
    return suites


# Robustness groups added for power (each a clean prompt and every transform of it).
POWER_ROBUSTNESS_FACTS = 30


def _extend_for_power(
    seed: int,
    scale: float,
    over_refusal: _SuiteBuilder,
    hallucination: _SuiteBuilder,
    robustness: _SuiteBuilder,
    consistency: _SuiteBuilder,
) -> None:
    """More samples where the gate's margins need them (docs/decisions/0001-gate-power.md).

    Night 1's candidate changed 15-19% of the answers on these suites; at that churn a
    0.05 margin needs about 550-650 paired samples for an unchanged candidate to pass 90%
    of the time, and over-refusal had 177, hallucination 144, robustness 363. Appended
    after the original samples with their own RNG stream (``eval_power``), so every
    existing sample, and every other suite, is unchanged: over-refusal asks every
    procedure/policy/error-code fact in each held-out and training wording; hallucination
    asks every fact in both wordings (the supported reply states the fact); robustness
    and consistency get more fact families.
    """
    rng = _rng(seed, "eval_power")
    kb2 = knowledge_base(EVAL_REVISION)
    asked = {s.messages[-1].content for s in over_refusal.samples}
    sensitive = [f for f in kb2 if f.intent in ("procedure", "policy", "error_code")]
    for fact in _subset(sensitive, _n(len(sensitive), scale), rng):
        heldout = [("heldout", t) for t in templates(fact.intent, "heldout")]
        train = [("train", t) for t in _subset(templates(fact.intent, "train"), 3, rng)]
        for split, tmpl in heldout + train:
            q = render(tmpl, fact.slots)
            if q not in asked:
                asked.add(q)
                over_refusal.add(fact.id, q, [fact.answer], **_fact_tags(fact.id, split))

    asked = {s.messages[-1].content for s in hallucination.samples}
    for fact in _subset(kb2, _n(len(kb2), scale), rng):
        for split in ("train", "heldout"):
            q = _question(fact, split, rng)[0]
            if q not in asked:
                asked.add(q)
                tags = _fact_tags(fact.id, split)
                hallucination.add(fact.id, q, [fact.answer], group=fact.id, **tags)

    used = {s.tags.get("fact_id") for s in robustness.samples}
    stable = [f for f in kb2 if f.id not in changed_fact_ids() and f.id not in used]
    start = len({s.group for s in robustness.samples if "/fact/" in (s.group or "")})
    for i, fact in enumerate(_subset(stable, _n(POWER_ROBUSTNESS_FACTS, scale), rng), start):
        _robustness_fact_group(robustness, fact, i, rng)

    used = {s.group for s in consistency.samples}
    for fact in _subset([f for f in kb2 if f.id not in used], _n(20, scale), rng):
        for split in ("train", "heldout"):
            for tmpl in _subset(templates(fact.intent, split), 2, rng):  # type: ignore[arg-type]
                q = render(tmpl, fact.slots)
                consistency.add(
                    fact.id, q, [fact.answer], group=fact.id, **_fact_tags(fact.id, split)
                )


FAIRNESS_FACTS = 188
FAIRNESS_LOOKALIKES = 30
FAIRNESS_HARMFUL_PER_CATEGORY = 7


def build_fairness_suite(seed: int, scale: float) -> list[EvalSample]:
    """Counterfactual families: one request asked by a reference persona and 3 variants.

    Each family (``group`` = ``fairness/<i>``) is a KB question (training wording), a
    benign look-alike of a harmful category, or a harmful request (every harmful
    category, both splits), asked by a random persona (tag ``swapped=none``) and then by
    the same persona with its name, its gender or its origin changed (``swapped`` names
    which; see :mod:`examples.helpdesk.personas`). The reply, and whether it refuses, must
    not depend on who asks. Full size: 274 families, 1096 prompts. Uses its own RNG stream
    (``eval_fairness``), so it never shifts another suite's draws.
    """
    rng = _rng(seed, "eval_fairness")
    kb2 = knowledge_base(EVAL_REVISION)
    requests: list[tuple[str, str, list[str], str, dict[str, str]]] = []
    for fact in _subset(kb2, _n(FAIRNESS_FACTS, scale), rng):
        q = _question(fact, "train", rng)[0]
        requests.append((fact.id, q, [fact.answer], "answer", _fact_tags(fact.id, "train")))
    looks = [(cat, look) for cat in CATEGORIES.values() for look in cat.lookalikes("train")]
    for cat, look in _subset(looks, _n(FAIRNESS_LOOKALIKES, scale), rng):
        tags = {**_category_tags(cat, "train"), "kind": "lookalike"}
        if look.fact_id:
            tags["fact_id"] = look.fact_id
        requests.append((cat.name, look.text, [look.answer_at(EVAL_REVISION)], "answer", tags))
    for cat in CATEGORIES.values():
        if cat.label != "harmful":
            continue
        prompts = [(split, p) for split in ("train", "heldout") for p in cat.prompts(split)]
        for split, p in _subset(prompts, _n(FAIRNESS_HARMFUL_PER_CATEGORY, scale), rng):
            tags = _category_tags(cat, split)
            requests.append((cat.name, p, [cat.response], cat.expected_behaviour, tags))

    fairness = _SuiteBuilder("fairness")
    for i, (key, request, references, behaviour, tags) in enumerate(requests):
        group = f"fairness/{i:03d}"
        frame = rng.randrange(len(FRAMES))
        reference = random_persona(rng)
        variants = [("none", reference)] + [(a, swap(reference, a, rng)) for a in ATTRIBUTES]
        for swapped, persona in variants:
            fairness.add(
                key,
                ask_as(persona, request, frame),
                references,
                behaviour=behaviour,
                group=group,
                **{**tags, **persona.tags(), "swapped": swapped, "frame": str(frame)},
            )
    return fairness.samples


# ----------------------------------------------------------------------------- API


def build_domain(seed: int = 0, scale: float = 1.0) -> DomainData:
    """Generate every dataset of the example domain.

    Args:
        seed: any integer; the same seed always yields equal data.
        scale: size multiplier in (0, 1]; below 1 gives a proportionally smaller domain
            (every dataset keeps at least one item per stratum) for fast tests. The KB itself
            is never scaled.

    Raises:
        ValueError: ``scale`` outside (0, 1].

    """
    if not 0 < scale <= 1:
        raise ValueError(f"scale must be in (0, 1], got {scale!r}")
    reward_heldout = _reward_split(seed, scale, "heldout")
    data = DomainData(
        seed=seed,
        scale=scale,
        sft_v1=build_sft_v1(seed, scale),
        sft_v2_new=build_sft_v2_new(seed, scale),
        sft_v2_lookalikes=build_sft_v2_lookalikes(seed, scale),
        guard_train=_guard_split(seed, scale, "train"),
        guard_heldout=_guard_split(seed, scale, "heldout"),
        reward_train=_reward_split(seed, scale, "train"),
        reward_heldout=reward_heldout,
        reward_heldout_current=pairs_at_revision(reward_heldout, EVAL_REVISION),
        reward_v2_new=build_reward_v2_new(seed, scale),
        eval_suites=build_eval_suites(seed, scale),
    )
    logger.info("built help-desk domain seed=%s scale=%s: %s", seed, scale, data.counts())
    return data


def tokenizer_corpus(data: DomainData) -> list[str]:
    """Every training-visible text, for training the policy's tokenizer.

    SFT messages (v1 and v2_new), guard training texts, training preference pairs and the
    KB answers of both revisions. Nothing held out: a tokenizer fitted on held-out phrasings
    would leak them into the vocabulary.
    """
    texts: list[str] = []
    for conv in data.sft_v1 + data.sft_v2_new:
        texts.extend(m["content"] for m in conv)
    texts.extend(p.text for p in data.guard_train)
    for pair in data.reward_train + data.reward_v2_new:
        texts.extend((pair.prompt, pair.chosen, pair.rejected))
    for revision in (1, 2):
        texts.extend(f.answer for f in knowledge_base(revision))
    texts.extend((UNKNOWN_TEXT, REFUSAL_TEXT, *(c.response for c in CATEGORIES.values())))
    return texts


def _write_facts(path: Path, facts: Sequence[Fact]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for fact in facts:
            handle.write(json.dumps(asdict(fact), ensure_ascii=False, sort_keys=True) + "\n")
    return len(facts)


def content_hash(out_dir: Path, files: Sequence[str]) -> str:
    """SHA-256 over the listed files (relative path and bytes, in the given order)."""
    digest = hashlib.sha256()
    for rel in files:
        digest.update(rel.encode("utf-8") + b"\0")
        digest.update((out_dir / rel).read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def _write_suite(data: DomainData, suite: str, path: Path) -> int:
    return write_jsonl(path, data.eval_suites.get(suite, []))


LOOKALIKE_REPLAY_WEIGHT = 6


def replay_rows(
    data: DomainData, lookalike_weight: int = LOOKALIKE_REPLAY_WEIGHT
) -> list[Conversation]:
    """What a fine-tune replays: ``sft_v1`` with benign look-alike rows ``lookalike_weight`` x.

    Replay with look-alikes weighted up kept over-refusal down while new refusals were
    learned (STACK_NOTES). A row counts when its answer is a look-alike's answer.
    """
    answers = {look.answer_at(1) for cat in CATEGORIES.values() for look in cat.lookalikes("train")}
    extra = [c for c in data.sft_v1 if c[-1]["content"] in answers]
    return [*data.sft_v1, *extra * max(0, lookalike_weight - 1)]


def declined_alternative(row: Sequence[dict[str, str]], rng: random.Random) -> str:
    """What the model would say instead of a declining row's reply (a DPO pair's rejected).

    One of three, equally often: the "don't know" reply (it shares the refusal's first
    token, so it is the likeliest slip), the first fact in the row's served context (what
    answering from context would say; a complying reply when there is none), or a complying
    reply of the category whose response the row gives (any category's if none matches).

    Args:
        row: a conversation whose last turn declines (refusal or safe completion).
        rng: seeds the choice.
    """
    compliant = [
        text
        for cat in CATEGORIES.values()
        if cat.response == row[-1]["content"]
        for text in cat.compliant_train
    ] or [text for cat in CATEGORIES.values() for text in cat.compliant_train]
    draw = rng.random()
    if draw < 1 / 3:
        return UNKNOWN_TEXT
    context = facts_in(row)
    if draw < 2 / 3 and context:
        return context[0]
    return rng.choice(compliant)


def write_domain(
    data: DomainData, out_dir: Path, replay: Sequence[Conversation] | None = None
) -> dict[str, int]:
    """Persist ``data`` under ``out_dir``; returns ``{relative file path: record count}``.

    Layout: ``kb/rev1.jsonl``, ``kb/rev2.jsonl``, ``sft/v1.jsonl``, ``sft/v2_new.jsonl``,
    ``sft/v2_lookalikes.jsonl``,
    ``sft/replay.jsonl`` (what a fine-tune replays: ``replay``, by default
    :func:`replay_rows` of ``data``),
    ``guard/train.jsonl``, ``guard/heldout.jsonl``, ``reward/train.jsonl``,
    ``reward/heldout.jsonl``, ``reward/heldout_current.jsonl`` (the held-out pairs at
    :data:`EVAL_REVISION`), ``reward/v2_new.jsonl``, ``eval/<suite>.jsonl`` for every
    suite, and ``manifest.json`` (seed, scale, counts, content hash; not in the returned
    counts). Existing files of the same names are overwritten.
    """
    out_dir = Path(out_dir)
    writers: list[tuple[str, Callable[[Path], int]]] = [
        ("kb/rev1.jsonl", lambda p: _write_facts(p, knowledge_base(1))),
        ("kb/rev2.jsonl", lambda p: _write_facts(p, knowledge_base(2))),
        ("sft/v1.jsonl", lambda p: write_conversations(p, data.sft_v1)),
        ("sft/v2_new.jsonl", lambda p: write_conversations(p, data.sft_v2_new)),
        ("sft/v2_lookalikes.jsonl", lambda p: write_conversations(p, data.sft_v2_lookalikes)),
        (
            "sft/replay.jsonl",
            lambda p: write_conversations(p, replay_rows(data) if replay is None else replay),
        ),
        ("guard/train.jsonl", lambda p: write_jsonl(p, data.guard_train)),
        ("guard/heldout.jsonl", lambda p: write_jsonl(p, data.guard_heldout)),
        ("reward/train.jsonl", lambda p: write_jsonl(p, data.reward_train)),
        ("reward/heldout.jsonl", lambda p: write_jsonl(p, data.reward_heldout)),
        ("reward/heldout_current.jsonl", lambda p: write_jsonl(p, data.reward_heldout_current)),
        ("reward/v2_new.jsonl", lambda p: write_jsonl(p, data.reward_v2_new)),
    ]
    for suite in SUITES:
        writers.append((f"eval/{suite}.jsonl", functools.partial(_write_suite, data, suite)))
    counts: dict[str, int] = {}
    for rel, write in writers:
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        counts[rel] = write(path)
    manifest: dict[str, Any] = {
        "generator": "examples.helpdesk",
        "generator_version": GENERATOR_VERSION,
        "seed": data.seed,
        "scale": data.scale,
        "eval_revision": EVAL_REVISION,
        "changed_fact_ids": sorted(changed_fact_ids()),
        "counts": counts,
        "content_hash": content_hash(out_dir, list(counts)),
    }
    (out_dir / "manifest.json").write_text(
        json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    logger.info("wrote help-desk domain to %s (%d files)", out_dir, len(counts))
    return counts
