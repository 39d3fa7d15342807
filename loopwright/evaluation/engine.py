"""Generation for evaluation: Ray Data actor pool over a local model, or HTTP to an endpoint.

Every reply goes through ``models.generation.generate_batch`` (the one generation path of
the project). The engine adds what evaluation needs around it:

* **Distribution**: ``Dataset.map_batches(GeneratorActor, compute=ActorPoolStrategy(...))``,
  one model per actor, ``num_gpus=1`` per actor when the Ray cluster has GPUs and
  ``num_cpus=1`` with ``torch.set_num_threads(threads_per_worker)`` otherwise. On a
  small CPU machine several single-threaded actors beat one multi-threaded process,
  because a tiny model's decode step is dominated by per-step overhead that threads do
  not share but processes do.
* **Length bucketing**: requests are sorted by decoding setting and prompt length before
  being cut into batches, so each ``generate`` call pads little.
* **Checkpoint and cache**: finished generations are appended (fsync per batch) to the
  model's :class:`~loopwright.evaluation.store.GenerationStore` as they stream back to
  the driver; a rerun generates only the keys that are missing.
* **Errors**: a batch that raises is retried one prompt at a time; a prompt that still
  raises is recorded as an error (type and message) and the run goes on.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from loopwright.evaluation.store import Generation, GenerationStore, generation_key
from loopwright.evaluation.targets import EndpointTarget, LocalModelTarget, Target
from loopwright.progress import report as report_progress
from loopwright.records import EvalSample
from models.generation import DecodingParams

logger = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
"""Progress callback: (label, done, total)."""


class EngineError(RuntimeError):
    """The engine cannot run as configured; the message says what to change."""


@dataclass(frozen=True)
class EngineConfig:
    """How generation is executed.

    Attributes:
        executor: ``ray`` (Ray Data actor pool), ``local`` (the same actor class called
            in this process: no Ray start-up cost, one worker), or ``auto`` (the default):
            Ray when it is already running, an address is given, or ``workers`` > 1, else
            local, because a single actor in a fresh Ray only adds start-up time.
        workers: actors in the pool (capped by the number of batches; by GPUs on GPU).
        batch_size: prompts per ``generate`` call.
        threads_per_worker: ``torch.set_num_threads`` in each CPU actor.
        use_gpu: None = use GPUs when the Ray cluster (or, locally, torch) has them.
        ray_address: connect to this Ray cluster instead of starting a local one.
        ray_temp_dir: Ray's session folder when starting a local Ray; must be given
            (inside the project's run directory) because Ray would otherwise write to
            the system temp dir.
        ray_num_cpus: CPUs a local Ray may use (default: ``workers * threads_per_worker``).
        retry_errors: on a rerun, generate again the samples that errored before.
        driver_assist: on CPU with Ray, the driver generates from the front of the queue
            while the actors start (process start, torch import, model load: seconds to
            tens of seconds on a busy machine), and stops as soon as the first actor
            result arrives; the actors work from the back. Hides the pool's start-up.

    """

    executor: Literal["auto", "ray", "local"] = "auto"
    workers: int = 1
    batch_size: int = 32
    threads_per_worker: int = 1
    use_gpu: bool | None = None
    ray_address: str | None = None
    ray_temp_dir: Path | None = None
    ray_num_cpus: int | None = None
    retry_errors: bool = True
    driver_assist: bool = True

    def __post_init__(self) -> None:
        if self.executor not in ("auto", "ray", "local"):
            raise ValueError(f"executor must be 'auto', 'ray' or 'local', got {self.executor!r}")
        for name in ("workers", "batch_size", "threads_per_worker"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class GenerationRequest:
    """One generation to make: a sample under one decoding setting (and repeat index)."""

    sample: EvalSample
    params: DecodingParams
    repeat: int
    key: str

    @classmethod
    def make(
        cls, model_id: str, sample: EvalSample, params: DecodingParams, repeat: int = 0
    ) -> GenerationRequest:
        """Build a request with its store key."""
        return cls(sample, params, repeat, generation_key(model_id, sample, params.cache_key()))


@dataclass
class GenerationOutcome:
    """Generations for a set of requests and how they were obtained.

    Attributes:
        by_key: every requested key -> its generation (response or error).
        requested: distinct requests.
        cached: found in the store (checkpoint or earlier run).
        generated: produced now (including errors).
        errors: requests whose final generation is an error.
        seconds: wall time spent generating now.

    """

    by_key: dict[str, Generation] = field(default_factory=dict)
    requested: int = 0
    cached: int = 0
    generated: int = 0
    errors: int = 0
    seconds: float = 0.0


# --------------------------------------------------------------------------- the actor


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


class GeneratorActor:
    """Holds one loaded policy and generates for batches of requests (a Ray Data UDF).

    Args:
        model_dir: the Hugging Face model folder.
        threads: torch intra-op threads for this actor (CPU).
        device: ``cpu`` or ``cuda``.

    """

    def __init__(self, model_dir: str, threads: int = 1, device: str = "cpu") -> None:
        import torch

        from models.generation import load_policy

        if device == "cpu":
            torch.set_num_threads(threads)
        self.policy = load_policy(model_dir, device=device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Generate for one batch -> columns key, response, error, seconds.

        Input: columns key, messages (JSON), params (JSON); or a column ``batch`` whose
        items are JSON lists of such rows, one engine batch each (the Ray path, so Ray's
        block bundling never changes which prompts share a ``generate`` call).
        """
        from models.generation import generate_batch

        if "batch" in batch:
            rows = [r for item in batch["batch"] for r in json.loads(str(item))]
        else:
            rows = [
                {k: str(batch[k][i]) for k in ("key", "messages", "params")}
                for i in range(len(batch["key"]))
            ]
        keys = [r["key"] for r in rows]
        convs = [json.loads(r["messages"]) for r in rows]
        params = [r["params"] for r in rows]
        n = len(keys)
        responses = [""] * n
        errors = [""] * n
        seconds = [0.0] * n
        groups: dict[str, list[int]] = defaultdict(list)
        for i, p in enumerate(params):
            groups[p].append(i)
        for pjson, idx in groups.items():
            dp = DecodingParams(**json.loads(pjson))
            start = time.perf_counter()
            try:
                outs = generate_batch(self.policy, [convs[i] for i in idx], dp, batch_size=len(idx))
                for i, text in zip(idx, outs, strict=True):
                    responses[i] = text
            except Exception as exc:  # noqa: BLE001 - isolate the failing prompt, keep going
                logger.warning("batch of %d failed (%s); retrying one by one", len(idx), exc)
                for i in idx:
                    try:
                        responses[i] = generate_batch(self.policy, [convs[i]], dp, batch_size=1)[0]
                    except Exception as one_exc:  # noqa: BLE001 - recorded, counted, reported
                        errors[i] = _error_text(one_exc)
            per = (time.perf_counter() - start) / len(idx)
            for i in idx:
                seconds[i] = per
        return {
            "key": np.array(keys, dtype=object),
            "response": np.array(responses, dtype=object),
            "error": np.array(errors, dtype=object),
            "seconds": np.array(seconds, dtype=np.float64),
        }


# --------------------------------------------------------------------------- Ray


@contextmanager
def ray_session(config: EngineConfig) -> Iterator[None]:
    """Make sure Ray is up for the duration; shut it down only if we started it.

    Raises:
        EngineError: a local Ray would be started without ``ray_temp_dir``.

    """
    import ray

    if ray.is_initialized():
        yield
        return
    if config.ray_address is None and config.ray_temp_dir is None:
        raise EngineError(
            "starting a local Ray needs EngineConfig.ray_temp_dir (a folder inside the "
            "project's run directory); or pass ray_address to join a running cluster"
        )
    # Workers must import the same loopwright/models as this driver, not an installed copy.
    import loopwright

    root = str(Path(loopwright.__file__).resolve().parent.parent)
    pythonpath = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    env_vars = {"PYTHONPATH": pythonpath, "TOKENIZERS_PARALLELISM": "false"}
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": logging.WARNING,
        "log_to_driver": False,
        "runtime_env": {"env_vars": env_vars},
    }
    if config.ray_address is not None:
        kwargs["address"] = config.ray_address
    else:
        # Local Ray: token auth is on by default and writes under ~/.ray (STACK_NOTES).
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        temp = Path(config.ray_temp_dir).resolve()  # type: ignore[arg-type]
        temp.mkdir(parents=True, exist_ok=True)
        kwargs["_temp_dir"] = str(temp)
        kwargs["num_cpus"] = config.ray_num_cpus or config.workers * config.threads_per_worker
    ray.init(**kwargs)
    try:
        yield
    finally:
        ray.shutdown()


