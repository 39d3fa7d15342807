"""Typed settings of one release (gate -> canary -> approval -> promotion).

The profile's ``release:`` section is a :class:`ReleaseConfig` (see
:class:`loopwright.config.Settings`); the deployments build each release from it.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ReleaseConfig(BaseModel):
    """How a candidate is released.

    The canary serves until its analysis decides (promote or rollback), re-analysed every
    ``window_s`` seconds, for at most ``max_canary_s`` seconds; still inconclusive then,
    it is rolled back. The analysis itself says "inconclusive" until the canary policy's
    ``min_duration_s`` and ``min_requests_per_arm`` are met, so ``max_canary_s`` must be
    at least that ``min_duration_s`` (checked when the config is built: a shorter one
    could never promote).

    Attributes:
        canary_fraction: share of users (sticky by hash) routed to the canary, in (0, 1).
        window_s: seconds between two canary analyses (each covers the whole canary so
            far, from its start).
        max_canary_s: the longest the canary serves, seconds from its start; an analysis
            still inconclusive at this point rolls it back (recorded).
        approval_timeout_s: how long a promotion waits for a person, seconds; a timeout
            never promotes. The waiting run holds its worker that long.
        auto_approve: the embedded default may approve by itself (recorded as such).
        suites: evaluation suites (None: all of them).
        gate_policy / canary_policy: policy YAML files (None: the packaged defaults).
        suite_dir: folder of suite YAML files (None: the example domain's).
        eval_workers: Ray generation workers (one CPU thread each) of the gate's raw view
            and its noise rerun. 2 on the 2-core local machine: one worker left a core
            idle while candidate and champion were generated one after the other.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    canary_fraction: float = Field(default=0.3, gt=0, lt=1)
    window_s: float = Field(default=300.0, gt=0)
    max_canary_s: float = Field(default=21600.0, gt=0)
    approval_timeout_s: float = Field(default=3600.0, gt=0)
    auto_approve: bool = False
    suites: list[str] | None = None
    gate_policy: Path | None = None
    canary_policy: Path | None = None
    suite_dir: Path | None = None
    eval_workers: int = Field(default=2, ge=1)

    @model_validator(mode="after")
    def _canary_can_conclude(self) -> ReleaseConfig:
        # Imported here: the policy module pulls numpy, and every command loads the config.
        from loopwright.release.canary import load_canary_policy

        # Unset, the policy is the domain's or the packaged one: with_domain_policies
        # names it and checks again.
        if self.canary_policy is None:
            return self
        path = self.canary_policy
        policy = load_canary_policy(path)
        if self.max_canary_s < policy.min_duration_s:
            raise ValueError(
                f"max_canary_s ({self.max_canary_s:g} s) is shorter than the canary policy's "
                f"min_duration_s ({policy.min_duration_s:g} s, {path}), so the canary could "
                f"never promote; valid: max_canary_s >= {policy.min_duration_s:g}, or a "
                f"canary_policy whose min_duration_s <= {self.max_canary_s:g}"
            )
        return self


def with_domain_policies(config: ReleaseConfig, domain: str) -> ReleaseConfig:
    """``config`` with every policy named: those it leaves unset from the domain, else packaged.

    A domain's optional ``gate_policy()`` / ``canary_policy()`` hooks name its files; the
    packaged policies are the fallback. The result is validated again (the canary timing
    must let the canary policy that will judge it conclude). Idempotent.

    Raises:
        loopwright.domain.DomainError: ``domain`` cannot be loaded.
        pydantic.ValidationError: the domain's canary policy cannot conclude within
            ``max_canary_s``.
    """
    from loopwright.domain import load_domain
    from loopwright.release.canary import default_canary_policy_path
    from loopwright.release.gate_policy import default_policy_path

    if config.gate_policy is not None and config.canary_policy is not None:
        return config
    loaded = load_domain(domain)
    packaged = {"gate_policy": default_policy_path(), "canary_policy": default_canary_policy_path()}
    update: dict[str, Path] = {}
    for key, fallback in packaged.items():
        if getattr(config, key) is None:
            provider = getattr(loaded, key, None)
            update[key] = (provider() if callable(provider) else None) or fallback
    return ReleaseConfig.model_validate({**config.model_dump(), **update})
