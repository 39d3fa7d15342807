"""Gateway benchmark: control-layer overhead, sustained throughput, input-rail quality.

One run prints ``name: value`` lines:

1. overhead: the same gateway with every control layer on versus all layers off (stub
   model, no delay), each in its own uvicorn process, sequential requests alternating
   between the two so both see the same machine load; 384-character inputs, every one
   distinct. Added latency = p50/p99 (layers on) - p50/p99 (layers off); each layer's mean
   time from the gateway's own ``gateway_layer_seconds`` histograms says where it goes.
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
    # Every layer on; rate limits high enough that the benchmark is never throttled. The
    # guard still scores every input and output, but at thresholds of 1.0 it does not block:
    # a blocked request skips the model and the output rails, so blocking would make the
    # "layers on" path cheaper than it is for traffic that passes.
    return {
        "rate_limit": {"requests_per_s": 100_000, "burst": 100_000},
        "input_rails": {"harmful_threshold": 1.0, "injection_threshold": 1.0},
        "output_rails": {"harmful_threshold": 1.0},
        "log": {"segment_max_records": 100_000},
    }


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
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join([str(REPO), *sys.path[1:]]),
            HF_HUB_OFFLINE="1",
            OMP_NUM_THREADS="1",
        )
        self.proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--serve",
                mode,
                "--port",
                str(self.port),
                "--run-dir",
                str(self.run_dir),
                "--guard-dir",
                str(guard_dir),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=(self.run_dir / "server.log").open("w"),
        )
        deadline = time.time() + 300
        while True:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(
                    f"{mode} server did not start: "
                    f"{(self.run_dir / 'server.log').read_text()[-2000:]}"
                )
            time.sleep(0.3)
        key_file = self.run_dir / "key"
        self.headers = (
            {"Authorization": f"Bearer {key_file.read_text()}"} if key_file.exists() else {}
        )

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def distinct_inputs(n: int, seed: int = 0, split: str = "train") -> list[str]:
    """``n`` different benign 384-character help-desk messages.

    Each is ``"Ticket i:"`` and clean single benign guard prompts of ``split`` (``"train"``
    or ``"heldout"``) run together, cut at :data:`INPUT_CHARS`. The guard's own multi-question
    prompts (``source=compound``) are left out, so the messages are the same as before the
    guard data had any, and their shape (ticket prefix, space joins, a cut last question)
    is one the guard never trained on.
    """
    import random

    from examples.helpdesk import build_domain

    data = build_domain(seed=seed, scale=1.0)
    if split not in ("train", "heldout"):
        raise ValueError(f"unknown split {split!r}; valid splits: ['train', 'heldout']")
    prompts = data.guard_train if split == "train" else data.guard_heldout
    questions = [
        p.text
        for p in prompts
        if p.label == "benign"
        and p.tags.get("role", "prompt") == "prompt"
        and p.tags.get("transform") == "clean"
        and p.tags.get("source") != "compound"
    ]
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


def _cpu_seconds(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def _layer_seconds(server: Server) -> dict[str, tuple[float, float]]:
    """Per control layer: (seconds, observations) so far, from the server's ``/metrics``."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    out: dict[str, tuple[float, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "gateway_layer_seconds":
            continue
        for sample in family.samples:
            layer = sample.labels.get("layer", "")
            total, count = out.get(layer, (0.0, 0.0))
            if sample.name.endswith("_sum"):
                out[layer] = (sample.value, count)
            elif sample.name.endswith("_count"):
                out[layer] = (total, sample.value)
    return out


