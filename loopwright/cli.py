"""The ``loopwright`` command line: stack lifecycle, config, and the main jobs."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, cast

import typer
import yaml

from loopwright.config import ConfigError, Settings, load_settings, masked_dump
from loopwright.domain_cli import domain_app
from loopwright.evaluation.cli import eval_app
from loopwright.gateway.cli import keys_app, serve
from loopwright.nightly import NightlyConfig
from loopwright.simulate import simulate

if TYPE_CHECKING:
    from loopwright.console import StageConsole
    from loopwright.demo import DemoOutcome
    from loopwright.registry import ModelKind
    from loopwright.release.registry_ops import RegistryOps

app = typer.Typer(
    name="loopwright",
    help="Keeps LLMs in production improving without ever getting worse.",
    no_args_is_help=True,
    add_completion=False,
)
config_app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(keys_app, name="keys")
app.add_typer(eval_app, name="eval")
app.add_typer(domain_app, name="domain")
app.command("serve")(serve)
app.command("simulate")(simulate)

ProfileOption = Annotated[
    str | None,
    typer.Option(
        "--profile",
        "-p",
        help="local, cluster, or a YAML path (default $LOOPWRIGHT_PROFILE or local)",
    ),
]


def _settings(ctx: typer.Context) -> Settings:
    settings: Settings = ctx.obj
    return settings


@app.callback()
def main(ctx: typer.Context, profile: ProfileOption = None, verbose: bool = False) -> None:
    """Load and validate the configuration once for every command."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        ctx.obj = load_settings(profile)
    except ConfigError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2) from None


@config_app.command("show")
def config_show(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of YAML")] = False,
) -> None:
    """Print the effective configuration with secrets masked."""
    data = masked_dump(_settings(ctx))
    if as_json:
        typer.echo(json.dumps(data, indent=2))
    else:
        typer.echo(yaml.safe_dump(data, sort_keys=False).rstrip())


def _print_status(settings: Settings) -> bool:
    from loopwright.stack import Stack

    gateway_started = (settings.run_path / "pids" / "gateway.json").exists()
    rows = Stack(settings, with_gateway=gateway_started).status()
    typer.echo(f"{'service':<12} {'health':<10} {'pid':>7} {'rss MiB':>8}  url")
    for row in rows:
        pid = str(row.pid) if row.pid else "-"
        typer.echo(f"{row.name:<12} {row.health:<10} {pid:>7} {row.rss_mb:>8.0f}  {row.url}")
    if rows:
        typer.echo(f"{'total':<12} {'':<10} {'':>7} {sum(r.rss_mb for r in rows):>8.0f}")
    return all(row.health == "healthy" for row in rows)


@app.command()
def up(ctx: typer.Context) -> None:
    """Start the local stack (idempotent: running services are left alone)."""
    from loopwright.stack import Stack, StackError

    settings = _settings(ctx)
    if not settings.managed_services:
        typer.echo(f"profile {settings.profile!r} manages no services; nothing to start")
        return
    try:
        Stack(settings).up()
    except StackError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(1) from None
    _print_status(settings)


@app.command()
def down(ctx: typer.Context) -> None:
    """Stop the local stack (succeeds when nothing is running)."""
    from loopwright.stack import Stack

    Stack(_settings(ctx)).down()
    typer.echo("stack stopped")


@app.command()
def status(ctx: typer.Context) -> None:
    """Show each service, its URL, PID, memory and health; exit 1 unless all are healthy."""
    if not _print_status(_settings(ctx)):
        raise typer.Exit(1)


@app.command()
def smoke(ctx: typer.Context) -> None:
    """Round trips through Prefect, MLflow registry, object store and Ray."""
    if not _run_smoke(_settings(ctx)):
        raise typer.Exit(1)


