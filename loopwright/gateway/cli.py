"""CLI pieces the main ``loopwright`` app mounts: ``serve`` and ``keys create|list|revoke``.

Mount with ``app.command("serve")(serve)`` and ``app.add_typer(keys_app, name="keys")``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from loopwright.domain import DomainError
from loopwright.gateway.components import SettingsError, load_settings
from loopwright.gateway.keys import ROLES, KeyStore, KeyStoreError
from loopwright.gateway.settings import GatewaySettings, with_domain_defaults

logger = logging.getLogger(__name__)

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", help="YAML with gateway settings (or a profile with `gateway:`)"),
]
RunDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--run-dir",
        help="Run directory (keys, spool, ...); default the configured one (what serve uses)",
    ),
]

keys_app = typer.Typer(
    help="Manage gateway API keys (stored hashed under the run directory).", no_args_is_help=True
)


def _store(ctx: typer.Context, config: Path | None, run_dir: Path | None) -> KeyStore:
    """The key store ``serve`` reads: under the main CLI, the configured run directory's."""
    main = ctx.find_root().obj
    try:
        if config is None and getattr(main, "gateway", None) is not None:
            settings = main.gateway
        else:
            settings = load_settings(config)
    except SettingsError as exc:
        raise typer.BadParameter(str(exc)) from exc
    root = run_dir or Path(getattr(main, "run_path", None) or ".loopwright")
    return KeyStore(root / settings.auth.keys_file)


@keys_app.command("create")
def keys_create(
    ctx: typer.Context,
    tenant: Annotated[str, typer.Option(help="Tenant whose data the key may see")],
    role: Annotated[str, typer.Option(help=f"One of: {', '.join(ROLES)}")] = "user",
    name: Annotated[str, typer.Option(help="A label for the key")] = "",
    requests_per_s: Annotated[float | None, typer.Option(help="Per-key rate override")] = None,
    config: ConfigOpt = None,
    run_dir: RunDirOpt = None,
) -> None:
    """Create a key and print it once (only its hash is stored)."""
    store = _store(ctx, config, run_dir)
    try:
        info, key = store.create(tenant, role, name, requests_per_s)
    except KeyStoreError as exc:
        raise typer.BadParameter(str(exc)) from exc
    finally:
        store.close()
    typer.echo(f"key_id: {info.key_id}  tenant: {info.tenant}  role: {info.role}")
    typer.echo(f"key: {key}")
    typer.echo("Store the key now: it cannot be shown again.", err=True)


@keys_app.command("list")
def keys_list(
    ctx: typer.Context,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys")] = None,
    config: ConfigOpt = None,
    run_dir: RunDirOpt = None,
) -> None:
    """List keys (never their secrets)."""
    store = _store(ctx, config, run_dir)
    try:
        keys = store.list(tenant=tenant)
    finally:
        store.close()
    typer.echo(f"{'key_id':<14}{'tenant':<16}{'role':<10}{'name':<16}{'created':<27}revoked")
    for k in keys:
        typer.echo(
            f"{k.key_id:<14}{k.tenant:<16}{k.role:<10}{k.name:<16}{k.created_at:<27}"
            f"{k.revoked_at or '-'}"
        )


@keys_app.command("revoke")
def keys_revoke(
    ctx: typer.Context,
    key_id: Annotated[str, typer.Argument(help="The key id shown by `keys list`")],
    config: ConfigOpt = None,
    run_dir: RunDirOpt = None,
) -> None:
    """Revoke a key; requests with it get 401 from then on."""
    store = _store(ctx, config, run_dir)
    try:
        info = store.revoke(key_id)
    except KeyStoreError as exc:
        raise typer.BadParameter(str(exc)) from exc
    finally:
        store.close()
    typer.echo(f"revoked {info.key_id} at {info.revoked_at}")


def resolve_settings(main: Any, config: Path | None) -> tuple[GatewaySettings, Path, Any]:
    """Gateway settings, run directory and object store for ``serve``.

    ``main`` is the main loopwright config (``loopwright.config.Settings``) when the command
    runs under the main CLI, else None. Gateway settings come from ``--config`` when given,
    else from ``main.gateway`` when the main config carries them, else defaults; the
    application name, MLflow URI and object store are filled from ``main``, the system
    prompt from the domain when the settings leave it unset.
    """
    try:
        if config is not None or main is None or getattr(main, "gateway", None) is None:
            settings = load_settings(config)
        else:
            settings = main.gateway
    except SettingsError as exc:
        raise typer.BadParameter(str(exc)) from exc
    run_dir = Path(
        getattr(main, "run_path", None) or getattr(main, "run_dir", None) or ".loopwright"
    )
    store = None
    if main is not None:
        routing = settings.routing.model_copy(
            update={
                "app": main.app,
                "tracking_uri": settings.routing.tracking_uri or main.mlflow_tracking_uri,
            }
        )
        domain = settings.domain or getattr(main, "domain", None)
        alerts = settings.alerts.model_copy(
            update={"prefect_api_url": settings.alerts.prefect_api_url or main.prefect_api_url}
        )
        settings = settings.model_copy(
            update={"routing": routing, "domain": domain, "alerts": alerts}
        )
    try:
        settings = with_domain_defaults(settings)
    except DomainError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if settings.log.store_uri:
        from loopwright.storage import ObjectStore

        store = ObjectStore.from_settings(main) if main is not None else ObjectStore()
    return settings, run_dir, store


def serve(
    ctx: typer.Context,
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="Bind address (default from settings)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default from settings)")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
) -> None:
    """Serve the gateway with uvicorn until interrupted."""
    import uvicorn

    from loopwright.gateway.app import build_app
    from loopwright.gateway.components import load_components

    settings, run_dir, store = resolve_settings(ctx.obj, config)
    components = load_components(settings, run_dir, store)

    def factory() -> object:
        return build_app(settings, run_dir, **components.as_kwargs())

    uvicorn.run(
        factory,
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        log_level=log_level,
        access_log=False,
    )
