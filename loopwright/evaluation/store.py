"""The generation store: an append-only, fsynced JSONL checkpoint that is also the cache.

One file per model identity (content hash of the folder, or the endpoint). Each line is
one generation keyed by (model id, sample id, prompt hash, decoding key), so:

* a killed evaluation, rerun, finds every generation that finished and redoes only the
  rest (resume);
* a later evaluation of the same model version on the same samples with the same
  decoding parameters reuses them (cache), while a changed prompt or a changed setting
  misses.

Lines are appended by the driver only (workers return results to it), flushed and
fsynced per batch. A torn last line from a kill mid-write is ignored with a warning; a
corrupt line elsewhere is an error naming the file and line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from loopwright.records import EvalSample, utcnow

logger = logging.getLogger(__name__)


class StoreError(ValueError):
    """The store file is corrupt; the message names the file and line."""


class Generation(BaseModel):
    """One model reply (or the error instead of it) for one sample and decoding setting.

    Attributes:
        key: identity of the generation (see :func:`generation_key`).
        model_id: the model identity (content hash or endpoint).
        sample_id: the EvalSample id.
        decoding_key: ``DecodingParams.cache_key()`` of the settings used.
        repeat: which repeated sample (0 for a single greedy generation).
        response: the reply; None when ``error`` is set.
        error: ``"<ExceptionType>: <message>"`` when generation failed.
        seconds: wall time of the batch this came from divided by its size.

    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    model_id: str
    sample_id: str
    decoding_key: str
    repeat: int = 0
    response: str | None = None
    error: str | None = None
    seconds: float = Field(default=0.0, ge=0)
    created_at: datetime = Field(default_factory=utcnow)


def prompt_hash(sample: EvalSample) -> str:
    """Hash of what the model sees (the messages), so an edited sample misses the cache."""
    payload = json.dumps([m.model_dump() for m in sample.messages], sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def generation_key(model_id: str, sample: EvalSample, decoding_key: str) -> str:
    """Identity of one generation: model, sample id, prompt content and decoding settings."""
    raw = f"{model_id}\x1f{sample.id}\x1f{prompt_hash(sample)}\x1f{decoding_key}"
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:32]


class GenerationStore:
    """Append-only JSONL of :class:`Generation` records for one model.

    Args:
        path: the JSONL file (its folder is created on first append).

    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._tail_checked = False

    @classmethod
    def for_model(cls, cache_dir: str | Path, model_id: str) -> GenerationStore:
        """Open the store of ``model_id`` inside ``cache_dir``."""
        safe = hashlib.sha256(model_id.encode("utf-8")).hexdigest()[:24]
        return cls(Path(cache_dir) / f"{safe}.jsonl")

    def load(self) -> dict[str, Generation]:
        """All stored generations by key; later lines win (a retried error is replaced)."""
        out: dict[str, Generation] = {}
        if not self.path.exists():
            return out
        with self.path.open("rb") as handle:
            lines = handle.read().split(b"\n")
        last = len(lines)
        for lineno, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                record = Generation.model_validate_json(raw)
            except ValidationError as exc:
                if lineno == last:  # no trailing newline: a write torn by a kill
                    logger.warning("%s:%d: ignoring a torn last line", self.path, lineno)
                    continue
                raise StoreError(f"{self.path}:{lineno}: corrupt generation record: {exc}") from exc
            out[record.key] = record
        return out

    def append(self, records: Iterable[Generation]) -> int:
        """Append records durably (flush + fsync) and return how many were written."""
        lines = [r.model_dump_json() + "\n" for r in records]
        if not lines:
            return 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self._tail_checked:
            self._drop_torn_tail()
            self._tail_checked = True
        with self.path.open("a", encoding="utf-8") as handle:
            handle.writelines(lines)
            handle.flush()
            os.fsync(handle.fileno())
        return len(lines)

    def _drop_torn_tail(self) -> None:
        """Cut a partial last line left by a kill mid-write, so new lines parse."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with self.path.open("r+b") as handle:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) == b"\n":
                return
            handle.seek(0)
            data = handle.read()
            cut = data.rfind(b"\n") + 1
            logger.warning("%s: dropping a torn last line (%d bytes)", self.path, len(data) - cut)
            handle.truncate(cut)
            handle.flush()
            os.fsync(handle.fileno())