def resolve_executor(config: EngineConfig) -> Literal["ray", "local"]:
    """Return the executor that ``auto`` stands for under the current conditions."""
    if config.executor != "auto":
        return config.executor
    import ray

    if ray.is_initialized() or config.ray_address is not None or config.workers > 1:
        return "ray"
    return "local"


def _gpu_available(config: EngineConfig) -> bool:
    if config.use_gpu is not None:
        return config.use_gpu
    if resolve_executor(config) == "ray":
        import ray

        return ray.cluster_resources().get("GPU", 0) > 0
    import torch

    return torch.cuda.is_available()


Batch = list[dict[str, str]]


def make_batches(requests: Sequence[GenerationRequest], batch_size: int) -> list[Batch]:
    """Cut requests into engine batches: per decoding setting, by prompt length.

    Length bucketing keeps padding small; one decoding setting per batch keeps each batch
    one ``generate`` call. Every executor generates exactly these batches, so outputs
    (seeded sampling included: ``generate_batch`` seeds per call) do not depend on which
    executor or worker ran a batch.
    """

    def size(r: GenerationRequest) -> int:
        return sum(len(m.content) for m in r.sample.messages)

    groups: dict[str, list[GenerationRequest]] = defaultdict(list)
    for r in requests:
        groups[r.params.cache_key()].append(r)
    batches: list[Batch] = []
    for key in sorted(groups):
        ordered = sorted(groups[key], key=lambda r: (size(r), r.sample.id))
        rows = [
            {
                "key": r.key,
                "messages": json.dumps([m.model_dump() for m in r.sample.messages]),
                "params": json.dumps(asdict(r.params), sort_keys=True),
            }
            for r in ordered
        ]
        batches.extend(rows[i : i + batch_size] for i in range(0, len(rows), batch_size))
    return batches


