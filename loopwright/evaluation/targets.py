"""What gets evaluated: a local Hugging Face model folder, or an OpenAI-compatible endpoint.

A local folder is generated from by the engine's Ray actor pool through
``models.generation``; an endpoint (the project's gateway, so guardrails and model are
judged together, or any OpenAI-compatible server) is called over HTTP. Both have a stable
``model_id`` used to key the generation cache: the folder's content hash, or the
endpoint URL and model name.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

logger = logging.getLogger(__name__)

_HASH_CHUNK = 1 << 20


class TargetError(ValueError):
    """A model reference cannot be resolved; the message says which forms are valid."""


def folder_content_hash(folder: str | Path) -> str:
    """SHA-256 over the relative paths and bytes of every file in a model folder.

    The same weights and tokenizer give the same hash wherever the folder lives, so a
    registry version downloaded twice still hits the cache; any changed byte misses.
    """
    folder = Path(folder)
    digest = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise TargetError(f"{folder}: model folder is empty")
    for path in files:
        digest.update(path.relative_to(folder).as_posix().encode("utf-8") + b"\0")
        with path.open("rb") as handle:
            while chunk := handle.read(_HASH_CHUNK):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()


@dataclass(frozen=True)
class LocalModelTarget:
    """A Hugging Face causal LM folder (model + tokenizer with a chat template).

    Attributes:
        uri: what the user asked for (a path or a ``models:/`` URI), for reports.
        folder: the local folder holding the model.
        model_id: content hash of the folder.

    """

    uri: str
    folder: Path
    model_id: str
    kind: Literal["local"] = "local"

    @classmethod
    def from_folder(cls, folder: str | Path, uri: str | None = None) -> LocalModelTarget:
        """Build from a folder, hashing its content."""
        folder = Path(folder)
        if not (folder / "config.json").exists():
            raise TargetError(f"{folder}: not a Hugging Face model folder (no config.json)")
        return cls(uri=uri or str(folder), folder=folder, model_id=folder_content_hash(folder))


@dataclass(frozen=True)
class EndpointTarget:
    """An OpenAI-compatible chat-completions endpoint.

    Attributes:
        uri: what the user asked for.
        base_url: URL ending before ``/chat/completions`` (e.g. ``http://host:8000/v1``).
        model: the ``model`` field sent with each request.
        api_key: bearer token, if the endpoint needs one (never logged).
        timeout_s: per-request timeout, seconds.
        concurrency: requests in flight at once.

    """

    uri: str
    base_url: str
    model: str
    api_key: str | None = field(default=None, repr=False)
    timeout_s: float = 60.0
    concurrency: int = 8
    kind: Literal["endpoint"] = "endpoint"

    @property
    def model_id(self) -> str:
        """Cache identity: the endpoint and the model name it serves."""
        return f"endpoint:{self.base_url.rstrip('/')}#{self.model}"


Target = LocalModelTarget | EndpointTarget


def resolve_target(
    model: str | Target,
    *,
    download_root: str | Path | None = None,
    api_key: str | None = None,
) -> Target:
    """Turn a model reference into a target.

    Accepted forms:

    * an existing folder path -> :class:`LocalModelTarget`;
    * ``models:/<name>@<alias>``, ``models:/<name>/<version>`` or ``runs:/...`` ->
      downloaded with ``loopwright.registry.download_model_folder`` into
      ``download_root`` (imported lazily; needs a tracking server);
    * ``http(s)://host:port/v1#<model>`` -> :class:`EndpointTarget` (the fragment is the
      model name; without it, ``default``);
    * a target object, returned as is.

    Raises:
        TargetError: none of the forms match, or a registry URI without ``download_root``.

    """
    if isinstance(model, LocalModelTarget | EndpointTarget):
        return model
    if model.startswith(("http://", "https://")):
        parts = urlsplit(model)
        base = urlunsplit((parts.scheme, parts.netloc, parts.path, parts.query, ""))
        return EndpointTarget(
            uri=model, base_url=base, model=parts.fragment or "default", api_key=api_key
        )
    if model.startswith(("models:/", "runs:/")):
        if download_root is None:
            raise TargetError(f"{model}: a registry URI needs download_root to download into")
        from loopwright.registry import download_model_folder  # lazy: needs MLflow config

        dest = Path(download_root) / hashlib.sha256(model.encode()).hexdigest()[:16]
        folder = download_model_folder(model, dest)
        return LocalModelTarget.from_folder(folder, uri=model)
    path = Path(model)
    if path.is_dir():
        return LocalModelTarget.from_folder(path)
    raise TargetError(
        f"cannot resolve model {model!r}: expected an existing model folder, a registry URI "
        "(models:/NAME@ALIAS, models:/NAME/VERSION, runs:/...), or an OpenAI-compatible "
        "endpoint (http://HOST:PORT/v1#MODEL)"
    )
