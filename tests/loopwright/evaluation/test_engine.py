from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import sample, write_samples

from loopwright.evaluation.api import EvalResult, evaluate
from loopwright.evaluation.engine import (
    EngineConfig,
    EngineError,
    GenerationRequest,
    generate,
    make_batches,
    ray_session,
)
from loopwright.evaluation.store import Generation, GenerationStore, StoreError
from loopwright.evaluation.targets import LocalModelTarget, TargetError, resolve_target
from loopwright.records import EvalSample, Message
from models.generation import DecodingParams, generate_batch, load_policy

REPO = Path(__file__).parents[3]
PROMPTS = [
    "how do i reset my password",
    "the pro plan costs",
    "storage limit is",
    "refunds take five days you can export data from settings",
    "api rate limit",
    "support hours are nine to five in europe",
    "two factor login please",
    "regions include us eu and asia",
]
LOCAL = EngineConfig(executor="local", batch_size=3)
PARAMS = DecodingParams(max_new_tokens=6)


def samples(prompts: list[str] = PROMPTS) -> list[EvalSample]:
    return [
        EvalSample(
            id=f"s{i}",
            suite="t",
            dimension="correctness",
            messages=[Message(role="user", content=p)],
            references=["x"],
        )
        for i, p in enumerate(prompts)
    ]


def requests(
    target: LocalModelTarget, items: list[EvalSample], params: DecodingParams = PARAMS
) -> list[GenerationRequest]:
    return [GenerationRequest.make(target.model_id, s, params) for s in items]


def test_local_engine_matches_the_shared_generation_path(tiny_llama: Path, tmp_path: Path) -> None:
    target = LocalModelTarget.from_folder(tiny_llama)
    items = samples()
    out = generate(target, requests(target, items), GenerationStore(tmp_path / "g.jsonl"), LOCAL)
    policy = load_policy(tiny_llama, device="cpu")
    expected = generate_batch(
        policy, [[m.model_dump() for m in s.messages] for s in items], PARAMS, batch_size=32
    )
    got = {g.sample_id: g.response for g in out.by_key.values()}
    assert [got[s.id] for s in items] == expected
    assert (out.requested, out.generated, out.cached, out.errors) == (8, 8, 0, 0)


def test_cache_hits_and_misses(tiny_llama: Path, tiny_llama_other: Path, tmp_path: Path) -> None:
    target = LocalModelTarget.from_folder(tiny_llama)
    store = GenerationStore.for_model(tmp_path, target.model_id)
    items = samples()
    first = generate(target, requests(target, items), store, LOCAL)
    again = generate(target, requests(target, items), store, LOCAL)
    assert (again.generated, again.cached) == (0, 8)
    assert {k: g.response for k, g in again.by_key.items()} == {
        k: g.response for k, g in first.by_key.items()
    }
    # an edited prompt misses; the others hit
    edited = samples([*PROMPTS[:-1], "a different last prompt"])
    assert generate(target, requests(target, edited), store, LOCAL).generated == 1
    # other decoding settings miss
    other = DecodingParams(max_new_tokens=4)
    assert generate(target, requests(target, items, other), store, LOCAL).generated == 8
    # another model version has its own identity
    other_model = LocalModelTarget.from_folder(tiny_llama_other)
    assert other_model.model_id != target.model_id
    # the same folder content elsewhere has the same identity (cache survives a re-download)
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in tiny_llama.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    assert LocalModelTarget.from_folder(copy).model_id == target.model_id


def test_seeded_sampling_is_reproducible(tiny_llama: Path, tmp_path: Path) -> None:
    target = LocalModelTarget.from_folder(tiny_llama)
    items = samples()

    def run(seed: int, name: str) -> dict[str, str | None]:
        params = DecodingParams(max_new_tokens=8, temperature=1.0, seed=seed)
        out = generate(
            target, requests(target, items, params), GenerationStore(tmp_path / name), LOCAL
        )
        return {g.sample_id: g.response for g in out.by_key.values()}

    assert run(5, "a.jsonl") == run(5, "b.jsonl")
    assert run(5, "a.jsonl") != run(6, "c.jsonl")


def test_batches_are_length_bucketed_per_decoding_setting(tiny_llama: Path) -> None:
    target = LocalModelTarget.from_folder(tiny_llama)
    greedy, sampled = DecodingParams(max_new_tokens=4), DecodingParams(temperature=0.7)
    reqs = requests(target, samples(), greedy) + requests(target, samples()[:3], sampled)
    batches = make_batches(reqs, 3)
    assert sorted(len(b) for b in batches) == [2, 3, 3, 3]  # 8 greedy + 3 sampled
    for batch in batches:
        assert len({r["params"] for r in batch}) == 1
        sizes = [len(json.loads(r["messages"])[0]["content"]) for r in batch]
        assert sizes == sorted(sizes)


