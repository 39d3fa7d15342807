"""The whole loop on the embedded default (``make demo``): composition of the real flows."""

from __future__ import annotations

from prefect import flow

from examples.helpdesk.bootstrap import BootstrapConfig
from examples.helpdesk.bootstrap_flow import bootstrap_flow
from flows.nightly import nightly_flow
from flows.release import release_flow
from loopwright.config import Settings
from loopwright.demo import (
    DemoConfig,
    DemoOutcome,
    background,
    canary_summary,
    canary_users,
    format_counts,
    with_log_seal,
)
from loopwright.nightly import BatchRejected
from loopwright.release.config import ReleaseConfig
from tasks.demo import (
    data_fingerprint,
    gateway_follows,
    rollback,
    start_gateway,
    summary_table,
    traffic,
    version_tags,
)
from tasks.nightly import current_version

# Canary verdicts that are not a candidate held back ("not started": the gate already was).
_NOT_HELD = ("promote", "not started")


@flow(name="demo", log_prints=True)
def demo_flow(
    settings: Settings,
    tiny: bool = False,
    requests: int | None = None,
    config: DemoConfig | None = None,
    seed: int = 0,
) -> DemoOutcome:
    """Run the whole loop once, then a poisoned night and a rollback.

    bootstrap v1 -> traffic -> night 1 -> gate/canary/approval -> v2 -> poisoned night 2
    (stopped before training) -> rollback. Approval is automatic in the demo, and recorded
    as such in the version's tags.

    Args:
        settings: the stack to run on (app, ports, run directory, data repository).
        tiny: tiny models and traffic (smoke runs, the integration test).
        requests: simulated requests per traffic phase (default: by size).
        config: every size and policy at once (overrides ``tiny`` and ``requests``).
        seed: seeds the example data, every trainer and the simulated users.
    """
    config = config or DemoConfig.for_size(tiny, requests)
    settings = with_log_seal(settings, config.log_seal_s)
    out = DemoOutcome(gate_policy=config.gate_policy_label())
    # Each begin() names the stage the console shows running (and the one a crash is
    # reported in); the add() of the same name ends it with its duration.
    out.begin("bootstrap")
    versions = bootstrap_flow(
        settings,
        settings.data_repo.resolve(),
        BootstrapConfig(tiny=config.tiny, scale=config.bootstrap_scale, seed=seed),
    )
    v1 = versions["policy"].version
    out.facts["v1"] = v1
    out.add("bootstrap", f"v1 = policy version {v1}", print)

    out.begin("production traffic (night 1)")
    key = start_gateway(settings)
    counts = traffic(settings, key, config.night_requests, config.rps, seed=10 * seed + 1)
    out.add("production traffic (night 1)", format_counts(counts), print)

    # The profile's nightly settings, as a scheduled night runs them; the demo sets size,
    # seed and (tiny only) the batch contract's ceiling on negative ratings.
    night = settings.nightly.model_copy(
        update={
            "tiny": config.tiny,
            "seed": seed,
            "max_negative_share": config.max_negative_share,
        }
    )
    out.begin("nightly 1")
    candidate = nightly_flow(settings, night)
    if candidate is None:
        out.fail("nightly 1", "no candidate", print)
        return out
    v2 = candidate.version
    out.facts["v2"] = v2
    out.add("nightly 1", f"candidate policy version {v2}", print)

    # The profile's release settings, with the demo's shorter canary and its policies.
    release = ReleaseConfig.model_validate(
        settings.release.model_dump()
        | {
            "canary_fraction": config.canary_fraction,
            "window_s": config.window_s,
            "max_canary_s": config.window_s * config.max_windows,
            "auto_approve": True,
            "gate_policy": config.gate_policy,
            "canary_policy": config.canary_policy,
        }
    )
    # Users arrive once the canary serves (the gate may also stop it before that) and keep
    # arriving while the canary analysis extends its window.
    out.begin("release")
    live = background(lambda: canary_users(settings, key, v2, config, seed=10 * seed + 2))
    outcome = release_flow(settings, v2, release)
    canary_traffic = live.result()
    tags = version_tags(settings, v2)
    out.facts.update(release=outcome, v2_tags=tags, canary_traffic=canary_traffic)
    out.table = summary_table(settings, v2, config.gate_policy, tags)
    # A candidate the gate or the canary stops is the loop protecting production ("held"),
    # not a failure of the demo; the summary says so and the run still exits 0.
    gate_status = "ok" if tags.get("gate.passed") == "true" else "held"
    out.add("gate", f"{tags.get('gate.verdict')} under {out.gate_policy}", print, gate_status)
    out.add("canary traffic", format_counts(canary_traffic), print)
    canary_status = "ok" if tags.get("canary.verdict", "not started") in _NOT_HELD else "held"
    out.add("canary", canary_summary(tags), print, canary_status)
    if outcome == "promoted":
        out.add(
            "approval",
            f"AUTOMATIC ({tags.get('approval')} by {tags.get('approval.by')} via "
            f"{tags.get('approval.channel')}: {tags.get('approval.reason')})",
            print,
        )
        out.add("release", f"promoted: champion is now v2 = version {v2}", print)
    else:
        out.hold("release", f"{outcome}: not promoted; champion stays version {v1}", print)

    out.begin("poisoned traffic (night 2)")
    before = data_fingerprint(settings)
    champion = current_version(settings, "policy")
    attack = config.attack_requests(canary_traffic["sent"])
    poison = traffic(settings, key, attack, config.rps, seed=10 * seed + 3, poisoned=True)
    out.add("poisoned traffic (night 2)", format_counts(poison), print)
    out.begin("poisoned night 2")
    try:
        nightly_flow(settings, night)
        out.fail("poisoned night 2", "NOT stopped", print)
    except BatchRejected as exc:
        out.facts["night2_rejected"] = str(exc)
        out.add("poisoned night 2", f"stopped before training ({str(exc)[:160]})", print)
    after = data_fingerprint(settings)
    out.facts.update(
        night2_data_before=before,
        night2_data_after=after,
        night2_champion_before=champion,
        night2_champion_after=current_version(settings, "policy"),
    )
    if out.facts["night2_champion_after"] != champion or after != before:
        out.fail("poisoned night 2", "champion or curated data changed", print)
    else:
        out.add(
            "after night 2", f"champion still version {champion}, curated data unchanged", print
        )

    if outcome == "promoted":
        out.begin("rollback")
        back = rollback(settings, "demo: one-command rollback")
        out.facts["rolled_back_to"] = back
        out.add("rollback", f"champion is version {back} again (audited)", print)
        out.begin("gateway after rollback")
        seconds = gateway_follows(settings, key, back)
        if seconds is None:
            out.fail("gateway after rollback", f"still not serving version {back}", print)
        else:
            out.facts["gateway_followed_s"] = f"{seconds:.1f}"
            out.add("gateway after rollback", f"serves version {back} ({seconds:.1f} s)", print)
    else:
        out.add("rollback", "skipped: no new champion to roll back from", print)
    return out
