"""``loopwright domain init|check``: start and validate a domain folder."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from loopwright.domain_folder import DOMAIN_NAME_PATTERN

domain_app = typer.Typer(
    help="Start (init) and validate (check) a domain folder: domain.yaml, data, suites.",
    no_args_is_help=True,
)


@domain_app.command("init")
def init(
    folder: Annotated[Path, typer.Argument(help="the folder to create (must not hold a domain)")],
    name: Annotated[
        str | None, typer.Option(help="the domain's name (default: the folder's name)")
    ] = None,
) -> None:
    """Write a commented domain skeleton that passes `loopwright domain check`."""
    from loopwright.domain_skeleton import DomainExistsError, init_domain_folder

    domain_name = name or folder.resolve().name.lower().replace("_", "-")
    if not re.fullmatch(DOMAIN_NAME_PATTERN, domain_name):
        typer.echo(
            f"domain name {domain_name!r} is not valid: 2-41 lower-case letters, digits and "
            "dashes, starting with a letter; give one with --name",
            err=True,
        )
        raise typer.Exit(1)
    try:
        files = init_domain_folder(folder, domain_name)
    except DomainExistsError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    for path in files:
        typer.echo(f"wrote {path}")
    typer.echo(f"next: edit {folder / 'domain.yaml'}, then `loopwright domain check {folder}`")


@domain_app.command("check")
def check(
    folder: Annotated[Path, typer.Argument(help="the domain folder")],
) -> None:
    """Validate a domain folder: every file it names, every suite and sample, its hooks.

    Exits 1 and lists every problem (file, line or field, what is valid) when any exists;
    warnings (valid, but the gate cannot judge yet) do not fail it.
    """
    from loopwright.domain_check import check_domain_folder

    report = check_domain_folder(folder)
    for line in report.checked:
        typer.echo(f"ok    {line}")
    for line in report.warnings:
        typer.echo(f"warn  {line}")
    for line in report.problems:
        typer.echo(f"error {line}")
    if report.problems:
        typer.echo(f"{folder}: {len(report.problems)} problem(s)", err=True)
        raise typer.Exit(1)
    typer.echo(f"{folder}: a valid domain ({report.spec.name if report.spec else '?'})")