def _columns(batch: Batch) -> dict[str, np.ndarray]:
    return {k: np.array([r[k] for r in batch], dtype=object) for k in batch[0]}


def _local_batches(
    target: LocalModelTarget, batches: list[Batch], config: EngineConfig, device: str
) -> Iterator[dict[str, np.ndarray]]:
    import torch

    before = torch.get_num_threads()
    try:
        actor = GeneratorActor(str(target.folder), config.threads_per_worker, device)
        for batch in batches:
            yield actor(_columns(batch))
    finally:
        torch.set_num_threads(before)


def _ray_batches(
    target: LocalModelTarget, batches: list[Batch], config: EngineConfig, gpu: bool
) -> Iterator[dict[str, np.ndarray]]:
    import ray
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the caller's progress callback reports instead
    ctx.print_on_execution_start = False
    n_batches = len(batches)
    size = min(config.workers, n_batches)
    if gpu:
        size = max(1, min(size, int(ray.cluster_resources().get("GPU", 0))))
    resources: dict[str, Any] = {"num_gpus": 1} if gpu else {"num_cpus": 1}
    # One item per engine batch, one item per map call: Ray never regroups prompts.
    items = [{"batch": json.dumps(b)} for b in batches]
    source = ray.data.from_items(items, override_num_blocks=n_batches)
    ds = source.map_batches(
        GeneratorActor,
        fn_constructor_kwargs={
            "model_dir": str(target.folder),
            "threads": config.threads_per_worker,
            "device": "cuda" if gpu else "cpu",
        },
        # Two tasks in flight per actor keep it busy without queueing work that is
        # wasted when the run stops early (driver-assisted runs stop when all is covered).
        compute=ray.data.ActorPoolStrategy(size=size, max_tasks_in_flight_per_actor=2),
        batch_size=1,
        batch_format="numpy",
        **resources,
    )
    yield from ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0)


