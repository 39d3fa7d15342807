"""The configured domain is found by name, and a wrong one fails saying what is valid."""

import pytest

from loopwright.config import ConfigError, load_settings
from loopwright.domain import Domain, DomainError, load_domain


def test_the_default_domain_provides_every_part_the_loop_needs():
    domain = load_domain(load_settings("local", env={}).domain)
    assert isinstance(domain, Domain)
    assert domain.is_safe_response("I can't help with that request.")
    assert not domain.is_safe_response("The Pro plan costs $20 per month.")
    assert (domain.suite_dir() / "correctness.yaml").is_file()
    assert domain.is_safe_response(domain.refusal_text())


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("examples.helpdesk.plugin", "package.module:attribute"),
        ("no_such_module_xyz:domain", "cannot be imported"),
        ("examples.helpdesk.plugin:nothing", "no attribute 'nothing'"),
        ("examples.helpdesk.plugin:Path", "lacks"),
    ],
)
def test_a_wrong_domain_fails_naming_the_problem(spec, message):
    with pytest.raises(DomainError, match=message):
        load_domain(spec)


def test_config_rejects_a_malformed_domain_setting():
    with pytest.raises(ConfigError, match="domain"):
        load_settings("local", env={"LOOPWRIGHT_DOMAIN": "not a module path"})


class _Shop:
    """A module domain of a user's own: the example's parts, its own app name."""

    def __init__(self, app: str | None) -> None:
        from examples.helpdesk.plugin import domain

        self._parts = domain
        if app is not None:
            self.app = app

    def __getattr__(self, name: str):
        if name == "app":  # only what __init__ set
            raise AttributeError(name)
        return getattr(self._parts, name)


@pytest.mark.parametrize(
    ("app", "env", "expected"),
    [
        ("shop", {}, "shop"),  # the domain names its app
        (None, {}, "loopwright"),  # it names none: the generic default
        ("shop", {"LOOPWRIGHT_APP": "mine"}, "mine"),  # the profile or environment wins
    ],
)
def test_the_app_is_the_domains_unless_configured(monkeypatch, app, env, expected):
    import sys
    import types

    module = types.ModuleType("shop_domain_for_test")
    module.domain = _Shop(app)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "shop_domain_for_test", module)
    settings = load_settings(
        "local", env={"LOOPWRIGHT_DOMAIN": "shop_domain_for_test:domain", **env}
    )
    assert settings.app == expected
    assert load_settings("local", env={}).app == "helpdesk"  # the example's own


def test_a_domain_app_that_is_no_registry_name_fails(monkeypatch):
    import sys
    import types

    module = types.ModuleType("bad_app_domain_for_test")
    module.domain = _Shop("Shop Front")  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "bad_app_domain_for_test", module)
    with pytest.raises(ConfigError, match="the domain's app 'Shop Front' must match"):
        load_settings("local", env={"LOOPWRIGHT_DOMAIN": "bad_app_domain_for_test:domain"})
