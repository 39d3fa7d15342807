"""Build the gateway's heavy components (guard, embedder, facts, object store) from settings.

Kept apart from the app so tests and benchmarks can pass their own components, and so
nothing heavy is imported until a gateway is really started.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from loopwright.gateway.settings import EncoderSettings, GatewaySettings
from loopwright.grounding import Fact, load_facts_jsonl

logger = logging.getLogger(__name__)


class SettingsError(ValueError):
    """Gateway settings could not be read; the message names the file and the problem."""


def load_settings(
    path: str | Path | None, overrides: dict[str, Any] | None = None
) -> GatewaySettings:
    """Settings from a YAML file, plus dotted-key overrides.

    The file holds either the settings themselves or a ``gateway:`` section (as the main
    loopwright profile does).

    Raises:
        SettingsError: unreadable YAML or invalid settings (names the keys and why).

    """
    data: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise SettingsError(f"{path}: cannot read gateway settings: {exc}") from exc
        if not isinstance(loaded, dict):
            raise SettingsError(f"{path}: expected a mapping at the top level")
        data = loaded.get("gateway", loaded) if "gateway" in loaded else loaded
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    try:
        return GatewaySettings.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise SettingsError(f"{source}: invalid gateway settings: {problems}") from exc


@dataclass
class Components:
    """What :class:`~loopwright.gateway.service.Gateway` takes besides settings."""

    guard: Any | None = None
    embedder: Any | None = None
    facts: list[Fact] = field(default_factory=list)
    store: Any | None = None

    def as_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``Gateway``."""
        return {
            "guard": self.guard,
            "embedder": self.embedder,
            "facts": self.facts,
            "store": self.store,
        }


def download_registry_folder(tracking_uri: str, name: str, alias: str, cache: Path) -> Path:
    """Download ``models:/<name>@<alias>`` into ``cache/<name>/<version>`` (once)."""
    from mlflow import MlflowClient

    from loopwright.registry import download_version

    version = MlflowClient(tracking_uri=tracking_uri).get_model_version_by_alias(name, alias)
    return download_version(name, str(version.version), cache, tracking_uri)


def load_components(
    settings: GatewaySettings, run_dir: Path, store: Any | None = None
) -> Components:
    """Load guard, embedder and facts as the settings say; pass ``store`` through.

    A loopwright guard's own embedder is used for retrieval (one forward pass serves both,
    and facts and requests are embedded by the same graph); a classifier guard
    (:mod:`models.classifiers`) has none, so retrieval then gets the standalone embedder.

    Args:
        settings: the gateway settings.
        run_dir: the run directory (registry downloads are cached under it).
        store: a ``loopwright.storage.ObjectStore`` for shipping logs (None keeps the logs
            in the local spool).

    """
    s = settings
    comps = Components(store=store)
    wants_guard = (s.input_rails.enabled and s.input_rails.guard) or (
        s.output_rails.enabled and s.output_rails.guard
    )
    wants_embed = s.augment.enabled and s.augment.retrieval
    if wants_guard or wants_embed:
        from models.classifiers import find_guard_folder, load_guard

        folder: Path | None = None
        if s.encoders.guard_dir:
            folder = Path(s.encoders.guard_dir)
        elif s.routing.source == "mlflow" and s.routing.tracking_uri:
            try:
                folder = download_registry_folder(
                    s.routing.tracking_uri,
                    f"{s.routing.app}-guard",
                    "champion",
                    run_dir / s.routing.model_cache_dir,
                )
            except Exception as exc:  # noqa: BLE001 - rules-only beats not serving
                logger.warning("no guard from the registry (%s); input rails use rules only", exc)
        if folder is not None:
            comps.guard = load_guard(
                find_guard_folder(folder), backend=s.encoders.runtime, threads=s.encoders.threads
            )
            shared = getattr(comps.guard, "embedder", None)
            comps.embedder = shared() if callable(shared) else None
        if comps.embedder is None and wants_embed:
            comps.embedder = standalone_embedder(s.encoders)
    if wants_embed:
        comps.facts = knowledge_facts(s.encoders, s.domain)
        if not comps.facts:
            logger.warning("no kb_path and no knowledge_facts() from the domain: no retrieval")
    return comps


def knowledge_facts(encoders: EncoderSettings, domain: str | None) -> list[Fact]:
    """The facts the gateway retrieves from: ``kb_path``, else the domain's, else none.

    Args:
        encoders: the gateway's encoder settings (``kb_path``).
        domain: ``package.module:attribute`` of the served domain, or None.

    Raises:
        loopwright.domain.DomainError: ``domain`` cannot be loaded.
    """
    if encoders.kb_path:
        return load_facts_jsonl(encoders.kb_path)
    if domain is None:
        return []
    from loopwright.domain import load_domain

    provider = getattr(load_domain(domain), "knowledge_facts", None)
    return list(provider()) if callable(provider) else []


def standalone_embedder(encoders: EncoderSettings) -> Any:
    """The retrieval embedder when no guard serves one: ``embedder_dir`` or the packaged one.

    The packaged encoder has no ONNX export of its own, so it runs in torch.
    """
    from models.embedder import Embedder

    return Embedder.load(
        encoders.embedder_dir,
        backend=encoders.runtime if encoders.embedder_dir else "torch",
        threads=encoders.threads,
    )
