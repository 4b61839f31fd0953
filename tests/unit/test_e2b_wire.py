"""ext.e2b's pure parts: the timeout arithmetic, the create body, what is read of answers,
and where the endpoint and key come from."""

from __future__ import annotations

from dataclasses import replace

import pytest

from sandboxer.config.catalog import Catalog
from sandboxer.config.network_policy import parse_policy
from sandboxer.errors import ConfigError, InvalidInput
from sandboxer.extensions.base import ProvisionRequest
from sandboxer.extensions.e2b.config import E2bSettings, parse_settings, resolve_endpoint
from sandboxer.extensions.e2b.wire import (
    create_body,
    descriptor,
    read_created,
    read_listed,
    resource_warnings,
    timeout_for,
)

NOW = "2026-12-02T10:00:00.000Z"


def test_the_timeout_is_the_ttl_left_plus_the_margin() -> None:
    settings = E2bSettings()
    assert timeout_for("2026-12-02T10:10:00.000Z", NOW, settings, ttl_fallback=0).seconds == 720
    assert timeout_for("2026-12-02T10:10:00.400Z", NOW, settings, ttl_fallback=0).seconds == 721


def test_a_past_or_imminent_expiry_still_gets_the_minimum() -> None:
    settings = E2bSettings(timeout_margin=0, min_timeout=60)
    assert timeout_for("2026-12-02T09:00:00.000Z", NOW, settings, ttl_fallback=0).seconds == 60


def test_without_an_expiry_the_fallback_ttl_is_used() -> None:
    assert timeout_for(None, NOW, E2bSettings(), ttl_fallback=1800).seconds == 1920


def test_the_plan_s_limit_cuts_the_timeout_and_says_so() -> None:
    cut = timeout_for(
        "2026-12-03T10:00:00.000Z", NOW, E2bSettings(max_timeout=3600), ttl_fallback=0
    )
    assert cut.seconds == 3600
    assert cut.warning is not None
    assert "settings.max_timeout" in cut.warning


def test_the_create_body_carries_template_timeout_labels_and_secrets() -> None:
    profile = Catalog.load().profile("profile.e2b-burst")
    request = ProvisionRequest(
        sandbox_id="abcd12345678",
        profile=profile,
        inputs={},
        secrets={"TOKEN": "s3cret"},
        project="team-a",
        generation=2,
        attempt=3,
    )
    body, warnings = create_body(request, "base", 900, "ext.e2b-eu")
    assert body == {
        "templateID": "base",
        "timeout": 900,
        "metadata": {
            "sandboxer_id": "abcd12345678",
            "sandboxer_extension": "ext.e2b-eu",
            "sandboxer_project": "team-a",
            "sandboxer_attempt": "2.3",  # the provisioning that makes it
        },
        "envVars": {"TOKEN": "s3cret"},
    }
    assert warnings == []


def test_an_ipv6_entry_is_refused_before_asking_e2b() -> None:
    """E2B's spec and docs make deny-all ``denyOut: 0.0.0.0/0``, all of IPv4 and nothing
    else: allowOut holds IPv4. Routing keeps such a policy away by the declaration's
    network_ipv6: false; a copy without it is caught here. Before, allowOut carried the
    IPv6 entry (2001:db8::1) for E2B to refuse or never apply."""
    profile = Catalog.load().profile("profile.e2b-burst")
    egress = ["192.0.2.7", "[2001:db8::/32]:443", "pypi.org"]
    request = ProvisionRequest(
        sandbox_id="abcd12345678",
        profile=profile.with_network(parse_policy({"egress": egress})),
        inputs={},
        project="team-a",
    )
    with pytest.raises(InvalidInput) as refused:
        create_body(request, "base", 900, "ext.e2b")
    assert refused.value.message == (
        "profile profile.e2b-burst: E2B's network.allowOut takes IPv4 addresses only and the "
        "network policy names IPv6 [2001:db8::/32]:443: name those destinations by domain or "
        "as IPv4, or route the profile elsewhere (and give the declaration network_ipv6: "
        "false, so routing does)"
    )
    ipv4 = profile.with_network(parse_policy({"egress": egress[::2]}))
    body, _ = create_body(replace(request, profile=ipv4), "base", 900, "ext.e2b")
    assert body["network"] == {"allowOut": ["192.0.2.7", "pypi.org"]}


def test_answers_are_read_without_their_tokens() -> None:
    created = read_created(
        {
            "sandboxID": "i123",
            "templateID": "t1",
            "clientID": "c",
            "envdVersion": "0.2.4",
            "envdAccessToken": "envd-secret",
            "trafficAccessToken": "traffic-secret",
            "domain": "e2b.example",
        }
    )
    assert "secret" not in repr(created)
    listed = read_listed(
        {
            "sandboxID": "i123",
            "templateID": "t1",
            "state": "running",
            "metadata": {"sandboxer_id": "abcd12345678"},
            "envdAccessToken": "envd-secret",
            "cpuCount": 2,
            "memoryMB": 512,
            "diskSizeMB": 10240,
        }
    )
    assert listed.ours == "abcd12345678"
    assert "secret" not in repr(listed)
    shown = descriptor(listed, "e2b.app")
    assert "secret" not in repr(shown)
    assert shown["port_url"] == "https://{port}-i123.e2b.app"


def test_a_size_other_than_the_profile_s_is_a_warning() -> None:
    profile = Catalog.load().profile("profile.e2b-burst")
    listed = read_listed({"sandboxID": "i1", "state": "running", "cpuCount": 8, "memoryMB": 512})
    [warning] = resource_warnings(profile, listed)
    assert "resources.cpu" in warning
    assert "gave 8" in warning


def test_settings_typos_and_bad_numbers_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"settings\.api_kye"):
        parse_settings({"api_kye": "env:X"}, "ext.e2b")
    with pytest.raises(ConfigError, match=r"settings\.request_timeout"):
        parse_settings({"request_timeout": 0}, "ext.e2b")


def test_endpoint_order_declaration_then_sdk_variables_then_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("E2B_API_KEY", "k-env")
    monkeypatch.delenv("E2B_API_URL", raising=False)
    monkeypatch.delenv("E2B_DOMAIN", raising=False)
    plain = resolve_endpoint(E2bSettings(), "ext.e2b")
    assert (plain.base_url, plain.domain, plain.key.source) == (
        "https://api.e2b.app",
        "e2b.app",
        "env:E2B_API_KEY",
    )
    monkeypatch.setenv("E2B_DOMAIN", "e2b.internal")
    assert resolve_endpoint(E2bSettings(), "ext.e2b").base_url == "https://api.e2b.internal"
    monkeypatch.setenv("E2B_API_URL", "http://127.0.0.1:3000/")
    assert resolve_endpoint(E2bSettings(), "ext.e2b").base_url == "http://127.0.0.1:3000"
    declared = resolve_endpoint(E2bSettings(domain="corp.example"), "ext.e2b")
    assert declared.base_url == "https://api.corp.example"  # the declaration beats the env
    declared = resolve_endpoint(E2bSettings(api_url="http://sbx:80"), "ext.e2b")
    assert declared.base_url == "http://sbx:80"


def test_a_missing_key_names_both_places_to_set_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("E2B_API_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"E2B_API_KEY.*settings\.api_key"):
        resolve_endpoint(E2bSettings(), "ext.e2b")
