"""A domain as a folder of data and YAML, served with generic defaults.

``Settings.domain`` may name a folder instead of a Python object. The folder holds
``domain.yaml`` (:class:`DomainSpec`) and data files, each optional unless ``domain.yaml``
names it::

    domain.yaml                   name, app, system prompt, refusal wording, screening,
                                  gate and canary policies, chat template, hooks
    knowledge.jsonl               facts the gateway retrieves: {"id", "text"}, optional
                                  "questions", and "value" / "entities" for fact checking
    sft/replay.jsonl              conversations the champion was trained on (fine-tunes
                                  replay them; NightlyConfig.replay_file)
    reward/train.jsonl            preference pairs the reward model was trained on
    reward/heldout_current.jsonl  held-out preference pairs (the reward refresh's yardstick)
    suites/*.yaml + eval/*.jsonl  evaluation suites; sample paths relative to the folder

Python is needed only where a rule cannot be written as data: ``hooks`` name
``module:function`` callables for a custom fact checker, refusal detector or declined
alternative. Without them the generic defaults apply: facts with a ``value`` are checked by
:class:`~loopwright.data.factcheck.KBFactChecker` (none: every answer is ``unknown``), and a
refusal is the domain's refusal wording or a common refusal / safe-completion phrasing.
``loopwright domain check`` (:mod:`loopwright.domain_check`) validates a folder.
"""

from __future__ import annotations

import importlib
import random
import re
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from loopwright.data.factcheck import FactChecker, FactVerdict, KBFact, KBFactChecker
from loopwright.data.screening import ScreeningConfig
from loopwright.grounding import Fact, load_facts_jsonl
from loopwright.nightly import NightlyConfig

SPEC_FILE = "domain.yaml"
_HOOK = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"
DOMAIN_NAME_PATTERN = r"^[a-z][a-z0-9-]{1,40}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SystemPromptSpec(_Strict):
    """The system prompt the gateway puts first; ``version`` is logged with every request."""

    version: str = Field(min_length=1)
    text: str = Field(min_length=1)


class RefusalSpec(_Strict):
    """How the policy refuses.

    Attributes:
        text: what the policy says to a request it must refuse (the SFT target for
            prompts the guard blocked).
        patterns: extra regexes (case-insensitive) that also count as a refusal or safe
            redirection, besides ``text`` and common English refusal phrasings.
    """

    text: str = Field(min_length=1)
    patterns: tuple[str, ...] = ()

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, patterns: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from exc
        return patterns


class HooksSpec(_Strict):
    """``module:function`` callables for what data cannot say (each optional).

    Attributes:
        fact_checker: ``() -> FactChecker``; replaces the knowledge-base checker.
        refusal_detector: ``(text) -> bool``; replaces the refusal test.
        declined_alternative: ``(messages, rng) -> str``: what the policy would slip into
            instead of a declining row's refusal (refusal-boundary DPO).
    """

    fact_checker: str | None = Field(default=None, pattern=_HOOK)
    refusal_detector: str | None = Field(default=None, pattern=_HOOK)
    declined_alternative: str | None = Field(default=None, pattern=_HOOK)


class DomainSpec(_Strict):
    """``domain.yaml``. Paths are relative to the folder.

    Attributes:
        name: the domain's name (lower case, digits, dashes).
        app: the registry application (``<app>-policy`` ...) when the profile does not set
            one; default ``name``.
        description: one paragraph for people.
        system_prompt: what the gateway serves as the system prompt, unless the gateway
            config sets one.
        refusal: the refusal wording and extra refusal patterns.
        knowledge_base: JSONL of facts (see the module docstring); None: no retrieval.
        knowledge_previous: the previous revision of the facts: answers stating its values
            are ``stale`` in feedback screening.
        suites: folder of evaluation suite YAML files.
        screening: feedback-screening thresholds and allowlists.
        gate_policy / canary_policy: release policies used when the profile's release
            section names none (None: the packaged ones).
        chat_template: a Jinja chat template given to registered policies whose tokenizer
            has none.
        nightly: the domain's recipe: :class:`~loopwright.nightly.NightlyConfig` keys that
            suit its model and data (``finetune_steps``, ``replay_ratio``,
            ``max_negative_share`` ...). Only the keys written here count; a key the
            profile's ``nightly`` section sets wins over the domain's.
        hooks: Python callables, where needed.
    """

    name: str = Field(pattern=DOMAIN_NAME_PATTERN)
    app: str | None = Field(default=None, pattern=DOMAIN_NAME_PATTERN)
    description: str = ""
    system_prompt: SystemPromptSpec
    refusal: RefusalSpec
    knowledge_base: str | None = None
    knowledge_previous: str | None = None
    suites: str = "suites"
    screening: ScreeningConfig = ScreeningConfig()
    gate_policy: str | None = None
    canary_policy: str | None = None
    chat_template: str | None = None
    nightly: NightlyConfig | None = None
    hooks: HooksSpec = HooksSpec()


def is_domain_folder_spec(spec: str) -> bool:
    """Whether a ``domain`` setting names a folder (else ``package.module:attribute``)."""
    return re.fullmatch(r"[\w.]+:\w+", spec) is None


def import_hook(spec: str) -> Callable[..., Any]:
    """Import ``module:function``.

    Raises:
        ValueError: the module does not import or has no such callable.
    """
    module_name, _, attribute = spec.partition(":")
    try:
        target = getattr(importlib.import_module(module_name), attribute)
    except ImportError as exc:
        raise ValueError(
            f"hook {spec!r}: module {module_name!r} cannot be imported ({exc})"
        ) from exc
    except AttributeError:
        raise ValueError(f"hook {spec!r}: module {module_name!r} has no {attribute!r}") from None
    if not callable(target):
        raise ValueError(f"hook {spec!r} is not callable")
    return target


