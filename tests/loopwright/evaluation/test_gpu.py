"""GPU paths of the engine (run with ``-m gpu`` on a machine with CUDA)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from loopwright.evaluation.engine import EngineConfig, GenerationRequest, generate
from loopwright.evaluation.store import GenerationStore
from loopwright.evaluation.targets import LocalModelTarget
from loopwright.records import EvalSample, Message
from models.generation import DecodingParams, generate_batch, load_policy

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

PROMPTS = [f"how do i reset my password {i}" for i in range(20)] + [
    "the pro plan costs twelve dollars per month and the storage limit is fifty gigabytes"
] * 4


def _samples() -> list[EvalSample]:
    return [
        EvalSample(
            id=f"g{i}",
            suite="t",
            dimension="correctness",
            messages=[Message(role="user", content=p)],
            references=["x"],
        )
        for i, p in enumerate(PROMPTS)
    ]


def test_local_executor_uses_the_gpu_and_matches_generate_batch(
    tiny_llama: Path, tmp_path: Path
) -> None:
    target = LocalModelTarget.from_folder(tiny_llama)
    params = DecodingParams(max_new_tokens=8)
    samples = _samples()
    reqs = [GenerationRequest.make(target.model_id, s, params) for s in samples]
    out = generate(
        target,
        reqs,
        GenerationStore(tmp_path / "g.jsonl"),
        EngineConfig(executor="local", batch_size=8),
    )
    assert out.errors == 0 and out.generated == len(samples)
    policy = load_policy(tiny_llama, device="cuda")
    assert next(policy.model.parameters()).is_cuda
    # same batches as the engine (length-sorted, 8 at a time) so bf16 numerics line up
    by_id = {g.sample_id: g.response for g in out.by_key.values()}
    ordered = sorted(samples, key=lambda s: (sum(len(m.content) for m in s.messages), s.id))
    expected: dict[str, str] = {}
    for start in range(0, len(ordered), 8):
        chunk = ordered[start : start + 8]
        texts = generate_batch(
            policy, [[m.model_dump() for m in s.messages] for s in chunk], params, batch_size=8
        )
        expected.update({s.id: t for s, t in zip(chunk, texts, strict=True)})
    assert by_id == expected


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs ray")
def test_ray_actors_take_one_gpu_each(tiny_llama: Path, tmp_path: Path) -> None:
    target = LocalModelTarget.from_folder(tiny_llama)
    params = DecodingParams(max_new_tokens=8)
    reqs = [GenerationRequest.make(target.model_id, s, params) for s in _samples()]
    out = generate(
        target,
        reqs,
        GenerationStore(tmp_path / "g.jsonl"),
        EngineConfig(
            executor="ray", workers=4, batch_size=8, ray_temp_dir=tmp_path / "ray", ray_num_cpus=4
        ),
    )
    assert out.errors == 0 and out.generated == len(reqs)
