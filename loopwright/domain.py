"""What the platform needs from a domain, and how the configured one is found.

The platform never imports an example domain directly: ``Settings.domain`` names either a
domain folder (``domain.yaml`` and data files, :mod:`loopwright.domain_folder`; no Python
needed) or a module attribute (``package.module:attribute``) that satisfies
:class:`Domain`, and the stages ask it for the domain-specific parts (fact checker, refusal
test, refusal wording, screening thresholds, evaluation suites). A user swaps in their own
domain by pointing that setting elsewhere.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from loopwright.data.factcheck import FactChecker
    from loopwright.data.screening import ScreeningConfig


@runtime_checkable
class Domain(Protocol):
    """The domain-specific parts of the loop.

    Optional:

    - ``app``: the registry application (``<app>-policy`` ...) when the profile names
      none; without it, ``loopwright``.
    - ``declined_alternative(row, rng) -> str``: the reply the policy would slip into
      instead of a declining row's refusal (the nightly's refusal-boundary DPO rejects it);
      without it the nightly uses the served fact or another row's answer.
    - ``knowledge_facts() -> list[loopwright.grounding.Fact]``: what the gateway retrieves
      from when its ``encoders.kb_path`` is not set; without it (and without ``kb_path``)
      the gateway serves without retrieval.
    - ``system_prompt() -> (version, text)``: what the gateway serves as the system prompt
      when its config sets none; without it, a generic one.
    - ``gate_policy() / canary_policy() -> Path | None``: release policies used when the
      profile's release section names none; without them, the packaged ones.
    - ``chat_template() -> str | None``: given to registered policies whose tokenizer has
      no chat template.
    - ``user_simulator(**options)``: simulated users for ``loopwright simulate`` (the
      example's; see :func:`loopwright.simulate.run_simulation`).
    - ``bootstrap(settings, *, force, tiny, seed) -> {kind: version}``: builds data and v1
      models and registers them (``loopwright bootstrap``); a domain without it registers
      its models with ``loopwright register``.
    - ``demo(settings, *, tiny, requests, seed[, nights]) -> DemoOutcome``: ``loopwright demo``
      (``nights`` is passed only when ``--nights`` asks for more than one).
    """

    def fact_checker(self) -> FactChecker:
        """Checks answers against the current knowledge (feedback screening)."""
        ...

    def is_safe_response(self, text: str) -> bool:
        """Whether a response refuses or safely redirects a request."""
        ...

    def refusal_text(self) -> str:
        """What the policy itself says to a request it must refuse.

        The SFT target for prompts the gateway's guard blocked: the gateway's fallback text
        is the gateway's message to the user, not a model answer, and a second refusal
        wording next to the policy's own garbled the fine-tuned policy's refusals.
        """
        ...

    def screening_config(self) -> ScreeningConfig:
        """Feedback-screening thresholds and allowlists for this domain."""
        ...

    def suite_dir(self) -> Path:
        """The folder of evaluation suite YAML files."""
        ...

    def data_folder(self) -> str:
        """The folder under ``data/`` that holds the domain's frozen samples and replay."""
        ...


class DomainError(ValueError):
    """The configured domain cannot be loaded or does not provide what the loop needs."""


def load_domain(spec: str) -> Domain:
    """Load a domain folder, or import ``package.module:attribute``, as a :class:`Domain`.

    Raises:
        DomainError: a folder that fails ``loopwright domain check`` (every problem listed),
            a malformed spec, a missing module or attribute, or an object that lacks one of
            the methods (the message names them).
    """
    from loopwright.domain_folder import is_domain_folder_spec, load_folder_domain

    if is_domain_folder_spec(spec):
        return load_folder_domain(spec)
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise DomainError(f"domain {spec!r} must look like 'package.module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise DomainError(f"domain module {module_name!r} cannot be imported: {exc}") from exc
    try:
        domain = getattr(module, attribute)
    except AttributeError:
        raise DomainError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not isinstance(domain, Domain):
        needed = (
            "fact_checker",
            "is_safe_response",
            "refusal_text",
            "screening_config",
            "suite_dir",
            "data_folder",
        )
        missing = [name for name in needed if not callable(getattr(domain, name, None))]
        raise DomainError(f"domain {spec!r} lacks {missing}; a domain provides {list(needed)}")
    return domain


def domain_hook(spec: str, name: str, purpose: str) -> Callable[..., Any]:
    """The domain's optional hook ``name``, for ``purpose`` (said when it is missing).

    Raises:
        DomainError: the domain cannot be loaded or has no such hook.
    """
    hook = getattr(load_domain(spec), name, None)
    if not callable(hook):
        raise DomainError(f"domain {spec!r} has no {name}() hook, which {purpose} needs")
    return hook
