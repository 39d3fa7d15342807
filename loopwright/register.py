"""Register a model folder a user brings: check it loads as the loop will load it, publish it.

``loopwright register FOLDER --kind policy`` is the front door for a team's own model: a
Hugging Face causal LM folder with a chat template (policy); as guard, any Hugging Face
sequence classifier with a label map, or a guard loopwright trained; as reward model, any
single-logit sequence classifier, or one loopwright trained (:mod:`models.classifiers`).
The folder is loaded through the same code the gateway, the
evaluation and the trainers use, so a folder that registers is one the loop can serve and
fine-tune. Registration is idempotent (a folder already registered, byte for byte, is
reported, not registered twice) and the first version of a model may become champion
directly; any later one goes through the release path (gate, canary, approval).
"""

from __future__ import annotations

import getpass
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from loopwright.config import Settings
from loopwright.registry import ModelKind, RegisteredVersion, folder_digest

logger = logging.getLogger(__name__)

MODEL_KINDS: tuple[ModelKind, ...] = ("policy", "guard", "reward")


class ModelFolderError(ValueError):
    """A folder the loop cannot load as the kind it was given; the message says why."""


@dataclass(frozen=True)
class Registration:
    """What ``register`` did.

    Attributes:
        version: the registered version (new, or the one already holding this folder).
        created: False when the same folder was registered before.
        champion: the champion version after the call (None: no champion yet).
    """

    version: RegisteredVersion
    created: bool
    champion: str | None


def check_model_folder(folder: Path, kind: ModelKind) -> str:
    """Load ``folder`` as the loop will and answer one request with it.

    Returns:
        A one-line description of what was loaded.

    Raises:
        ModelFolderError: not a folder, or it does not load or run as ``kind``.
    """
    if kind not in MODEL_KINDS:
        raise ModelFolderError(f"unknown kind {kind!r}; valid: {', '.join(MODEL_KINDS)}")
    if not folder.is_dir():
        raise ModelFolderError(f"{folder} is not a folder")
    try:
        return _probe(folder, kind)
    except ModelFolderError:
        raise
    except Exception as exc:  # noqa: BLE001 - any load failure is the folder's fault here
        raise ModelFolderError(f"{folder} does not load as a {kind} model: {exc}") from exc


def _probe(folder: Path, kind: ModelKind) -> str:
    if kind == "policy":
        from models.generation import DecodingParams, generate_batch, load_policy

        if not (folder / "config.json").is_file():
            raise ModelFolderError(
                f"{folder}: no config.json; a policy is a Hugging Face causal LM folder "
                "(save_pretrained of the model and its tokenizer, with a chat template)"
            )
        policy = load_policy(folder, device="cpu")
        reply = generate_batch(
            policy, [[{"role": "user", "content": "Hello"}]], DecodingParams(max_new_tokens=4)
        )[0]
        arch = type(policy.model).__name__
        params = sum(p.numel() for p in policy.model.parameters())
        return f"{arch}, {params / 1e6:.1f}M parameters, replied {reply!r}"
    if kind == "guard":
        from models.classifiers import ClassifierGuard, load_guard

        guard = load_guard(folder, backend="torch")
        scores = guard.scores(["Hello"])[0]
        if isinstance(guard, ClassifierGuard):
            mapped = ", ".join(f"{k}->{v}" for k, v in guard.mapping.label_map.items())
            return f"classifier guard ({mapped}), P(harmful | 'Hello') = {scores['harmful']:.3f}"
        return f"guard, labels {', '.join(sorted(scores))}"
    from models.classifiers import load_reward

    score = load_reward(folder).score(["Hello"], ["Hi, how can I help?"])[0]
    return f"reward model, score of a greeting: {score:.3f}"


def gguf_to_folder(gguf_file: Path, workdir: Path) -> Path:
    """A GGUF causal LM as a plain fp32 Hugging Face folder under ``workdir`` (reused).

    transformers dequantises GGUF weights on load but will not ``save_pretrained`` a
    GGUF-loaded model, so the weights are copied into a model built from the same config.

    Raises:
        ModelFolderError: not a file, or transformers cannot read it as a causal LM.
    """
    if not gguf_file.is_file():
        raise ModelFolderError(f"{gguf_file} is not a file")
    out = workdir / gguf_file.stem
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    where, name = gguf_file.parent, gguf_file.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype=torch.float32)
        config = AutoConfig.from_pretrained(where, gguf_file=name)
    except Exception as exc:  # noqa: BLE001 - any read failure is the file's fault here
        raise ModelFolderError(f"{gguf_file} does not load as a causal LM: {exc}") from exc
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    partial = out.with_name(out.name + ".partial")
    plain.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(out)  # whole or absent: a crash mid-write leaves only .partial
    logger.info("converted %s to %s", gguf_file, out)
    return out


def with_chat_template(folder: Path, template: str | None, workdir: Path) -> Path:
    """``folder``, or a copy of it under ``workdir`` whose tokenizer carries ``template``.

    The copy is made only when ``template`` is given and the folder's tokenizer has no
    chat template of its own (a model's own template always wins).

    Raises:
        ModelFolderError: the template does not render a conversation.
    """
    if template is None or not (folder / "config.json").is_file():
        return folder

    from transformers import AutoTokenizer

    from loopwright.domain_check import chat_template_problem

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.chat_template:
        return folder
    problem = chat_template_problem(template)
    if problem:
        raise ModelFolderError(f"the domain's chat template: {problem}")
    copy = _fresh_copy(folder, workdir / folder.resolve().name)
    tokenizer.chat_template = template
    tokenizer.save_pretrained(copy)
    logger.info("%s has no chat template: registering a copy with the domain's", folder)
    return copy


