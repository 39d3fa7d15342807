"""Property-based fuzzing of the API: never a 5xx, never an unlogged chat request.

schemathesis is not installed here, so hypothesis generates bodies from the shape of the
OpenAI schema (and garbage around it) and drives the app through its ASGI interface.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopwright.records import Interaction

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
# Text with controls, invisible characters, look-alikes, emoji and lone surrogates.
nasty_text = st.text(
    alphabet=st.characters(codec=None, exclude_categories=())
    | st.sampled_from(
        ["\x00", "\x07", "\u200b", "\u202e", "\ud800", "\udfff", "а", "🙂", "\n", "$"]
    ),
    max_size=120,
)
roles = st.sampled_from(["user", "system", "assistant", "developer", "tool", "", "USER"])
message = st.fixed_dictionaries(
    {"role": roles | json_scalars, "content": nasty_text | json_values},
    optional={"name": json_scalars},
)
# Mostly well-formed requests (so the rails, the model and streaming run), with nasty text.
valid_message = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "user", "system", "assistant", "developer"]),
        "content": nasty_text
        | st.lists(
            st.fixed_dictionaries({"type": st.just("text"), "text": nasty_text}), max_size=2
        ),
    }
)
valid_body = st.fixed_dictionaries(
    {
        "model": st.just("helpdesk-policy"),
        "messages": st.lists(valid_message, min_size=1, max_size=5).map(
            lambda ms: [*ms, {"role": "user", "content": ms[0]["content"]}]
        ),
    },
    optional={
        "max_tokens": st.integers(1, 600),
        "temperature": st.floats(0, 2),
        "stream": st.booleans(),
        "user": st.text(max_size=20),
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    },
)
fuzzy_body = st.fixed_dictionaries(
    {
        "model": st.just("helpdesk-policy") | json_scalars,
        "messages": st.lists(message, max_size=6) | json_values,
    },
    optional={
        "max_tokens": st.integers(-5, 2_000) | json_scalars,
        "temperature": st.floats(-1, 5) | json_scalars,
        "top_p": st.floats(-1, 2) | json_scalars,
        "stream": st.booleans() | json_scalars,
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}) | json_values,
        "user": st.text(max_size=300) | json_scalars,
        "n": st.integers(0, 3),
        "stop": json_values,
        "metadata": json_values,
        "unknown_field": json_values,
    },
)
# One harness per test run (hypothesis reuses the function-scoped fixture across examples).
_HARNESSES: dict[tuple[str, int], Any] = {}
auth_header = st.sampled_from(["good"] * 6 + ["none", "garbage", "basic", "revoked"])


def _body_bytes(body: Any, mode: str) -> bytes:
    if mode == "json":
        return json.dumps(body, ensure_ascii=True).encode()
    if mode == "utf8":
        return json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")
    if mode == "truncated":
        raw = json.dumps(body).encode()
        return raw[: max(0, len(raw) // 2)]
    return bytes(range(256))[: len(json.dumps(body)) % 256] + b"\xff\xfe"


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_chat_fuzz_never_5xx_and_always_logged(make_harness, data):
    h = _HARNESSES.get(("chat", id(make_harness)))
    if h is None:
        h = make_harness(
            {
                "rate_limit": {"requests_per_s": 1000, "burst": 1000},
                "validation": {"max_messages": 4},
            }
        )
        good = h.key()
        revoked = h.key()
        h.gw.keys.revoke(revoked.split("_")[1])
        h.keys.update(good=good, revoked=revoked)
        h.sent = []
        _HARNESSES[("chat", id(make_harness))] = h
    body = data.draw(valid_body | fuzzy_body)
    mode = data.draw(st.sampled_from(["json"] * 6 + ["utf8", "truncated", "binary"]))
    who = data.draw(auth_header)
    headers = {
        "content-type": data.draw(
            st.sampled_from(
                ["application/json"] * 4 + ["text/plain", "application/x-www-form-urlencoded"]
            )
        )
    }
    if who in ("good", "revoked"):
        headers["Authorization"] = f"Bearer {h.keys[who]}"
    elif who == "garbage":
        headers["Authorization"] = data.draw(
            st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=30)
        )
    elif who == "basic":
        headers["Authorization"] = "Basic dXNlcjpwYXNz"
    r = h.client.post("/v1/chat/completions", content=_body_bytes(body, mode), headers=headers)
    assert r.status_code < 500, (r.status_code, r.text)
    assert r.headers["content-type"].startswith(("application/json", "text/event-stream"))
    if r.status_code >= 400:
        assert r.json()["error"]["message"]
    h.sent.append(r.headers["x-loopwright-interaction-id"])
    records = h.interactions()
    assert [rec["id"] for rec in records] == h.sent  # exactly one record per request
    last = Interaction.model_validate(records[-1])
    assert last.status_code == r.status_code


other_paths = st.sampled_from(
    [
        ("POST", "/v1/feedback"),
        ("GET", "/v1/review/items"),
        ("POST", "/v1/review/items/1/claim"),
        ("POST", "/v1/review/items/1/resolve"),
        ("GET", "/v1/review/items/abc"),
        ("POST", "/v1/admin/keys"),
        ("DELETE", "/v1/admin/keys/zzz"),
        ("GET", "/v1/models"),
        ("GET", "/v1/nope"),
        ("PUT", "/v1/chat/completions"),
        ("GET", "/v1/admin/routing"),
    ]
)


@settings(
    max_examples=80,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_other_endpoints_fuzz_never_5xx(make_harness, data):
    h = _HARNESSES.get(("other", id(make_harness)))
    if h is None:
        h = make_harness({"rate_limit": {"requests_per_s": 1000, "burst": 1000}})
        h.keys.update(user=h.key(), reviewer=h.key(role="reviewer"), admin=h.key(role="admin"))
        h.chats = 0
        _HARNESSES[("other", id(make_harness))] = h
    method, path = data.draw(other_paths)
    who = data.draw(st.sampled_from(["user", "reviewer", "admin", "none"]))
    headers = {"Authorization": f"Bearer {h.keys[who]}"} if who != "none" else {}
    body = data.draw(
        json_values
        | st.fixed_dictionaries(
            {
                "interaction_id": st.text(max_size=50),
                "kind": st.sampled_from(["rating", "correction", "preference", "x"]),
                "value": json_values,
                "label": st.sampled_from(["good", "unsafe", "??"]),
                "role": json_scalars,
            }
        )
    )
    r = h.client.request(method, path, content=json.dumps(body).encode(), headers=headers)
    assert r.status_code < 500, (method, path, r.status_code, r.text)
    if path == "/v1/chat/completions":
        h.chats += 1
    assert len(h.interactions()) == h.chats
