"""Training data for the policy LM: surface noise, assistant-only label masks, length buckets.

Pure functions over conversations and token ids; nothing here touches a model. The label
mask comes from the chat template itself: ``{% generation %}`` blocks and
``return_assistant_tokens_mask`` where the template has them, else the assistant spans found
by rendering the conversation turn by turn (stock templates: ChatML, Llama, Qwen, SmolLM
carry no markers). Either way the rule "loss on assistant tokens only" holds for any
template, not just ours.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from loopwright.grounding import facts_in

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
"""Label value that ``torch.nn.CrossEntropyLoss`` (and HF causal LMs) skip."""

Conversation = Sequence[dict[str, str]]

_GREETINGS = (
    "hi",
    "hello",
    "hey",
    "hi there",
    "hello!",
    "hey team",
    "good morning",
    "quick question:",
    "hi, quick question -",
    "excuse me,",
)
_CLOSINGS = ("thanks", "thanks!", "thx", "thank you", "please", "cheers", "ty", "??", "!")
_KEYBOARD_NEIGHBOURS = {
    "a": "qsz",
    "e": "wrd",
    "i": "uok",
    "o": "ipl",
    "u": "yij",
    "s": "adw",
    "t": "ryg",
    "n": "bmh",
    "r": "etf",
    "l": "kop",
}


@dataclass(frozen=True)
class NoiseSettings:
    """Probabilities of each surface change applied to user turns (never to the answer).

    Surface noise in the training text (greetings, typos, casing) is what let a tiny model
    generalise to unseen paraphrases (docs/decisions/0004-policy-training-recipe.md).

    Attributes:
        greeting: probability of a greeting prefix.
        closing: probability of a closing suffix ("thanks", "??").
        lowercase: probability of lower-casing the whole turn.
        uppercase: probability of upper-casing the whole turn.
        typo_rate: per-word probability of one character typo (swap, drop, double, neighbour).
        drop_punct: probability of stripping the final punctuation.
        word_drop: per-word probability of deleting a word that does not look like a name
            (names: a capital after the first word, digits, ``-``/``_``/``.`` inside), so the
            model learns to answer from the key words of phrasings it has not seen; users
            write fragments ("monthly price Pro?").
        sentence_case: probability of capitalising the first letter after the other changes
            (byte-level BPE gives "Monthly" and " monthly" unrelated tokens).

    """

    greeting: float = 0.3
    closing: float = 0.25
    lowercase: float = 0.25
    uppercase: float = 0.04
    typo_rate: float = 0.04
    drop_punct: float = 0.3
    word_drop: float = 0.12
    sentence_case: float = 0.5

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"NoiseSettings.{name} must be in [0, 1], got {value}")


def _typo(word: str, rng: random.Random) -> str:
    if len(word) < 4 or not word.isalpha():
        return word
    i = rng.randrange(1, len(word) - 1)
    kind = rng.randrange(4)
    if kind == 0:  # swap adjacent
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == 1:  # drop
        return word[:i] + word[i + 1 :]
    if kind == 2:  # double
        return word[:i] + word[i] + word[i:]
    near = _KEYBOARD_NEIGHBOURS.get(word[i].lower())
    return word[:i] + rng.choice(near) + word[i + 1 :] if near else word


def _made_up_word(rng: random.Random, syllables: int = 3) -> str:
    """A random pronounceable letter string (consonant-vowel syllables): a word no corpus has."""
    return "".join(rng.choice("bcdfghklmnprstvz") + rng.choice("aeiou") for _ in range(syllables))


def _looks_like_name(word: str, position: int) -> bool:
    core = word.strip(".,;:!?\"'()")
    if not core:
        return False
    inner_caps = position > 0 and any(c.isupper() for c in core)
    return inner_caps or any(c.isdigit() for c in core) or any(c in "-_." for c in core)


def add_surface_noise(text: str, rng: random.Random, settings: NoiseSettings) -> str:
    """Return ``text`` with random greetings, closings, casing, typos and dropped words.

    Seeded by ``rng``. The meaning is kept: words that look like names (plans, regions,
    codes) are never dropped and only the surface form changes, so the reference answer
    stays valid.
    """
    words = text.split()
    if settings.word_drop > 0 and len(words) > 2:
        kept = [
            w
            for i, w in enumerate(words)
            if _looks_like_name(w, i) or rng.random() >= settings.word_drop
        ]
        words = kept if kept else words
    if settings.typo_rate > 0:
        words = [_typo(w, rng) if rng.random() < settings.typo_rate else w for w in words]
    out = " ".join(words)
    if out and out[-1] in ".?!" and rng.random() < settings.drop_punct:
        out = out[:-1]
    if rng.random() < settings.greeting:
        greeting = rng.choice(_GREETINGS)
        sep = " " if greeting[-1] in ",:-" else rng.choice([", ", " ", "! "])
        out = greeting + sep + out
    if rng.random() < settings.closing:
        out = out + rng.choice([" ", ", "]) + rng.choice(_CLOSINGS)
    r = rng.random()
    if r < settings.lowercase:
        out = out.lower()
    elif r < settings.lowercase + settings.uppercase:
        out = out.upper()
    elif out and rng.random() < settings.sentence_case:
        out = out[0].upper() + out[1:]
    return out


def noisy_conversation(
    conversation: Conversation, rng: random.Random, settings: NoiseSettings
) -> list[dict[str, str]]:
    """Copy ``conversation`` with surface noise on its user turns only."""
    return [
        {"role": m["role"], "content": add_surface_noise(m["content"], rng, settings)}
        if m["role"] == "user"
        else {"role": m["role"], "content": m["content"]}
        for m in conversation
    ]


def validate_conversations(conversations: Sequence[Conversation], source: str) -> None:
    """Raise ``ValueError`` naming ``source`` and the row if a conversation is unusable.

    A usable conversation is a non-empty list of ``{"role", "content"}`` dicts with roles in
    system/user/assistant, string contents, and at least one assistant turn (otherwise it
    carries no training signal).
    """
    if not conversations:
        raise ValueError(f"{source}: no conversations given")
    for i, conv in enumerate(conversations):
        if not isinstance(conv, Sequence) or isinstance(conv, str) or not conv:
            raise ValueError(f"{source}[{i}]: expected a non-empty list of messages")
        for j, msg in enumerate(conv):
            if not isinstance(msg, dict) or set(msg) - {"role", "content"}:
                raise ValueError(
                    f"{source}[{i}][{j}]: expected a dict with keys role, content; got {msg!r}"
                )
            if msg.get("role") not in ("system", "user", "assistant"):
                raise ValueError(
                    f"{source}[{i}][{j}]: role must be system, user or assistant; "
                    f"got {msg.get('role')!r}"
                )
            if not isinstance(msg.get("content"), str):
                raise ValueError(f"{source}[{i}][{j}]: content must be a string")
        if not any(m["role"] == "assistant" for m in conv):
            raise ValueError(f"{source}[{i}]: has no assistant turn, so nothing to learn")


@dataclass(frozen=True)
class EncodedExample:
    """One tokenised conversation with its labels.

    Attributes:
        input_ids: token ids of the whole rendered conversation.
        labels: same length; the token id on assistant tokens (including the end-of-turn
            token), ``IGNORE_INDEX`` everywhere else.
        distill: also pull this row's next-token distributions towards the teacher's (a
            fine-tune's replay rows, see ``models.policy.finetune_sft``).

    """

    input_ids: list[int]
    labels: list[int]
    distill: bool = False

    @property
    def n_target(self) -> int:
        """Number of tokens that carry loss."""
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def encode_conversation(tokenizer: Any, conversation: Conversation) -> EncodedExample:
    """Render with the tokenizer's chat template and mask everything but assistant tokens.

    Templates with ``{% generation %}`` blocks mark the assistant tokens themselves; for
    others the assistant spans are found by :func:`assistant_spans`.

    Raises:
        ValueError: the conversation has no assistant turn, or the template renders a
            conversation so that its assistant replies cannot be located (see
            :func:`assistant_spans`).

    """
    if "{% generation %}" in (tokenizer.chat_template or ""):
        enc = tokenizer.apply_chat_template(
            list(conversation), tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        ids, mask = list(enc["input_ids"]), [bool(m) for m in enc["assistant_masks"]]
    else:
        text = tokenizer.apply_chat_template(list(conversation), tokenize=False)
        spans = assistant_spans(tokenizer, conversation, text)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        mask = [any(lo <= start < hi for lo, hi in spans) for start, _ in enc["offset_mapping"]]
    if not any(mask):
        raise ValueError("the conversation has no assistant tokens to train on")
    labels = [tok if m else IGNORE_INDEX for tok, m in zip(ids, mask, strict=True)]
    return EncodedExample(input_ids=ids, labels=labels)


def assistant_spans(tokenizer: Any, conversation: Conversation, text: str) -> list[tuple[int, int]]:
    """Character spans of the assistant replies in ``text`` (the rendered conversation).

    Written by hand: transformers finds assistant tokens only through ``{% generation %}``
    markers, and trl's assistant-only loss needs them too. For each assistant turn ``i``,
    the conversation up to ``i`` rendered with the generation prompt is a prefix of the
    conversation through ``i``; what the latter adds (the reply and its end-of-turn
    tokens) is the span. Stock templates (ChatML, Llama 3, Qwen2, SmolLM2) render this way.

    Raises:
        ValueError: a rendering is not a prefix of the next (a template that rewrites
            earlier turns, e.g. one that drops past reasoning); it names the turn.

    """
    spans = []
    messages = list(conversation)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(
            messages[:i], tokenize=False, add_generation_prompt=True
        )
        through = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not (through.startswith(prompt) and text.startswith(through)):
            raise ValueError(
                f"chat template: the rendering up to turn {i} is not a prefix of the rendering "
                "through it, so the assistant reply cannot be located; wrap assistant content "
                "in {% generation %}...{% endgeneration %}"
            )
        spans.append((len(prompt), len(through)))
    return spans


@dataclass
class EncodedPool:
    """Encoded training rows, each with one clean and several noisy variants.

    Attributes:
        variants: ``variants[row]`` lists encodings of that row (index 0 is clean).
        skipped_too_long: rows dropped because even the clean rendering exceeds
            ``max_positions`` (counted and logged, never silent).

    """

    variants: list[list[EncodedExample]]
    skipped_too_long: int


def encode_pool(
    tokenizer: Any,
    conversations: Sequence[Conversation],
    *,
    max_positions: int,
    noise: NoiseSettings | None,
    noise_variants: int,
    seed: int,
    source: str,
) -> EncodedPool:
    """Encode each conversation clean plus ``noise_variants`` noisy copies.

    Variants are made once up front (not per step) so the training loop pays no template
    rendering; each epoch picks one variant per row. Noisy variants that no longer fit are
    replaced by the clean one. Rows whose clean form exceeds ``max_positions`` are skipped
    and counted.
    """
    rng = random.Random(seed)
    variants: list[list[EncodedExample]] = []
    skipped = 0
    for conv in conversations:
        clean = encode_conversation(tokenizer, conv)
        if len(clean.input_ids) > max_positions:
            skipped += 1
            continue
        row = [clean]
        if noise is not None:
            for _ in range(noise_variants):
                noisy = encode_conversation(tokenizer, noisy_conversation(conv, rng, noise))
                row.append(noisy if len(noisy.input_ids) <= max_positions else clean)
        variants.append(row)
    if skipped:
        logger.warning(
            "%s: skipped %d of %d conversations longer than %d tokens",
            source,
            skipped,
            len(conversations),
            max_positions,
        )
    if not variants:
        raise ValueError(
            f"{source}: all {len(conversations)} conversations exceed max_positions="
            f"{max_positions} tokens; raise max_positions or shorten them"
        )
    return EncodedPool(variants=variants, skipped_too_long=skipped)


def bucketed_batches(
    lengths: Sequence[int], batch_size: int, rng: random.Random
) -> list[list[int]]:
    """Group indices into batches of similar length, in random batch order.

    Sorting by length (with random tie-breaks) before chunking keeps padding small, which
    on CPU is most of the speed; shuffling the batch order keeps the gradient unbiased
    across an epoch. Only the last batch may be short, so the flattened order can be read
    back in fixed-size batches.
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], rng.random()))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    short = [batches.pop()] if batches and len(batches[-1]) < batch_size else []
    rng.shuffle(batches)
    return batches + short


