"""Object-store adapter: read, write and list objects by URI.

Two schemes: ``s3://bucket/key`` (boto3 against the configured endpoint, path-style, so
SeaweedFS, MinIO and AWS S3 all work) and ``file:///absolute/path`` (a local folder, for
tests and single-machine setups). Failures are told apart, because each needs a different
fix: :class:`BucketNotFound` (create it / check the name), :class:`AccessDenied` (check
credentials), :class:`EndpointUnreachable` (start the store / check the URL) and
:class:`ObjectNotFound`.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

if TYPE_CHECKING:
    from loopwright.config import Settings

logger = logging.getLogger(__name__)

CREDENTIALS_FILE = "credentials/s3.json"


class StorageError(RuntimeError):
    """An object-store operation failed; subclasses say why."""


class BucketNotFound(StorageError):
    """The bucket does not exist."""


class AccessDenied(StorageError):
    """The credentials were refused (wrong key or secret, or no permission)."""


class EndpointUnreachable(StorageError):
    """Nothing answered at the endpoint."""


class ObjectNotFound(StorageError):
    """The bucket exists but the key does not."""


@dataclass(frozen=True)
class S3Credentials:
    """An access key pair; ``repr`` never shows the secret."""

    access_key_id: str
    secret_access_key: str

    def __repr__(self) -> str:
        return f"S3Credentials(access_key_id={self.access_key_id!r}, secret_access_key='***')"


def load_credentials(settings: Settings) -> S3Credentials | None:
    """Credentials from the settings, else the file ``up`` generated, else None.

    Returns None when neither exists (boto3 then falls back to its own chain, e.g. an
    instance role on a cluster).
    """
    key = settings.object_store.access_key_id.get_secret_value()
    secret = settings.object_store.secret_access_key.get_secret_value()
    if key and secret:
        return S3Credentials(key, secret)
    path = settings.run_path / CREDENTIALS_FILE
    if path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        return S3Credentials(data["access_key_id"], data["secret_access_key"])
    return None


def generate_credentials(settings: Settings) -> S3Credentials:
    """Create the local store's credentials once (file mode 0600); reuse them afterwards."""
    existing = load_credentials(settings)
    if existing is not None:
        return existing
    import secrets

    creds = S3Credentials("lw" + secrets.token_hex(8), secrets.token_urlsafe(30))
    path = settings.run_path / CREDENTIALS_FILE
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Create with 0600 from the start: no window where another user could read it.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(
            {"access_key_id": creds.access_key_id, "secret_access_key": creds.secret_access_key},
            handle,
        )
    return creds


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``; raises ValueError on other schemes."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"not an s3:// URI: {uri!r}")
    return parsed.netloc, parsed.path.lstrip("/")


def _file_path(uri: str) -> Path:
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        raise ValueError(f"not a file:// URI: {uri!r}")
    # Path.as_uri() percent-encodes ("date=..." -> "date%3D..."): decode so both forms work.
    return Path(unquote(parsed.path))