def test_store_tolerates_a_torn_last_line_and_rejects_corruption(tmp_path: Path) -> None:
    store = GenerationStore(tmp_path / "g.jsonl")
    rec = Generation(key="k1", model_id="m", sample_id="s", decoding_key="d", response="r")
    store.append([rec])
    with store.path.open("a") as handle:
        handle.write('{"key": "k2", "model_')  # killed mid-write
    assert set(GenerationStore(store.path).load()) == {"k1"}
    fresh = GenerationStore(store.path)
    fresh.append([rec.model_copy(update={"key": "k3"})])
    assert set(fresh.load()) == {"k1", "k3"}
    lines = store.path.read_text().splitlines()
    store.path.write_text("\n".join([lines[0], "garbage", lines[1]]) + "\n")
    with pytest.raises(StoreError, match=r"g\.jsonl:2: corrupt"):
        store.load()


def test_a_raising_sample_is_recorded_counted_and_not_scored(
    tiny_gpt2: Path, tmp_path: Path
) -> None:
    """GPT-2 has 64 learned positions: the long prompt raises inside generate()."""
    long_prompt = " ".join(["storage limit is fifty gigabytes"] * 30)
    write_samples(
        tmp_path / "data/eval/facts.jsonl",
        [
            sample("ok1", "how do i reset my password", references=["a"], split="x"),
            sample("boom", long_prompt, references=["a"], split="y"),
            sample("ok2", "api rate limit", references=["a"], split="x"),
        ],
    )
    (tmp_path / "suites").mkdir()
    (tmp_path / "suites/facts.yaml").write_text(
        textwrap.dedent("""\
        name: facts
        dimension: correctness
        samples: eval/facts.jsonl
        slices: [split]
        scorers:
          - scorer: exact_match
        """)
    )
    result = evaluate(
        str(tiny_gpt2),
        "all",
        suite_dir=tmp_path / "suites",
        data_root=tmp_path / "data",
        run_dir=tmp_path / "run",
        engine=LOCAL,
        decoding=PARAMS,
        resamples=200,
    )
    assert result.counts["generation_errors"] == 1
    assert result.report.errors == 1
    m = result.metric("correctness", "exact_match")
    assert (m.n, m.errors) == (2, 1)  # excluded, counted; never a zero
    assert result.metric("correctness", "exact_match", "split.y").n == 0
    rows = [line for line in result.paths["samples"].read_text().splitlines() if '"boom"' in line]
    assert '"error":"IndexError' in rows[0] and '"scores":{}' in rows[0]
    # a rerun retries the error (it fails again, deterministically) and reuses the rest
    again = evaluate(
        str(tiny_gpt2),
        "all",
        suite_dir=tmp_path / "suites",
        data_root=tmp_path / "data",
        run_dir=tmp_path / "run",
        engine=LOCAL,
        decoding=PARAMS,
        resamples=200,
    )
    assert (again.counts["generated"], again.counts["cached"]) == (1, 2)


CHILD = """
import os, signal, sys
from pathlib import Path
from loopwright.evaluation.api import evaluate
from loopwright.evaluation.engine import EngineConfig
from models.generation import DecodingParams

model, suites, data, run, kill_after = sys.argv[1:6]

def progress(label, done, total):
    if done >= int(kill_after):
        os.kill(os.getpid(), signal.SIGKILL)  # a hard kill: no cleanup, no flush

evaluate(model, "all", suite_dir=suites, data_root=data, run_dir=run,
         engine=EngineConfig(executor="local", batch_size=4),
         decoding=DecodingParams(max_new_tokens=6), progress=progress)
"""


