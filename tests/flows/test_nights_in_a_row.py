"""Three honest nights in a row on the tiny demo, then the poisoned one (the real flows).

Each night has users (traffic through the gateway), the nightly run and a release of its
candidate (gate, canary with live users, automatic approval). The loop's promise is that
the champion never gets worse: every night's champion is the last one, or a candidate the
gate found no worse on every dimension. The per-night table is printed (``-s``) for the
record.
"""

from __future__ import annotations

import pytest

from tests.flows.conftest import make_dvc_repo, own_app_settings

# slow: three nights of the tiny demo (~10 min on the 2-core machine).
pytestmark = [pytest.mark.services, pytest.mark.slow]

APP = "nights"
BUCKET = "nights-loop"  # own bucket: other flow tests ingest from the session's default one


def test_three_nights_in_a_row_never_make_the_champion_worse(stack_settings, tmp_path_factory):
    import torch

    from examples.helpdesk.demo_flow import demo_flow
    from loopwright.demo import DemoConfig, format_table, stop_gateway

    torch.set_num_threads(1)
    repo = make_dvc_repo(tmp_path_factory.mktemp("nights") / "repo")
    settings = own_app_settings(stack_settings, APP, BUCKET, repo)
    try:
        outcome = demo_flow(settings, config=DemoConfig.for_size(tiny=True), nights=3)
    finally:
        stop_gateway(settings)

    nights = outcome.facts["nights"]
    for night in nights:
        print(
            f"\nnight {night['night']}: champion {night['champion']}, candidate "
            f"{night['candidate']}, gate {night['gate']}, release {night['release']}"
        )
        for line in format_table(night["table"]):
            print(line)
    assert outcome.ok, outcome.steps
    assert [n["night"] for n in nights] == [1, 2, 3]
    champion = outcome.facts["v1"]
    for night in nights:
        # Each night is judged against the champion the last night left.
        assert night["champion"] == champion
        if night["release"] == "promoted":
            assert night["table"], "a promotion without the gate's per-dimension table"
            assert all(row.passed for row in night["table"]), night["table"]
            champion = night["candidate"]
    assert champion != outcome.facts["v1"], "no night promoted: nothing was shown"
    # The poisoned fourth night changed nothing; the rollback undid the last promotion.
    assert outcome.facts["poisoned_champion_after"] == champion
    assert outcome.facts["poisoned_data_before"] == outcome.facts["poisoned_data_after"]
    assert "rolled_back_to" in outcome.facts