def _run_smoke(settings: Settings) -> bool:
    from loopwright.client_env import apply_client_env

    apply_client_env(settings)
    from flows.smoke import smoke_flow

    checks = smoke_flow(settings)
    for check in checks:
        mark = "ok  " if check.ok else "FAIL"
        typer.echo(f"  [{mark}] {check.name:<28} {check.seconds:6.2f}s  {check.detail}")
    typer.echo(
        f"  [ok  ] {'prefect flow run':<28}         flow 'smoke' on {settings.prefect_api_url}"
    )
    return all(check.ok for check in checks)


@app.command()
def bootstrap(
    ctx: typer.Context,
    force: Annotated[bool, typer.Option(help="train and register again even if v1 exists")] = False,
    tiny: Annotated[
        bool, typer.Option(help="tiny models and data (seconds; for smoke runs)")
    ] = False,
    seed: int = 0,
) -> None:
    """The domain's data and v1 of policy, guard and reward, registered as champion (example)."""
    _run_bootstrap(_settings(ctx), force=force, tiny=tiny, seed=seed)


def _run_bootstrap(settings: Settings, *, force: bool, tiny: bool, seed: int) -> None:
    from loopwright.client_env import apply_client_env
    from loopwright.domain import DomainError, domain_hook

    try:
        build = domain_hook(settings.domain, "bootstrap", "`loopwright bootstrap`")
    except DomainError as exc:
        typer.secho(f"{exc}; register your models with `loopwright register`", fg="red", err=True)
        raise typer.Exit(1) from None
    apply_client_env(settings)
    versions = build(settings, force=force, tiny=tiny, seed=seed)
    for kind, version in versions.items():
        typer.echo(f"  {kind:<7} models:/{version.name}/{version.version} (champion)")


@app.command()
def nightly(
    ctx: typer.Context,
    stage: Annotated[
        str | None,
        typer.Option(help="run one stage alone: ingest, check, curate, snapshot, reward, finetune"),
    ] = None,
    tiny: Annotated[
        bool | None,
        typer.Option("--tiny/--no-tiny", help="tiny training budgets (smoke runs)"),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="seeds training and splits")] = None,
    finetune_steps: Annotated[
        int | None,
        typer.Option(min=1, help="fine-tune for exactly this many steps"),
    ] = None,
    finetune_seconds: Annotated[
        float | None,
        typer.Option(
            min=1,
            help="fine-tune for this many seconds instead of a step count (the candidate "
            "then depends on the machine's speed)",
        ),
    ] = None,
) -> None:
    """Production log -> checked, versioned data -> reward refresh -> candidate (resumable).

    The profile's nightly section configures the run; each flag given overrides it.
    """
    from loopwright.client_env import apply_client_env
    from loopwright.nightly import NIGHTLY_STAGES, BatchRejected, NightlyStage

    if stage is not None and stage not in NIGHTLY_STAGES:
        typer.secho(
            f"unknown stage {stage!r}; valid: {', '.join(NIGHTLY_STAGES)}", fg="red", err=True
        )
        raise typer.Exit(2)
    if finetune_steps is not None and finetune_seconds is not None:
        typer.secho("give --finetune-steps or --finetune-seconds, not both", fg="red", err=True)
        raise typer.Exit(2)
    settings = _settings(ctx)
    apply_client_env(settings)
    from flows.nightly import nightly_flow, nightly_stage_flow

    config = nightly_config(
        settings.nightly,
        tiny=tiny,
        seed=seed,
        finetune_steps=finetune_steps,
        finetune_seconds=finetune_seconds,
    )
    try:
        if stage is not None:
            done = nightly_stage_flow(settings, cast(NightlyStage, stage), config)
            typer.echo(f"{stage}: {done}")
            return
        candidate = nightly_flow(settings, config)
    except BatchRejected as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(1) from None
    if candidate is None:
        typer.echo("no new data: nothing trained")
    else:
        typer.echo(f"candidate models:/{candidate.name}/{candidate.version} (no alias)")


