"""``loopwright eval``: a typer sub-app (mount with ``app.add_typer(eval_app, name="eval")``).

Heavy imports (torch, Ray) happen inside the command, so mounting this app keeps the main
CLI fast.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer

logger = logging.getLogger(__name__)

eval_app = typer.Typer(
    help="Evaluate a model on suites (per dimension and slice, with 95% CIs).",
    add_completion=False,
)


def _progress_bar() -> tuple[Any, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=False,
    )
    tasks: dict[str, Any] = {}

    def update(label: str, done: int, total: int) -> None:
        if label not in tasks:
            tasks[label] = bar.add_task(label, total=max(total, 1))
        bar.update(tasks[label], completed=done if total else 1, total=max(total, 1))

    return bar, update


@eval_app.callback(invoke_without_command=True)
def eval_command(
    ctx: typer.Context,
    model: Annotated[
        str | None,
        typer.Option(help="Model folder, models:/NAME@ALIAS, or http://HOST:PORT/v1#MODEL."),
    ] = None,
    suite: Annotated[
        list[str] | None, typer.Option(help="Suite name (repeatable) or 'all'.")
    ] = None,
    baseline: Annotated[
        str | None, typer.Option(help="Baseline model (same forms) for a paired comparison.")
    ] = None,
    suite_dir: Annotated[Path, typer.Option(help="Folder of suite YAML files.")] = Path(
        "models/helpdesk/suites"
    ),
    data_root: Annotated[Path, typer.Option(help="Root the suites' sample paths are under.")] = (
        Path("data")
    ),
    run_dir: Annotated[
        Path | None,
        typer.Option(help="Output folder (default .loopwright/eval/<time>); reuse it to resume."),
    ] = None,
    cache_dir: Annotated[Path, typer.Option(help="Generation cache shared across runs.")] = Path(
        ".loopwright/eval/cache"
    ),
    ray_temp_dir: Annotated[Path, typer.Option(help="Ray session folder for a local Ray.")] = (
        Path(".loopwright/ray")
    ),
    ray_address: Annotated[str | None, typer.Option(help="Join this Ray cluster.")] = None,
    executor: Annotated[
        str,
        typer.Option(help="ray (actor pool), local, or auto (ray unless one worker and no Ray)."),
    ] = "auto",
    workers: Annotated[int, typer.Option(help="Generation actors.")] = 2,
    batch_size: Annotated[int, typer.Option(help="Prompts per generate call.")] = 32,
    threads: Annotated[int, typer.Option(help="torch threads per CPU actor.")] = 1,
    max_new_tokens: Annotated[int, typer.Option(help="Default max new tokens.")] = 48,
    temperature: Annotated[float, typer.Option(help="Default temperature (0 = greedy).")] = 0.0,
    seed: Annotated[int, typer.Option(help="Sampling and bootstrap seed.")] = 0,
    mlflow_uri: Annotated[
        str | None, typer.Option(help="Log the evaluation to this MLflow tracking server.")
    ] = None,
    reward_model: Annotated[
        str | None, typer.Option(help="Reward model folder or models:/ URI (helpfulness scorers).")
    ] = None,
    guard_model: Annotated[
        str | None, typer.Option(help="Guard folder or models:/ URI (guard_safe scorer).")
    ] = None,
    skip_unavailable: Annotated[
        bool,
        typer.Option(
            "--skip-unavailable",
            help="Skip (and list) suites whose reward/guard is not given instead of failing.",
        ),
    ] = False,
    list_scorers: Annotated[
        bool, typer.Option("--list-scorers", help="List the registered scorers and exit.")
    ] = False,
) -> None:
    """Evaluate MODEL on suites; write summary.json, report.json, report.html, samples."""
    if ctx.invoked_subcommand is not None:
        return
    if list_scorers:
        from loopwright.evaluation.scorers import list_scorers as _list

        for info in _list():
            typer.echo(f"{info.name:18} {info.kind:9} {info.direction:6} {info.summary}")
        raise typer.Exit(0)
    if model is None:
        raise typer.BadParameter("--model is required", param_hint="--model")
    from datetime import UTC, datetime

    from loopwright.evaluation.api import evaluate
    from loopwright.evaluation.engine import EngineConfig
    from loopwright.evaluation.resources import ResourceError, load_resources
    from loopwright.evaluation.scorers import ScorerError
    from loopwright.evaluation.suites import SuiteError
    from loopwright.evaluation.targets import TargetError
    from models.generation import DecodingParams

    suites: list[str] | str = "all" if not suite or suite == ["all"] else suite
    run_dir = run_dir or Path(".loopwright/eval") / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    try:
        engine = EngineConfig(
            executor=executor,  # type: ignore[arg-type]
            workers=workers,
            batch_size=batch_size,
            threads_per_worker=threads,
            ray_address=ray_address,
            ray_temp_dir=ray_temp_dir,
        )
        decoding = DecodingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    bar, update = _progress_bar()
    try:
        resources = load_resources(
            reward=reward_model, guard=guard_model, download_root=run_dir / "models"
        )
        with bar:
            result = evaluate(
                model,
                suites,
                baseline,
                suite_dir=suite_dir,
                data_root=data_root,
                run_dir=run_dir,
                cache_dir=cache_dir,
                engine=engine,
                decoding=decoding,
                resources=resources,
                progress=update,
                seed=seed,
                mlflow_tracking_uri=mlflow_uri,
                skip_unavailable=skip_unavailable,
            )
    except (SuiteError, TargetError, ResourceError, ScorerError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    for m in result.metrics:
        if m.slice != "all":
            continue
        value = "n/a" if m.n == 0 else f"{m.value:.3f} [{m.ci_low:.3f}, {m.ci_high:.3f}]"
        typer.echo(f"{m.dimension:14} {m.metric:22} {value:28} n={m.n} errors={m.errors}")
    for p in result.comparison or []:
        if p.slice == "all" and p.n:
            typer.echo(
                f"delta {p.dimension:14} {p.metric:22} {p.delta:+.3f} "
                f"[{p.ci_low:+.3f}, {p.ci_high:+.3f}] win={p.win_rate:.2f}"
            )
    typer.echo(json.dumps({k: str(v) for k, v in result.paths.items()}, indent=1))
    if result.mlflow_run_id:
        typer.echo(f"mlflow run: {result.mlflow_run_id}")
