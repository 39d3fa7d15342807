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
