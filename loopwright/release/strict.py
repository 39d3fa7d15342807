"""Strict typed config: unknown keys fail naming the valid ones; YAML loaded with file context.

Pydantic's own ``extra="forbid"`` error says only "Extra inputs are not permitted"; a user
editing a policy file needs the list of keys that *are* valid, so every model here checks
its keys itself before field validation.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from loopwright.records import DIMENSIONS

_SLICE_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


def _version_text(value: Any) -> Any:
    # YAML reads `version: 1` as an int; a policy version is a label, compared as text.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


VersionStr = Annotated[str, BeforeValidator(_version_text), Field(min_length=1)]
"""A policy version label; numbers in YAML are accepted and kept as text."""


class ConfigError(ValueError):
    """A policy or summary failed validation; the message names the source and the valid values."""


class StrictModel(BaseModel):
    """Frozen pydantic model whose unknown keys fail with the list of valid keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        return check_known_keys(data, cls)


def check_known_keys(data: Any, model: type[BaseModel], where: str = "") -> Any:
    """``data`` unchanged, or ValueError naming its unknown keys and ``model``'s valid ones.

    Args:
        data: the raw input (only a dict is checked).
        model: the model whose fields are the valid keys.
        where: prefix for the message (e.g. ``"lora: "`` for a nested section).
    """
    if isinstance(data, dict):
        valid = set(model.model_fields)
        unknown = sorted(str(k) for k in data if k not in valid)
        if unknown:
            raise ValueError(f"{where}unknown key(s) {unknown}; valid keys: {sorted(valid)}")
    return data


def check_dimension_key(key: str) -> str:
    """Validate ``"<dimension>"`` or ``"<dimension>/<slice>"``; returns the key unchanged.

    Raises:
        ValueError: the dimension is not one of ``loopwright.records.DIMENSIONS`` (the
            message lists them) or the slice name is empty or has odd characters.

    """
    dimension, _, slice_name = key.partition("/")
    if dimension not in DIMENSIONS:
        raise ValueError(
            f"unknown dimension {dimension!r} in key {key!r}; valid dimensions: {list(DIMENSIONS)}"
        )
    if "/" in key and not _SLICE_RE.match(slice_name):
        raise ValueError(
            f"bad slice name {slice_name!r} in key {key!r}: use letters, digits, '_', '-', '.'"
        )
    return key


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line per problem: ``source: path.to.field: message``."""
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = str(err["msg"]).removeprefix("Value error, ")
        lines.append(f"{source}: {where}: {msg}")
    return "\n".join(lines)


M = TypeVar("M", bound=BaseModel)


def parse_model(cls: type[M], data: Any, source: str) -> M:
    """Validate ``data`` as ``cls``, raising :class:`ConfigError` that names ``source``."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from exc


def load_yaml(path: str | Path) -> tuple[dict[str, Any], str]:
    """Read a YAML mapping; returns ``(data, sha256 of the file bytes)``.

    Raises:
        ConfigError: the file is not valid YAML or its top level is not a mapping.

    """
    path = Path(path)
    raw = path.read_bytes()
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data, hashlib.sha256(raw).hexdigest()
