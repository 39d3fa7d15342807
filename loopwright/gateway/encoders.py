"""Guard classifier and embedder behind protocols, served through one batching thread.

The guard (``models.guard.Guard``) and the embedder (``models.embedder.Embedder``) are
small encoders; on CPU one forward pass over a handful of texts costs about the same as
over one, so concurrent requests are batched: while a batch runs, new texts queue up and
go together in the next one. A lone request is sent at once (no batching wait).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from loopwright.grounding import EmbedderLike

logger = logging.getLogger(__name__)

GUARD_LABELS = ("benign", "harmful", "injection")


class GuardLike(Protocol):
    """A prompt/response classifier: per text, a probability per label."""

    def scores(self, texts: Sequence[str]) -> list[dict[str, float]]:
        """Label probabilities (benign, harmful, injection) per text."""
        ...


T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Job(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    loop: asyncio.AbstractEventLoop = field(repr=False)


class MicroBatcher(Generic[T, R]):
    """Opportunistic batching of a blocking batch function onto worker threads.

    Up to ``workers`` batches run at once (the function must be thread-safe; ONNX Runtime
    sessions are, and release the GIL while they run). A drain takes at most a
    ``1/workers`` share of what is queued, so concurrent requests spread over the workers
    instead of piling into one batch while the others idle; a lone request is sent at once.

    Args:
        fn: maps a list of items to a list of results of the same length (runs in a worker
            thread; it may release the GIL, as ONNX Runtime and torch do).
        max_batch: most items per call.
        executor: runs the calls (give it ``workers`` threads).
        workers: most calls in flight at once.

    """

    def __init__(
        self,
        fn: Callable[[list[T]], list[R]],
        max_batch: int,
        executor: ThreadPoolExecutor,
        workers: int = 1,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.fn = fn
        self.max_batch = max_batch
        self.executor = executor
        self.workers = workers
        self._lock = threading.Lock()
        self._queue: list[_Job[T, R]] = []
        self._active = 0
        self.calls = 0
        self.items = 0
        self.peak_active = 0

    def _take(self) -> list[_Job[T, R]]:
        """The next batch (called under the lock): at most a ``1/workers`` share of the queue.

        A batch runs on one thread, so a drain that took everything would leave the other
        workers idle until it finished (on CPU the encoders gain nothing from batching).
        """
        share = -(-len(self._queue) // self.workers)  # ceil
        size = min(self.max_batch, max(1, share))
        batch, self._queue = self._queue[:size], self._queue[size:]
        return batch

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                batch = self._take()
                if not batch:
                    self._active -= 1
                    return
            self.calls += 1
            self.items += len(batch)
            try:
                results = await loop.run_in_executor(
                    self.executor, self.fn, [job.item for job in batch]
                )
                if len(results) != len(batch):
                    raise RuntimeError(
                        f"batch function returned {len(results)} results for {len(batch)} items"
                    )
            except Exception as exc:  # noqa: BLE001 - each caller gets the error
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            for job, result in zip(batch, results, strict=True):
                if not job.future.done():
                    job.future.set_result(result)

    async def submit(self, item: T) -> R:
        """Queue ``item`` and wait for its result."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        with self._lock:
            self._queue.append(_Job(item, future, loop))
            start = self._active < self.workers
            if start:
                self._active += 1
                self.peak_active = max(self.peak_active, self._active)
        if start:
            loop.create_task(self._drain())
        return await future


@dataclass(frozen=True)
class _Request:
    text: str
    want_scores: bool
    want_vector: bool


class EncoderService:
    """Guard scores and embeddings for single texts, batched across concurrent requests.

    Args:
        guard: the guard classifier, or None (guard rails then cannot run).
        embedder: the embedder, or None (retrieval then cannot run).
        max_batch: most texts per encoder call.
        workers: encoder calls that may run at once, each in its own thread (the guard and
            embedder must be thread-safe, as ONNX Runtime sessions are). With one
            single-threaded session, one worker caps the gateway at one core's worth of
            encoder passes; a second lets concurrent requests use a second core.

    """

    def __init__(
        self,
        guard: GuardLike | None,
        embedder: EmbedderLike | None,
        max_batch: int = 32,
        workers: int = 1,
    ) -> None:
        self.guard = guard
        self.embedder = embedder
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="encoders")
        self._batcher: MicroBatcher[_Request, tuple[dict[str, float] | None, Any]] = MicroBatcher(
            self._run, max_batch, self._executor, workers
        )
        # A guard that embeds in the same forward pass (``models.guard.Guard.analyse``: one
        # encoder, two outputs) saves a whole pass per request; use it when offered.
        self._joint = getattr(guard, "analyse", None) if embedder is not None else None

    def _run(self, batch: list[_Request]) -> list[tuple[dict[str, float] | None, Any]]:
        score_idx = [i for i, r in enumerate(batch) if r.want_scores]
        vec_idx = [i for i, r in enumerate(batch) if r.want_vector]
        scores: dict[int, dict[str, float]] = {}
        vectors: dict[int, np.ndarray] = {}
        joint = self._joint
        joint_idx = [i for i in score_idx if batch[i].want_vector] if joint else []
        if joint is not None and joint_idx:
            analysis = joint([batch[i].text for i in joint_idx])
            for j, i in enumerate(joint_idx):
                scores[i] = dict(analysis.verdicts[j].scores)
                vectors[i] = analysis.embeddings[j]
        rest_scores = [i for i in score_idx if i not in scores]
        rest_vecs = [i for i in vec_idx if i not in vectors]
        if rest_scores:
            if self.guard is None:
                raise RuntimeError("guard scores requested but no guard is loaded")
            sc = self.guard.scores([batch[i].text for i in rest_scores])
            scores.update(zip(rest_scores, sc, strict=True))
        if rest_vecs:
            if self.embedder is None:
                raise RuntimeError("embeddings requested but no embedder is loaded")
            emb = self.embedder.encode([batch[i].text for i in rest_vecs])
            vectors.update((i, emb[j]) for j, i in enumerate(rest_vecs))
        return [(scores.get(i), vectors.get(i)) for i in range(len(batch))]

    async def analyse(
        self, text: str, *, scores: bool, vector: bool
    ) -> tuple[dict[str, float] | None, np.ndarray | None]:
        """Guard scores and/or the embedding of ``text`` (None for what was not asked)."""
        if not scores and not vector:
            return None, None
        return await self._batcher.submit(_Request(text, scores, vector))

    def close(self) -> None:
        """Stop the worker thread."""
        self._executor.shutdown(wait=False)