class ObjectStore:
    """Read/write/list by URI over S3 (boto3) or the local filesystem.

    Args:
        endpoint_url: S3 endpoint (``http://127.0.0.1:8333``); None for AWS defaults.
        credentials: key pair; None lets boto3 find its own.
        region: signing region.
        connect_timeout: seconds before an endpoint counts as unreachable.
        max_attempts: boto3 attempts per call (1 = no retry; callers own retry policy).

    """

    def __init__(
        self,
        endpoint_url: str | None = None,
        credentials: S3Credentials | None = None,
        region: str = "us-east-1",
        connect_timeout: float = 2.0,
        max_attempts: int = 2,
    ) -> None:
        self.endpoint_url = endpoint_url
        self._credentials = credentials
        self._region = region
        self._connect_timeout = connect_timeout
        self._max_attempts = max_attempts
        self._client: Any = None

    @classmethod
    def from_settings(cls, settings: Settings) -> ObjectStore:
        """The store the settings describe, with the generated local credentials."""
        return cls(
            endpoint_url=settings.s3_endpoint_url,
            credentials=load_credentials(settings),
            region=settings.object_store.region,
        )

    @property
    def client(self) -> Any:
        """The boto3 S3 client (created on first use)."""
        if self._client is None:
            import boto3
            from botocore.config import Config

            kwargs: dict[str, Any] = {}
            if self._credentials is not None:
                kwargs.update(
                    aws_access_key_id=self._credentials.access_key_id,
                    aws_secret_access_key=self._credentials.secret_access_key,
                )
            self._client = boto3.client(
                "s3",
                endpoint_url=self.endpoint_url,
                region_name=self._region,
                config=Config(
                    s3={"addressing_style": "path"},
                    connect_timeout=self._connect_timeout,
                    read_timeout=30,
                    retries={"max_attempts": self._max_attempts, "mode": "standard"},
                ),
                **kwargs,
            )
        return self._client

    def _translate(self, exc: Exception, uri: str) -> StorageError:
        from botocore.exceptions import ClientError, EndpointConnectionError
        from botocore.exceptions import ConnectionError as BotoConnectionError

        if isinstance(exc, EndpointConnectionError | BotoConnectionError):
            return EndpointUnreachable(
                f"object store at {self.endpoint_url} is unreachable ({exc}); is it running? "
                "(`loopwright status`)"
            )
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchBucket":
                return BucketNotFound(f"{uri}: bucket does not exist at {self.endpoint_url}")
            if code in {"NoSuchKey", "404", "NotFound"} or status == 404:
                return ObjectNotFound(f"{uri}: no such object")
            if (
                code
                in {
                    "SignatureDoesNotMatch",
                    "InvalidAccessKeyId",
                    "AccessDenied",
                    "403",
                }
                or status == 403
            ):
                return AccessDenied(
                    f"{uri}: access denied by {self.endpoint_url} ({code}); check the "
                    "credentials (object_store.access_key_id / secret_access_key)"
                )
        return StorageError(f"{uri}: {exc}")

    def _call(self, uri: str, op: str, **kwargs: Any) -> Any:
        try:
            return getattr(self.client, op)(**kwargs)
        except Exception as exc:  # translated into one of our typed errors
            raise self._translate(exc, uri) from exc

    def put_bytes(self, uri: str, data: bytes) -> None:
        """Write ``data`` at ``uri`` (overwrites)."""
        if uri.startswith("file://"):
            path = _file_path(uri)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".part")
            tmp.write_bytes(data)
            tmp.replace(path)  # atomic: a reader never sees half an object
            return
        bucket, key = split_s3_uri(uri)
        self._call(uri, "put_object", Bucket=bucket, Key=key, Body=data)

    def get_bytes(self, uri: str) -> bytes:
        """Read the object at ``uri``; raises :class:`ObjectNotFound` if absent."""
        if uri.startswith("file://"):
            path = _file_path(uri)
            if not path.is_file():
                raise ObjectNotFound(f"{uri}: no such object")
            return path.read_bytes()
        bucket, key = split_s3_uri(uri)
        body = self._call(uri, "get_object", Bucket=bucket, Key=key)["Body"]
        return bytes(body.read())

    def exists(self, uri: str) -> bool:
        """Whether an object exists at ``uri``."""
        try:
            if uri.startswith("file://"):
                return _file_path(uri).is_file()
            bucket, key = split_s3_uri(uri)
            self._call(uri, "head_object", Bucket=bucket, Key=key)
            return True
        except ObjectNotFound:
            return False

    def delete(self, uri: str) -> None:
        """Delete the object at ``uri`` (no error if it is already gone)."""
        if uri.startswith("file://"):
            _file_path(uri).unlink(missing_ok=True)
            return
        bucket, key = split_s3_uri(uri)
        self._call(uri, "delete_object", Bucket=bucket, Key=key)

    def list(self, prefix_uri: str) -> list[str]:
        """Full URIs of every object under ``prefix_uri``, sorted."""
        if prefix_uri.startswith("file://"):
            root = _file_path(prefix_uri)
            base = root if root.is_dir() else root.parent
            found = [p for p in base.rglob("*") if p.is_file() and str(p).startswith(str(root))]
            return sorted(p.as_uri() for p in found if not p.name.endswith(".part"))
        bucket, prefix = split_s3_uri(prefix_uri)
        uris: list[str] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call(prefix_uri, "list_objects_v2", **kwargs)
            uris.extend(f"s3://{bucket}/{item['Key']}" for item in page.get("Contents", []))
            if not page.get("IsTruncated"):
                return sorted(uris)
            token = page["NextContinuationToken"]

    def ensure_bucket(self, uri: str) -> None:
        """Create the bucket of ``uri`` if it does not exist (``file://``: the folder)."""
        if uri.startswith("file://"):
            _file_path(uri).mkdir(parents=True, exist_ok=True)
            return
        bucket, _ = split_s3_uri(uri)
        try:
            self._call(uri, "head_bucket", Bucket=bucket)
        except (BucketNotFound, ObjectNotFound):
            self._call(uri, "create_bucket", Bucket=bucket)
