"""Three honest nights in a row on the tiny demo, then the poisoned one (the real flows).

Each night has users (traffic through the gateway), the nightly run and a release of its
candidate (gate, canary with live users, automatic approval). The loop's promise is that
the champion never gets worse: every night's champion is the last one, or a candidate the
gate found no worse on every dimension. The per-night table is printed (``-s``) for the
record.
"""

from __future__ import annotations

import pytest

from tests.flows.conftest import make_dvc_repo
from tests.flows.test_demo import _free_port

# slow: three nights of the tiny demo (~10 min on the 2-core machine).
pytestmark = [pytest.mark.services, pytest.mark.slow]

APP = "nights"
BUCKET = "nights-loop"  # own bucket: other flow tests ingest from the session's default one


def test_three_nights_in_a_row_never_make_the_champion_worse(stack_settings, tmp_path_factory):
    import torch

    from examples.helpdesk.demo_flow import demo_flow
    from loopwright.demo import DemoConfig, format_table, stop_gateway
    from loopwright.storage import ObjectStore

    torch.set_num_threads(1)
    repo = make_dvc_repo(tmp_path_factory.mktemp("nights") / "repo")
    base = stack_settings
    gateway = base.gateway.model_copy(
        update={
            "port": _free_port(),
            "log": base.gateway.log.model_copy(update={"store_uri": f"s3://{BUCKET}"}),
        }
    )
    settings = base.model_copy(
        update={
            "app": APP,
            "data_repo": repo,
            "object_store": base.object_store.model_copy(update={"bucket": BUCKET}),
            "gateway": gateway,
        }
    )
    ObjectStore.from_settings(settings).ensure_bucket(f"s3://{BUCKET}/")
    stop_gateway(settings)  # a gateway left in the shared run dir would serve another app
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
