"""The official ``openai`` client, unchanged, against a gateway served by uvicorn."""

from __future__ import annotations

import openai
import pytest

from loopwright.gateway.app import create_app
from loopwright.gateway.service import Gateway
from loopwright.gateway.settings import GatewaySettings
from tests.loopwright.gateway.gateway_helpers import LiveServer, spool_records


@pytest.fixture
def live(tmp_path):
    settings = GatewaySettings.model_validate({"rate_limit": {"requests_per_s": 0.001, "burst": 6}})
    gw = Gateway(settings, tmp_path / "run")
    _, key = gw.keys.create("acme", "user")
    with LiveServer(create_app(gw)) as server:
        yield server, gw, key, tmp_path / "run"


def test_openai_client_plain_streaming_errors_and_feedback(live):
    server, gw, key, run_dir = live
    client = openai.OpenAI(api_key=key, base_url=f"{server.url}/v1", max_retries=0)

    models = client.models.list()
    assert [m.id for m in models.data] == ["loopwright-policy"]

    plain = client.chat.completions.create(
        model="loopwright-policy",
        messages=[{"role": "user", "content": "How much is the Pro plan?"}],
        max_tokens=32,
    )
    assert plain.choices[0].message.content == (
        "Thanks for your question about: How much is the Pro plan?"
    )
    assert plain.choices[0].finish_reason == "stop"
    assert plain.usage is not None and plain.usage.completion_tokens == 11
    assert plain.system_fingerprint == "loopwright-policy@static/champion"

    stream = client.chat.completions.create(
        model="loopwright-policy",
        messages=[{"role": "user", "content": "Which regions are there?"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finish, usage, ids = [], None, None, set()
    for chunk in stream:
        ids.add(chunk.id)
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces) == "Thanks for your question about: Which regions are there?"
    assert finish == "stop" and usage is not None and usage.total_tokens > 0
    assert len(ids) == 1

    # Feedback on the plain answer by its id, through the raw HTTP API.
    import httpx

    fb = httpx.post(
        f"{server.url}/v1/feedback",
        headers={"Authorization": f"Bearer {key}"},
        json={"interaction_id": plain.id, "kind": "rating", "value": 1},
    )
    assert fb.status_code == 200

    bad = openai.OpenAI(api_key="lw_wrong_key", base_url=f"{server.url}/v1", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(
            model="loopwright-policy", messages=[{"role": "user", "content": "hi"}]
        )
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.UnprocessableEntityError) as exc:
        client.chat.completions.create(
            model="loopwright-policy", messages=[{"role": "user", "content": "a\x00b"}]
        )
    assert "control character U+0000" in str(exc.value)
    # 6 tokens of burst are spent: 2 completions above, models, feedback, 404, 422.
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(
            model="loopwright-policy", messages=[{"role": "user", "content": "again"}]
        )
    # About 1000 s until the next token (a little less when the test itself ran slowly).
    assert 900 <= int(limited.value.response.headers["retry-after"]) <= 1000

    server.__exit__(None, None, None)  # stop the server: the gateway seals its logs
    records = spool_records(run_dir)
    assert [r["status_code"] for r in records] == [200, 200, 401, 404, 422, 429]
    assert records[0]["id"] == plain.id
    assert [e["interaction_id"] for e in spool_records(run_dir, "feedback")] == [plain.id]
