"""The example help-desk domain as the platform sees it (``Settings.domain``).

Everything domain-specific the loop's stages need comes from here (fact checker, refusal
test, screening allowlist, evaluation suites), so the stages stay generic: another domain
provides the same four parts (:class:`loopwright.domain.Domain`) and is named in config.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loopwright.data.factcheck import KBFact, KBFactChecker
from loopwright.data.screening import ScreeningConfig
from loopwright.grounding import Fact

DOMAIN_DIR = "helpdesk"
"""The example's folder under ``data/`` (what the bootstrap writes)."""


def helpdesk_fact_checker(revision: int = 2) -> KBFactChecker:
    """The KB at ``revision`` as a fact checker; the revision before it supplies stale values.

    Raises:
        ValueError: unknown revision (the message lists the valid ones).

    """
    from examples.helpdesk.kb import REVISIONS, knowledge_base

    if revision not in REVISIONS:
        raise ValueError(f"unknown KB revision {revision!r}; valid: {list(REVISIONS)}")

    def facts(rev: int) -> list[KBFact]:
        return [
            KBFact(f.id, f.answer, f.value, tuple(f.slots.values())) for f in knowledge_base(rev)
        ]

    previous = facts(revision - 1) if revision - 1 in REVISIONS else []
    return KBFactChecker(facts(revision), previous)


def helpdesk_retrieval_facts(revision: int) -> list[Fact]:
    """The KB at ``revision`` as the gateway retrieves it: answers keyed by their questions.

    Each fact's retrieval keys are its answer and its questions in the *training* wordings
    (what a help desk's FAQ lists); the held-out wordings never appear, so evaluating on
    them still measures wording nobody prepared for.

    Raises:
        ValueError: unknown revision (the message lists the valid ones).
    """
    from examples.helpdesk.kb import knowledge_base
    from examples.helpdesk.templates import questions

    return [
        Fact(id=f.id, text=f.answer, questions=tuple(questions(f, "train")))
        for f in knowledge_base(revision)
    ]


def helpdesk_is_safe_response(text: str) -> bool:
    """Whether a response refuses or safely redirects (crisis help) a request."""
    from examples.helpdesk.safety import is_refusal, is_safe_completion

    return is_refusal(text) or is_safe_completion(text)


def helpdesk_screening_config(**overrides: object) -> ScreeningConfig:
    """Screening thresholds for the example domain: the company's own addresses are not PII.

    Args:
        **overrides: any :class:`~loopwright.data.screening.ScreeningConfig` field.

    """
    from examples.helpdesk.kb import PRODUCT, knowledge_base

    domains = {
        m.group(1).lower()
        for rev in (1, 2)
        for fact in knowledge_base(rev)
        for m in re.finditer(r"@([\w.-]+\.[a-z]{2,})", fact.answer)
    }
    domains.add(PRODUCT.lower().replace(" ", "") + ".example")
    allow = tuple(rf"@{re.escape(d)}$" for d in sorted(domains))
    return ScreeningConfig.model_validate({"pii_allow": allow, **overrides})


class HelpdeskDomain:
    """The example domain, judged against KB revision ``revision`` (the current world)."""

    app = "helpdesk"  # registered as helpdesk-policy, -guard, -reward

    def __init__(self, revision: int = 2) -> None:
        self.revision = revision

    def fact_checker(self) -> KBFactChecker:
        """The KB at the current revision (the one before supplies stale values)."""
        return helpdesk_fact_checker(self.revision)

    def is_safe_response(self, text: str) -> bool:
        """Refusal or safe redirection (crisis help)."""
        return helpdesk_is_safe_response(text)

    def refusal_text(self) -> str:
        """The refusal policy v1 was trained to give."""
        from examples.helpdesk.safety import REFUSAL_TEXT

        return REFUSAL_TEXT

    def declined_alternative(self, row: Sequence[dict[str, str]], rng: random.Random) -> str:
        """What the policy would say instead of a declining row's reply (optional hook).

        The "don't know" reply, the served fact, or a complying reply
        (:func:`examples.helpdesk.generate.declined_alternative`).
        """
        from examples.helpdesk.generate import declined_alternative

        return declined_alternative(row, rng)

    def screening_config(self) -> ScreeningConfig:
        """Screening thresholds; the company's own addresses are not PII."""
        return helpdesk_screening_config()

    def suite_dir(self) -> Path:
        """The example domain's evaluation suites."""
        return Path(__file__).parent / "suites"

    def knowledge_facts(self) -> list[Fact]:
        """What the gateway retrieves when no ``kb_path`` is set (optional hook).

        The KB at the current revision, answers keyed by their training questions.
        """
        return helpdesk_retrieval_facts(self.revision)

    def system_prompt(self) -> tuple[str, str]:
        """``(version, text)``: the system prompt the example's training rows carry (hook)."""
        from examples.helpdesk.generate import SYSTEM_PROMPT

        return "helpdesk-v1", SYSTEM_PROMPT

    def user_simulator(self, **options: Any) -> Any:
        """The example's simulated users (hook for ``loopwright simulate``).

        Args:
            **options: :class:`examples.helpdesk.simulators.UserSimulator` keywords.
        """
        from examples.helpdesk.simulators import UserSimulator

        return UserSimulator(**options)

    def bootstrap(self, settings: Any, *, force: bool, tiny: bool, seed: int) -> dict[str, Any]:
        """Build the example's data and v1 models; register them (``loopwright bootstrap``).

        Returns:
            The champion version per kind (policy, guard, reward).
        """
        from examples.helpdesk.bootstrap import BootstrapConfig
        from examples.helpdesk.bootstrap_flow import bootstrap_flow

        config = BootstrapConfig(seed=seed, tiny=tiny, scale=0.15 if tiny else 1.0)
        versions: dict[str, Any] = bootstrap_flow(
            settings, settings.data_repo.resolve(), config, force
        )
        return versions

    def demo(
        self, settings: Any, *, tiny: bool, requests: int | None, seed: int, nights: int = 1
    ) -> Any:
        """The whole loop on the example, one Prefect flow run (``loopwright demo``).

        Returns:
            The demo's :class:`loopwright.demo.DemoOutcome`.
        """
        from examples.helpdesk.demo_flow import demo_flow

        return demo_flow(settings, tiny=tiny, requests=requests, seed=seed, nights=nights)

    def data_folder(self) -> str:
        """``data/helpdesk``: what ``loopwright bootstrap`` writes (replay, frozen sets)."""
        return DOMAIN_DIR


domain = HelpdeskDomain()
