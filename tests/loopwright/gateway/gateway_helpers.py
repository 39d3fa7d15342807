"""Helpers shared by the gateway tests: servers on free ports, a boto3 store, log readers.

A uniquely named module (not conftest) so test files can import it without clashing with
other packages' test helpers.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def spool_records(run_dir: Path, kind: str = "interactions") -> list[dict[str, Any]]:
    """Every record in a gateway's local spool (open, sealed and kept-shipped segments)."""
    root = run_dir / "gateway" / "spool" / kind
    out: list[dict[str, Any]] = []
    for sub in ("open", "sealed", "shipped"):
        for path in sorted((root / sub).glob("*.jsonl")):
            out.extend(json.loads(line) for line in path.read_text().split("\n") if line)
    return out


# -- uvicorn in a thread ---------------------------------------------------------------


class LiveServer:
    """uvicorn serving an app on a free loopback port in a background thread."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            access_log=False,
            lifespan="on",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


# -- a real S3 server (SeaweedFS) ------------------------------------------------------


class WeedServer:
    """``weed mini`` on free ports with generated credentials; stoppable and restartable
    with the same data directory."""

    PORT_FLAGS = (
        "master.port",
        "master.port.grpc",
        "volume.port",
        "volume.port.grpc",
        "volume.port.public",
        "filer.port",
        "filer.port.grpc",
        "filer.port.public",
        "webdav.port",
        "s3.port.grpc",
        "s3.port.iceberg",
        "s3.port.lance",
        "admin.port",
        "admin.port.grpc",
        "metricsPort",
        "s3.metricsPort",
    )

    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in ("data", "logs", "sock"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self.s3_port = free_port()
        self.ports = {flag: free_port() for flag in self.PORT_FLAGS}
        self.access_key = "lw" + secrets.token_hex(6)
        self.secret_key = secrets.token_hex(16)
        self.endpoint = f"http://127.0.0.1:{self.s3_port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 1},
                connect_timeout=2,
                read_timeout=10,
            ),
        )

    def start(self) -> None:
        """Start on the current ports; the very first start retries on fresh ones.

        A port picked free can be taken by another process before weed binds it (seen
        once in CI); until the server has run once nothing depends on its ports.
        """
        for attempt in range(3):
            try:
                self._start_once()
                self._started = True
                return
            except RuntimeError:
                if getattr(self, "_started", False) or attempt == 2:
                    raise
                self.s3_port = free_port()
                self.ports = {flag: free_port() for flag in self.PORT_FLAGS}
                self.endpoint = f"http://127.0.0.1:{self.s3_port}"

    def _start_once(self) -> None:
        args = [
            str(BIN / "weed"),
            f"-logdir={self.root / 'logs'}",
            "mini",
            f"-dir={self.root / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.port={self.s3_port}",
            "-admin.ui=false",
            "-master.telemetry=false",
            f"-s3.localSocket={self.root / 'sock' / 's3.sock'}",
            f"-filer.localSocket={self.root / 'sock' / 'filer.sock'}",
            *[f"-{flag}={port}" for flag, port in self.ports.items()],
        ]
        env = dict(
            os.environ, AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key
        )
        log = (self.root / "logs" / "stdout.log").open("ab")
        self.proc = subprocess.Popen(
            args,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
            start_new_session=True,
        )
        client = self.client()
        deadline = time.time() + 60
        while True:
            try:
                client.list_buckets()
                return
            except Exception:
                if time.time() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(
                        f"weed mini did not start; see {self.root / 'logs'}"
                    ) from None
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        except ProcessLookupError:
            pass
        self.proc = None


class BotoStore:
    """The object-store calls the shipper needs, over boto3 (s3:// URIs only).

    Stands in for ``loopwright.storage.ObjectStore`` until that lands on this branch; it is
    a real S3 client against a real server, not a mock.
    """

    def __init__(self, server: WeedServer) -> None:
        self.s3 = server.client()

    @staticmethod
    def _split(uri: str) -> tuple[str, str]:
        assert uri.startswith("s3://"), uri
        bucket, _, key = uri[5:].partition("/")
        return bucket, key

    def put_bytes(self, uri: str, data: bytes) -> None:
        bucket, key = self._split(uri)
        self.s3.put_object(Bucket=bucket, Key=key, Body=data)

    def get_bytes(self, uri: str) -> bytes:
        bucket, key = self._split(uri)
        return bytes(self.s3.get_object(Bucket=bucket, Key=key)["Body"].read())

    def list(self, prefix_uri: str) -> list[str]:
        bucket, prefix = self._split(prefix_uri)
        out: list[str] = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            out.extend(f"s3://{bucket}/{obj['Key']}" for obj in page.get("Contents", []))
        return out

    def ensure_bucket(self, uri: str) -> None:
        bucket, _ = self._split(uri)
        with contextlib.suppress(self.s3.exceptions.BucketAlreadyOwnedByYou):
            self.s3.create_bucket(Bucket=bucket)