def nightly_config(
    profile: NightlyConfig,
    *,
    tiny: bool | None = None,
    seed: int | None = None,
    finetune_steps: int | None = None,
    finetune_seconds: float | None = None,
) -> NightlyConfig:
    """The profile's nightly section with the ``loopwright nightly`` flags given on top.

    A flag left out (None) keeps the profile's value; ``finetune_seconds`` switches the
    budget to wall-clock time (``finetune_steps`` None). Validated like the profile.
    """
    flags: dict[str, Any] = {k: v for k, v in {"tiny": tiny, "seed": seed}.items() if v is not None}
    if finetune_steps is not None:
        flags["finetune_steps"] = finetune_steps
    if finetune_seconds is not None:
        flags.update(finetune_steps=None, finetune_seconds=finetune_seconds)
    return NightlyConfig.model_validate({**profile.model_dump(), **flags})


KindOption = Annotated[str, typer.Option(help="which registered model: policy, guard or reward")]


def _registry_ops(settings: Settings) -> RegistryOps:
    from loopwright.client_env import apply_client_env

    apply_client_env(settings)
    from mlflow import MlflowClient

    from loopwright.release.registry_ops import RegistryOps

    return RegistryOps(MlflowClient(), settings.app, settings.run_path / "locks")


def _model_name(settings: Settings, kind: str) -> str:
    if kind not in ("policy", "guard", "reward"):
        typer.secho(f"unknown kind {kind!r}; valid: policy, guard, reward", fg="red", err=True)
        raise typer.Exit(2)
    return settings.registered_model(kind)  # type: ignore[arg-type]


@app.command()
def register(
    ctx: typer.Context,
    folder: Annotated[
        Path, typer.Argument(help="the model folder to register (a policy may be a .gguf file)")
    ],
    kind: KindOption = "policy",
    champion: Annotated[
        bool, typer.Option(help="make it champion (only while the model has none)")
    ] = False,
    reason: Annotated[str, typer.Option(help="why (recorded with a promotion)")] = (
        "registered with loopwright register"
    ),
    label_map: Annotated[
        list[str] | None,
        typer.Option(
            help="guard from a classifier: MODEL_LABEL=benign|harmful|injection, once per "
            "model label (repeat the option)"
        ),
    ] = None,
    threshold: Annotated[
        list[str] | None,
        typer.Option(help="guard from a classifier: harmful=P or injection=P to block at"),
    ] = None,
) -> None:
    """Check a model folder loads and answers as the loop will use it, then register it.

    A guard may be any Hugging Face sequence classifier: --label-map says what its labels
    mean. A reward model may be any single-logit sequence classifier.
    """
    from loopwright.client_env import apply_client_env
    from loopwright.domain import load_domain
    from loopwright.register import (
        ModelFolderError,
        check_model_folder,
        gguf_to_folder,
        register_model,
        with_chat_template,
        with_guard_mapping,
    )

    settings = _settings(ctx)
    _model_name(settings, kind)
    model_kind = cast("ModelKind", kind)
    template_hook = getattr(load_domain(settings.domain), "chat_template", None)
    template = template_hook() if kind == "policy" and callable(template_hook) else None
    try:
        source = folder
        if kind == "policy" and folder.suffix == ".gguf":
            folder = gguf_to_folder(folder, settings.run_path / "register" / "gguf")
        if kind != "guard" and (label_map or threshold):
            raise ModelFolderError("--label-map and --threshold are for --kind guard")
        prepared = with_chat_template(folder, template, settings.run_path / "register")
        if kind == "guard":
            prepared = with_guard_mapping(
                folder,
                _pairs(label_map, "--label-map", str) if label_map else None,
                _pairs(threshold, "--threshold", float) if threshold else None,
                settings.run_path / "register",
            )
        typer.echo(f"loaded: {check_model_folder(prepared, model_kind)}")
        apply_client_env(settings)
        done = register_model(
            settings, prepared, model_kind, champion=champion, reason=reason, source=source
        )
    except ModelFolderError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(1) from None
    v = done.version
    state = "registered" if done.created else "already registered (same files)"
    typer.echo(f"{state}: models:/{v.name}/{v.version}; champion: {done.champion or 'none'}")


