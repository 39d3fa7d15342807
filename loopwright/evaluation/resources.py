"""Load the models that model-based scorers need (reward model, guard) from folders or URIs.

Imports of ``models.reward`` / ``models.guard`` happen only here and only when asked, so
the scorers and the engine never depend on those modules' internals: any object with
``score(prompts, responses)`` / ``scores(texts)`` can be passed instead.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from loopwright.evaluation.scorers import ScorerResources

if TYPE_CHECKING:
    from loopwright.config import Settings

logger = logging.getLogger(__name__)


class ResourceError(ValueError):
    """A reward model or guard cannot be loaded; the message says what was tried."""


def _folder(ref: str, download_root: Path | None, what: str) -> Path:
    if ref.startswith(("models:/", "runs:/")):
        if download_root is None:
            raise ResourceError(f"{what} {ref}: a registry URI needs download_root")
        from loopwright.registry import download_model_folder  # lazy: needs MLflow config

        dest = Path(download_root) / hashlib.sha256(ref.encode()).hexdigest()[:16]
        return Path(download_model_folder(ref, dest))
    path = Path(ref)
    if not path.is_dir():
        raise ResourceError(f"{what} {ref}: not a folder or a models:/ URI")
    return path


def load_resources(
    *,
    reward: str | None = None,
    guard: str | None = None,
    download_root: str | Path | None = None,
    threads: int | None = 1,
    guard_backend: str = "onnx",
) -> ScorerResources:
    """Load the reward model and/or guard for model-based scorers.

    Args:
        reward: folder or registry URI of a reward model (either kind:
            :func:`models.classifiers.load_reward`).
        guard: folder or registry URI of a guard (either kind: :func:`models.classifiers.
            load_guard`).
        download_root: where registry URIs are downloaded to.
        threads: torch / ONNX Runtime threads for each.
        guard_backend: ``onnx`` (what the gateway serves) or ``torch``.

    Raises:
        ResourceError: a reference that is neither a folder nor a URI, or a model module
            that is not installed.

    """
    root = Path(download_root) if download_root is not None else None
    reward_obj = guard_obj = None
    if reward is not None:
        folder = _folder(reward, root, "reward model")
        try:
            from models.classifiers import load_reward
        except ImportError as exc:
            raise ResourceError(f"reward model {reward}: models is unavailable") from exc
        reward_obj = load_reward(folder, threads=threads)
    if guard is not None:
        folder = _folder(guard, root, "guard")
        try:
            from models.classifiers import load_guard
        except ImportError as exc:
            raise ResourceError(f"guard {guard}: models is unavailable") from exc
        guard_obj = load_guard(folder, backend=guard_backend, threads=threads)
    return ScorerResources(reward=reward_obj, guard=guard_obj)


def champion_refs(settings: Settings, alias: str = "champion") -> dict[str, str]:
    """Registry URIs of the configured app's reward model and guard at ``alias``.

    ``{"reward": "models:/<app>-reward@<alias>", "guard": "models:/<app>-guard@<alias>"}``:
    what the release evaluation scores with (:func:`loopwright.release.evaluate.
    evaluate_for_gate`) and what ``loopwright eval`` uses for a registry model by default.
    """
    return {
        "reward": f"models:/{settings.registered_model('reward')}@{alias}",
        "guard": f"models:/{settings.registered_model('guard')}@{alias}",
    }


def champion_resources(settings: Settings, download_root: Path) -> ScorerResources:
    """The reward model and guard champions that exist, loaded; a missing one is None.

    Suites whose scorers need a missing one are skipped by the evaluation (and say so);
    each missing champion is logged here.
    """
    refs = champion_refs(settings)
    present = {kind: uri for kind, uri in refs.items() if registered(uri)}
    for kind in sorted(refs.keys() - present.keys()):
        logger.warning("no %s champion (%s): suites that need it are skipped", kind, refs[kind])
    return load_resources(
        reward=present.get("reward"), guard=present.get("guard"), download_root=download_root
    )


def registered(uri: str) -> bool:
    """Whether a ``models:/NAME@ALIAS`` (or ``models:/NAME/N``) URI names a version.

    Uses the process's MLflow client configuration. Only "no such model, version or
    alias" answers False; an unreachable server raises (a wrong answer would silently
    skip suites).
    """
    from mlflow.exceptions import MlflowException

    from loopwright.registry import resolve_version

    try:
        resolve_version(uri)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return False
        raise
    return True