def overhead(on: Server, off: Server, inputs: list[str]) -> dict[str, float]:
    """Sequential requests alternating between the two servers; latency in ms.

    Also the server processes' CPU time per request (all threads): the work the layers
    add, which machine contention inflates far less than wall time.
    """
    lat: dict[str, list[float]] = {"on": [], "off": []}
    errors = 0
    with httpx.Client(timeout=30) as client:
        for server in (on, off):  # warm-up: first requests pay one-off costs
            for text in inputs[:20]:
                _post(client, server, text)
        cpu0 = {s.mode: _cpu_seconds(s.proc.pid) for s in (on, off)}
        layers0 = _layer_seconds(on)
        for i, text in enumerate(inputs):
            order = (on, off) if i % 2 == 0 else (off, on)
            for server in order:
                t0 = time.perf_counter()
                status = _post(client, server, text)
                lat[server.mode].append((time.perf_counter() - t0) * 1000)
                errors += status != 200
        cpu = {
            s.mode: (_cpu_seconds(s.proc.pid) - cpu0[s.mode]) * 1000 / len(inputs)
            for s in (on, off)
        }
        # Where the added time goes: each layer's mean wall ms over the requests it saw.
        layers: dict[str, float] = {}
        for name, (total, count) in _layer_seconds(on).items():
            total0, count0 = layers0.get(name, (0.0, 0.0))
            if count > count0:
                layers[f"layer_{name}_mean_ms"] = (total - total0) * 1000 / (count - count0)
    return {
        **layers,
        "cpu_ms_per_request_on": cpu["on"],
        "cpu_ms_per_request_off": cpu["off"],
        "p50_on_ms": statistics.median(lat["on"]),
        "p99_on_ms": _pct(lat["on"], 0.99),
        "p50_off_ms": statistics.median(lat["off"]),
        "p99_off_ms": _pct(lat["off"], 0.99),
        "errors": errors,
    }


def _post(client: httpx.Client, server: Server, text: str) -> int:
    r = client.post(
        f"{server.url}/v1/chat/completions",
        headers=server.headers,
        json={"model": "helpdesk-policy", "messages": [{"role": "user", "content": text}]},
    )
    return r.status_code


async def throughput(
    server: Server, inputs: list[str], seconds: float, concurrency: int
) -> dict[str, float]:
    """Closed loop: ``concurrency`` clients send distinct inputs for ``seconds``."""
    done = 0
    errors = 0
    blocked = 0
    nxt = 0
    stop_at = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=server.url, headers=server.headers, timeout=30, limits=limits
    ) as client:

        async def worker() -> None:
            nonlocal done, errors, blocked, nxt
            while time.perf_counter() < stop_at:
                text = inputs[nxt % len(inputs)]
                nxt += 1
                try:
                    r = await client.post(
                        "/v1/chat/completions",
                        json={
                            "model": "helpdesk-policy",
                            "messages": [{"role": "user", "content": text}],
                        },
                    )
                    if r.status_code != 200:
                        errors += 1
                    elif r.json()["choices"][0]["finish_reason"] == "content_filter":
                        blocked += 1
                except httpx.HTTPError:
                    errors += 1
                done += 1

        start = time.perf_counter()
        cpu0 = _cpu_seconds(server.proc.pid)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
        cpu = _cpu_seconds(server.proc.pid) - cpu0
    return {
        "rps": done / elapsed,
        "requests": done,
        "errors": errors,
        "blocked": blocked,
        "seconds": elapsed,
        "server_cores_used": cpu / elapsed,
        "server_cpu_ms_per_request": cpu * 1000 / max(1, done),
    }


def _rates(blocked: list[bool], labels: list[str]) -> dict[str, float]:
    out = {}
    for label in ("harmful", "injection", "benign"):
        sel = [b for b, lab in zip(blocked, labels, strict=True) if lab == label]
        key = "benign_fpr" if label == "benign" else f"{label}_recall"
        out[key] = sum(sel) / len(sel)
    return out


def _oracle(
    rule_block: list[bool], scores: list[dict[str, float]], labels: list[str], budget: float = 0.03
) -> tuple[dict[str, float], float, float]:
    """Recall at the loosest thresholds whose benign FPR (rules included) is <= budget,
    fitted on the held-out set itself (optimistic: an operating point, not a deployment)."""
    import numpy as np

    benign = [i for i, lab in enumerate(labels) if lab == "benign"]
    best: tuple[dict[str, float], float, float] | None = None
    for q in np.linspace(0.90, 1.0, 201):
        th_h = float(np.quantile([scores[i]["harmful"] for i in benign], q)) + 1e-9
        th_i = float(np.quantile([scores[i]["injection"] for i in benign], q)) + 1e-9
        blocked = [
            r or s["harmful"] >= th_h or s["injection"] >= th_i
            for r, s in zip(rule_block, scores, strict=True)
        ]
        rates = _rates(blocked, labels)
        if rates["benign_fpr"] <= budget:
            best = (rates, th_h, th_i)
            break
    assert best is not None
    return best