T = TypeVar("T")


def _pairs(items: list[str], option: str, cast_value: Callable[[str], T]) -> dict[str, T]:
    """``["a=1", "b=2"]`` as a dict; a malformed item names the option and the form."""
    from loopwright.register import ModelFolderError

    out: dict[str, T] = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            if not sep or not key:
                raise ValueError(item)
            out[key] = cast_value(value)
        except ValueError:
            raise ModelFolderError(f"{option} {item!r}: expected NAME=VALUE") from None
    return out


@app.command()
def release(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument(help="the registered policy version to release")],
) -> None:
    """Release a policy version: gate -> canary -> approval -> promotion (profile settings)."""
    from loopwright.client_env import apply_client_env

    settings = _settings(ctx)
    apply_client_env(settings)
    from flows.release import release_flow

    outcome = release_flow(settings, version, settings.release)
    typer.echo(f"release of version {version}: {outcome}")
    if outcome not in ("promoted", "canary serving"):
        raise typer.Exit(1)


@app.command()
def rollback(
    ctx: typer.Context,
    reason: Annotated[str, typer.Option(help="why (recorded in the audit history)")],
    to: Annotated[str | None, typer.Option(help="version to serve (default: @previous)")] = None,
    kind: KindOption = "policy",
    actor: Annotated[str | None, typer.Option(help="who (default: $USER)")] = None,
) -> None:
    """Move ``champion`` back (to ``previous`` or ``--to``); the gateway follows in seconds."""
    import getpass

    from loopwright.release.registry_ops import RegistryError

    settings = _settings(ctx)
    name = _model_name(settings, kind)
    try:
        result = _registry_ops(settings).rollback(
            name, to, actor=actor or getpass.getuser(), reason=reason
        )
    except RegistryError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(1) from None
    for move in result.moves:
        typer.echo(f"  {move.alias}: {move.from_version} -> {move.to_version}")
    now = result.moves[0].to_version if result.moves else "unchanged"
    typer.echo(f"rollback {result.status}: {name} champion is now {now}")


@app.command()
def history(ctx: typer.Context, kind: KindOption = "policy") -> None:
    """Every alias move of a registered model: when, who, why, from, to."""
    settings = _settings(ctx)
    moves = _registry_ops(settings).history(_model_name(settings, kind))
    typer.echo(
        f"{'#':>3} {'when (UTC)':<19} {'op':<15} {'alias':<15} {'from':>5} {'to':>5}  who: why"
    )
    for m in moves:
        when = m.at.strftime("%Y-%m-%d %H:%M:%S")
        typer.echo(
            f"{m.seq:>3} {when:<19} {m.op:<15} {m.alias:<15} {m.from_version or '-':>5} "
            f"{m.to_version or '-':>5}  {m.actor}: {m.reason}"
            + ("" if m.status == "done" else f" [{m.status}]")
        )


@app.command()
def deploy(
    ctx: typer.Context,
    cron: Annotated[str, typer.Option(help="schedule of the nightly loop (cron, UTC)")] = (
        "0 2 * * *"
    ),
) -> None:
    """Serve the Prefect deployments (nightly loop on a schedule, promote, rollback, ...)."""
    from loopwright.client_env import apply_client_env

    settings = _settings(ctx)
    apply_client_env(settings)
    from flows.deployments import serve_all

    serve_all(settings.profile, cron)


