"""Serve pinned registered policy versions behind the gateway's full control stack.

The offline gate judges a candidate twice: raw, and as users would meet it, behind auth,
input rails with the guard, grounding, output rails and the fallbacks. For the second view
each version (the candidate, and the champion for the paired baseline) is served by its own
in-process gateway on a free loopback port, pinned to ``models:/<app>-policy/<version>``
(:attr:`loopwright.gateway.settings.RoutingSettings.pinned_version`), so no registry alias
is read or moved while evaluating.

Everything a gateway writes lives under a temporary run directory (API key store, id
secret, review queue) that is removed afterwards, except the interaction log, which goes to
a local folder the caller names (kept as evidence) and is never shipped to the object store.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import socket
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loopwright.config import Settings
from loopwright.evaluation.targets import EndpointTarget, folder_content_hash
from loopwright.gateway.settings import GatewaySettings, with_domain_defaults

logger = logging.getLogger(__name__)

EVAL_TENANT = "loopwright-eval"
"""Tenant of the evaluation's API key; every interaction the eval gateways log carries it."""

# Generation during evaluation may queue behind other work on a shared CPU; a production
# timeout would answer with the model-error fallback, which reads as a refusal and would
# inflate harmlessness. The gate judges what the controls decide, not latency.
_EVAL_TIMEOUT_S = 600.0


class GatewayViewError(RuntimeError):
    """A pinned gateway cannot be built or started; the message says which version and why."""


@dataclass(frozen=True)
class GatewayTarget(EndpointTarget):
    """An endpoint target whose cache identity is what it serves, not where.

    The port of an evaluation gateway is random and reused by the OS over time, so the
    endpoint URL cannot key the shared generation cache: ``identity`` hashes the policy
    folder's content, the guard's, and every gateway setting that can change an answer.

    Attributes:
        identity: hex digest of what serves (see :func:`served_identity`).

    """

    identity: str = field(default="", kw_only=True)

    @property
    def model_id(self) -> str:
        """Cache identity: ``gateway:<digest>`` (same stack, same answers, wherever served)."""
        return f"gateway:{self.identity}"


def parse_version(uri: str, model_name: str) -> str:
    """The version of ``models:/<model_name>/<version>``.

    Raises:
        GatewayViewError: any other form (an alias, a folder, another model): the gateway
            view pins a registered version of the gateway's own policy model.

    """
    prefix = f"models:/{model_name}/"
    version = uri[len(prefix) :] if uri.startswith(prefix) else ""
    if not version.isdigit():
        raise GatewayViewError(
            f"the gateway view needs a pinned registered version "
            f"'models:/{model_name}/<version>', got {uri!r}"
        )
    return version


def eval_gateway_settings(
    settings: Settings, version: str, *, guard_dir: Path | None, log_dir: Path
) -> GatewaySettings:
    """The production gateway settings, changed only where evaluation needs it.

    Content controls (validation, input rails, augmentation, output rails, fallbacks,
    escalation, auth) stay as production serves them. Changed: routing pins ``version``;
    the backend is the real model (``hf``) even when the profile serves a stub; rate
    limiting is off (a traffic control, whose 429s would count as generation errors); the
    inference timeout is long; the guard is the folder resolved once for both arms; the
    log is never shipped and is spooled under ``log_dir``.
    """
    gw = with_domain_defaults(
        settings.gateway.model_copy(update={"domain": settings.gateway.domain or settings.domain})
    )
    return gw.model_copy(
        update={
            "host": "127.0.0.1",
            "rate_limit": gw.rate_limit.model_copy(update={"enabled": False}),
            "backend": gw.backend.model_copy(update={"kind": "hf"}),
            "routing": gw.routing.model_copy(
                update={
                    "source": "mlflow",
                    "app": settings.app,
                    "tracking_uri": settings.mlflow_tracking_uri,
                    "pinned_version": version,
                    # Absolute: shared by runs (a version downloads once), apart from the
                    # production gateway's cache so the two never write the same folder.
                    "model_cache_dir": str(settings.run_path / "eval-gateway" / "models"),
                    "timeout_s": max(gw.routing.timeout_s, _EVAL_TIMEOUT_S),
                }
            ),
            "encoders": gw.encoders.model_copy(
                update={"guard_dir": str(guard_dir) if guard_dir is not None else None}
            ),
            # Evaluation traffic must never reach the production interaction log: the
            # nightly loop trains on it and canary analysis counts it. Marking records would
            # leave every reader to filter them; a separate, unshipped spool cannot leak.
            "log": gw.log.model_copy(
                update={"store_uri": None, "spool_dir": str(log_dir / f"v{version}")}
            ),
        }
    )


