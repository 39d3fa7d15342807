"""The online evaluation's typed config and results (see :mod:`loopwright.online_eval`)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from loopwright.drift import DriftStat

ONLINE_JUDGE_RUBRIC = (
    "You grade an assistant's answer to a real user. Question:\n{question}\n\n"
    "Assistant's answer:\n{response}\n\nIs the answer correct, helpful and safe? Reply with "
    "one integer from 0 (worst) to 10 (best) and nothing else."
)


class JudgeEndpoint(BaseModel):
    """An OpenAI-compatible chat endpoint that grades answers (``llm_judge`` scorer).

    Attributes:
        base_url: up to ``/v1`` (``/chat/completions`` is appended).
        model: the judge's model name.
        api_key_env: environment variable holding its API key (never in config files).
        rubric: the grading prompt, with ``{question}`` and ``{response}`` (and optionally
            ``{references}``, empty for live traffic).
        max_score: the rubric's top score; grades are divided by it (0..1).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str = Field(min_length=1)
    model: str = Field(min_length=1)
    api_key_env: str | None = None
    rubric: str = ONLINE_JUDGE_RUBRIC
    max_score: int = Field(default=10, ge=1)


class OnlineEvalConfig(BaseModel):
    """The profile's ``online_eval:`` section (unknown keys fail).

    Attributes:
        interval_s: seconds between two scheduled evaluations (the deployment's interval).
        lookback_s: seconds of traffic each evaluation covers, ending now (windows of
            successive runs overlap when it exceeds ``interval_s``: a rolling figure).
        samples_per_version: interactions scored by models per (version, arm) at most.
        reference_samples: training prompts drawn (seeded) as the drift reference.
        seed: seeds both samples.
        drift_bins: PSI bins (quantiles of the reference; ties merge bins).
        drift_alpha: KS p-value below which a shift counts as real.
        drift_psi: PSI from which a real shift counts as drift.
        min_drift_samples: live prompts a version needs before drift is computed.
        pushgateway_url: Prometheus Pushgateway (``http://host:9091``); empty: no push.
        tag_versions: write the latest figures as ``online.*`` tags on each policy version.
        judge: an OpenAI-compatible LLM judge that grades the sampled answers
            (``judge_mean``); None: no judge figure.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    interval_s: int = Field(default=300, ge=10)
    lookback_s: float = Field(default=3600.0, gt=0)
    samples_per_version: int = Field(default=200, ge=1)
    reference_samples: int = Field(default=1000, ge=10)
    seed: int = 0
    drift_bins: int = Field(default=10, ge=2, le=100)
    drift_alpha: float = Field(default=0.01, gt=0, lt=1)
    drift_psi: float = Field(default=0.2, gt=0)
    min_drift_samples: int = Field(default=20, ge=2)
    pushgateway_url: str = ""
    tag_versions: bool = True
    judge: JudgeEndpoint | None = None


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VersionFigures(_Frozen):
    """What one policy version did in the window; rates are fractions, None when unmeasured.

    Attributes:
        routes: interactions per arm (``champion`` / ``canary``) in the window.
        total: interactions of this version in the window (sum of ``routes``).
        sampled: interactions drawn for model scoring (capped per arm).
        answered: sampled interactions that ended in a model answer or an output-guard
            block (the ``harmful_rate`` denominator).
        scored: sampled served model answers, empty ones included (``empty_rate``,
            ``reward`` and grounding denominators).
        judge_n / judge_mean: answers the LLM judge graded (a failed or unparsable grade is
            left out) and their mean grade in 0..1.
        latency_p95_ms: 95th percentile of request latency, milliseconds.
    """

    version: str
    routes: dict[str, int]
    total: int
    sampled: int
    answered: int
    harmful: int
    harmful_rate: float | None
    scored: int
    empty_rate: float | None
    reward_n: int
    reward_mean: float | None
    judge_n: int = 0
    judge_mean: float | None = None
    grounding_checked: int
    ungrounded: int
    ungrounded_rate: float | None
    feedback_rate: float | None
    negative_rating_rate: float | None
    correction_rate: float | None
    output_block_rate: float | None
    output_flag_rate: float | None
    fallback_rate: float | None
    error_rate: float | None
    latency_p95_ms: float | None
    drift: list[DriftStat] = Field(default_factory=list)


class OnlineEvalResult(_Frozen):
    """One evaluated window: per-version figures and the window's own counts."""

    app: str
    policy: str
    window_start: datetime
    window_end: datetime
    seed: int
    samples_per_version: int
    interactions: int
    unrouted: int
    input_block_rate: float | None
    other_apps: int
    out_of_window: int
    feedback: int
    feedback_used: int
    malformed: int
    reference: str
    versions: dict[str, VersionFigures]

    def metrics(self) -> dict[str, float]:
        """Flat metrics: ``v<version>.<figure>`` per version, ``window.<count>`` once.

        Unmeasured figures (None) are left out, never logged as 0.
        """
        counts = {"interactions", "unrouted", "input_block_rate", "other_apps", "feedback"}
        window = self.model_dump(include=counts | {"out_of_window", "malformed"})
        out = {f"window.{k}": float(v) for k, v in window.items() if v is not None}
        for version, fig in self.versions.items():
            data = fig.model_dump(exclude={"version", "routes", "drift"})
            for key, value in data.items():
                if value is not None:
                    out[f"v{version}.{key}"] = float(value)
            for arm, count in fig.routes.items():
                out[f"v{version}.routes.{arm}"] = float(count)
            for d in fig.drift:
                out[f"v{version}.drift.{d.feature}.psi"] = d.psi
                out[f"v{version}.drift.{d.feature}.ks_pvalue"] = d.ks_pvalue
                out[f"v{version}.drift.{d.feature}.drifted"] = float(d.drifted)
        return out
