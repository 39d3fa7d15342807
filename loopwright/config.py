"""Typed configuration: one YAML profile plus ``LOOPWRIGHT_*`` environment overrides.

Precedence, highest first: environment (``LOOPWRIGHT_MLFLOW__PORT=5051``; ``__`` separates
nesting levels), the YAML profile, the defaults below. Unknown keys anywhere fail with a
message naming the key and the valid ones; bad values fail naming the key and what is
valid. Nothing here is read at import time: call :func:`load_settings`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_core import to_jsonable_python
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from loopwright.gateway.settings import GatewaySettings
from loopwright.nightly import NightlyConfig, with_domain_recipe
from loopwright.online_eval_models import OnlineEvalConfig
from loopwright.release.config import ReleaseConfig, with_domain_policies

ENV_PREFIX = "LOOPWRIGHT_"
ENV_NESTING = "__"
PROFILE_ENV = "LOOPWRIGHT_PROFILE"
BUILTIN_PROFILES = ("local", "cluster")
APP_PATTERN = r"^[a-z][a-z0-9-]{1,40}$"


class ConfigError(ValueError):
    """The configuration is invalid; the message says which key and what is valid."""


class Section(BaseModel):
    """A config section: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


Port = int
ManagedService = Literal["objectstore", "mlflow", "prefect", "ray", "gateway"]
MANAGED_SERVICES: tuple[ManagedService, ...] = ("objectstore", "mlflow", "prefect", "ray")


class MlflowSettings(Section):
    """MLflow tracking server and registry.

    Attributes:
        tracking_uri: where clients talk to; empty means the local server started by
            ``loopwright up`` at ``http://host:port``.
        home: the MLflow server's home folder (its SQLite store lives in ``store/``).
        backend_store_uri: the server's metadata store; empty means SQLite under
            ``home``.
        artifacts_destination: where the server proxies artifacts to; empty means the
            object store bucket, prefix ``mlflow-artifacts``.

    """

    host: str = "127.0.0.1"
    port: Port = Field(default=5050, ge=1, le=65535)
    home: Path = Path("mlflow")
    tracking_uri: str = ""
    backend_store_uri: str = ""
    artifacts_destination: str = ""
    workers: int = Field(default=1, ge=1, le=16)


class PrefectSettings(Section):
    """Prefect API server.

    Attributes:
        api_url: empty means the local server at ``http://host:port/api``.
        database_url: empty means SQLite under the run directory.

    """

    host: str = "127.0.0.1"
    port: Port = Field(default=4200, ge=1, le=65535)
    api_url: str = ""
    database_url: SecretStr = SecretStr("")


class ObjectStoreSettings(Section):
    """The S3-API object store.

    Attributes:
        endpoint_url: empty means the local SeaweedFS at ``http://host:s3_port``; set it
            for AWS S3 or any external S3-API store.
        internal_port_base: SeaweedFS opens several internal ports (master, volume, filer,
            WebDAV, admin, Iceberg, Lance) at ``base .. base+6`` and their gRPC twins at
            ``+10000``; moving the base moves them all.
        max_volumes: volume slots of the local SeaweedFS. Every bucket takes at least one
            volume of its own, and SeaweedFS's own default (free disk / volume size) leaves
            a machine with 8 GiB free room for 8 buckets, after which every write fails
            with ``InternalError``. Slots cost nothing until written (no preallocation).
        volume_size_limit_mb: size (MiB) at which SeaweedFS stops writing to a volume
            and grows a new one.
        access_key_id / secret_access_key: empty on the local profile means the
            credentials generated on first ``up`` (file readable only by the owner).

    """

    host: str = "127.0.0.1"
    s3_port: Port = Field(default=8333, ge=1, le=55535)
    internal_port_base: Port = Field(default=9330, ge=1024, le=55529)
    max_volumes: int = Field(default=512, ge=8)
    volume_size_limit_mb: int = Field(default=256, ge=16, le=30000)
    endpoint_url: str = ""
    region: str = "us-east-1"
    bucket: str = Field(default="loopwright", min_length=3, max_length=63, pattern=r"^[a-z0-9.-]+$")
    access_key_id: SecretStr = SecretStr("")
    secret_access_key: SecretStr = SecretStr("")


