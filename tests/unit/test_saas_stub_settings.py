"""ext.saas-stub's settings: the packaged declaration's defaults, and refusals that name the setting."""

from __future__ import annotations

import pytest

from sandboxer.config.catalog import Catalog
from sandboxer.errors import ConfigError
from sandboxer.extensions.saas_stub.stub_settings import StubSettings, parse_stub_settings


def test_the_packaged_declaration_is_valid_and_claims_what_the_brief_says() -> None:
    decl = Catalog.load().extensions["ext.saas-stub"]
    settings = parse_stub_settings(decl.settings, decl.id)
    assert settings == StubSettings(latency_ms=50, failure_rate=0, max_live=10)
    assert decl.kind == "saas"
    caps = decl.capabilities
    assert (caps.pause, caps.snapshot, caps.exec) == (True, False, False)
    assert decl.pricing.per_second > 0
    assert decl.pricing.per_create > 0
    assert Catalog.load().profile("profile.saas-stub").extension == "ext.saas-stub"


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ({"latency": 5}, "settings.latency: unknown setting"),
        ({"failure_rate": 1.5}, "settings.failure_rate"),
        ({"max_live": -1}, "settings.max_live"),
        ({"latency_ms": "soon"}, "settings.latency_ms"),
    ],
)
def test_a_bad_setting_is_named_with_the_known_ones(raw: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_stub_settings(raw, "ext.saas-stub")
    assert named in caught.value.message
    assert (
        "latency_ms, failure_rate, max_live, down_after_create, seed, timeout_margin_s"
        in caught.value.message
    )