def _prompt_key(conversation: Conversation) -> tuple[tuple[str, str], ...]:
    # System turns are left out: they hold the gateway's prompt and the facts it retrieved,
    # which differ between a replayed row (facts of the parent's day) and a new row asking
    # the same question (today's facts); the question is what makes an answer superseded.
    return tuple(
        (m["role"], " ".join(m["content"].lower().split()))
        for m in conversation[:-1]
        if m["role"] != "system"
    )


def drop_superseded(
    new: Sequence[Conversation], replay: Sequence[Conversation]
) -> tuple[list[Conversation], int]:
    """Remove replay rows that the new rows contradict; return the kept rows and the count.

    Replaying the parent's data verbatim also replays its *stale* answers: when a fact
    changed, the old answer and the new one then compete
    (docs/decisions/0004-policy-training-recipe.md). A replay row is dropped
    when the new rows ask the same prompt (its user and assistant turns, case- and
    space-insensitive; system turns are ignored) with a different
    answer, or when its answer is one of those superseded answers (this catches the noisy
    and paraphrased copies of the same fact). An answer that the new rows also give (a
    refusal, say) is never treated as superseded.
    """
    new_answers: dict[tuple[tuple[str, str], ...], set[str]] = {}
    for conv in new:
        new_answers.setdefault(_prompt_key(conv), set()).add(conv[-1]["content"])
    all_new = {a for answers in new_answers.values() for a in answers}
    superseded: set[str] = set()
    for conv in replay:
        answers = new_answers.get(_prompt_key(conv))
        if answers is not None and conv[-1]["content"] not in answers:
            superseded.add(conv[-1]["content"])
    superseded -= all_new
    kept: list[Conversation] = []
    for conv in replay:
        answers = new_answers.get(_prompt_key(conv))
        contradicted = answers is not None and conv[-1]["content"] not in answers
        if contradicted or conv[-1]["content"] in superseded:
            continue
        kept.append(conv)
    return kept, len(replay) - len(kept)


