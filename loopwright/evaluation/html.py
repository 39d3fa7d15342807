"""A self-contained HTML report: tables and matplotlib plots embedded as PNG (base64).

One file, no external assets, so it can be logged to MLflow and opened from its UI.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from typing import Any

from loopwright.evaluation.report import ALL, MetricSummary, PairedMetric


def _fmt(x: float) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _metric_plot(metrics: Sequence[MetricSummary], baseline: Sequence[MetricSummary] | None) -> str:
    """Horizontal bars with 95% CI whiskers per dimension/metric (slice ``all``)."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    rows = [m for m in metrics if m.slice == ALL and m.n > 0]
    base = {(m.dimension, m.metric): m for m in baseline or [] if m.slice == ALL and m.n > 0}
    fig = Figure(figsize=(7, 0.35 * max(len(rows), 1) + 1))
    ax = fig.add_subplot()
    labels = [f"{m.dimension} · {m.metric}" for m in rows]
    ys = list(range(len(rows)))
    ax.errorbar(
        [m.value for m in rows],
        [y + 0.15 for y in ys],
        xerr=[[m.value - m.ci_low for m in rows], [m.ci_high - m.value for m in rows]],
        fmt="o",
        color="tab:blue",
        label="candidate",
    )
    bys = [
        (y, base[(m.dimension, m.metric)])
        for y, m in zip(ys, rows, strict=True)
        if (m.dimension, m.metric) in base
    ]
    if bys:
        ax.errorbar(
            [b.value for _, b in bys],
            [y - 0.15 for y, _ in bys],
            xerr=[[b.value - b.ci_low for _, b in bys], [b.ci_high - b.value for _, b in bys]],
            fmt="s",
            color="tab:gray",
            label="baseline",
        )
        ax.legend(loc="lower right")
    ax.set_yticks(ys, labels)
    ax.set_xlim(-0.02, 1.02)
    ax.invert_yaxis()
    ax.set_xlabel("value (95% bootstrap CI)")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def _delta_plot(comparison: Sequence[PairedMetric]) -> str:
    """Forest plot of paired deltas, oriented so right is better."""
    from matplotlib.figure import Figure

    rows = [p for p in comparison if p.slice == ALL and p.n > 0]
    fig = Figure(figsize=(7, 0.35 * max(len(rows), 1) + 1))
    ax = fig.add_subplot()
    ys = list(range(len(rows)))
    for y, p in zip(ys, rows, strict=True):
        sign = 1.0 if p.direction == "higher" else -1.0
        lo, hi = sorted((sign * p.ci_low, sign * p.ci_high))
        colour = "tab:red" if hi < 0 else ("tab:green" if lo > 0 else "tab:gray")
        ax.plot([lo, hi], [y, y], color=colour)
        ax.plot([sign * p.delta], [y], "o", color=colour)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(ys, [f"{p.dimension} · {p.metric}" for p in rows])
    ax.invert_yaxis()
    ax.set_xlabel("improvement of candidate over baseline (paired 95% CI; right is better)")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def render_html(
    *,
    title: str,
    model: dict[str, Any],
    baseline: dict[str, Any] | None,
    metrics: Sequence[MetricSummary],
    baseline_metrics: Sequence[MetricSummary] | None,
    comparison: Sequence[PairedMetric] | None,
    counts: dict[str, Any],
) -> str:
    """Render the report page as one HTML string."""
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{e(title)}</title><style>body{{font-family:sans-serif;margin:2em}}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
        "padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
        ".bad{color:#b00}.good{color:#070}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f"<p>Model: <code>{e(str(model.get('uri')))}</code> ({e(str(model.get('id')))})</p>",
    ]
    if baseline:
        parts.append(f"<p>Baseline: <code>{e(str(baseline.get('uri')))}</code></p>")
    parts.append("<p>" + ", ".join(f"{e(k)}: {e(str(v))}" for k, v in counts.items()) + "</p>")
    parts.append(
        f"<img alt='metrics' src='data:image/png;base64,{_metric_plot(metrics, baseline_metrics)}'>"
    )
    parts.append(
        "<h2>Metrics</h2><table><tr><th>dimension / suite</th><th>metric</th>"
        "<th>slice</th><th>value</th><th>95% CI</th><th>n</th><th>errors</th>"
        "<th>scoring errors</th><th>n/a</th><th>better</th></tr>"
    )
    for m in metrics:
        parts.append(
            f"<tr><td>{e(m.dimension)} / {e(m.suite)}</td><td>{e(m.metric)}"
            f"{' (primary)' if m.primary else ''}</td><td>{e(m.slice)}</td>"
            f"<td>{_fmt(m.value)}</td><td>[{_fmt(m.ci_low)}, {_fmt(m.ci_high)}]</td>"
            f"<td>{m.n}</td><td>{m.errors}</td><td>{m.score_errors}</td>"
            f"<td>{m.not_applicable}</td><td>{e(m.direction)}</td></tr>"
        )
    parts.append("</table>")
    if comparison:
        parts.append("<h2>Candidate versus baseline (paired)</h2>")
        parts.append(f"<img alt='deltas' src='data:image/png;base64,{_delta_plot(comparison)}'>")
        parts.append(
            "<table><tr><th>dimension</th><th>metric</th><th>slice</th>"
            "<th>candidate</th><th>baseline</th><th>delta</th><th>95% CI</th>"
            "<th>win rate</th><th>n</th></tr>"
        )
        for p in comparison:
            sign = 1.0 if p.direction == "higher" else -1.0
            hi = max(sign * p.ci_low, sign * p.ci_high)
            lo = min(sign * p.ci_low, sign * p.ci_high)
            cls = "bad" if hi < 0 else ("good" if lo > 0 else "")
            parts.append(
                f"<tr class='{cls}'><td>{e(p.dimension)}</td><td>{e(p.metric)}</td>"
                f"<td>{e(p.slice)}</td><td>{_fmt(p.candidate)}</td><td>{_fmt(p.baseline)}</td>"
                f"<td>{_fmt(p.delta)}</td><td>[{_fmt(p.ci_low)}, {_fmt(p.ci_high)}]</td>"
                f"<td>{_fmt(p.win_rate)}</td><td>{p.n}</td></tr>"
            )
        parts.append("</table><h2>Worst regressed samples</h2>")
        for p in comparison:
            if p.slice != ALL or not p.worst:
                continue
            parts.append(
                f"<h3>{e(p.dimension)} · {e(p.metric)}</h3><table><tr><th>sample</th>"
                "<th>prompt</th><th>candidate</th><th>baseline</th></tr>"
            )
            for w in p.worst:
                parts.append(
                    f"<tr><td>{e(w['sample_id'])}</td><td>{e(str(w['prompt']))}</td>"
                    f"<td>{e(str(w['candidate_response']))} ({_fmt(w['candidate'])})</td>"
                    f"<td>{e(str(w['baseline_response']))} ({_fmt(w['baseline'])})</td></tr>"
                )
            parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)