def _assisted_ray_batches(
    target: LocalModelTarget, batches: list[Batch], config: EngineConfig
) -> Iterator[dict[str, np.ndarray]]:
    """Ray actor pool plus the driver generating while the pool starts (CPU only).

    Two producers feed one queue: the driver (a thread, one model, batches from the
    front: short prompts first) and the Ray Data iteration (a thread, the actor pool,
    batches from the back). The driver stops taking batches at the first actor result,
    leaving the CPU to the pool. Every key is emitted once, as soon as it is produced
    (so it is checkpointed at once); when all keys are covered the Ray iteration is
    abandoned, which cancels its remaining tasks.

    Raises:
        Exception: whatever the Ray pipeline raised, if the driver did not cover its rows.

    """
    import queue
    import threading

    all_keys = {r["key"] for b in batches for r in b}
    emitted: set[str] = set()
    stop_driver = threading.Event()
    stop_ray = threading.Event()
    produced: queue.Queue[tuple[str, Any]] = queue.Queue()

    def driver() -> None:
        import torch

        before = torch.get_num_threads()
        try:
            actor = GeneratorActor(str(target.folder), config.threads_per_worker, "cpu")
            for batch in batches:
                if stop_driver.is_set():
                    return
                produced.put(("out", actor(_columns(batch))))
        except Exception:  # noqa: BLE001 - the actors still cover every row
            logger.exception("driver-side generation failed; the actor pool continues")
        finally:
            torch.set_num_threads(before)
            produced.put(("done", "driver"))

    def pool() -> None:
        try:
            for out in _ray_batches(target, list(reversed(batches)), config, gpu=False):
                stop_driver.set()
                produced.put(("out", out))
                if stop_ray.is_set():
                    return
        except Exception as exc:  # noqa: BLE001 - handed to the consumer below
            produced.put(("error", exc))
        finally:
            produced.put(("done", "pool"))

    threads = [
        threading.Thread(target=driver, name="eval-driver", daemon=True),
        threading.Thread(target=pool, name="eval-pool", daemon=True),
    ]
    for t in threads:
        t.start()
    finished: set[str] = set()
    failure: Exception | None = None
    try:
        while finished != {"driver", "pool"} and not emitted >= all_keys:
            kind, item = produced.get()
            if kind == "done":
                finished.add(item)
            elif kind == "error":
                failure = item
            else:
                keep = [i for i, k in enumerate(item["key"]) if str(k) not in emitted]
                emitted.update(str(item["key"][i]) for i in keep)
                if keep:
                    yield {name: col[keep] for name, col in item.items()}
    finally:
        stop_driver.set()
        stop_ray.set()
        threads[0].join()
        # Wait for the pool thread: it ends at its next result (at most the in-flight
        # tasks), closing the Ray Data iteration, which cancels what is left. Leaving it
        # blocked past ray.shutdown() makes Ray's core worker kill the process.
        threads[1].join()
    if failure is not None and not emitted >= all_keys:
        raise failure


def _endpoint_generate(
    target: EndpointTarget, requests: Sequence[GenerationRequest]
) -> Iterator[tuple[str, str, str, float]]:
    """Yield (key, response, error, seconds) per request as replies arrive."""
    import httpx

    url = target.base_url.rstrip("/") + "/chat/completions"
    headers = {"Authorization": f"Bearer {target.api_key}"} if target.api_key else {}

    def one(client: httpx.Client, req: GenerationRequest) -> tuple[str, str, str, float]:
        body: dict[str, Any] = {
            "model": target.model,
            "messages": [m.model_dump() for m in req.sample.messages],
            "max_tokens": req.params.max_new_tokens,
            "temperature": req.params.temperature,
            "top_p": req.params.top_p,
            "seed": req.params.seed,
        }
        start = time.perf_counter()
        try:
            resp = client.post(url, json=body, headers=headers)
            resp.raise_for_status()
            text = resp.json()["choices"][0]["message"]["content"] or ""
            return req.key, text.strip(), "", time.perf_counter() - start
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
            return req.key, "", _error_text(exc), time.perf_counter() - start

    with (
        httpx.Client(timeout=target.timeout_s) as client,
        ThreadPoolExecutor(target.concurrency) as pool,
    ):
        futures = [pool.submit(one, client, r) for r in requests]
        for fut in as_completed(futures):
            yield fut.result()


