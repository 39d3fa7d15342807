"""The review page and the gold mark, through the HTTP API (fast; the browser test is slow)."""

from __future__ import annotations

import sqlite3
from html.parser import HTMLParser
from typing import Any

from loopwright.gateway.backends import Generation, StubBackend
from loopwright.gateway.review import REVIEW_LABELS, ReviewQueue


class FailingBackend(StubBackend):
    """A model that always fails: every request falls back and is escalated to review."""

    async def generate(self, messages: Any, params: Any) -> Generation:
        raise RuntimeError("model crashed (simulated)")


class _Form(HTMLParser):
    """Ids of the form controls and the ``for`` targets of the labels in a page."""

    def __init__(self) -> None:
        super().__init__()
        self.controls: set[str] = set()
        self.labelled: set[str] = set()
        self.fieldset_labels = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag in ("input", "select", "textarea") and a.get("id"):
            self.controls.add(str(a["id"]))
        if tag == "label" and a.get("for"):
            self.labelled.add(str(a["for"]))
        if tag == "fieldset" and a.get("id") == "labels":
            self.fieldset_labels = str(a.get("data-labels"))


def test_review_page_and_assets_are_served_from_the_package(make_harness):
    h = make_harness()
    page = h.client.get("/review")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp
    form = _Form()
    form.feed(page.text)
    # Every control has a <label>; the label choices are the queue's own labels.
    assert form.controls >= {"key", "status", "reason", "correction", "gold", "note"}
    assert form.controls <= form.labelled
    assert form.fieldset_labels.split() == list(REVIEW_LABELS)

    js = h.client.get("/review/static/review.js")
    css = h.client.get("/review/static/review.css")
    assert js.status_code == css.status_code == 200
    assert js.headers["content-type"].startswith("text/javascript")
    assert css.headers["content-type"].startswith("text/css")
    assert len(js.text.splitlines()) < 400
    assert h.client.get("/review/static/../app.py").status_code == 404
    assert h.client.get("/review/static/secret.txt").status_code == 404
    # Offline: nothing is fetched from anywhere else.
    for text in (page.text, js.text, css.text):
        assert "http://" not in text and "https://" not in text
    # The page is public; the data behind it is not.
    assert h.client.get("/v1/review/items").status_code == 401
    assert (
        h.client.get("/v1/review/items", headers={"Authorization": "Bearer lw_x_y"}).status_code
        == 401
    )


def test_gold_resolve_writes_a_gold_event_and_reasons_filter_the_queue(make_harness):
    h = make_harness(static_backend=FailingBackend(name="helpdesk-policy"))
    user, reviewer = h.key(), h.key(role="reviewer")
    first = h.chat(user, "How much is the Pro plan?").json()["id"]
    second = h.chat(user, "What does the Team plan cost?").json()["id"]
    grounded = h.gw.review.enqueue(
        "int-grounding", "acme", ["escalate:flag", "grounding:unsupported_figures"], {}
    )
    other = h.gw.review.enqueue("int-globex", "globex", ["escalate:model_error"], {})

    def call(method: str, path: str, **kw: Any) -> Any:
        return h.client.request(method, path, headers={"Authorization": f"Bearer {reviewer}"}, **kw)

    def listed(**params: str) -> list[str]:
        items = call("GET", "/v1/review/items", params=params).json()["items"]
        return [i["interaction_id"] for i in items]

    assert listed() == [first, second, "int-grounding"]
    assert listed(reason="escalate:model_error") == [first, second]
    assert listed(reason="escalate") == [first, second, "int-grounding"]
    assert listed(reason="grounding") == ["int-grounding"]
    assert listed(reason="escalate:model") == []  # a prefix only up to a ':'
    assert call("GET", f"/v1/review/items/{other}").status_code == 404

    items = call("GET", "/v1/review/items").json()["items"]
    gold_item, plain_item = items[0]["item_id"], items[1]["item_id"]
    assert items[0]["gold"] is False
    assert call("POST", f"/v1/review/items/{gold_item}/claim").status_code == 200
    done = call(
        "POST",
        f"/v1/review/items/{gold_item}/resolve",
        json={"label": "wrong_fact", "correction": "The Pro plan is $49.", "gold": True},
    ).json()
    assert done["status"] == "resolved" and done["gold"] is True
    plain = call("POST", f"/v1/review/items/{plain_item}/resolve", json={"label": "good"}).json()
    assert plain["gold"] is False
    assert call("GET", f"/v1/review/items/{grounded}").json()["status"] == "pending"
    assert listed(status="resolved") == [first, second]

    events = [(e["interaction_id"], e["kind"], e["value"], e["source"]) for e in h.feedback()]
    assert events == [
        (first, "reviewer_label", "wrong_fact", "reviewer"),
        (first, "correction", "The Pro plan is $49.", "reviewer"),
        (first, "gold", True, "reviewer"),
        (second, "reviewer_label", "good", "reviewer"),
    ]
    # A user cannot mark gold through the feedback endpoint.
    bad = h.client.post(
        "/v1/feedback",
        json={"interaction_id": first, "kind": "gold", "value": True},
        headers={"Authorization": f"Bearer {user}"},
    )
    assert bad.status_code == 422


def test_a_queue_made_before_gold_marks_keeps_its_items(tmp_path):
    path = tmp_path / "review.sqlite"
    old = sqlite3.connect(path)
    old.executescript(
        """
        CREATE TABLE items (
            item_id INTEGER PRIMARY KEY AUTOINCREMENT, interaction_id TEXT NOT NULL UNIQUE,
            tenant TEXT NOT NULL, created_at TEXT NOT NULL, reasons TEXT NOT NULL,
            payload TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'pending', claimed_by TEXT,
            claimed_at TEXT, resolved_by TEXT, resolved_at TEXT, label TEXT, correction TEXT,
            note TEXT
        );
        INSERT INTO items(interaction_id, tenant, created_at, reasons, payload)
        VALUES ('i-1', 'acme', '2026-01-01T00:00:00', '["escalate:flag"]', '{}');
        """
    )
    old.commit()
    old.close()
    queue = ReviewQueue(path)
    try:
        (item,) = queue.list("acme")
        assert item.interaction_id == "i-1" and item.gold is False
        done = queue.resolve("acme", item.item_id, "k1", "good", gold=True)
        assert done.gold is True and done.status == "resolved"
    finally:
        queue.close()