def quality(guard_dir: Path) -> dict[str, float]:
    """Input-rail and guard-only recall/FPR on the held-out prompts."""
    from examples.helpdesk import build_domain
    from loopwright.gateway import rules
    from loopwright.gateway.normalize import normalise
    from loopwright.gateway.service import Gateway
    from loopwright.gateway.settings import GatewaySettings
    from models.guard import Guard

    data = build_domain(seed=0, scale=1.0)
    items = [p for p in data.guard_heldout if p.tags.get("role", "prompt") == "prompt"]
    labels: list[str] = [str(p.label) for p in items]
    guard = Guard.load(guard_dir, backend="onnx", threads=1)
    settings = GatewaySettings()  # served defaults: the guard's calibrated thresholds
    with tempfile.TemporaryDirectory() as tmp:
        gw = Gateway(settings, tmp, guard=guard)

        async def rail(text: str) -> str:
            ctx = gw.new_context("chat")
            verdict, _, _ = await gw._input_rails(
                ctx, [{"role": "user", "content": text}], want_vector=False
            )
            return verdict.action

        async def all_rails() -> list[str]:
            return [await rail(p.text) for p in items]

        actions = asyncio.run(all_rails())
        gw.stop()
    limit = settings.input_rails.max_guard_chars
    views = [normalise(p.text) for p in items]
    rule_block = [bool(rules.find_jailbreaks(v.pattern_text)) for v in views]
    norm_scores = guard.scores([v.text[-limit:] for v in views])
    raw_scores = guard.scores([p.text for p in items])
    # As the rail does: obfuscated inputs count the more suspicious of both views.
    rail_scores = [
        n
        if v.text[-limit:] == p.text[-limit:]
        else {k: max(n[k], r[k]) if k != "benign" else min(n[k], r[k]) for k in n}
        for n, r, v, p in zip(norm_scores, raw_scores, views, items, strict=True)
    ]
    out: dict[str, float] = {}
    served = _rates([a == "block" for a in actions], labels)
    out.update({f"rails_served_{k}": v for k, v in served.items()})
    out["guard_threshold_harmful"] = guard.thresholds["harmful"]
    out["guard_threshold_injection"] = guard.thresholds["injection"]
    guard_blocked = [v.blocked for v in guard.classify([p.text for p in items])]
    guard_only = _rates(guard_blocked, labels)
    out.update({f"guard_only_served_{k}": v for k, v in guard_only.items()})
    # Single prompts (what the held-out set held before multi-question messages were added)
    # and multi-question messages, apart: the first stays comparable across versions.
    for name, keep in (("single", False), ("compound", True)):
        sel = [i for i, p in enumerate(items) if (p.tags.get("source") == "compound") == keep]
        if {labels[i] for i in sel} >= {"benign", "harmful", "injection"}:
            part = _rates([guard_blocked[i] for i in sel], [labels[i] for i in sel])
            out.update({f"guard_only_served_{name}_{k}": v for k, v in part.items()})
    rates, th_h, th_i = _oracle(rule_block, rail_scores, labels)
    out.update({f"rails_at_fpr3_{k}": v for k, v in rates.items()})
    out["rails_at_fpr3_threshold_harmful"] = th_h
    out["rails_at_fpr3_threshold_injection"] = th_i
    rates, _, _ = _oracle([False] * len(items), raw_scores, labels)
    out.update({f"guard_only_at_fpr3_{k}": v for k, v in rates.items()})
    out["rules_only_benign_fpr"] = _rates(rule_block, labels)["benign_fpr"]
    out["n_harmful"] = labels.count("harmful")
    out["n_injection"] = labels.count("injection")
    out["n_benign"] = labels.count("benign")
    long_benign = distinct_inputs(200, seed=1)
    out["guard_served_block_rate_on_384char_benign"] = sum(
        v.blocked for v in guard.classify(long_benign)
    ) / len(long_benign)
    long_heldout = distinct_inputs(200, seed=1, split="heldout")
    out["guard_served_block_rate_on_384char_heldout_benign"] = sum(
        v.blocked for v in guard.classify(long_heldout)
    ) / len(long_heldout)
    return out


def guard_forward_cpu_ms(guard_dir: Path, inputs: list[str]) -> float:
    """CPU ms of one guard pass (``Guard.analyse``) on one 384-character input, measured now
    in this process: the yardstick for what the machine's load does to CPU time."""
    from models.guard import Guard

    guard = Guard.load(guard_dir, backend="onnx", threads=1)
    for text in inputs[:5]:
        guard.analyse([text])
    start = time.thread_time()
    for text in inputs:
        guard.analyse([text])
    return (time.thread_time() - start) * 1000 / len(inputs)