@app.command("online-eval")
def online_eval(
    ctx: typer.Context,
    lookback: Annotated[
        float | None, typer.Option(min=1, help="seconds of traffic to score (default: profile)")
    ] = None,
    samples: Annotated[
        int | None, typer.Option(min=1, help="samples per version and arm (default: profile)")
    ] = None,
) -> None:
    """Score the latest window of live traffic per policy version once (MLflow, tags, push)."""
    from loopwright.client_env import apply_client_env

    settings = _settings(ctx)
    apply_client_env(settings)
    from flows.online_eval import online_eval_flow

    update: dict[str, Any] = {}
    if lookback is not None:
        update["lookback_s"] = lookback
    if samples is not None:
        update["samples_per_version"] = samples
    result = online_eval_flow(settings, settings.online_eval.model_copy(update=update))
    typer.echo(
        f"{result.policy}: {result.interactions} interactions in "
        f"{result.window_start:%Y-%m-%d %H:%M:%S}..{result.window_end:%H:%M:%S} UTC, "
        f"{result.unrouted} unrouted"
    )
    for version, fig in result.versions.items():
        figures = {
            "harmful": fig.harmful_rate,
            "reward": fig.reward_mean,
            "ungrounded": fig.ungrounded_rate,
            "neg. ratings": fig.negative_rating_rate,
            "blocked": fig.output_block_rate,
        }
        shown = ", ".join(f"{k} {'-' if v is None else f'{v:.3f}'}" for k, v in figures.items())
        drifted = [d.feature for d in fig.drift if d.drifted]
        typer.echo(
            f"  v{version} ({'/'.join(fig.routes)}): {fig.sampled} of {fig.total} sampled; "
            f"{shown}; drift: {', '.join(drifted) or 'none'}"
        )


@app.command()
def demo(
    ctx: typer.Context,
    tiny: Annotated[bool, typer.Option(help="tiny models and traffic (a smoke run)")] = False,
    requests: Annotated[
        int | None, typer.Option(help="simulated requests per traffic phase (default by size)")
    ] = None,
    verbose: Annotated[
        bool,
        typer.Option(help="every library's log on the console too (no log file, no bars)"),
    ] = False,
    seed: Annotated[
        int, typer.Option(help="seeds the example data, every trainer and the simulated users")
    ] = 0,
    nights: Annotated[
        int, typer.Option(min=1, help="honest nights in a row before the poisoned one")
    ] = 1,
) -> None:
    """Start the stack (or reuse it) and run the whole loop on the embedded default.

    The console shows one line per stage and a progress bar for the running one; the full
    logs go to ``<run dir>/logs/demo-<time>.log``. Exits 0 when the loop behaved as
    designed (a candidate the gate or canary holds back included) and 1 when a step
    failed, with the step and the reason as the last lines.
    """
    from datetime import datetime

    from loopwright.console import StageConsole, capture_output

    settings = _settings(ctx)
    parent = ctx.parent.params if ctx.parent is not None else {}
    if verbose or parent.get("verbose"):
        ok = _demo_run(
            settings, StageConsole(sys.stdout, live=False), None, tiny, requests, seed, nights
        )
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        log_path = settings.run_path / "logs" / f"demo-{stamp}.log"
        with capture_output(log_path) as terminal:
            _demo_logging()
            ok = _demo_run(settings, StageConsole(terminal), log_path, tiny, requests, seed, nights)
    if not ok:
        raise typer.Exit(1)


def _demo_logging() -> None:
    """Logging for a demo whose stdout/stderr already go to its log file.

    The log file gets INFO from every library (the console shows only the demo's stages).
    Progress bars of libraries are turned off: redrawn bars make a log file unreadable and
    the console has its own. Set before those libraries are imported (environment), or read
    at call time (MLflow).
    """
    import os

    logging.getLogger().setLevel(logging.INFO)
    # One line per HTTP request (the simulated users, MLflow's client) would bury the rest.
    for name in ("httpx", "httpcore", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for var, value in (
        ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),  # transformers' "Loading weights" bars
        ("HF_DATASETS_DISABLE_PROGRESS_BARS", "1"),  # datasets' "Map" bars
        ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"),  # "Downloading artifacts"
        ("TQDM_DISABLE", "1"),  # any other tqdm bar (tqdm reads it per bar)
    ):
        os.environ.setdefault(var, value)