def test_resume_after_kill_generates_only_missing(tiny_llama: Path, tmp_path: Path) -> None:
    prompts = [f"{p} {i}" for i in range(3) for p in PROMPTS]  # 24 samples
    write_samples(
        tmp_path / "data/eval/facts.jsonl",
        [sample(f"s{i:02d}", p, references=["x"]) for i, p in enumerate(prompts)],
    )
    (tmp_path / "suites").mkdir()
    (tmp_path / "suites/facts.yaml").write_text(
        "name: facts\ndimension: correctness\nsamples: eval/facts.jsonl\n"
        "scorers:\n  - scorer: token_f1\n"
    )
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [
        str(tiny_llama),
        str(tmp_path / "suites"),
        str(tmp_path / "data"),
        str(tmp_path / "run"),
    ]
    proc = subprocess.run(
        [sys.executable, str(script), *args, "8"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    cache = tmp_path / "run/cache"
    checkpointed = sum(len(f.read_text().splitlines()) for f in cache.glob("*.jsonl"))
    assert 8 <= checkpointed < 24  # killed part-way, after >= 2 batches were fsynced

    def rerun(run_dir: Path) -> EvalResult:
        return evaluate(
            str(tiny_llama),
            "all",
            suite_dir=tmp_path / "suites",
            data_root=tmp_path / "data",
            run_dir=run_dir,
            engine=EngineConfig(executor="local", batch_size=4),
            decoding=DecodingParams(max_new_tokens=6),
            resamples=200,
        )

    resumed = rerun(tmp_path / "run")
    assert resumed.counts["cached"] == checkpointed
    assert resumed.counts["generated"] == 24 - checkpointed
    fresh = rerun(tmp_path / "fresh")
    assert fresh.counts["generated"] == 24
    assert resumed.paths["samples"].read_text() == fresh.paths["samples"].read_text()


@pytest.mark.slow  # Ray start-up plus two actors importing torch: ~20-50 s on 2 cores
def test_ray_actor_pool_matches_local(
    tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    ray_dir = tmp_path_factory.mktemp("ray")
    target = LocalModelTarget.from_folder(tiny_llama)
    items = samples()
    local = generate(target, requests(target, items), GenerationStore(tmp_path / "l.jsonl"), LOCAL)
    expected = {k: g.response for k, g in local.by_key.items()}
    seen: list[tuple[int, int]] = []
    pool_only = EngineConfig(
        executor="ray",
        workers=2,
        batch_size=3,
        ray_temp_dir=ray_dir,
        ray_num_cpus=2,
        driver_assist=False,
    )
    with ray_session(pool_only):
        distributed = generate(
            target,
            requests(target, items),
            GenerationStore(tmp_path / "r.jsonl"),
            pool_only,
            progress=lambda label, d, t: seen.append((d, t)),
        )
        assert {k: g.response for k, g in distributed.by_key.items()} == expected
        assert distributed.generated == 8 and seen[-1] == (8, 8)
        assert len(seen) == 4  # checkpointed per batch as results streamed back (3 + 3 + 2)
        assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 8
        # driver-assisted: the driver and the pool share the work, each key emitted once
        assisted = replace(pool_only, driver_assist=True)
        both = generate(
            target,
            requests(target, samples(PROMPTS * 3)[8:]),
            GenerationStore(tmp_path / "a.jsonl"),
            assisted,
        )
        assert both.generated == 16 and both.errors == 0
        lines = (tmp_path / "a.jsonl").read_text().splitlines()
        assert len(lines) == 16 == len({json.loads(line)["key"] for line in lines})
        # seeded sampling gives the same replies whoever generates a batch
        hot = DecodingParams(max_new_tokens=6, temperature=1.0, seed=3)
        outs = []
        for name, config in (("s1", LOCAL), ("s2", pool_only), ("s3", assisted)):
            got = generate(
                target,
                requests(target, items, hot),
                GenerationStore(tmp_path / f"{name}.jsonl"),
                config,
            )
            outs.append({g.sample_id: g.response for g in got.by_key.values()})
        assert outs[0] == outs[1] == outs[2]
    assert list(ray_dir.iterdir()), "Ray's session files must live in the given folder"


def test_ray_needs_an_explicit_temp_dir(tiny_llama: Path, tmp_path: Path) -> None:
    target = LocalModelTarget.from_folder(tiny_llama)
    with pytest.raises(EngineError, match="ray_temp_dir"):
        generate(
            target,
            requests(target, samples()),
            GenerationStore(tmp_path / "g.jsonl"),
            EngineConfig(executor="ray"),
        )


def test_resolve_target_forms(tiny_llama: Path, tmp_path: Path) -> None:
    assert resolve_target(str(tiny_llama)).kind == "local"
    ep = resolve_target("http://127.0.0.1:9/v1#helpdesk")
    assert ep.kind == "endpoint" and ep.model == "helpdesk"
    assert ep.model_id == "endpoint:http://127.0.0.1:9/v1#helpdesk"
    with pytest.raises(TargetError, match="expected an existing model folder"):
        resolve_target(str(tmp_path / "nope"))
    with pytest.raises(TargetError, match="needs download_root"):
        resolve_target("models:/helpdesk-policy@champion")
    with pytest.raises(ValueError, match="workers must be >= 1"):
        EngineConfig(workers=0)
