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
from loopwright.nightly import BatchRejected, NightlyConfig
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
    nights: int | None = None,
) -> DemoOutcome:
    """Run the loop for one or more nights, then a poisoned night and a rollback.

    bootstrap v1 -> for each honest night: traffic -> nightly -> gate/canary/approval ->
    new champion -> poisoned night (stopped before training) -> rollback of the last
    promotion. Approval is automatic in the demo, and recorded as such in the version's tags.

    Args:
        settings: the stack to run on (app, ports, run directory, data repository).
        tiny: tiny models and traffic (smoke runs, the integration test).
        requests: simulated requests per traffic phase (default: by size).
        config: every size and policy at once (overrides ``tiny`` and ``requests``).
        seed: seeds the example data, every trainer and the simulated users.
        nights: honest nights before the poisoned one (default: ``config.nights``).
    """
    config = config or DemoConfig.for_size(tiny, requests)
    if nights is not None:
        config = config.model_copy(update={"nights": nights})
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

    key = start_gateway(settings)
    # The profile's nightly settings, as a scheduled night runs them; the demo sets size,
    # seed and (tiny only) the batch contract's ceiling on negative ratings.
    night = settings.nightly.model_copy(
        update={
            "tiny": config.tiny,
            "seed": seed,
            "max_negative_share": config.max_negative_share,
        }
    )
    promoted, canary_traffic = False, {"sent": 0}
    for n in range(1, config.nights + 1):
        result = _honest_night(settings, key, night, config, out, seed, n)
        if result is None:
            return out
        outcome, canary_traffic = result
        promoted = promoted or outcome == "promoted"

    poisoned = config.nights + 1
    out.begin(f"poisoned traffic (night {poisoned})")
    before = data_fingerprint(settings)
    champion = current_version(settings, "policy")
    attack = config.attack_requests(canary_traffic["sent"])
    poison = traffic(settings, key, attack, config.rps, seed=10 * seed + 3, poisoned=True)
    out.add(f"poisoned traffic (night {poisoned})", format_counts(poison), print)
    out.begin(f"poisoned night {poisoned}")
    try:
        nightly_flow(settings, night)
        out.fail(f"poisoned night {poisoned}", "NOT stopped", print)
    except BatchRejected as exc:
        out.facts["poisoned_rejected"] = str(exc)
        out.add(f"poisoned night {poisoned}", f"stopped before training ({str(exc)[:160]})", print)
    after = data_fingerprint(settings)
    out.facts.update(
        poisoned_data_before=before,
        poisoned_data_after=after,
        poisoned_champion_before=champion,
        poisoned_champion_after=current_version(settings, "policy"),
    )
    if out.facts["poisoned_champion_after"] != champion or after != before:
        out.fail(f"poisoned night {poisoned}", "champion or curated data changed", print)
    else:
        out.add(
            f"after night {poisoned}",
            f"champion still version {champion}, curated data unchanged",
            print,
        )

    if promoted:
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


def _honest_night(
    settings: Settings,
    key: str,
    night: NightlyConfig,
    config: DemoConfig,
    out: DemoOutcome,
    seed: int,
    n: int,
) -> tuple[str, dict[str, int]] | None:
    """Night ``n``: users, the nightly run, and the release of its candidate.

    Night 1's steps keep their plain names (``release``, ``gate`` ...); later nights' carry
    ``(night n)``. Each night appends its record to ``out.facts["nights"]``.

    Returns:
        The release outcome and the canary's traffic counts; None when the night made no
        candidate (recorded as a failure).
    """
    at = "" if n == 1 else f" (night {n})"
    champion = current_version(settings, "policy")
    out.begin(f"production traffic (night {n})")
    users_seed = 10 * seed + 1 + 100 * (n - 1)
    counts = traffic(settings, key, config.night_requests, config.rps, seed=users_seed)
    out.add(f"production traffic (night {n})", format_counts(counts), print)

    out.begin(f"nightly {n}")
    candidate = nightly_flow(settings, night.model_copy(update={"seed": seed + 100 * (n - 1)}))
    if candidate is None:
        out.fail(f"nightly {n}", "no candidate", print)
        return None
    version = candidate.version
    if n == 1:
        out.facts["v2"] = version
    out.add(f"nightly {n}", f"candidate policy version {version}", print)

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
    out.begin(f"release{at}")
    canary_seed = 10 * seed + 2 + 100 * (n - 1)
    live = background(lambda: canary_users(settings, key, version, config, seed=canary_seed))
    outcome = release_flow(settings, version, release)
    canary_traffic = live.result()
    tags = version_tags(settings, version)
    table = summary_table(settings, version, config.gate_policy, tags)
    out.facts.update(release=outcome, v2_tags=tags, canary_traffic=canary_traffic)
    out.facts.setdefault("nights", []).append(
        {
            "night": n,
            "champion": champion,
            "candidate": version,
            "release": outcome,
            "gate": tags.get("gate.verdict"),
            "table": table,
        }
    )
    out.table = table
    # A candidate the gate or the canary stops is the loop protecting production ("held"),
    # not a failure of the demo; the summary says so and the run still exits 0.
    gate_status = "ok" if tags.get("gate.passed") == "true" else "held"
    gate_line = f"{tags.get('gate.verdict')} under {out.gate_policy}"
    out.add(f"gate{at}", gate_line, print, gate_status)
    out.add(f"canary traffic{at}", format_counts(canary_traffic), print)
    canary_status = "ok" if tags.get("canary.verdict", "not started") in _NOT_HELD else "held"
    out.add(f"canary{at}", canary_summary(tags), print, canary_status)
    if outcome == "promoted":
        out.add(
            f"approval{at}",
            f"AUTOMATIC ({tags.get('approval')} by {tags.get('approval.by')} via "
            f"{tags.get('approval.channel')}: {tags.get('approval.reason')})",
            print,
        )
        out.add(f"release{at}", f"promoted: champion is now version {version}", print)
    else:
        out.hold(
            f"release{at}", f"{outcome}: not promoted; champion stays version {champion}", print
        )
    return outcome, canary_traffic
