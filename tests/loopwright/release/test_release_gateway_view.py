"""Pure parts of the gate's gateway view: version pinning, the evaluation gateway's settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from loopwright.config import Settings
from loopwright.evaluation.targets import EndpointTarget
from loopwright.gateway.settings import GatewaySettings, RoutingSettings, with_domain_defaults
from loopwright.release.gateway_view import (
    GatewayTarget,
    GatewayViewError,
    eval_gateway_settings,
    parse_version,
    served_identity,
)


def test_parse_version_takes_only_a_pinned_version_of_the_policy() -> None:
    assert parse_version("models:/shop-policy/12", "shop-policy") == "12"
    for bad in ("models:/shop-policy@champion", "models:/other-policy/3", "/tmp/model", ""):
        with pytest.raises(GatewayViewError, match="models:/shop-policy/<version>"):
            parse_version(bad, "shop-policy")


def test_pinned_version_needs_the_registry_source_and_a_version_number() -> None:
    assert RoutingSettings(source="mlflow", pinned_version="3").pinned_version == "3"
    with pytest.raises(ValidationError, match="source=mlflow"):
        RoutingSettings(source="static", pinned_version="3")
    with pytest.raises(ValidationError, match="pinned_version"):
        RoutingSettings(source="mlflow", pinned_version="champion")


def _settings(tmp_path: Path) -> Settings:
    gw = GatewaySettings.model_validate(
        {
            "routing": {"source": "mlflow", "timeout_s": 5},
            "backend": {"kind": "stub"},
            "log": {"store_uri": "s3://loopwright"},
            "input_rails": {"harmful_threshold": 0.4},
        }
    )
    return Settings(app="shop", run_dir=tmp_path / "run", gateway=gw)


def test_eval_settings_keep_the_controls_and_never_ship_the_log(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    log_dir = tmp_path / "eval-log"
    gw = eval_gateway_settings(settings, "7", guard_dir=tmp_path / "guard", log_dir=log_dir)
    assert gw.routing.pinned_version == "7" and gw.routing.app == "shop"
    assert gw.routing.tracking_uri == settings.mlflow_tracking_uri
    assert gw.log.store_uri is None  # nothing reaches the log the nightly loop ingests
    assert Path(gw.log.spool_dir) == log_dir / "v7"
    assert gw.backend.kind == "hf"  # the real model, even where production serves a stub
    assert gw.routing.timeout_s >= 60  # a timeout fallback would read as a refusal
    # Content controls exactly as production serves them (with the domain's system prompt,
    # as `loopwright serve` fills it).
    prod = with_domain_defaults(settings.gateway.model_copy(update={"domain": settings.domain}))
    assert prod.augment.system_prompt.version == "helpdesk-v1"
    for layer in ("auth", "validation", "input_rails", "augment", "output_rails", "fallback"):
        assert getattr(gw, layer) == getattr(prod, layer), layer
    assert gw.encoders.guard_dir == str(tmp_path / "guard")


def test_served_identity_follows_content_and_answer_settings_not_the_port(
    tmp_path: Path,
) -> None:
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "config.json").write_text("{}")
    settings = _settings(tmp_path)
    gw = eval_gateway_settings(settings, "7", guard_dir=None, log_dir=tmp_path / "a")
    ident = served_identity(gw, policy, None)
    log = gw.log.model_copy(update={"spool_dir": "x"})
    moved = gw.model_copy(update={"port": 9999, "log": log})
    assert served_identity(moved, policy, None) == ident
    stricter = gw.model_copy(
        update={"input_rails": gw.input_rails.model_copy(update={"harmful_threshold": 0.1})}
    )
    assert served_identity(stricter, policy, None) != ident
    (policy / "config.json").write_text('{"changed": true}')
    assert served_identity(gw, policy, None) != ident

    target = GatewayTarget(
        uri="gateway+models:/shop-policy/7",
        base_url="http://127.0.0.1:1234/v1",
        model="shop-policy",
        identity=ident,
    )
    same_elsewhere = GatewayTarget(
        uri=target.uri, base_url="http://127.0.0.1:4321/v1", model="shop-policy", identity=ident
    )
    assert isinstance(target, EndpointTarget)  # the engine calls it as an endpoint
    assert target.model_id == same_elsewhere.model_id == f"gateway:{ident}"