def _fresh_copy(folder: Path, copy: Path) -> Path:
    """``folder`` copied to ``copy``, replacing whatever an earlier registration left there."""
    import shutil

    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(folder, copy)
    return copy


def with_guard_mapping(
    folder: Path,
    label_map: dict[str, str] | None,
    thresholds: dict[str, float] | None,
    workdir: Path,
) -> Path:
    """``folder``, or a copy under ``workdir`` carrying the guard label map.

    A guard loopwright trained is returned as it is (it has its own labels and calibrated
    thresholds). A classifier folder gets ``loopwright_guard.json``: ``label_map`` (None:
    the one already in the folder, else the model's own labels if they are guard labels)
    and ``thresholds`` (None: the folder's, else 0.5).

    Raises:
        ModelFolderError: a label map that does not fit the model's labels, or a label map
            given for a guard loopwright trained.
    """
    from pydantic import ValidationError

    from models.classifiers import (
        DEFAULT_THRESHOLDS,
        HF_GUARD_FILE,
        ClassifierFolderError,
        GuardMapping,
        guard_mapping,
        is_own_guard,
        model_labels,
        read_guard_mapping,
        write_guard_mapping,
    )

    if is_own_guard(folder):
        if label_map or thresholds:
            raise ModelFolderError(
                f"{folder} is a guard loopwright trained: its labels and calibrated "
                "thresholds are its own (no --label-map / --threshold)"
            )
        return folder
    if not (folder / "config.json").is_file():
        raise ModelFolderError(
            f"{folder}: no config.json; a guard is a Hugging Face sequence-classifier folder "
            "(model and tokenizer) or a guard loopwright trained"
        )
    try:
        existing = read_guard_mapping(folder) if (folder / HF_GUARD_FILE).is_file() else None
        labels = model_labels(folder)
        mapped = guard_mapping(labels, label_map or (existing.label_map if existing else None))
        limits = {**DEFAULT_THRESHOLDS, **(existing.thresholds if existing else {})}
        mapping = GuardMapping.model_validate(
            {"label_map": mapped, "thresholds": {**limits, **(thresholds or {})}}
        )
    except (ClassifierFolderError, ValidationError) as exc:
        raise ModelFolderError(f"{folder}: {exc}") from exc
    copy = _fresh_copy(folder, workdir / f"{folder.resolve().name}-guard")
    write_guard_mapping(copy, mapping)
    return copy


def register_model(
    settings: Settings,
    folder: Path,
    kind: ModelKind,
    *,
    champion: bool = False,
    actor: str | None = None,
    reason: str = "registered with loopwright register",
    source: Path | None = None,
) -> Registration:
    """Publish ``folder`` as a new ``<app>-<kind>`` version (once), optionally as champion.

    Args:
        settings: the stack (registry) and the app name.
        folder: a folder that passed :func:`check_model_folder`.
        kind: policy, guard or reward.
        champion: make this version champion; only when the model has no champion yet
            (a first registration). Later versions are released through the gate.
        actor: who registers (recorded with the promotion); default the OS user.
        reason: why (recorded with the promotion).
        source: the folder the user named, when ``folder`` is a prepared copy of it
            (:func:`with_chat_template`); recorded in the lineage. Default ``folder``.

    Raises:
        ModelFolderError: ``champion`` asked for while a champion exists.
    """
    from mlflow import MlflowClient

    from loopwright.publish import find_version, publish_model
    from loopwright.release.approval import ApprovalDecision
    from loopwright.release.registry_ops import RegistryOps

    name = settings.registered_model(kind)
    ops = RegistryOps(MlflowClient(), settings.app, settings.run_path / "locks")
    current = ops.state(name).alias("champion") if _exists(name) else None
    if champion and current is not None:
        how = (
            "loopwright release VERSION (gate, canary, approval)"
            if kind == "policy"
            else "the nightly's refresh, or loopwright rollback --to VERSION --kind " + kind
        )
        raise ModelFolderError(
            f"{name} already has champion version {current}; a new version becomes champion "
            f"through {how}"
        )
    digest = folder_digest(folder)
    existing = find_version(name, {"folder_sha256": digest})
    version = existing or publish_model(
        settings,
        folder,
        kind,
        experiment=f"{settings.app}-register",
        run_name=f"register {kind}",
        params={"folder": str((source or folder).resolve())},
        metrics={},
        lineage={"origin": "register", "source_folder": str((source or folder).resolve())},
    )
    if champion and current is None:
        by = actor or getpass.getuser()
        approval = ApprovalDecision(
            approved=True, by=by, at=datetime.now(UTC), reason=reason, channel="auto"
        )
        ops.promote(
            name,
            version.version,
            approval,
            expected_champion=None,
            request_id=f"register-{name}-{version.version}",
        )
        current = version.version
    return Registration(version=version, created=existing is None, champion=current)


def _exists(name: str) -> bool:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        MlflowClient().get_registered_model(name)
    except MlflowException:
        return False
    return True