class RaySettings(Section):
    """Ray: a local head started by ``up`` (address empty) or an existing cluster.

    Attributes:
        address: ``host:port`` of a running cluster's GCS; empty means the local head.
        num_cpus: CPUs the local head offers; 0 means all cores.
        num_gpus: GPUs per evaluation/training actor (0 on CPU machines).

    """

    address: str = ""
    port: Port = Field(default=6380, ge=1, le=65535)
    num_cpus: int = Field(default=0, ge=0)
    num_gpus: float = Field(default=0.0, ge=0)
    object_store_memory_mb: int = Field(default=256, ge=78)


class ComputeSettings(Section):
    """Where training and generation run.

    Attributes:
        device: ``auto`` picks CUDA when present, else CPU.
        torch_threads: threads per torch process on CPU; 0 means the number of cores.

    """

    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: int = Field(default=0, ge=0)


class Settings(BaseSettings):
    """The effective loopwright configuration (one profile plus environment overrides).

    Attributes:
        profile: the profile name this was loaded from (``local`` or ``cluster``, or a
            path to a YAML file).
        app: the application name; registered models are ``<app>-policy`` etc. Unset, the
            domain's (a folder's ``app`` or name, a module domain's ``app`` attribute),
            else ``loopwright``.
        run_dir: every piece of local state, log, PID and temp file lives under it.
        data_repo: the git + DVC repository whose ``data/`` (tracked by ``data.dvc``) holds
            the curated datasets; the project checkout by default.
        domain: the domain the loop serves (fact checker, refusal test, screening config,
            evaluation suites; see :class:`loopwright.domain.Domain`): a domain folder
            (``domain.yaml``, :mod:`loopwright.domain_folder`; a relative path is taken
            from the working directory and stored absolute) or ``package.module:attribute``;
            the example help-desk domain by default.
        managed_services: services ``loopwright up`` starts; the cluster profile
            manages none (they are external).
        nightly: the nightly run's knobs (:class:`loopwright.nightly.NightlyConfig`); the
            deployments use them, ``loopwright nightly`` flags override them, and what this
            section leaves unset comes from the domain's recipe (``domain.yaml``'s
            ``nightly``), else the defaults.
        release: how a candidate is released (:class:`loopwright.release.config.ReleaseConfig`):
            canary fraction and timing, approval timeout, policies. Its canary timing
            must let the canary policy conclude (``max_canary_s >= min_duration_s``).
        online_eval: online evaluation of live traffic after promotion
            (:class:`loopwright.online_eval.OnlineEvalConfig`): how often (``interval_s``),
            over how much traffic (``lookback_s``), how many samples per version, drift
            thresholds, an optional Prometheus Pushgateway.

    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTING,
        extra="forbid",
        validate_assignment=True,
    )

    profile: str = "local"
    app: str = Field(default="loopwright", pattern=APP_PATTERN)
    run_dir: Path = Path(".loopwright")
    data_repo: Path = Path(".")
    domain: str = Field(default="examples.helpdesk.plugin:domain", min_length=1)
    managed_services: list[ManagedService] = Field(default_factory=lambda: list(MANAGED_SERVICES))
    mlflow: MlflowSettings = Field(default_factory=MlflowSettings)
    prefect: PrefectSettings = Field(default_factory=PrefectSettings)
    object_store: ObjectStoreSettings = Field(default_factory=ObjectStoreSettings)
    ray: RaySettings = Field(default_factory=RaySettings)
    compute: ComputeSettings = Field(default_factory=ComputeSettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    nightly: NightlyConfig = Field(default_factory=NightlyConfig)
    release: ReleaseConfig = Field(default_factory=ReleaseConfig)
    online_eval: OnlineEvalConfig = Field(default_factory=OnlineEvalConfig)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Order the sources: environment over the YAML profile (given as init kwargs)."""
        # The YAML profile arrives as init kwargs; the environment must override it.
        return (env_settings, init_settings)

    @model_validator(mode="after")
    def _domain_defaults(self) -> Settings:
        from loopwright.domain import load_domain
        from loopwright.domain_folder import is_domain_folder_spec, load_folder_domain

        # DomainError (a ValueError) names the problems of a folder or a module.
        if is_domain_folder_spec(self.domain):
            domain: Any = load_folder_domain(self.domain)
            # __dict__: assignment would validate the whole model again (validate_assignment).
            self.__dict__["domain"] = str(domain.folder)
        else:
            domain = load_domain(self.domain)
        app = getattr(domain, "app", None)
        if "app" not in self.model_fields_set and isinstance(app, str):
            if not re.fullmatch(APP_PATTERN, app):
                raise ValueError(f"the domain's app {app!r} must match {APP_PATTERN}")
            self.__dict__["app"] = app
        return self

    @model_validator(mode="after")
    def _domain_recipe(self) -> Settings:
        # __dict__: as above; the domain's recipe fills what the profile leaves unset.
        self.__dict__["nightly"] = with_domain_recipe(self.nightly, self.domain)
        return self

    @model_validator(mode="after")
    def _release_can_conclude(self) -> Settings:
        # The canary policy that will judge a release is only known with the domain.
        try:
            with_domain_policies(self.release, self.domain)
        except ValidationError as exc:
            raise ValueError(f"release: {exc.errors()[0]['msg']}") from None
        return self

    @model_validator(mode="after")
    def _check_local_services(self) -> Settings:
        if "objectstore" not in self.managed_services and not self.object_store.endpoint_url:
            raise ValueError(
                "object_store.endpoint_url is required when 'objectstore' is not in "
                "managed_services (nothing would serve the bucket)"
            )
        return self

    # Derived values: one place decides every URL and path, so no caller rebuilds them.
    @property
    def run_path(self) -> Path:
        """Absolute run directory."""
        return self.run_dir.expanduser().resolve()

    @property
    def mlflow_tracking_uri(self) -> str:
        """URI MLflow clients use."""
        return self.mlflow.tracking_uri or f"http://{self.mlflow.host}:{self.mlflow.port}"

    @property
    def mlflow_backend_store_uri(self) -> str:
        """The MLflow server's metadata store (SQLite under ``mlflow.home`` by default)."""
        home = self.mlflow.home.expanduser().resolve()
        return self.mlflow.backend_store_uri or f"sqlite:///{home / 'store' / 'mlflow.db'}"

    @property
    def mlflow_artifacts_destination(self) -> str:
        """Where the MLflow server keeps artifacts (proxied; clients never see it)."""
        return (
            self.mlflow.artifacts_destination or f"s3://{self.object_store.bucket}/mlflow-artifacts"
        )

    @property
    def prefect_api_url(self) -> str:
        """URL Prefect clients use."""
        return self.prefect.api_url or f"http://{self.prefect.host}:{self.prefect.port}/api"

    @property
    def s3_endpoint_url(self) -> str:
        """The S3 endpoint clients use."""
        return (
            self.object_store.endpoint_url
            or f"http://{self.object_store.host}:{self.object_store.s3_port}"
        )

    @property
    def ray_address(self) -> str:
        """GCS address of the Ray cluster (the local head when none is configured)."""
        return self.ray.address or f"127.0.0.1:{self.ray.port}"

    def registered_model(self, kind: Literal["policy", "reward", "guard"]) -> str:
        """Registered-model name for one learnable part, e.g. ``helpdesk-policy``."""
        return f"{self.app}-{kind}"