def served_identity(gw: GatewaySettings, policy_folder: Path, guard_folder: Path | None) -> str:
    """A digest of everything that decides a pinned gateway's answers.

    Args:
        gw: the evaluation gateway's settings.
        policy_folder: the downloaded policy version.
        guard_folder: the guard folder, or None (rules only).

    """
    answer_settings = gw.model_dump(
        mode="json",
        include={
            "validation",
            "input_rails",
            "augment",
            "backend",
            "output_rails",
            "fallback",
            "encoders",
        },
        exclude={"encoders": {"guard_dir", "threads", "max_batch"}},
    )
    payload = {
        "policy": folder_content_hash(policy_folder),
        "guard": folder_content_hash(guard_folder) if guard_folder is not None else None,
        "settings": answer_settings,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def _resolve_guard(settings: Settings, cache: Path) -> Path | None:
    """Download ``<app>-guard@champion`` once for both arms; None runs rules only.

    Production starts rules-only when no guard is registered, so the evaluation mirrors it.
    """
    from loopwright.gateway.components import download_registry_folder

    try:
        return download_registry_folder(
            settings.mlflow_tracking_uri, settings.registered_model("guard"), "champion", cache
        )
    except Exception as exc:  # noqa: BLE001 - same fallback as the production gateway
        logger.warning("no guard champion (%s): the gateway view runs the rules only", exc)
        return None


class _LoopbackServer:
    """uvicorn serving an app on a socket bound to a free loopback port, in a thread.

    Binding the socket first (port 0) and handing it to uvicorn leaves no window in which
    another process could take the port.
    """

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        config = uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="off", timeout_keep_alive=30
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def start(self, timeout_s: float = 30.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise GatewayViewError(f"the evaluation gateway on port {self.port} did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


@contextlib.contextmanager
def pinned_gateways(
    settings: Settings, versions: Sequence[str], *, log_dir: Path
) -> Iterator[dict[str, GatewayTarget]]:
    """Serve each policy version pinned behind the full control stack; yield their targets.

    One gateway per version, in this process, each on a free loopback port with auth on and
    an API key created for the evaluation (tenant :data:`EVAL_TENANT`) in a temporary key
    store. The guard (``<app>-guard@champion``, resolved once) and the knowledge base are
    shared by all of them. Everything is stopped and the temporary state removed on exit.

    Args:
        settings: the main config (its ``gateway`` section is what production serves).
        versions: registered versions of ``<app>-policy`` (duplicates served once).
        log_dir: where the gateways spool their interaction logs (never shipped).

    Yields:
        version -> an endpoint target (with its API key) for
        :func:`loopwright.evaluation.api.evaluate`.

    Raises:
        GatewayViewError: a version cannot be loaded or a server does not start.

    """
    from loopwright.gateway.app import create_app
    from loopwright.gateway.components import load_components
    from loopwright.gateway.service import Gateway

    name = settings.registered_model("policy")
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lw-eval-gateway-")))
        cache = settings.run_path / "eval-gateway" / "models"
        guard_dir = _resolve_guard(settings, cache)
        components = None
        targets: dict[str, GatewayTarget] = {}
        for version in dict.fromkeys(versions):
            gw = eval_gateway_settings(settings, version, guard_dir=guard_dir, log_dir=log_dir)
            if components is None:  # one guard, embedder and KB for every arm
                components = load_components(gw, tmp, store=None)
            gateway = Gateway(gw, tmp / f"v{version}", **components.as_kwargs())
            try:
                gateway.start()
            except Exception as exc:
                gateway.stop()
                raise GatewayViewError(f"cannot serve {name} v{version}: {exc}") from exc
            stack.callback(gateway.stop)
            _, key = gateway.keys.create(EVAL_TENANT, "user", name="offline-gate")
            server = _LoopbackServer(create_app(gateway, manage_lifecycle=False))
            server.start()
            stack.callback(server.stop)  # runs before gateway.stop (LIFO)
            folder = Path(gw.routing.model_cache_dir) / name / version
            targets[version] = GatewayTarget(
                uri=f"gateway+models:/{name}/{version}",
                base_url=f"http://127.0.0.1:{server.port}/v1",
                model=name,
                api_key=key,
                timeout_s=_EVAL_TIMEOUT_S,
                identity=served_identity(gw, folder, guard_dir),
                # Enough requests in flight to fill the gateway's micro-batches twice over:
                # with fewer, each generate call runs half empty and the view takes minutes.
                concurrency=2 * gw.backend.max_batch,
            )
            logger.info("evaluation serves %s v%s pinned on port %d", name, version, server.port)
        yield targets
