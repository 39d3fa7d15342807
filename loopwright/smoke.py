"""Smoke round trips through each service of the stack: proof that the wiring works."""

from __future__ import annotations

import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from loopwright.storage import ObjectStore


@dataclass(frozen=True)
class Check:
    """One round trip: what was checked, whether it held, how long it took (seconds)."""

    name: str
    ok: bool
    detail: str
    seconds: float


def object_store_round_trip(store: ObjectStore, bucket: str) -> Check:
    """Put an object, read it back, list it, delete it."""
    start = time.perf_counter()
    uri = f"s3://{bucket}/smoke/{uuid.uuid4().hex}.txt"
    payload = f"loopwright smoke {uuid.uuid4().hex}".encode()
    store.put_bytes(uri, payload)
    same = store.get_bytes(uri) == payload
    listed = uri in store.list(uri.rsplit("/", 1)[0] + "/")
    store.delete(uri)
    ok = same and listed
    return Check("object store put/get/list", ok, uri, time.perf_counter() - start)


def mlflow_registry_round_trip(app: str) -> Check:
    """Log a run, register a tiny model version, set and read back an alias."""
    import mlflow
    from mlflow import MlflowClient

    from loopwright.registry import log_and_register, resolve_version

    start = time.perf_counter()
    name = f"{app}-smoke"
    mlflow.set_experiment(f"{app}-smoke")
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_name="smoke"):
        folder = Path(tmp) / "model"
        folder.mkdir()
        (folder / "config.json").write_text('{"smoke": true}', encoding="utf-8")
        mlflow.log_metric("smoke", 1.0)
        version = log_and_register(folder, name, "guard", tags={"purpose": "smoke"})
    client = MlflowClient()
    client.set_registered_model_alias(name, "smoke", version.version)
    back = resolve_version(f"models:/{name}@smoke")
    ok = back.version == version.version
    return Check(
        "mlflow registry round trip",
        ok,
        f"models:/{name}/{version.version} (alias smoke)",
        time.perf_counter() - start,
    )


def ray_round_trip(address: str) -> Check:
    """Run one remote task on the Ray cluster at ``address`` and check its result."""
    import ray

    start = time.perf_counter()
    ray.init(address=address, log_to_driver=False, ignore_reinit_error=True)
    try:

        @ray.remote(num_cpus=0.1)
        def square(x: int) -> int:
            return x * x

        result = ray.get([square.remote(i) for i in range(4)])
        ok = result == [0, 1, 4, 9]
        nodes = len(ray.nodes())
    finally:
        ray.shutdown()
    return Check("ray task", ok, f"{nodes} node(s), squares {result}", time.perf_counter() - start)
