"""Typed settings of one release (gate -> canary -> approval -> promotion)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class ReleaseConfig(BaseModel):
    """How a candidate is released.

    Attributes:
        canary_fraction: share of users (sticky by hash) routed to the canary, in (0, 1).
        window_s: seconds of live traffic per canary analysis window.
        max_windows: inconclusive windows before giving up (rollback, recorded).
        approval_timeout_s: how long a promotion waits for a person; a timeout never
            promotes.
        auto_approve: the embedded default may approve by itself (recorded as such).
        suites: evaluation suites (None: all of them).
        gate_policy / canary_policy: policy YAML files (None: the packaged defaults).
        suite_dir: folder of suite YAML files (None: the example domain's).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    canary_fraction: float = Field(default=0.3, gt=0, lt=1)
    window_s: float = Field(default=60.0, gt=0)
    max_windows: int = Field(default=3, ge=1)
    approval_timeout_s: float = Field(default=3600.0, gt=0)
    auto_approve: bool = False
    suites: list[str] | None = None
    gate_policy: Path | None = None
    canary_policy: Path | None = None
    suite_dir: Path | None = None