def with_pseudowords(
    rows: Sequence[list[dict[str, str]]],
    share: float,
    seed: int,
    keep: Callable[[list[dict[str, str]]], bool],
) -> list[list[dict[str, str]]]:
    """``rows`` plus copies of some kept rows whose first question has a made-up word.

    A fine-tune that learns new refusals otherwise starts refusing benign questions in
    wording it has not seen; answered copies with one word swapped for a random letter
    string teach that an unfamiliar word is no reason to refuse
    (docs/decisions/0003-nightly-fine-tune-recipe.md). The made-up words are random, so no
    evaluation wording can leak in.

    Args:
        rows: conversations (an optional system prompt, then the user's question).
        share: copies per eligible row, in [0, 1]; eligible rows are those ``keep`` accepts
            whose question has more than three words.
        seed: seeds the choice of rows, positions and letters.
        keep: which rows may be copied (e.g. rows the assistant answers, not refusals).

    Raises:
        ValueError: ``share`` outside [0, 1].
    """
    if not 0 <= share <= 1:
        raise ValueError(f"pseudoword share must be in [0, 1], got {share}")
    rng = random.Random(seed)

    def question_at(row: list[dict[str, str]]) -> int:
        # A system prompt may come first; the made-up word goes into the user's question.
        return next((i for i, m in enumerate(row) if m["role"] == "user"), -1)

    eligible = [
        r
        for r in rows
        if keep(r) and question_at(r) >= 0 and len(r[question_at(r)]["content"].split()) > 3
    ]
    copies: list[list[dict[str, str]]] = []
    for row in rng.sample(eligible, int(len(eligible) * share)):
        at = question_at(row)
        words = row[at]["content"].split()
        position = rng.randrange(len(words))
        words[position] = _made_up_word(rng)
        copies.append([*row[:at], {**row[at], "content": " ".join(words)}, *row[at + 1 :]])
    return [*rows, *copies]


