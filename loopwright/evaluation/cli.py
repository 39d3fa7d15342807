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


def _registry_resources(
    settings: Any, reward: str | None, guard: str | None
) -> tuple[str | None, str | None, dict[str, str]]:
    """Reward model and guard for a registry model: the given ones, else the champions.

    Returns:
        ``(reward, guard, missing)``: a champion URI fills each one not given when it is
        registered; ``missing`` maps the kind of each champion that is not (``reward`` /
        ``guard``) to its URI, so the caller skips the suites that need it and says so.
    """
    from loopwright.evaluation.resources import champion_refs, registered

    refs = champion_refs(settings)
    missing: dict[str, str] = {}
    if reward is None:
        reward = refs["reward"] if registered(refs["reward"]) else None
        if reward is None:
            missing["reward"] = refs["reward"]
    if guard is None:
        guard = refs["guard"] if registered(refs["guard"]) else None
        if guard is None:
            missing["guard"] = refs["guard"]
    return reward, guard, missing


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
    suite_dir: Annotated[
        Path | None,
        typer.Option(help="Folder of suite YAML files (default: the configured domain's)."),
    ] = None,
    data_root: Annotated[
        Path | None,
        typer.Option(
            help="Root the suites' sample paths are under (default: "
            "<data_repo>/data/<the configured domain's data folder>)."
        ),
    ] = None,
    run_dir: Annotated[
        Path | None,
        typer.Option(help="Output folder (default <run_dir>/eval/<time>); reuse it to resume."),
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(help="Generation cache shared across runs (default <run_dir>/eval/cache)."),
    ] = None,
    ray_temp_dir: Annotated[
        Path | None,
        typer.Option(help="Ray session folder for a local Ray (default <run_dir>/eval/ray)."),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(help="Join this Ray cluster (default: the configured one, under loopwright)."),
    ] = None,
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
        str | None,
        typer.Option(
            help="Log the evaluation to this MLflow tracking server (default: the configured "
            "one, under loopwright)."
        ),
    ] = None,
    reward_model: Annotated[
        str | None,
        typer.Option(
            help="Reward model folder or models:/ URI (helpfulness scorers); for a models:/ "
            "--model, default models:/<app>-reward@champion when registered."
        ),
    ] = None,
    guard_model: Annotated[
        str | None,
        typer.Option(
            help="Guard folder or models:/ URI (guard_safe scorer); for a models:/ --model, "
            "default models:/<app>-guard@champion when registered."
        ),
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

    from loopwright.config import Settings, load_settings
    from loopwright.domain import load_domain
    from loopwright.evaluation.api import evaluate
    from loopwright.evaluation.engine import EngineConfig
    from loopwright.evaluation.resources import ResourceError, load_resources
    from loopwright.evaluation.scorers import ScorerError
    from loopwright.evaluation.suites import SuiteError
    from loopwright.evaluation.targets import TargetError
    from models.generation import DecodingParams

    # Under ``loopwright`` the main callback put the settings in the context: the
    # configured stack (MLflow, Ray, registry) is then the default. Mounted elsewhere
    # (``eval_app`` alone), only the domain's folders come from the configuration.
    under_main = isinstance(ctx.obj, Settings)
    settings: Settings = ctx.obj if under_main else load_settings()
    if suite_dir is None or data_root is None:
        domain = load_domain(settings.domain)
        suite_dir = suite_dir or domain.suite_dir()
        data_root = data_root or settings.data_repo.resolve() / "data" / domain.data_folder()
    eval_root = settings.run_path / "eval"
    if under_main:
        from loopwright.client_env import apply_client_env

        apply_client_env(settings)
        mlflow_uri = mlflow_uri or settings.mlflow_tracking_uri
        if executor != "local":
            ray_address = ray_address or settings.ray_address
    suites: list[str] | str = "all" if not suite or suite == ["all"] else suite
    run_dir = run_dir or eval_root / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    try:
        engine = EngineConfig(
            executor=executor,  # type: ignore[arg-type]
            workers=workers,
            batch_size=batch_size,
            threads_per_worker=threads,
            ray_address=ray_address,
            ray_temp_dir=ray_temp_dir or eval_root / "ray",
        )
        decoding = DecodingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    bar, update = _progress_bar()
    try:
        if model.startswith("models:/"):
            reward_model, guard_model, missing = _registry_resources(
                settings, reward_model, guard_model
            )
            for kind, uri in missing.items():
                typer.echo(
                    f"note: {uri} is not in the registry: suites that need a {kind} model are "
                    f"skipped (give --{kind}-model to score them)",
                    err=True,
                )
            skip_unavailable = skip_unavailable or bool(missing)
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
                cache_dir=cache_dir or eval_root / "cache",
                engine=engine,
                decoding=decoding,
                resources=resources,
                progress=update,
                seed=seed,
                mlflow_tracking_uri=mlflow_uri,
                mlflow_experiment=f"{settings.app}-eval",
                skip_unavailable=skip_unavailable,
            )
    except (SuiteError, TargetError, ResourceError, ScorerError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    for name, why in (result.summary.get("skipped_suites") or {}).items():
        typer.echo(f"skipped suite {name}: {why}", err=True)
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
