"""A reviewer works the queue in a real headless Chromium; the next night learns from it.

A real gateway (uvicorn on a loopback port) serves a model that fails on plan questions,
so those requests fall back and are escalated to the review queue of their tenant. A
reviewer signs in on ``/review`` with their API key, claims the item, writes a correction,
labels it and marks it gold (mostly with keyboard shortcuts) and submits. A reviewer of
another tenant signs in next and must not see it. The gateway ships its log on shutdown;
the nightly stages then ingest, validate, screen and curate that log: the correction must
be SFT training data, the item a case of the gold suite, and its correction-vs-served pair
one of the reward model's held-out pairs, and not one of its training pairs.

Needs Debian's ``chromium`` and ``chromium-driver`` (``make browser-tools``; ``make
test-all`` installs them) and selenium (the ``dev`` extra).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from stackenv import stack_env

from loopwright.gateway.backends import Generation, StubBackend
from loopwright.gateway.review import REVIEW_LABELS
from tests.loopwright.gateway.gateway_helpers import LiveServer

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")

PRO_QUESTION = "How much is the Pro plan?"
TEAM_QUESTION = "What does the Team plan cost?"
DISCOUNT_QUESTION = "Is there a discount on the Team plan?"


class PlanBlindBackend(StubBackend):
    """Answers everything except plan questions, on which the model fails (and escalates)."""

    async def generate(self, messages: Any, params: Any) -> Generation:
        if "plan" in messages[-1]["content"].lower():
            raise RuntimeError("model crashed on a plan question (simulated)")
        return await super().generate(messages, params)


def _browser(tmp: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    # Without the background-networking flags Chromium floods a closed network.
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp / 'chromium-profile'}",
        "--window-size=1280,900",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(tmp / "chromedriver.log"))
    return webdriver.Chrome(service=service, options=options)


@pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver: run `make browser-tools`",
)
def test_a_reviewer_corrects_and_marks_gold_in_the_browser_and_the_next_night_learns_it(
    tmp_path: Path,
) -> None:
    pytest.importorskip("selenium", reason="selenium comes with the dev extra")
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from examples.helpdesk import fact_request
    from loopwright.config import load_settings
    from loopwright.data.curate import load_pairs, load_sft
    from loopwright.data.ingest import ingest
    from loopwright.domain import load_domain
    from loopwright.gateway.app import create_app
    from loopwright.gateway.service import Gateway
    from loopwright.gateway.settings import GatewaySettings
    from loopwright.nightly import check_stage, curate_stage, data_dir, regression_suite_path
    from loopwright.records import EvalSample, PreferencePair, read_jsonl, write_jsonl
    from loopwright.storage import ObjectStore

    correction = fact_request("plan_price.pro", 2).reference
    store_root = tmp_path / "store"
    store_root.mkdir()
    log_root = f"file://{store_root}"
    gateway_settings = GatewaySettings.model_validate(
        {"routing": {"app": "helpdesk"}, "log": {"store_uri": log_root}}
    )
    gw = Gateway(
        gateway_settings,
        tmp_path / "gateway",
        store=ObjectStore(),
        static_backend=PlanBlindBackend(name="helpdesk-policy", version="3"),
    )
    _, acme_user = gw.keys.create("acme", "user")
    _, acme_reviewer = gw.keys.create("acme", "reviewer")
    _, globex_user = gw.keys.create("globex", "user")
    _, globex_reviewer = gw.keys.create("globex", "reviewer")

    def chat(http: httpx.Client, key: str, text: str) -> str:
        r = http.post(
            "/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "helpdesk-policy", "messages": [{"role": "user", "content": text}]},
        )
        assert r.status_code == 200, r.text
        return str(r.json()["id"])

    started = time.perf_counter()
    with LiveServer(create_app(gw)) as server:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            pro = chat(http, acme_user, PRO_QUESTION)  # fails: escalated for acme
            chat(http, acme_user, "How do I reset my password?")  # answered: not queued
            chat(http, acme_user, DISCOUNT_QUESTION)  # fails: escalated for acme
            chat(http, globex_user, TEAM_QUESTION)  # fails: escalated for globex
        # Not every item is an interaction: the alert intake queues alerts for operators.
        gw.review.enqueue(
            "alert-harmful",
            "globex",
            ["alert:HarmfulOutputSpike", "response:rollback"],
            {"kind": "alert", "alert": "HarmfulOutputSpike", "summary": "Harmful outputs at 7%"},
        )
        fallback = gw.settings.fallback.model_error

        driver = _browser(tmp_path)
        try:
            wait = WebDriverWait(driver, 15)

            def by_id(name: str) -> Any:
                return driver.find_element(By.ID, name)

            def message_says(text: str) -> None:
                wait.until(lambda d: text in by_id("message").text)

            def queue_texts() -> list[str]:
                return [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#queue li")]

            def sign_in(key: str) -> None:
                wait.until(lambda d: by_id("key").is_displayed())
                by_id("key").send_keys(key, Keys.ENTER)
                wait.until(lambda d: by_id("workspace").is_displayed())
                wait.until(lambda d: queue_texts() and by_id("detail").is_displayed())

            def show(status: str) -> None:
                Select(by_id("status")).select_by_value(status)
                driver.find_element(By.CSS_SELECTOR, "#filters button").click()
                wait.until(
                    lambda d: (
                        f"status={status}" in (by_id("queue").get_attribute("data-query") or "")
                    )
                )

            def press(*keys: str) -> None:
                ActionChains(driver).send_keys(*keys).perform()

            driver.get(f"{server.url}/review")
            assert driver.title.startswith("Review queue")
            sign_in(acme_reviewer)
            assert (
                driver.execute_script("return sessionStorage.getItem('loopwright.review.key')")
                == acme_reviewer
            )

            # Acme's queue: its two failed plan questions (the answered one was not queued).
            first, second = queue_texts()
            assert PRO_QUESTION in first and "escalate:model_error" in first
            assert DISCOUNT_QUESTION in second
            assert TEAM_QUESTION not in by_id("queue").text
            # The interaction in full: conversation, the answer served, verdicts, reasons.
            assert PRO_QUESTION in by_id("messages").text
            assert by_id("answer").text == fallback.strip()
            assert "input: allow" in by_id("verdicts").text
            assert pro in by_id("meta").text

            # Keyboard: focus is visible on the queue, j / k move, c claims.
            driver.execute_script("document.getElementById('queue').focus()")
            outline = driver.execute_script(
                "return getComputedStyle(document.activeElement).outlineStyle"
            )
            assert outline not in ("", "none")

            def selected() -> str:
                return str(
                    driver.find_element(By.CSS_SELECTOR, "#queue li[aria-selected=true]").text
                )

            press("j")
            wait.until(lambda d: DISCOUNT_QUESTION in by_id("messages").text)
            assert DISCOUNT_QUESTION in selected()
            press("k")
            wait.until(lambda d: PRO_QUESTION in by_id("messages").text)
            assert PRO_QUESTION in selected()
            press("c")
            message_says("Claimed #")
            wait.until(lambda d: by_id("claim").text == "Claimed by you")

            # e edits the correction, Esc leaves it, 3 labels wrong_fact, g marks gold.
            press("e")
            assert driver.switch_to.active_element == by_id("correction")
            press(correction, Keys.ESCAPE)
            press(str(REVIEW_LABELS.index("wrong_fact") + 1), "g")
            assert by_id("label-wrong_fact").is_selected() and by_id("gold").is_selected()
            press(Keys.ENTER)
            message_says("as wrong_fact (gold)")
            wait.until(lambda d: len(queue_texts()) == 1)
            assert DISCOUNT_QUESTION in queue_texts()[0]  # the next item is up

            # The resolved item, as the reviewer sees it with the status filter.
            show("resolved")
            (entry,) = queue_texts()
            assert PRO_QUESTION in entry and "gold" in entry
            wait.until(lambda d: correction in by_id("meta").text)

            # Another tenant's reviewer sees their own item only, whatever the filter.
            by_id("signout").click()
            sign_in(globex_reviewer)
            show("all")
            team, alert = queue_texts()
            assert TEAM_QUESTION in team and PRO_QUESTION not in by_id("queue").text
            # An item that is no interaction shows what it holds.
            assert "Harmful outputs at 7%" in alert
            driver.execute_script("document.getElementById('queue').focus()")
            press("j")
            wait.until(lambda d: by_id("extra-box").is_displayed())
            assert "HarmfulOutputSpike" in by_id("extra").text
            assert not by_id("interaction").is_displayed()

            # No script errors (a CSP violation or a failed asset would show here).
            severe = [
                e
                for e in driver.get_log("browser")
                if e["level"] == "SEVERE" and "favicon.ico" not in e["message"]
            ]
            assert severe == [], severe
        finally:
            driver.quit()
    browser_seconds = time.perf_counter() - started

    # -- the next night, on the log the gateway shipped ---------------------------------
    repo = tmp_path / "repo"
    settings = load_settings(
        "local",
        env=stack_env(
            {"LOOPWRIGHT_RUN_DIR": str(tmp_path / "run"), "LOOPWRIGHT_DATA_REPO": str(repo)}
        ),
    )
    domain_root = data_dir(settings) / load_domain(settings.domain).data_folder()
    # The bootstrap's frozen held-out pairs (the reward refresh's yardstick) exist already.
    heldout_file = domain_root / settings.nightly.reward_heldout_file
    frozen = PreferencePair(
        prompt="How long is the refund window?",
        chosen="The refund window is 30 days.",
        rejected="There are no refunds.",
        source="heldout",
    )
    write_jsonl(heldout_file, [frozen])

    # The nightly's ingest stage reads the bucket the gateway ships to; here that store is
    # a folder (file://), read by the same library call.
    ingested = ingest(ObjectStore(), log_root, data_dir(settings) / "production")
    assert ingested.reconciles and ingested.batch is not None
    check = check_stage(settings, ingested.batch, None)
    assert check.passed, check.reasons
    result = curate_stage(settings, ingested.batch)

    # The correction is training data for the policy...
    sft = [(conv[-2]["content"], conv[-1]["content"]) for conv in load_sft(result.sft_path)]
    assert (PRO_QUESTION, correction) in sft
    # ...the item is a case of the gold suite the release evaluation reads...
    gold_file = regression_suite_path(settings, "gold")
    assert gold_file == domain_root / "eval" / "gold.jsonl"
    (case,) = list(read_jsonl(gold_file, EvalSample))
    assert case.suite == "gold" and case.references == [correction]
    assert case.messages[-1].content == PRO_QUESTION
    assert case.tags["source"] == "gold" and case.tags["interaction_id"] == pro
    assert case.tags["label"] == "wrong_fact"
    # ...its pair judges the reward model (held out), and never trains it.
    gold_pair = (PRO_QUESTION, correction, fallback, "gold")
    held = [
        (p.prompt, p.chosen, p.rejected, p.source) for p in read_jsonl(heldout_file, PreferencePair)
    ]
    assert held == [(frozen.prompt, frozen.chosen, frozen.rejected, "heldout"), gold_pair]
    training = load_pairs(result.pairs_path)
    assert all(p.chosen != correction for p in training)
    assert result.counts["gold_new"] == result.counts["heldout_pairs_gold"] == 1
    assert result.counts["pairs_withheld_gold"] == 1
    assert "regression_skipped_gold" in result.counts
    # A rerun of the stage adds nothing.
    again = curate_stage(settings, ingested.batch)
    assert [c.id for c in read_jsonl(gold_file, EvalSample)] == [case.id]
    assert len(list(read_jsonl(heldout_file, PreferencePair))) == 2
    assert again.counts["gold"] == 1
    print(json.dumps({"browser_and_gateway_seconds": round(browser_seconds, 1)}))