def _demo_checks(settings: Settings, out: DemoOutcome) -> None:
    """The demo's first two stages: the local stack up and healthy, then the smoke checks.

    Their detailed output (status table, smoke lines) is printed as by ``loopwright up`` and
    ``loopwright smoke``; the demo's stdout is its log file, so only the stage lines show.

    Raises:
        StackError: a service did not start.
    """
    from loopwright.stack import Stack

    log = logging.getLogger("loopwright.demo").info
    out.begin("local stack")
    Stack(settings).up()
    if _print_status(settings):
        out.add("local stack", "object store, MLflow, Prefect and Ray healthy", log)
    else:
        out.fail("local stack", "a service is not healthy (status table in the log)", log)
    out.begin("smoke round trips")
    if _run_smoke(settings):
        out.add("smoke round trips", "object store, MLflow registry, Ray, Prefect: all ok", log)
    else:
        out.fail("smoke round trips", "a round trip failed (see the log)", log)


def _demo_run(
    settings: Settings,
    ui: StageConsole,
    log_path: Path | None,
    tiny: bool,
    requests: int | None,
    seed: int = 0,
    nights: int = 1,
) -> bool:
    """The demo's stages shown on ``ui`` (a ``StageConsole``); True when none failed."""
    from loopwright import progress
    from loopwright.console import verdict_lines
    from loopwright.demo import DemoOutcome, format_table
    from loopwright.stack import StackError

    log = logging.getLogger("loopwright.demo")
    ui.text(f"loopwright demo ({'tiny' if tiny else 'full size'}) on {settings.profile} profile")
    if log_path is not None:
        ui.text(f"Full log: {log_path}", style="dim")
    pre = DemoOutcome()
    outcome: DemoOutcome | None = None
    with progress.reporting_to(ui):
        try:
            from loopwright.domain import domain_hook

            run_demo = domain_hook(settings.domain, "demo", "`loopwright demo`")
            _demo_checks(settings, pre)
            # Only when asked: a domain's demo hook written before ``nights`` keeps working.
            more = {"nights": nights} if nights > 1 else {}
            outcome = run_demo(settings, tiny=tiny, requests=requests, seed=seed, **more)
        except StackError as exc:
            pre.fail("local stack", str(exc), log.info)
        except Exception as exc:  # noqa: BLE001 - report the failed step, still print the URLs
            log.exception("the demo stopped")
            pre.crashed(ui.current or "demo", exc, log.info)
        finally:
            ui.close()
    if outcome is None:
        outcome = DemoOutcome(ok=False)
    outcome.steps[:0] = pre.steps
    outcome.records[:0] = pre.records
    outcome.ok = outcome.ok and pre.ok
    if outcome.table:
        ui.text()
        ui.text(f"Gate policy {outcome.gate_policy}")
        ui.text("v1 = old champion, v2 = candidate, on the same samples;")
        ui.text("delta = v2 - v1 with its paired bootstrap 95% CI")
        for line in format_table(outcome.table):
            ui.text(line)
    ui.text()
    ui.text(f"MLflow UI:  {settings.mlflow_tracking_uri}  (registry, runs, audit history)")
    ui.text(f"Prefect UI: {settings.prefect_api_url.removesuffix('/api')}  (flow runs)")
    ui.text(f"Gateway:    http://{settings.gateway.host}:{settings.gateway.port}/docs")
    ui.text(f"S3 store:   {settings.s3_endpoint_url} bucket {settings.object_store.bucket}")
    ui.text("The stack keeps running; `make down` (or `loopwright down`) stops it.")
    ui.text()
    for line in verdict_lines(outcome, log_path):
        failed = line.startswith(("Demo FAILED", "  step"))
        ui.text(line, style="bold red" if failed else None)
    log.info("demo %s", "ok" if outcome.ok else "FAILED")
    return outcome.ok


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
