"""The online evaluation's LLM judge: a real OpenAI-compatible endpoint grades live answers.

The endpoint is the evaluation tests' scripted chat server (``openai_server``): it answers
judge prompts with the grade scripted for the graded answer.
"""

from __future__ import annotations

from datetime import UTC, datetime

from loopwright.online_eval import JudgeEndpoint, OnlineEvalConfig, evaluate_window
from loopwright.online_eval_io import endpoint_judge
from loopwright.records import Interaction, Message, RailVerdict

T = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def _served(i: int, version: str, response: str) -> Interaction:
    return Interaction(
        id=f"i{i}",
        timestamp=T,
        tenant="t",
        user_hash=f"u{i}",
        model_name="app-policy",
        model_version=version,
        route="champion" if version == "1" else "canary",
        messages=[Message(role="user", content="How do I reset my password?")],
        response=response,
        latency_ms=10.0,
        input_verdict=RailVerdict(),
        output_verdict=RailVerdict(),
        fallback_used=False,
    )


def test_the_judge_grades_each_version_and_a_bad_reply_is_left_out(openai_server):
    openai_server.judge_replies.update(
        {
            "Open settings, then Reset password.": "9",
            "Try turning it off.": "3",
            "Ask someone else.": "no idea",  # unusable: left out, not a zero
        }
    )
    config = OnlineEvalConfig(judge=JudgeEndpoint(base_url=openai_server.base_url, model="j"))
    assert config.judge is not None
    records = [
        _served(0, "1", "Open settings, then Reset password."),
        _served(1, "2", "Try turning it off."),
        _served(2, "2", "Ask someone else."),
    ]
    result = evaluate_window(
        records,
        [],
        app="app",
        start=T,
        end=T,
        config=config,
        judge=endpoint_judge(config.judge),
    )
    champion, canary = result.versions["1"], result.versions["2"]
    assert (champion.judge_n, champion.judge_mean) == (1, 0.9)
    assert (canary.judge_n, canary.judge_mean) == (1, 0.3)
    assert result.metrics()["v2.judge_mean"] == 0.3
    graded = [r for r in openai_server.requests if r.get("model") == "j"]
    assert len(graded) == 3 and all(r["temperature"] == 0 for r in graded)
