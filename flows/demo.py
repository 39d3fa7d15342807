"""The whole loop on the embedded default (``make demo``): composition of the real flows."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from flows.bootstrap import bootstrap_flow
from flows.nightly import nightly_flow
from flows.release import release_flow
from loopwright.config import Settings
from loopwright.demo import DemoOutcome, background, summary_table
from loopwright.nightly import BatchRejected, NightlyConfig
from loopwright.release.config import ReleaseConfig
from models.bootstrap import BootstrapConfig
from tasks.demo import rollback, start_gateway, traffic
from tasks.nightly import current_version

# A short canary window so the demo fits in minutes; production uses the default policy.
CANARY_DEMO_POLICY = (
    Path(__file__).resolve().parents[1] / "loopwright/release/policies/canary_demo.yaml"
)


@flow(name="demo", log_prints=True)
def demo_flow(settings: Settings, tiny: bool = False, requests: int = 1500) -> DemoOutcome:
    """Run the whole loop once, then a poisoned night and a rollback.

    bootstrap v1 -> traffic -> night 1 -> gate/canary/approval -> v2 -> poisoned night 2
    (stopped before training) -> rollback. Approval is automatic in the demo, and recorded
    as such in the version's tags.
    """
    out = DemoOutcome()
    repo = settings.data_repo.resolve()
    versions = bootstrap_flow(
        settings, repo, BootstrapConfig(tiny=tiny, scale=0.05 if tiny else 1.0)
    )
    out.add("bootstrap", f"v1 = policy version {versions['policy'].version}", print)

    key = start_gateway(settings)
    counts = traffic(settings, key, requests, rps=25.0, seed=1)
    out.add("production traffic (night 1)", str(counts), print)

    # An untrained tiny model is rated down most of the time: let its batch through.
    night = NightlyConfig(tiny=tiny, max_negative_share=0.95 if tiny else 0.6)
    candidate = nightly_flow(settings, night)
    if candidate is None:
        out.add("nightly 1", "no candidate", print)
        out.ok = False
        return out
    out.add("nightly 1", f"candidate policy version {candidate.version}", print)

    release = ReleaseConfig(
        canary_fraction=0.5,
        window_s=20.0,
        max_windows=4,
        auto_approve=True,
        canary_policy=Path(__file__).parent.parent
        / "loopwright"
        / "release"
        / "policies"
        / "canary_demo.yaml",
    )
    live = background(lambda: traffic.fn(settings, key, requests, 25.0, 2))
    outcome = release_flow(settings, candidate.version, release)
    live.join()
    evaluated = settings.run_path / "eval"
    summaries = sorted(evaluated.glob(f"*-{candidate.version}-vs-*/gate_summary.json"))
    if summaries:
        out.table = summary_table(summaries[-1])
    out.add(
        "release",
        f"{outcome}; champion is now version {current_version(settings, 'policy')}",
        print,
    )

    traffic(settings, key, requests // 3, rps=25.0, seed=3, poisoned=True)
    before = current_version(settings, "policy")
    try:
        nightly_flow(settings, night)
        out.add("poisoned night 2", "NOT stopped", print)
        out.ok = False
    except BatchRejected as exc:
        out.add("poisoned night 2", f"stopped before training ({str(exc)[:120]})", print)
    assert current_version(settings, "policy") == before

    if outcome == "promoted":
        back = rollback(settings, "demo: one-command rollback")
        out.add("rollback", f"champion is version {back}", print)
    else:
        out.add("rollback", "skipped: no new champion to roll back from", print)
    return out