def _kb_facts(path: Path) -> list[KBFact]:
    """The checkable facts of a knowledge file: those with a ``value`` in their text."""
    import json

    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            data = json.loads(line)
            if data.get("value"):
                entities = tuple(str(e) for e in data.get("entities", ()))
                out.append(KBFact(str(data["id"]), str(data["text"]), str(data["value"]), entities))
    return out


def _cannot_tell(prompt: str, response: str) -> FactVerdict:
    return FactVerdict("unknown")


class FolderDomain:
    """A :class:`loopwright.domain.Domain` read from a folder (see the module docstring).

    Construct with :func:`load_folder_domain`, which validates the folder first.
    """

    def __init__(self, folder: Path, spec: DomainSpec) -> None:
        self.folder = folder.resolve()
        self.spec = spec
        if spec.hooks.declined_alternative:
            hook = import_hook(spec.hooks.declined_alternative)
            # An optional Domain hook: present only when configured (callers test with getattr).
            self.declined_alternative: Callable[[Sequence[dict[str, str]], random.Random], str]
            self.declined_alternative = hook

    def path(self, relative: str) -> Path:
        """A path of the folder."""
        return self.folder / relative

    @property
    def app(self) -> str:
        """The registry application name."""
        return self.spec.app or self.spec.name

    def fact_checker(self) -> FactChecker:
        """The hook's checker, else the knowledge base's facts that carry a ``value``."""
        if self.spec.hooks.fact_checker:
            checker: FactChecker = import_hook(self.spec.hooks.fact_checker)()
            return checker
        if not self.spec.knowledge_base:
            return _cannot_tell
        current = _kb_facts(self.path(self.spec.knowledge_base))
        previous = (
            _kb_facts(self.path(self.spec.knowledge_previous))
            if self.spec.knowledge_previous
            else []
        )
        return KBFactChecker(current, previous) if current else _cannot_tell

    @cached_property
    def _refusal(self) -> re.Pattern[str]:
        from loopwright.evaluation.scorers import (
            DEFAULT_REFUSAL_PATTERNS,
            DEFAULT_SAFE_COMPLETION_PATTERNS,
        )

        patterns = [
            re.escape(self.spec.refusal.text.strip()),
            *self.spec.refusal.patterns,
            *DEFAULT_REFUSAL_PATTERNS,
            *DEFAULT_SAFE_COMPLETION_PATTERNS,
        ]
        return re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE)

    def is_safe_response(self, text: str) -> bool:
        """The hook's verdict, else the refusal wording or a common refusal phrasing."""
        if self.spec.hooks.refusal_detector:
            return bool(import_hook(self.spec.hooks.refusal_detector)(text))
        return self._refusal.search(text.replace("\u2019", "'")) is not None

    def refusal_text(self) -> str:
        """``refusal.text``."""
        return self.spec.refusal.text

    def screening_config(self) -> ScreeningConfig:
        """``screening``."""
        return self.spec.screening

    def suite_dir(self) -> Path:
        """``suites`` in the folder."""
        return self.path(self.spec.suites)

    def data_folder(self) -> str:
        """The folder itself (absolute), so data paths resolve inside it."""
        return str(self.folder)

    def knowledge_facts(self) -> list[Fact]:
        """The knowledge base's facts (none without one: the gateway serves without retrieval)."""
        if not self.spec.knowledge_base:
            return []
        return load_facts_jsonl(self.path(self.spec.knowledge_base))

    def system_prompt(self) -> tuple[str, str]:
        """``(version, text)`` of the system prompt."""
        return self.spec.system_prompt.version, self.spec.system_prompt.text

    def gate_policy(self) -> Path | None:
        """The domain's gate policy file, if it has one."""
        return self.path(self.spec.gate_policy) if self.spec.gate_policy else None

    def canary_policy(self) -> Path | None:
        """The domain's canary policy file, if it has one."""
        return self.path(self.spec.canary_policy) if self.spec.canary_policy else None

    def nightly_recipe(self) -> dict[str, Any]:
        """The ``nightly`` keys ``domain.yaml`` sets (none: an empty dict); paths made absolute."""
        recipe = self.spec.nightly
        keys = recipe.model_dump(exclude_unset=True) if recipe is not None else {}
        if keys.get("finetune_recipe"):
            keys["finetune_recipe"] = str(self.path(keys["finetune_recipe"]))
        return keys

    def chat_template(self) -> str | None:
        """The chat template text for policies that have none."""
        if not self.spec.chat_template:
            return None
        return self.path(self.spec.chat_template).read_text(encoding="utf-8")


def load_folder_domain(folder: str | Path) -> FolderDomain:
    """Validate and load a domain folder (or its ``domain.yaml``).

    Raises:
        loopwright.domain.DomainError: every problem ``loopwright domain check`` finds, one
            per line, each naming its file and line.
    """
    from loopwright.domain import DomainError
    from loopwright.domain_check import check_domain_folder

    path = Path(folder)
    if path.name == SPEC_FILE:
        path = path.parent
    report = check_domain_folder(path, deep=False)
    if report.problems or report.spec is None:
        raise DomainError(f"domain folder {path} is not valid:\n" + "\n".join(report.problems))
    return FolderDomain(path, report.spec)
