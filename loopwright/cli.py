"""The ``loopwright`` command line: stack lifecycle, config, and the main jobs."""

from __future__ import annotations

import json
import logging
import sys
from typing import Annotated

import typer
import yaml

from loopwright.config import ConfigError, Settings, load_settings, masked_dump

app = typer.Typer(
    name="loopwright",
    help="Keeps LLMs in production improving without ever getting worse.",
    no_args_is_help=True,
    add_completion=False,
)
config_app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")

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

    rows = Stack(settings).status()
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
def demo(ctx: typer.Context) -> None:
    """Start the stack (or reuse it) and run the main job as far as it exists today."""
    from loopwright.stack import Stack, StackError

    settings = _settings(ctx)
    typer.echo("== loopwright demo ==")
    typer.echo("1. local stack")
    try:
        Stack(settings).up()
    except StackError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(1) from None
    _print_status(settings)
    typer.echo("2. smoke round trips")
    ok = _run_smoke(settings)
    typer.echo("")
    typer.echo("Summary")
    typer.echo(f"  smoke:      {'all round trips passed' if ok else 'FAILED'}")
    typer.echo(f"  MLflow UI:  {settings.mlflow_tracking_uri}")
    typer.echo(f"  Prefect UI: {settings.prefect_api_url.removesuffix('/api')}")
    typer.echo(f"  S3 store:   {settings.s3_endpoint_url} bucket {settings.object_store.bucket}")
    typer.echo(f"  Ray:        {settings.ray_address}")
    typer.echo("  The stack keeps running; `make down` (or `loopwright down`) stops it.")
    if not ok:
        raise typer.Exit(1)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
