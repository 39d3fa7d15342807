"""Fixtures for the evaluation tests: tiny real models, a local OpenAI-compatible server.

Everything runs offline on loopback; servers are started here and stopped after.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny_model import build_tiny_model  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer Llama with a BPE tokenizer that has a chat template."""
    return build_tiny_model(tmp_path_factory.mktemp("llama") / "model", seed=0)


@pytest.fixture(scope="session")
def tiny_llama_other(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same shape, different weights: a second model version."""
    return build_tiny_model(tmp_path_factory.mktemp("llama2") / "model", seed=1)


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GPT-2 with 64 learned positions: a prompt longer than that makes it raise."""
    return build_tiny_model(
        tmp_path_factory.mktemp("gpt2") / "model", arch="gpt2", max_positions=64, seed=0
    )


def write_samples(path: Path, samples: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for s in samples:
            handle.write(json.dumps(s) + "\n")
    return path


def sample(
    sid: str,
    text: str,
    *,
    dimension: str = "correctness",
    suite: str = "s",
    references: list[str] | None = None,
    group: str | None = None,
    behaviour: str = "answer",
    **tags: str,
) -> dict[str, Any]:
    return {
        "id": sid,
        "suite": suite,
        "dimension": dimension,
        "messages": [{"role": "user", "content": text}],
        "references": references or [],
        "group": group,
        "expected_behaviour": behaviour,
        "tags": tags,
    }


# --------------------------------------------------------------------------- OpenAI server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FakeOpenAI:
    """A real HTTP server speaking the chat-completions API with scripted replies.

    ``replies`` maps the last user message to the assistant's reply (default: "I don't
    know."); ``model_replies[model]`` overrides it for one model name. A user message
    ``RAISE`` answers 500. Judge prompts (they start with "You grade") are answered from
    ``judge_replies`` keyed by the graded response.
    """

    def __init__(self) -> None:
        self.replies: dict[str, str] = {}
        self.model_replies: dict[str, dict[str, str]] = {}
        self.judge_replies: dict[str, str] = {}
        self.requests: list[dict[str, Any]] = []
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def app(self) -> Any:
        from fastapi import FastAPI, HTTPException

        app = FastAPI()

        @app.post("/v1/chat/completions")
        def chat(body: dict[str, Any]) -> dict[str, Any]:
            self.requests.append(body)
            content = body["messages"][-1]["content"]
            if content == "RAISE":
                raise HTTPException(status_code=500, detail="scripted failure")
            if content.startswith("You grade"):
                graded = content.split("Assistant's answer:\n", 1)[1].split("\n\n", 1)[0]
                reply = self.judge_replies.get(graded, "5")
            else:
                per_model = self.model_replies.get(body.get("model", ""), {})
                reply = per_model.get(content, self.replies.get(content, "I don't know."))
            return {
                "id": "x",
                "object": "chat.completion",
                "model": body.get("model", "m"),
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": reply},
                    }
                ],
            }

        @app.get("/v1/models")
        def models() -> dict[str, Any]:
            return {"object": "list", "data": [{"id": "scripted", "object": "model"}]}

        return app


@pytest.fixture(scope="session")
def openai_server() -> Iterator[FakeOpenAI]:
    import httpx
    import uvicorn

    fake = FakeOpenAI()
    config = uvicorn.Config(fake.app(), host="127.0.0.1", port=fake.port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            httpx.get(fake.base_url + "/models", timeout=1.0)
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    else:
        raise RuntimeError("fake OpenAI server did not start")
    yield fake
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture()
def fresh_server(openai_server: FakeOpenAI) -> FakeOpenAI:
    openai_server.replies.clear()
    openai_server.model_replies.clear()
    openai_server.judge_replies.clear()
    openai_server.requests.clear()
    return openai_server