def _profile_path(profile: str | Path) -> Path:
    candidate = Path(profile)
    if candidate.suffix in {".yaml", ".yml"}:
        if not candidate.is_file():
            raise ConfigError(f"profile file {candidate} does not exist")
        return candidate
    if str(profile) not in BUILTIN_PROFILES:
        raise ConfigError(
            f"unknown profile {profile!r}; valid: {', '.join(BUILTIN_PROFILES)} "
            "or a path to a .yaml file"
        )
    return Path(str(resources.files("loopwright") / "profiles" / f"{profile}.yaml"))


def _valid_keys(model: type[BaseModel], loc: tuple[str | int, ...]) -> list[str]:
    """The field names valid at ``loc`` (the parent of an offending key)."""
    current: Any = model
    for part in loc:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = field.annotation
    return sorted(getattr(current, "model_fields", {}))


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc)
        if err["type"] == "extra_forbidden":
            valid = _valid_keys(Settings, loc[:-1])
            lines.append(f"{key}: unknown key; valid keys here: {', '.join(valid)}")
        else:
            got = err.get("input")
            shown = "***" if "secret" in key or "password" in key else repr(got)
            lines.append(f"{key}: {err['msg']} (got {shown})")
    return f"invalid configuration ({source}):\n  " + "\n  ".join(lines)