# --------------------------------------------------------------------------- driver


def generate(
    target: Target,
    requests: Sequence[GenerationRequest],
    store: GenerationStore,
    config: EngineConfig,
    *,
    progress: Progress | None = None,
    label: str = "generate",
) -> GenerationOutcome:
    """Produce a generation for every request, reusing the store and checkpointing to it.

    Args:
        target: local model folder or endpoint.
        requests: what to generate; duplicates (same key) are generated once.
        store: the model's generation store (checkpoint + cache).
        config: execution settings.
        progress: called as (label, done, total) after each checkpointed batch.
        label: progress label.

    Returns:
        The outcome; ``by_key`` covers every request.

    Raises:
        EngineError: Ray is needed but cannot be started as configured.

    """
    # No callback given: the process's reporter (silent unless a front end shows it).
    progress = progress or report_progress
    outcome = GenerationOutcome()
    unique = {r.key: r for r in requests}
    outcome.requested = len(unique)
    existing = store.load()
    todo = []
    for key, req in unique.items():
        prev = existing.get(key)
        if prev is not None and not (prev.error and config.retry_errors):
            outcome.by_key[key] = prev
        else:
            todo.append(req)
    outcome.cached = len(unique) - len(todo)
    if outcome.cached:
        logger.info("%s: %d of %d generations from the store", label, outcome.cached, len(unique))
    if progress is not None:
        progress(label, 0, len(todo))
    if not todo:
        return outcome
    by_key = {r.key: r for r in todo}
    start = time.perf_counter()
    done = 0

    def record(rows: list[tuple[str, str, str, float]]) -> None:
        nonlocal done
        gens = []
        for key, response, error, seconds in rows:
            req = by_key[key]
            gens.append(
                Generation(
                    key=key,
                    model_id=target.model_id,
                    sample_id=req.sample.id,
                    decoding_key=req.params.cache_key(),
                    repeat=req.repeat,
                    response=None if error else response,
                    error=error or None,
                    seconds=seconds,
                )
            )
        store.append(gens)
        for g in gens:
            outcome.by_key[g.key] = g
        done += len(gens)
        if progress is not None:
            progress(label, done, len(todo))

    if isinstance(target, EndpointTarget):
        pending: list[tuple[str, str, str, float]] = []
        for row in _endpoint_generate(target, todo):
            pending.append(row)
            if len(pending) >= config.batch_size:
                record(pending)
                pending = []
        record(pending) if pending else None
    else:
        batches = make_batches(todo, config.batch_size)
        if resolve_executor(config) == "local":
            gpu = _gpu_available(config)
            for out in _local_batches(target, batches, config, "cuda" if gpu else "cpu"):
                record(_unpack(out))
        else:
            with ray_session(config):
                gpu = _gpu_available(config)
                assisted = config.driver_assist and not gpu and len(batches) > 1
                source = (
                    _assisted_ray_batches(target, batches, config)
                    if assisted
                    else _ray_batches(target, batches, config, gpu)
                )
                for out in source:
                    record(_unpack(out))
    outcome.generated = done
    outcome.seconds = time.perf_counter() - start
    outcome.errors = sum(1 for g in outcome.by_key.values() if g.error)
    missing = set(unique) - set(outcome.by_key)
    if missing:  # never silently: every request must come back
        raise EngineError(f"{label}: {len(missing)} requests came back without a result")
    return outcome


def _unpack(out: dict[str, np.ndarray]) -> list[tuple[str, str, str, float]]:
    return [
        (str(k), str(r), str(e), float(s))
        for k, r, e, s in zip(
            out["key"], out["response"], out["error"], out["seconds"], strict=True
        )
    ]