def reference_minilm_cpu_ms(inputs: list[str]) -> float:
    """CPU ms of one pass of plain all-MiniLM-L6-v2 (6 layers, one output), exported to int8
    ONNX the same way and run by the same backend, on one 384-character input, measured now:
    the issue's reference figure (about 4.6 ms on an idle machine) under today's load. The
    guard graph runs 8 layers (6 shared + 2 guard copies), so it should cost about 8/6 of it.
    """
    from models.encoder import (
        EmbeddingEncoder,
        OnnxBackend,
        load_bert,
        load_tokenizer,
        normalize_text,
        run_windows,
    )
    from models.onnx_export import export_int8

    with tempfile.TemporaryDirectory() as tmp:
        path = export_int8(EmbeddingEncoder(load_bert()), Path(tmp) / "minilm.int8.onnx")
        backend = OnnxBackend(path, threads=1)
        tokenizer = load_tokenizer()

        def one(text: str) -> None:
            run_windows(backend, tokenizer, [normalize_text(text)], max_length=128, stride=32)

        for text in inputs[:5]:
            one(text)
        start = time.thread_time()
        for text in inputs:
            one(text)
        return (time.thread_time() - start) * 1000 / len(inputs)


def ensure_guard(guard_dir: Path) -> None:
    """Train the serving guard (ONNX int8) once if the folder is missing."""
    if (guard_dir / "guard_config.json").exists():
        return
    from examples.helpdesk import build_domain
    from models.guard import GuardConfig, train_guard

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
            t = asyncio.run(throughput(on, inputs[args.requests :], args.seconds, args.concurrency))
        finally:
            on.stop()
            off.stop()
    q = quality(args.guard_dir)
    yardstick = guard_forward_cpu_ms(args.guard_dir, inputs[-200:])
    reference = reference_minilm_cpu_ms(inputs[-200:])
    load_after = os.getloadavg()
    print(f"cpu_count: {os.cpu_count()}")
    print(f"loadavg_1m_before: {load_before[0]:.2f}")
    print(f"loadavg_1m_after: {load_after[0]:.2f}")
    print(f"overhead_requests_per_arm: {args.requests}")
    print(f"overhead_input_chars: {INPUT_CHARS}")
    print(f"server_cpu_ms_per_request_layers_off: {o['cpu_ms_per_request_off']:.2f}")
    print(f"server_cpu_ms_per_request_layers_on: {o['cpu_ms_per_request_on']:.2f}")
    print(
        f"added_server_cpu_ms_per_request: "
        f"{o['cpu_ms_per_request_on'] - o['cpu_ms_per_request_off']:.2f}"
    )
    added_cpu = o["cpu_ms_per_request_on"] - o["cpu_ms_per_request_off"]
    print(f"guard_forward_cpu_ms_384char_now: {yardstick:.2f}")
    print(f"added_cpu_in_guard_forwards: {added_cpu / yardstick:.2f}")
    print(f"reference_minilm_int8_cpu_ms_384char_now: {reference:.2f}")
    print(f"guard_forward_over_reference_minilm: {yardstick / reference:.2f}")
    print(f"latency_p50_layers_off_ms: {o['p50_off_ms']:.2f}")
    print(f"latency_p50_layers_on_ms: {o['p50_on_ms']:.2f}")
    print(f"latency_p99_layers_off_ms: {o['p99_off_ms']:.2f}")
    print(f"latency_p99_layers_on_ms: {o['p99_on_ms']:.2f}")
    print(f"added_p50_ms: {o['p50_on_ms'] - o['p50_off_ms']:.2f}")
    print(f"added_p99_ms: {o['p99_on_ms'] - o['p99_off_ms']:.2f}")
    print(f"overhead_errors: {o['errors']}")
    for name, value in o.items():
        if name.startswith("layer_"):
            print(f"{name}: {value:.2f}")
    print(f"throughput_concurrency: {args.concurrency}")
    print(f"throughput_rps: {t['rps']:.1f}")
    print(f"throughput_requests: {t['requests']}")
    print(f"throughput_errors: {t['errors']}")
    print(f"throughput_blocked: {t['blocked']}")
    print(f"throughput_server_cores_used: {t['server_cores_used']:.2f}")
    print(f"throughput_server_cpu_ms_per_request: {t['server_cpu_ms_per_request']:.2f}")
    for name, value in q.items():
        print(f"{name}: {value:.4f}" if isinstance(value, float) else f"{name}: {value}")
    print(json.dumps({"overhead": o, "throughput": t, "quality": q}), file=sys.stderr)


if __name__ == "__main__":
    main()
