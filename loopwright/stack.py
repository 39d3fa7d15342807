"""The local stack: start, stop and report the embedded default's services.

Services are separate processes (SeaweedFS as the S3-API object store, the MLflow tracking
server, the Prefect API server, a Ray head), each started in its own process session so
that stopping it stops all of its children. State lives only under the run directory:
PID files (``pids/``), logs (``logs/``), temp files (``tmp/``) and each service's data;
MLflow's store lives under ``mlflow.home``. Children get ``HOME`` and ``TMPDIR`` pointed
inside the run directory, so nothing lands in the user's home or the system temp dir.

A PID file records the PID and the process start time: a reused PID is recognised as
stale rather than mistaken for the service.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import psutil

from loopwright.config import Settings, settings_env
from loopwright.storage import ObjectStore, StorageError, generate_credentials, load_credentials

logger = logging.getLogger(__name__)

ServiceName = Literal["objectstore", "mlflow", "prefect", "ray", "gateway"]
START_ORDER: tuple[ServiceName, ...] = ("objectstore", "mlflow", "prefect", "ray", "gateway")
Health = Literal["healthy", "starting", "unhealthy", "stopped", "stale"]
# 107-byte AF_UNIX limit minus Ray's "/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store".
RAY_TEMP_MAX_CHARS = 107 - 64


class StackError(RuntimeError):
    """A service could not be started or stopped; the message says what to change."""


class PortInUse(StackError):
    """A port the service needs is taken by another process."""


@dataclass(frozen=True)
class ServiceSpec:
    """How to run and check one service.

    Attributes:
        ports: ``(port, setting)`` pairs that must be free before start; the setting is
            what the user changes when the port is taken.
        health: returns True once the service answers correctly.
        start_timeout: seconds to wait for health after starting.

    """

    name: ServiceName
    command: list[str]
    env: dict[str, str]
    url: str
    ports: list[tuple[int, str]]
    health: Callable[[], bool]
    start_timeout: float = 90.0
    data_dirs: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class ServiceStatus:
    """What ``status`` reports for one service."""

    name: str
    url: str
    pid: int | None
    health: Health
    rss_mb: float = 0.0


def _bin(name: str) -> str:
    """A console script of this environment (the venv's ``bin``), else from PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


def _http_ok(url: str, expect: Callable[[bytes], bool] = lambda body: True) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 (loopback URL)
            return bool(resp.status == 200 and expect(resp.read()))
    except Exception:  # any failure simply means "not healthy yet"
        return False


def _tcp_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0


def port_free(host: str, port: int) -> bool:
    """Whether ``port`` can be bound on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Servers bind with SO_REUSEADDR; without it, TIME_WAIT leftovers look "in use".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class Stack:
    """Supervisor for the services the settings mark as managed.

    Args:
        settings: effective configuration; ``managed_services`` says what to run here.

    """

    def __init__(self, settings: Settings, with_gateway: bool = False) -> None:
        self.settings = settings
        self.run = settings.run_path
        # The gateway needs registered models, so it is started on request (after the
        # bootstrap) unless the profile lists it in managed_services.
        self.with_gateway = with_gateway

    # -- paths -------------------------------------------------------------------------
    def _pid_file(self, name: str) -> Path:
        return self.run / "pids" / f"{name}.json"

    def _log_file(self, name: str) -> Path:
        return self.run / "logs" / f"{name}.log"

    @property
    def ray_temp_dir(self) -> Path:
        """Ray's temp dir: ``<run>/ray``, unless that is too long for Ray's sockets.

        Ray puts Unix sockets at ``<temp>/session_<timestamp>_<pid>/sockets/plasma_store``
        (about 62 characters below the temp dir) and AF_UNIX paths end at 107 bytes. A
        deep checkout would make Ray fail to start, so then a short folder named after the
        run directory is used instead (and logged).
        """
        preferred = self.run / "ray"
        if len(str(preferred)) <= RAY_TEMP_MAX_CHARS:
            return preferred
        digest = hashlib.sha1(str(self.run).encode()).hexdigest()[:10]
        fallback = Path("/tmp") / f"lw-ray-{digest}"
        logger.warning("%s is too long for Ray's sockets; using %s", preferred, fallback)
        return fallback

    def base_env(self) -> dict[str, str]:
        """Environment for every child: home and temp inside the run dir, telemetry off."""
        env = dict(os.environ)
        home = self.run / "home"
        tmp = self.run / "tmp"
        env.update(
            HOME=str(home),
            TMPDIR=str(tmp),
            MLFLOW_DISABLE_TELEMETRY="true",
            DO_NOT_TRACK="1",
            RAY_AUTH_MODE="disabled",
            RAY_USAGE_STATS_ENABLED="0",
            PREFECT_HOME=str(self.run / "prefect"),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            # Ray otherwise swaps 127.0.0.1 for the machine's network address: keep the
            # local head (and everything that talks to it) on loopback.
            RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        )
        return env

    # -- service definitions -------------------------------------------------------------
    def specs(self) -> dict[ServiceName, ServiceSpec]:
        """The managed services, by name, in start order."""
        s = self.settings
        env = self.base_env()
        specs: dict[ServiceName, ServiceSpec] = {}
        creds = load_credentials(s)
        s3_env = dict(env)
        if creds is not None:
            s3_env.update(
                AWS_ACCESS_KEY_ID=creds.access_key_id,
                AWS_SECRET_ACCESS_KEY=creds.secret_access_key,
            )
        if "objectstore" in s.managed_services:
            os_ = s.object_store
            base = os_.internal_port_base
            store_dir = self.run / "objectstore"
            sock = self.run / "sock"
            internal = {
                "master.port": base,
                "volume.port": base + 1,
                "filer.port": base + 2,
                "webdav.port": base + 3,
                "admin.port": base + 4,
                "s3.port.iceberg": base + 5,
                "s3.port.lance": base + 6,
            }
            command = [
                _bin("weed"),
                f"-logdir={self.run / 'logs' / 'objectstore'}",
                "mini",
                f"-dir={store_dir}",
                f"-ip={os_.host}",
                f"-ip.bind={os_.host}",
                f"-s3.port={os_.s3_port}",
                *(f"-{flag}={port}" for flag, port in internal.items()),
                "-admin.ui=false",
                "-master.telemetry=false",
                "-s3.autoCreateBucket=false",
                f"-volume.max={os_.max_volumes}",
                f"-master.volumeSizeLimitMB={os_.volume_size_limit_mb}",
                f"-s3.localSocket={sock / 's3.sock'}",
                f"-filer.localSocket={sock / 'filer.sock'}",
            ]
            ports = [(os_.s3_port, "object_store.s3_port")] + [
                (p, "object_store.internal_port_base") for p in internal.values()
            ]
            ports += [(p + 10000, "object_store.internal_port_base") for p in internal.values()]
            ports.append((os_.s3_port + 10000, "object_store.s3_port"))
            specs["objectstore"] = ServiceSpec(
                name="objectstore",
                command=command,
                env=s3_env,
                url=s.s3_endpoint_url,
                ports=ports,
                health=self._objectstore_healthy,
                data_dirs=[store_dir, sock, self.run / "logs" / "objectstore"],
            )
        if "mlflow" in s.managed_services:
            m = s.mlflow
            mlflow_env = dict(s3_env)
            mlflow_env.update(
                MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
                MLFLOW_S3_ENDPOINT_URL=s.s3_endpoint_url,
                AWS_DEFAULT_REGION=s.object_store.region,
            )
            specs["mlflow"] = ServiceSpec(
                name="mlflow",
                command=[
                    _bin("mlflow"),
                    "server",
                    "--backend-store-uri",
                    s.mlflow_backend_store_uri,
                    "--artifacts-destination",
                    s.mlflow_artifacts_destination,
                    "--host",
                    m.host,
                    "--port",
                    str(m.port),
                    "--workers",
                    str(m.workers),
                ],
                env=mlflow_env,
                url=s.mlflow_tracking_uri,
                ports=[(m.port, "mlflow.port")],
                health=lambda: _http_ok(
                    f"{s.mlflow_tracking_uri}/health", lambda b: b.strip() == b"OK"
                ),
                data_dirs=[m.home.expanduser().resolve() / "store"],
            )
        if "prefect" in s.managed_services:
            p = s.prefect
            prefect_env = dict(env)
            if p.database_url.get_secret_value():
                prefect_env["PREFECT_API_DATABASE_CONNECTION_URL"] = (
                    p.database_url.get_secret_value()
                )
            specs["prefect"] = ServiceSpec(
                name="prefect",
                command=[
                    _bin("prefect"),
                    "server",
                    "start",
                    "--host",
                    p.host,
                    "--port",
                    str(p.port),
                    "--analytics-off",
                ],
                env=prefect_env,
                url=s.prefect_api_url.removesuffix("/api"),
                ports=[(p.port, "prefect.port")],
                health=lambda: _http_ok(f"{s.prefect_api_url}/health", lambda b: b"true" in b),
                data_dirs=[self.run / "prefect"],
            )
        if "ray" in s.managed_services:
            r = s.ray
            base = r.port
            ray_ports = {
                "--ray-client-server-port": base + 1,
                "--dashboard-agent-listen-port": base + 2,
                "--dashboard-agent-grpc-port": base + 3,
                "--runtime-env-agent-port": base + 4,
                "--metrics-export-port": base + 5,
                "--node-manager-port": base + 6,
                "--object-manager-port": base + 7,
                "--dashboard-port": base + 8,
            }
            command = [
                _bin("ray"),
                "start",
                "--head",
                "--block",
                f"--port={base}",
                "--node-ip-address=127.0.0.1",
                "--include-dashboard=false",
                "--disable-usage-stats",
                f"--temp-dir={self.ray_temp_dir}",
                f"--object-store-memory={r.object_store_memory_mb * 1024 * 1024}",
                *(f"{flag}={port}" for flag, port in ray_ports.items()),
                # Ray's default worker range (10002-19999) would collide with everything.
                f"--min-worker-port={base + 20}",
                f"--max-worker-port={base + 219}",
            ]
            if r.num_cpus:
                command.append(f"--num-cpus={r.num_cpus}")
            command.append(f"--num-gpus={int(r.num_gpus) if r.num_gpus else 0}")
            specs["ray"] = ServiceSpec(
                name="ray",
                command=command,
                env=env,
                url=f"ray://127.0.0.1:{base + 1} (GCS {s.ray_address})",
                ports=[(base, "ray.port")] + [(p, "ray.port") for p in ray_ports.values()],
                health=lambda: _tcp_open("127.0.0.1", base) and _tcp_open("127.0.0.1", base + 1),
                data_dirs=[self.ray_temp_dir],
            )
        if "gateway" in s.managed_services or self.with_gateway:
            g = s.gateway
            specs["gateway"] = ServiceSpec(
                name="gateway",
                # The child loads the same profile plus overrides for every setting this
                # process holds differently (another app, port, bucket...), so it serves
                # exactly these settings.
                command=[sys.executable, "-m", "loopwright.cli", "--profile", s.profile, "serve"],
                env={**s3_env, **settings_env(s), "PYTHONPATH": _package_path(env)},
                url=f"http://{g.host}:{g.port}",
                ports=[(g.port, "gateway.port")],
                health=lambda: _http_ok(f"http://{g.host}:{g.port}/readyz"),
                start_timeout=180.0,
            )
        return {name: specs[name] for name in START_ORDER if name in specs}

    def _objectstore_healthy(self) -> bool:
        try:
            store = ObjectStore.from_settings(self.settings)
            store.client.list_buckets()
            return True
        except Exception:  # unreachable or not ready: not healthy yet
            return False

    # -- PID bookkeeping -----------------------------------------------------------------
    def _read_pid(self, name: str) -> tuple[int, float] | None:
        path = self._pid_file(name)
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return int(data["pid"]), float(data["create_time"])
        except (ValueError, KeyError, json.JSONDecodeError):
            return None

    def _process(self, name: str) -> psutil.Process | None:
        """The live process recorded for ``name``, or None (missing or stale PID file)."""
        recorded = self._read_pid(name)
        if recorded is None:
            return None
        pid, created = recorded
        try:
            proc = psutil.Process(pid)
            # A reused PID belongs to a process started at another time.
            if abs(proc.create_time() - created) > 1.0 or proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return proc
        except psutil.NoSuchProcess:
            return None

    def _is_stale(self, name: str) -> bool:
        return self._pid_file(name).exists() and self._process(name) is None

    # -- lifecycle -----------------------------------------------------------------------
    def up(self, services: Iterable[ServiceName] | None = None) -> list[ServiceStatus]:
        """Start every managed service not already running, then wait until all are healthy.

        Running services are left alone (``up`` twice starts nothing twice); a stale PID
        file is replaced. Raises :class:`PortInUse` naming the port and the setting to
        change, or :class:`StackError` with the log path when a service fails to start.
        """
        if "objectstore" in self.settings.managed_services:
            generate_credentials(self.settings)
        specs = self.specs()
        wanted = [n for n in specs if services is None or n in set(services)]
        for sub in ("pids", "logs", "tmp", "home", "sock"):
            (self.run / sub).mkdir(parents=True, exist_ok=True)
        to_start = [name for name in wanted if self._process(name) is None]
        for name in set(wanted) - set(to_start):
            logger.info("%s already running", name)
        # Every port is checked before anything starts: a busy port found half-way used to
        # leave the services before it running.
        for name in to_start:
            for port, setting in specs[name].ports:
                if not port_free("127.0.0.1", port):
                    raise PortInUse(
                        f"{name}: port {port} is already in use by another process; change "
                        f"{setting} in the profile or set LOOPWRIGHT_"
                        f"{setting.upper().replace('.', '__')}"
                    )
        for name in to_start:
            if self._is_stale(name):
                logger.warning("%s: stale PID file removed (process is gone)", name)
                self._pid_file(name).unlink()
            self._spawn(specs[name])
        for name in wanted:
            self._wait_healthy(specs[name])
            if name == "objectstore":
                self._ensure_bucket()
        return self.status()

    def _spawn(self, spec: ServiceSpec) -> None:
        for folder in spec.data_dirs:
            folder.mkdir(parents=True, exist_ok=True)
        log = self._log_file(spec.name).open("ab")
        proc = subprocess.Popen(
            spec.command,
            env=spec.env,
            cwd=self.run,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # own process group: stop kills the whole tree
        )
        log.close()
        create_time = psutil.Process(proc.pid).create_time()
        self._pid_file(spec.name).write_text(
            json.dumps({"pid": proc.pid, "create_time": create_time, "cmd": spec.command}),
            encoding="utf-8",
        )
        logger.info("started %s (pid %d)", spec.name, proc.pid)

    def _wait_healthy(self, spec: ServiceSpec) -> None:
        deadline = time.monotonic() + spec.start_timeout
        while time.monotonic() < deadline:
            if spec.health():
                return
            if self._process(spec.name) is None:
                raise StackError(
                    f"{spec.name} exited during start; see {self._log_file(spec.name)}"
                )
            time.sleep(0.3)
        raise StackError(
            f"{spec.name} not healthy after {spec.start_timeout:.0f}s; "
            f"see {self._log_file(spec.name)}"
        )

    def _ensure_bucket(self) -> None:
        store = ObjectStore.from_settings(self.settings)
        try:
            store.ensure_bucket(f"s3://{self.settings.object_store.bucket}/")
        except StorageError as exc:
            raise StackError(f"could not create the bucket: {exc}") from exc

    def down(self, services: Iterable[ServiceName] | None = None, timeout: float = 15.0) -> None:
        """Stop managed services in reverse start order; succeeds when nothing runs.

        Each service's process group gets SIGTERM, then SIGKILL after ``timeout`` seconds
        (Ray's head can ignore SIGTERM for longer than that).
        """
        names = [n for n in reversed(START_ORDER) if services is None or n in set(services)]
        running = [(name, proc) for name in names if (proc := self._process(name)) is not None]
        # Stop in parallel: each may take up to ``timeout`` (Ray ignores SIGTERM a while).
        with ThreadPoolExecutor(max_workers=max(1, len(running))) as pool:
            list(pool.map(lambda item: self._stop_tree(item[1], timeout), running))
        for name in names:
            self._pid_file(name).unlink(missing_ok=True)
        for name, _ in running:
            logger.info("stopped %s", name)

    @staticmethod
    def _stop_tree(proc: psutil.Process, timeout: float) -> None:
        try:
            members = [proc, *proc.children(recursive=True)]
            pgid = os.getpgid(proc.pid)
        except (psutil.NoSuchProcess, ProcessLookupError):
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        _, alive = psutil.wait_procs(members, timeout=timeout)
        if alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            for leftover in alive:
                with contextlib.suppress(psutil.NoSuchProcess):
                    leftover.kill()
            psutil.wait_procs(alive, timeout=5)

    def status(self) -> list[ServiceStatus]:
        """Each managed service with its URL, PID, health and memory (RSS of its tree)."""
        out = []
        for name, spec in self.specs().items():
            proc = self._process(name)
            if proc is None:
                health: Health = "stale" if self._is_stale(name) else "stopped"
                out.append(ServiceStatus(name, spec.url, None, health))
                continue
            rss = 0
            for member in [proc, *proc.children(recursive=True)]:
                try:
                    rss += member.memory_info().rss
                except psutil.NoSuchProcess:
                    continue
            health = "healthy" if spec.health() else "unhealthy"
            out.append(ServiceStatus(name, spec.url, proc.pid, health, rss / 2**20))
        return out


def _package_path(env: dict[str, str]) -> str:
    """PYTHONPATH for a child that runs in the run directory: this checkout first.

    A source checkout run with a relative ``PYTHONPATH=.`` would not find the package
    from another working directory.
    """
    root = str(Path(__file__).resolve().parents[1])
    rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]
    return os.pathsep.join([root, *rest])