@dataclass(frozen=True)
class ConversationPreference:
    """A preference between two assistant replies to the same conversation prefix.

    Attributes:
        messages: the turns before the reply (system, user...), ending with a user turn.
        chosen: the preferred reply.
        rejected: the reply to move away from.
    """

    messages: Sequence[dict[str, str]]
    chosen: str
    rejected: str


def refusal_boundary_pairs(
    rows: Sequence[Conversation],
    declined: Callable[[str], bool],
    refusal: str,
    alternatives: Callable[[Conversation, random.Random], str],
    seed: int,
    benign_per_declined: float = 1.0,
) -> list[ConversationPreference]:
    """Preference pairs on both sides of the refusal boundary, from SFT rows.

    A fine-tune that learns new refusals from SFT rows alone starts refusing benign
    questions in wording it has not seen: on the example domain the first token of a
    held-out question ("What's the procedure if I want to...") is " I", shared by the
    "don't know", safe-completion and refusal replies, and after the fine-tune the refusal
    is the continuation that wins. SFT on answered rows stops pushing once the answer is the
    most likely reply; these pairs keep pushing the refusal down wherever the answer is
    wanted, and the refusal up against its likely alternatives where it is wanted.
    A DPO on them moved the boundary rather than sharpening it (fewer benign refusals,
    fewer harmful ones too: ``NightlyConfig.boundary_dpo``;
    docs/decisions/0003-nightly-fine-tune-recipe.md).

    Args:
        rows: SFT rows as trained (any system prompt and served context included).
        declined: whether a reply declines (refusal or safe completion).
        refusal: the reply a benign row's pair rejects.
        alternatives: for a declined row, the reply its pair rejects (what the model
            would otherwise say: comply, answer from context, "don't know").
        seed: seeds the choice of benign rows and alternatives.
        benign_per_declined: benign pairs per declined row (drawn without replacement
            from the answered rows; capped by how many there are).

    Returns:
        Shuffled pairs: every declined row (chosen: its reply) and the drawn answered rows
        (chosen: their answer, rejected: ``refusal``).

    Raises:
        ValueError: a negative ``benign_per_declined``.
    """
    if benign_per_declined < 0:
        raise ValueError(f"benign_per_declined must be >= 0, got {benign_per_declined}")
    rng = random.Random(seed)
    refused = [r for r in rows if declined(r[-1]["content"])]
    answered = [r for r in rows if not declined(r[-1]["content"])]
    pairs = [
        ConversationPreference(list(r[:-1]), r[-1]["content"], alternatives(r, rng))
        for r in refused
    ]
    n_benign = min(len(answered), round(len(refused) * benign_per_declined))
    pairs += [
        ConversationPreference(list(r[:-1]), r[-1]["content"], refusal)
        for r in rng.sample(answered, n_benign)
    ]
    rng.shuffle(pairs)
    return pairs


def context_or_answer_alternative(
    rows: Sequence[Conversation], declined: Callable[[str], bool]
) -> Callable[[Conversation, random.Random], str]:
    """Rejected replies for declined rows where the domain names none.

    Half the time the first fact of the row's served context (answering from the context,
    the slip grounding invites), otherwise, or when there is no context, the answer of a
    random answered row (complying as if the request were benign).

    Raises:
        ValueError: no answered row to draw from.
    """
    answers = sorted({r[-1]["content"] for r in rows if not declined(r[-1]["content"])})
    if not answers:
        raise ValueError("context_or_answer_alternative: no answered rows to draw from")

    def alternative(row: Conversation, rng: random.Random) -> str:
        context = facts_in(row)
        if context and rng.random() < 0.5:
            return context[0]
        return rng.choice(answers)

    return alternative
