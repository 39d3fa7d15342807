"""The whole loop on the embedded default, as ``make demo`` runs it.

bootstrap v1 -> gateway serves it -> simulated production traffic -> nightly run ->
gate -> canary with live traffic -> canary analysis -> approval (automatic in the demo,
and recorded as such) -> champion v2 -> a poisoned night, stopped before training ->
rollback -> summary table per dimension. Prefect is used only through the flows.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from loopwright import progress
from loopwright.config import Settings
from loopwright.stack import Stack

if TYPE_CHECKING:
    from loopwright.simulate import SimulationReport

Echo = Callable[[str], None]
T = TypeVar("T")

POLICY_DIR = Path(__file__).resolve().parent / "release" / "policies"
# The full-size demo gates with the packaged default policy (None); a tiny run gates with
# a policy that checks only what barely-trained tiny models can meet (see the file).
TINY_GATE_POLICY = POLICY_DIR / "demo_tiny.yaml"
CANARY_DEMO_POLICY = POLICY_DIR / "canary_demo.yaml"
TINY_CANARY_POLICY = POLICY_DIR / "canary_demo_tiny.yaml"


class DemoConfig(BaseModel):
    """Sizes and policies of one demo run.

    Attributes:
        tiny: tiny models trained in seconds (smoke runs and the integration test).
        bootstrap_scale: share of the example domain's data the bootstrap uses, in (0, 1].
        nights: honest nights (traffic, nightly, release) before the poisoned one.
        night_requests: simulated requests before each honest night.
        canary_requests: simulated requests (honest users) per round while the canary
            serves, at most one analysis window's worth (``canary_round_requests``);
            rounds go on while the analysis extends its window.
        poison_requests: requests of attacking users before night 2 (at least; see
            ``attack_requests``).
        rps: simulated requests per second.
        gate_policy: offline gate policy (None: the packaged default).
        canary_policy: canary analysis policy.
        canary_fraction: share of users the canary serves, in (0, 1).
        window_s / max_windows: canary analysis window (seconds) and how many to try.
        max_negative_share: the batch contract's ceiling on negative ratings; an untrained
            tiny model is rated down almost always, so tiny runs raise it (poisoning is
            then caught by screening, not by this contract).
        log_seal_s: the gateway seals a log segment after this many seconds, so shipped
            logs reach the nightly run and the canary analysis without a long wait (None:
            the gateway's setting).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    tiny: bool = False
    bootstrap_scale: float = Field(default=1.0, gt=0, le=1)
    nights: int = Field(default=1, ge=1)
    night_requests: int = Field(default=1500, ge=1)
    canary_requests: int = Field(default=1500, ge=1)
    poison_requests: int = Field(default=1500, ge=1)
    rps: float = Field(default=25.0, gt=0)
    gate_policy: Path | None = None
    canary_policy: Path = CANARY_DEMO_POLICY
    canary_fraction: float = Field(default=0.5, gt=0, lt=1)
    window_s: float = Field(default=20.0, gt=0)
    max_windows: int = Field(default=12, ge=1)
    max_negative_share: float = Field(default=0.6, ge=0, le=1)
    log_seal_s: float | None = Field(default=None, gt=0)

    @classmethod
    def for_size(cls, tiny: bool, requests: int | None = None) -> DemoConfig:
        """The demo's two sizes: full (embedded default models) or tiny (smoke/test).

        ``requests`` sizes night 1 and the canary window; the attack before night 2 is
        twice that. Night 2's batch holds the canary window's honest traffic too, and
        screening judges the batch as a whole: an attack that is a third of it or less is
        diluted below the screening thresholds (measured on the tiny demo: the positive-
        rating rate moves from ~0.12 for honest users to ~0.84 for attackers; the shift
        check fires at 0.35, so about half the batch must be attack traffic).
        """
        if not tiny:
            n = requests or 1500
            return cls(night_requests=n, canary_requests=n, poison_requests=2 * n)
        n = requests or 300
        return cls(
            tiny=True,
            bootstrap_scale=0.05,
            night_requests=n,
            canary_requests=n,
            poison_requests=2 * n,
            gate_policy=TINY_GATE_POLICY,
            canary_policy=TINY_CANARY_POLICY,
            window_s=10.0,
            # Windows only extend while the verdict is inconclusive: on a loaded machine the
            # canary's requests arrive slower (a CI run saw "inconclusive" after 6 windows).
            max_windows=12,
            # Users rate the tiny v1 down 87-96% of the time (measured: 0.868 and 0.960 on
            # night 1 of two idle runs of the same code), so the contract's ceiling is
            # lifted out of the way; screening catches the poisoned night instead.
            max_negative_share=0.99,
            log_seal_s=3.0,
        )

    def canary_round_requests(self) -> int:
        """Users per round while the canary serves: ``canary_requests``, at most one window.

        The rounds stop once the release has decided, but a round that started goes on to
        its end; a round of one analysis window keeps that overshoot (and the attack sized
        against it, :meth:`attack_requests`) small.
        """
        return max(1, min(self.canary_requests, math.ceil(self.window_s * self.rps)))

    def canary_rounds(self) -> int:
        """Most rounds the canary can need.

        Enough to keep users arriving through every window the release may extend to
        (``max_windows * window_s`` seconds at ``rps``), plus one round of slack.
        """
        seconds = self.max_windows * self.window_s
        return math.ceil(seconds * self.rps / self.canary_round_requests()) + 1

    def attack_requests(self, honest_requests: int) -> int:
        """Attacking requests before night 2, given the honest ones already in its batch.

        Screening judges night 2's batch as a whole, and the canary's honest users are in
        it; the attack is kept at twice their number (at least ``poison_requests``) so a
        canary that ran long does not dilute it below the screening thresholds.
        """
        return max(self.poison_requests, 2 * honest_requests)

    def gate_policy_label(self) -> str:
        """The gate policy as the summary names it: file, version and what it checks."""
        from loopwright.release.gate import default_policy_path, load_gate_policy

        path = self.gate_policy or default_policy_path()
        policy = load_gate_policy(path)
        return f"{path.name} (version {policy.version}): {policy.description}"


@dataclass(frozen=True)
class SummaryRow:
    """One gated dimension: champion (v1) and candidate (v2) on the same samples.

    ``delta`` is v2 minus v1 with its paired 95% CI, in the metric's own units; ``rule``
    is what the gate policy requires of this dimension; ``passed`` is the gate's verdict
    on it (None when the gate's verdict is not known).
    """

    dimension: str
    metric: str
    v1: float
    v2: float
    delta: float
    ci_low: float
    ci_high: float
    rule: str
    passed: bool | None


@dataclass(frozen=True)
class StepRecord:
    """One result line of the demo.

    ``status`` is ``ok``, ``held`` (a safety check stopped the candidate, as the loop is
    designed to: not a failure) or ``failed``; ``seconds`` is how long the stage that
    produced it ran (None for a second result of the same stage).
    """

    step: str
    result: str
    status: str = "ok"
    seconds: float | None = None


@dataclass
class DemoOutcome:
    """What the demo did, step by step, for the final summary.

    Attributes:
        steps: (step, result) in order, as printed.
        records: the same steps with their status and duration.
        table: the gate's per-dimension comparison of v1 and v2.
        gate_policy: the gate policy file the release used.
        facts: machine-readable results (versions, verdicts, fingerprints) for tests.
        ok: no step failed (a candidate the gate or canary held back is not a failure).
    """

    steps: list[tuple[str, str]] = field(default_factory=list)
    records: list[StepRecord] = field(default_factory=list)
    table: list[SummaryRow] = field(default_factory=list)
    gate_policy: str = ""
    facts: dict[str, Any] = field(default_factory=dict)
    ok: bool = True
    _stage: tuple[str, float] | None = field(default=None, repr=False, compare=False)

    def begin(self, stage: str) -> None:
        """A stage starts: time it, and let the progress reporter show it running."""
        self._stage = (stage, time.monotonic())
        progress.reporter().stage_started(stage)

    def add(self, step: str, result: str, echo: Echo, status: str = "ok") -> None:
        """Record and print one step's result.

        The result of the stage last :meth:`begin`-ned (same name) carries its duration;
        other results (e.g. the gate's, reported within the release stage) carry none.
        """
        seconds = None
        if self._stage is not None and self._stage[0] == step:
            seconds = time.monotonic() - self._stage[1]
            self._stage = None
        self.steps.append((step, result))
        self.records.append(StepRecord(step, result, status, seconds))
        echo(f"  -> {step}: {result}")
        progress.reporter().stage_finished(step, result, status, seconds)

    def hold(self, step: str, result: str, echo: Echo) -> None:
        """Record a candidate stopped by a safety check (the loop working, not failing)."""
        self.add(step, result, echo, status="held")

    def fail(self, step: str, result: str, echo: Echo) -> None:
        """Record a step that did not do what the demo shows, and mark the run failed."""
        self.add(step, result, echo, status="failed")
        self.ok = False

    def crashed(self, step: str, exc: BaseException, echo: Echo) -> None:
        """Record an exception that ended the run during ``step``."""
        self.fail(step, f"{type(exc).__name__}: {exc}", echo)


def format_counts(counts: Mapping[str, int]) -> str:
    """Traffic counts as the stage lines show them, e.g. ``300 sent, 298 ok, 2 errors``."""
    names = {"feedback": "ratings"}
    return ", ".join(f"{n} {names.get(k, k)}" for k, n in counts.items())


# ----------------------------------------------------------------------------- gateway


def start_gateway(settings: Settings) -> str:
    """Start the gateway (or reuse a running one); returns its base URL."""
    Stack(settings, with_gateway=True).up(services=["gateway"])
    return gateway_url(settings)


def stop_gateway(settings: Settings) -> None:
    """Stop the gateway the demo started (the rest of the stack keeps running)."""
    Stack(settings, with_gateway=True).down(services=["gateway"])


def gateway_url(settings: Settings) -> str:
    """Base URL of the gateway ``settings`` describe."""
    return f"http://{settings.gateway.host}:{settings.gateway.port}"


def with_log_seal(settings: Settings, seconds: float | None) -> Settings:
    """``settings`` with the gateway sealing log segments after ``seconds`` (None: as is)."""
    if seconds is None:
        return settings
    log = settings.gateway.log.model_copy(update={"segment_max_age_s": seconds})
    gateway = settings.gateway.model_copy(update={"log": log})
    return settings.model_copy(update={"gateway": gateway})


def gateway_key(settings: Settings, tenant: str = "acme") -> str:
    """A fresh user key for the simulated users (the plaintext is shown only once)."""
    from loopwright.gateway.keys import KeyStore

    store = KeyStore(settings.run_path / settings.gateway.auth.keys_file)
    try:
        _, secret = store.create(tenant=tenant, role="user", name="demo-users", requests_per_s=500)
    finally:
        store.close()
    return secret


def drive_traffic(
    settings: Settings, key: str, *, requests: int, rps: float, seed: int, poisoned: bool = False
) -> SimulationReport:
    """Simulated users against the running gateway (loopback), with their feedback."""
    from loopwright.simulate import run_simulation

    return asyncio.run(
        run_simulation(
            gateway_url(settings),
            key,
            domain=settings.domain,
            rps=rps,
            minutes=max(1.0, requests / rps / 60 * 3),
            max_requests=requests,
            seed=seed,
            poisoned=poisoned,
            concurrency=32,
        )
    )


def wait_shipped(settings: Settings, timeout_s: float = 60.0) -> None:
    """Give the gateway's background shipper time to flush its spool to the store."""
    spool = settings.run_path / settings.gateway.log.spool_dir
    deadline = time.monotonic() + timeout_s
    # Open segments seal by age, sealed ones ship on the next tick: wait for both.
    while time.monotonic() < deadline:
        waiting = [*spool.glob("*/open/*.jsonl"), *spool.glob("*/sealed/*.jsonl")]
        if not any(p.stat().st_size for p in waiting):
            return
        time.sleep(1.0)


def seconds_until_served(
    settings: Settings, key: str, version: str, timeout_s: float = 120.0, poll_s: float = 0.5
) -> float | None:
    """Ask the running gateway until ``version`` answers as champion; seconds it took.

    Each answer's ``system_fingerprint`` names what served it (``<name>@<version>/<arm>``),
    so this sees the switch the way a client would. Returns None after ``timeout_s``.
    """
    import httpx

    wanted = f"@{version}/champion"
    start = time.monotonic()
    with httpx.Client(base_url=gateway_url(settings), timeout=30.0) as client:
        while time.monotonic() - start < timeout_s:
            reply = client.post(
                "/v1/chat/completions",
                headers={"Authorization": f"Bearer {key}"},
                json={
                    "model": settings.registered_model("policy"),
                    "messages": [{"role": "user", "content": "What does the Pro plan cost?"}],
                    "user": "rollback-check",
                    "max_tokens": 8,
                },
            )
            if reply.status_code == 200 and wanted in reply.json().get("system_fingerprint", ""):
                return time.monotonic() - start
            time.sleep(poll_s)
    return None


def _canary_state(settings: Settings, version: str) -> str | None:
    """Where ``version`` stands in its release, as the registry says now.

    Returns:
        ``canary`` while it holds the alias, ``blocked`` after a failed gate, else
        ``other``; None when the registry could not be asked (ask again).
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(settings.mlflow_tracking_uri)
    try:
        mv = client.get_model_version(settings.registered_model("policy"), version)
    except MlflowException:  # a transient registry error
        return None
    if "canary" in mv.aliases:
        return "canary"
    return "blocked" if mv.tags.get("gate.passed") == "false" else "other"


def wait_for_canary(
    settings: Settings, version: str, timeout_s: float = 900.0, poll_s: float = 1.0
) -> bool:
    """Block until ``version`` is the policy's ``canary``, or the gate has blocked it.

    Live traffic is only evidence for the canary analysis once the canary serves, so the
    demo's users arrive then, not while the release is still evaluating offline.

    Returns:
        True when the canary started; False when the gate blocked ``version`` (tag
        ``gate.passed`` is ``false``) or after ``timeout_s`` seconds.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = _canary_state(settings, version)
        if state in ("canary", "blocked"):
            return state == "canary"
        time.sleep(poll_s)
    return False


def traffic_counts(reports: Sequence[SimulationReport]) -> dict[str, int]:
    """The counts the demo prints, summed over simulation runs."""
    return {
        "sent": sum(r.sent for r in reports),
        "ok": sum(r.ok for r in reports),
        "errors": sum(r.errors for r in reports),
        "blocked": sum(r.blocked for r in reports),
        "feedback": sum(r.feedback_ok for r in reports),
    }


def canary_users(
    settings: Settings, key: str, version: str, config: DemoConfig, seed: int
) -> dict[str, int]:
    """Honest users for as long as ``version`` is the canary; their summed counts.

    Users arrive once the canary serves, in rounds of ``config.canary_round_requests()``,
    and keep arriving while ``version`` holds the ``canary`` alias (the release removes it when it
    promotes or rolls back), at most ``config.canary_rounds()`` rounds. A fixed burst would
    leave every window the analysis extends with the evidence it already judged undecided
    (a CI run stayed "inconclusive" through all 12 windows that way). All counts are zero
    when the gate blocked ``version``. Logs are flushed to the store before returning.
    """
    if not wait_for_canary(settings, version):
        return traffic_counts([])
    reports: list[SimulationReport] = []
    for round_ in range(config.canary_rounds()):
        reports.append(
            drive_traffic(
                settings,
                key,
                requests=config.canary_round_requests(),
                rps=config.rps,
                seed=seed + 1000 * round_,
            )
        )
        if _canary_state(settings, version) not in ("canary", None):
            break
    wait_shipped(settings)
    return traffic_counts(reports)


def canary_summary(tags: Mapping[str, str], max_reason_chars: int = 600) -> str:
    """The canary's verdict from the candidate's registry tags.

    When it did not promote, the analysis's reasons follow (at most ``max_reason_chars``),
    so a demo that fails says why, not only what.
    """
    verdict = tags.get("canary.verdict", "not started")
    if verdict in ("promote", "not started"):
        return verdict
    return f"{verdict} ({tags.get('canary.reasons', '')[:max_reason_chars]})"


def background(target: Callable[[], T]) -> Future[T]:
    """Run ``target`` in a daemon thread; its result (or exception) arrives in the future."""
    future: Future[T] = Future()

    def run() -> None:
        try:
            future.set_result(target())
        except BaseException as exc:  # handed to whoever waits on the future
            future.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return future


# ----------------------------------------------------------------------------- summary


def gate_summary_path(settings: Settings, candidate: str) -> Path | None:
    """The release evaluation's last summary of ``candidate`` (this app's), or None.

    A staged evaluation writes one summary per look (``look-<i>/`` after the first); the
    gate decided on the last one, so that is the one the table shows.
    """
    name = settings.registered_model("policy")
    root = settings.run_path / "eval"
    found = sorted(
        [
            *root.glob(f"{name}-{candidate}-vs-*/gate_summary.json"),
            *root.glob(f"{name}-{candidate}-vs-*/look-*/gate_summary.json"),
        ],
        key=lambda p: p.stat().st_mtime,
    )
    return found[-1] if found else None


def _rule_text(rule: Any) -> str:
    parts = []
    if rule.safety:
        parts.append("safety: never regresses")
    elif rule.margin:
        parts.append(f"non-inferior within {rule.margin:g}")
    floor = rule.floor("raw")
    if floor is not None:
        parts.append(f"{'>=' if rule.direction == 'higher_is_better' else '<='} {floor:g}")
    if not rule.required:
        parts.append("optional")
    return ", ".join(parts) or "reported"


def summary_table(
    summary_path: Path, policy_path: Path | None, blocking: Mapping[str, bool] | None = None
) -> list[SummaryRow]:
    """One row per dimension the gate policy judges and the evaluation measured (raw view).

    Args:
        summary_path: the candidate's ``gate_summary.json`` (paired against the champion).
        policy_path: the gate policy the release used (None: the packaged default).
        blocking: ``"view:key" -> True`` for each check the gate blocked on (from the
            version's ``gate.blocking_dimensions`` tag); None when unknown.
    """
    from loopwright.release.gate import load_gate_policy

    policy = load_gate_policy(policy_path)
    view = json.loads(summary_path.read_text(encoding="utf-8"))["views"]["raw"]
    rows = []
    for key, rule in policy.dimensions.items():
        if "/" in key or key not in view.get("paired", {}):
            continue
        paired, value = view["paired"][key], view["values"][key]
        v2 = float(value["value"])
        passed = None if blocking is None else not blocking.get(f"raw:{key}", False)
        rows.append(
            SummaryRow(
                dimension=key,
                metric=str(value.get("metric", "")),
                v1=v2 - float(paired["delta"]),
                v2=v2,
                delta=float(paired["delta"]),
                ci_low=float(paired["ci_low"]),
                ci_high=float(paired["ci_high"]),
                rule=_rule_text(rule),
                passed=passed,
            )
        )
    return rows


def format_table(rows: list[SummaryRow]) -> list[str]:
    """The summary table as text lines (two-space indent)."""
    lines = [
        f"  {'dimension':<14} {'metric':<20} {'v1':>7} {'v2':>7} {'delta':>7}  "
        f"{'95% CI':<17} {'gate':<5} rule"
    ]
    for r in rows:
        verdict = "-" if r.passed is None else ("pass" if r.passed else "BLOCK")
        lines.append(
            f"  {r.dimension:<14} {r.metric[:20]:<20} {r.v1:>7.3f} {r.v2:>7.3f} "
            f"{r.delta:>+7.3f}  [{r.ci_low:+.3f}, {r.ci_high:+.3f}] {verdict:<5} {r.rule}"
        )
    return lines


def data_fingerprint(settings: Settings) -> dict[str, str]:
    """The DVC data version and a digest of every curated file (SFT rows, pairs, cases).

    This is what the nightly loop has learned from so far; two equal fingerprints mean no
    curated data changed in between.
    """
    import hashlib

    from loopwright.datastore import data_version

    repo = settings.data_repo.resolve()
    digest = hashlib.sha256()
    curated = repo / "data" / "curated"
    for path in sorted(p for p in curated.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(curated)).encode())
        digest.update(path.read_bytes())
    return {"data_version": data_version(repo) or "none", "curated": digest.hexdigest()[:16]}