def _check_env_keys(env: Mapping[str, str]) -> None:
    """Reject ``LOOPWRIGHT_*`` variables that name no setting (a typo would be ignored)."""
    for name in env:
        if not name.startswith(ENV_PREFIX) or name == PROFILE_ENV:
            continue
        parts = name[len(ENV_PREFIX) :].lower().split(ENV_NESTING)
        model: Any = Settings
        for depth, part in enumerate(parts):
            fields = getattr(model, "model_fields", None)
            if fields is None or part not in fields:
                where = ".".join(parts[:depth]) or "top level"
                raise ConfigError(
                    f"environment variable {name} names no setting ({where}); valid keys: "
                    f"{', '.join(sorted(fields or []))}"
                )
            model = fields[part].annotation


def load_settings(
    profile: str | Path | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Load the effective settings.

    Args:
        profile: ``local``, ``cluster`` or a YAML path; default ``$LOOPWRIGHT_PROFILE`` or
            ``local``.
        env: environment to read overrides from; default ``os.environ``.

    Raises:
        ConfigError: unknown profile, unknown key, or invalid value (the message names the
            key and what is valid).

    """
    env = os.environ if env is None else env
    profile = profile or env.get(PROFILE_ENV) or "local"
    path = _profile_path(profile)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    data.setdefault("profile", str(profile))
    _check_env_keys(env)
    saved = dict(os.environ)
    try:
        # pydantic-settings reads os.environ; present exactly ``env`` to it.
        if env is not os.environ:
            os.environ.clear()
            os.environ.update(env)
        return Settings(**data)
    except ValidationError as exc:
        source = f"profile {path} with {ENV_PREFIX}* overrides"
        raise ConfigError(_format_errors(exc, source)) from None
    finally:
        if env is not os.environ:
            os.environ.clear()
            os.environ.update(saved)


def masked_dump(settings: Settings) -> dict[str, Any]:
    """The settings as plain data with every secret masked (for ``config show``)."""
    data = settings.model_dump(mode="json")

    def mask(node: Any, model: Any) -> Any:
        if isinstance(node, dict):
            fields = getattr(model, "model_fields", {})
            out = {}
            for key, value in node.items():
                field = fields.get(key)
                annotation = field.annotation if field else None
                if annotation is SecretStr:
                    out[key] = "********" if value else ""
                else:
                    out[key] = mask(value, annotation)
            return out
        return node

    masked: dict[str, Any] = mask(data, Settings)
    return masked


def _leaves(model: BaseModel, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    """(``A__B`` name, JSON-able value) of every non-model field, nested models walked."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            yield from _leaves(value, (*prefix, name))
        elif not isinstance(value, SecretStr):
            yield ENV_NESTING.join((*prefix, name)).upper(), to_jsonable_python(value)


def settings_env(settings: Settings) -> dict[str, str]:
    """``LOOPWRIGHT_*`` variables that make a child process load exactly ``settings``.

    A child (the gateway: ``loopwright --profile P serve``) loads its profile and the
    environment, so settings changed in this process (another app, port, run directory,
    bucket) must travel as overrides. Only values that differ from the profile
    alone are passed; paths are made absolute (the child runs in the run directory).
    Secrets are never passed (the child reads the object store's credentials from the run
    directory, as this process does).

    Raises:
        ValueError: a setting differs from the profile by being unset (None), which no
            environment variable can express.
    """
    absolute = settings.model_copy(
        update={
            "run_dir": settings.run_path,
            "data_repo": settings.data_repo.resolve(),
            "mlflow": settings.mlflow.model_copy(
                update={"home": settings.mlflow.home.expanduser().resolve()}
            ),
        }
    )
    profile = dict(_leaves(load_settings(settings.profile, env={})))
    env: dict[str, str] = {}
    for name, value in _leaves(absolute):
        if name == "PROFILE" or profile.get(name) == value:
            continue
        if value is None:
            raise ValueError(f"{name.lower()} is unset here but set in the profile")
        env[ENV_PREFIX + name] = value if isinstance(value, str) else json.dumps(value)
    return env
