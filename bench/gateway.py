"""Gateway benchmark: control-layer overhead, sustained throughput, input-rail quality.

One run prints ``name: value`` lines:

1. overhead: the same gateway with every control layer on versus all layers off (stub
   model, no delay), each in its own uvicorn process, sequential requests alternating
   between the two so both see the same machine load; 384-character inputs, every one
   distinct. Added latency = p50/p99 (layers on) - p50/p99 (layers off).
2. throughput: layers on, stub model, distinct inputs, many concurrent clients for a fixed
   time: requests/second and errors.
3. quality: the input rails (normalisation + rules + the served guard at its calibrated
   thresholds) on the example domain's held-out prompts: recall on harmful and on
   injection, false-positive rate on benign — plus the guard alone for comparison.

The guard is the ONNX int8 guard the gateway serves (``--guard-dir``; trained once with
``models.guard.train_guard`` into ``.loopwright/bench/guard`` when missing).

Usage: ``python bench/gateway.py [--requests 1000] [--seconds 20] [--guard-dir DIR]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
DEFAULT_GUARD = REPO / ".loopwright" / "bench" / "guard"
INPUT_CHARS = 384


def _layers_on() -> dict[str, Any]:
    # Every layer on; rate limits high enough that the benchmark is never throttled.
    return {"rate_limit": {"requests_per_s": 100_000, "burst": 100_000},
            "log": {"segment_max_records": 100_000}}


def _settings(on: bool) -> Any:
    from loopwright.gateway.settings import GatewaySettings

    settings = GatewaySettings.model_validate(_layers_on())
    return settings if on else settings.layers_off()


# -- child: one gateway server -------------------------------------------------------


def serve_child(mode: str, port: int, run_dir: str, guard_dir: str) -> None:
    """Run one gateway (layers ``on`` or ``off``) until killed."""
    import uvicorn

    from loopwright.gateway.app import build_app

    settings = _settings(mode == "on")
    components: dict[str, Any] = {}
    if mode == "on":
        from loopwright.gateway.components import domain_facts
        from models.guard import Guard

        guard = Guard.load(guard_dir, backend="onnx", threads=1)
        components = {"guard": guard, "embedder": guard.embedder(), "facts": domain_facts(1)}
    app = build_app(settings, run_dir, **components)
    if mode == "on":
        _, key = app.state.gateway.keys.create("bench")
        Path(run_dir, "key").write_text(key)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# -- parent ------------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    def __init__(self, mode: str, guard_dir: Path, root: Path) -> None:
        self.mode = mode
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.run_dir = root / mode
        self.run_dir.mkdir(parents=True)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), *sys.path[1:]]),
                   HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", mode, "--port", str(self.port),
             "--run-dir", str(self.run_dir), "--guard-dir", str(guard_dir)],
            env=env, stdout=subprocess.DEVNULL, stderr=(self.run_dir / "server.log").open("w"))
        deadline = time.time() + 300
        while True:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"{mode} server did not start: "
                                   f"{(self.run_dir / 'server.log').read_text()[-2000:]}")
            time.sleep(0.3)
        key_file = self.run_dir / "key"
        self.headers = ({"Authorization": f"Bearer {key_file.read_text()}"}
                        if key_file.exists() else {})

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def distinct_inputs(n: int, seed: int = 0) -> list[str]:
    """``n`` different benign 384-character help-desk messages."""
    import random

    from models.helpdesk import build_domain

    data = build_domain(seed=seed, scale=1.0)
    questions = [conv[0]["content"] for conv in data.sft_v1 if conv[0]["role"] == "user"]
    rng = random.Random(seed)
    out = []
    for i in range(n):
        parts = [f"Ticket {i}:"]
        while sum(len(p) + 1 for p in parts) < INPUT_CHARS:
            parts.append(rng.choice(questions))
        out.append(" ".join(parts)[:INPUT_CHARS])
    return out


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def overhead(on: Server, off: Server, inputs: list[str]) -> dict[str, float]:
    """Sequential requests alternating between the two servers; latency in ms."""
    lat: dict[str, list[float]] = {"on": [], "off": []}
    errors = 0
    with httpx.Client(timeout=30) as client:
        for server in (on, off):  # warm-up: first requests pay one-off costs
            for text in inputs[:20]:
                _post(client, server, text)
        for i, text in enumerate(inputs):
            order = (on, off) if i % 2 == 0 else (off, on)
            for server in order:
                t0 = time.perf_counter()
                status = _post(client, server, text)
                lat[server.mode].append((time.perf_counter() - t0) * 1000)
                errors += status != 200
    return {
        "p50_on_ms": statistics.median(lat["on"]),
        "p99_on_ms": _pct(lat["on"], 0.99),
        "p50_off_ms": statistics.median(lat["off"]),
        "p99_off_ms": _pct(lat["off"], 0.99),
        "errors": errors,
    }


def _post(client: httpx.Client, server: Server, text: str) -> int:
    r = client.post(f"{server.url}/v1/chat/completions", headers=server.headers, json={
        "model": "helpdesk-policy", "messages": [{"role": "user", "content": text}]})
    return r.status_code


async def throughput(server: Server, inputs: list[str], seconds: float, concurrency: int
                     ) -> dict[str, float]:
    """Closed loop: ``concurrency`` clients send distinct inputs for ``seconds``."""
    done = 0
    errors = 0
    blocked = 0
    nxt = 0
    stop_at = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=30,
                                 limits=limits) as client:

        async def worker() -> None:
            nonlocal done, errors, blocked, nxt
            while time.perf_counter() < stop_at:
                text = inputs[nxt % len(inputs)]
                nxt += 1
                try:
                    r = await client.post("/v1/chat/completions", json={
                        "model": "helpdesk-policy",
                        "messages": [{"role": "user", "content": text}]})
                    if r.status_code != 200:
                        errors += 1
                    elif r.json()["choices"][0]["finish_reason"] == "content_filter":
                        blocked += 1
                except httpx.HTTPError:
                    errors += 1
                done += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return {"rps": done / elapsed, "requests": done, "errors": errors, "blocked": blocked,
            "seconds": elapsed}


def quality(guard_dir: Path) -> dict[str, float]:
    """Input-rail and guard-only recall/FPR on the held-out prompts."""
    from loopwright.gateway.service import Gateway
    from models.guard import Guard
    from models.helpdesk import build_domain

    data = build_domain(seed=0, scale=1.0)
    items = [p for p in data.guard_heldout if p.tags.get("role", "prompt") == "prompt"]
    guard = Guard.load(guard_dir, backend="onnx", threads=1)
    settings = _settings(True)
    with tempfile.TemporaryDirectory() as tmp:
        gw = Gateway(settings, tmp, guard=guard)

        async def rail(text: str) -> str:
            ctx = gw.new_context("chat")
            verdict, _, _ = await gw._input_rails(
                ctx, [{"role": "user", "content": text}], want_vector=False)
            return verdict.action

        async def all_rails() -> list[str]:
            return [await rail(p.text) for p in items]

        actions = asyncio.run(all_rails())
        gw.stop()
    guard_blocked = [v.blocked for v in guard.classify([p.text for p in items])]
    out: dict[str, float] = {}
    for name, blocked in (("rails", [a == "block" for a in actions]), ("guard_only",
                                                                        guard_blocked)):
        for label in ("harmful", "injection", "benign"):
            sel = [b for b, p in zip(blocked, items, strict=True) if p.label == label]
            rate = sum(sel) / len(sel)
            key = "benign_fpr" if label == "benign" else f"{label}_recall"
            out[f"{name}_{key}"] = rate
    out["n_harmful"] = sum(p.label == "harmful" for p in items)
    out["n_injection"] = sum(p.label == "injection" for p in items)
    out["n_benign"] = sum(p.label == "benign" for p in items)
    return out


def ensure_guard(guard_dir: Path) -> None:
    """Train the serving guard (ONNX int8) once if the folder is missing."""
    if (guard_dir / "guard_config.json").exists():
        return
    from models.guard import GuardConfig, train_guard
    from models.helpdesk import build_domain

    print(f"# training the guard into {guard_dir} (once)", flush=True)
    train_guard(build_domain(seed=0).guard_train, GuardConfig(threads=2), guard_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--guard-dir", type=Path, default=DEFAULT_GUARD)
    parser.add_argument("--serve", choices=["on", "off"])
    parser.add_argument("--port", type=int)
    parser.add_argument("--run-dir")
    args = parser.parse_args()
    if args.serve:
        serve_child(args.serve, args.port, args.run_dir, str(args.guard_dir))
        return
    ensure_guard(args.guard_dir)
    load_before = os.getloadavg()
    inputs = distinct_inputs(args.requests + 20 + 20_000)
    with tempfile.TemporaryDirectory() as tmp:
        on = Server("on", args.guard_dir, Path(tmp))
        off = Server("off", args.guard_dir, Path(tmp))
        try:
            o = overhead(on, off, inputs[: args.requests])
            off.stop()
            t = asyncio.run(throughput(on, inputs[args.requests:], args.seconds,
                                       args.concurrency))
        finally:
            on.stop()
            off.stop()
    q = quality(args.guard_dir)
    load_after = os.getloadavg()
    print(f"cpu_count: {os.cpu_count()}")
    print(f"loadavg_1m_before: {load_before[0]:.2f}")
    print(f"loadavg_1m_after: {load_after[0]:.2f}")
    print(f"overhead_requests_per_arm: {args.requests}")
    print(f"overhead_input_chars: {INPUT_CHARS}")
    print(f"latency_p50_layers_off_ms: {o['p50_off_ms']:.2f}")
    print(f"latency_p50_layers_on_ms: {o['p50_on_ms']:.2f}")
    print(f"latency_p99_layers_off_ms: {o['p99_off_ms']:.2f}")
    print(f"latency_p99_layers_on_ms: {o['p99_on_ms']:.2f}")
    print(f"added_p50_ms: {o['p50_on_ms'] - o['p50_off_ms']:.2f}")
    print(f"added_p99_ms: {o['p99_on_ms'] - o['p99_off_ms']:.2f}")
    print(f"overhead_errors: {o['errors']}")
    print(f"throughput_concurrency: {args.concurrency}")
    print(f"throughput_rps: {t['rps']:.1f}")
    print(f"throughput_requests: {t['requests']}")
    print(f"throughput_errors: {t['errors']}")
    print(f"throughput_blocked: {t['blocked']}")
    for name, value in q.items():
        print(f"{name}: {value:.4f}" if isinstance(value, float) else f"{name}: {value}")
    print(json.dumps({"overhead": o, "throughput": t, "quality": q}), file=sys.stderr)


if __name__ == "__main__":
    main()
