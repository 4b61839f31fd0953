"""ext.daytona's pure parts: settings, the create body, the leak backstop, state meanings."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sandboxer.config.catalog import Catalog
from sandboxer.config.profile import Network, Profile, Resources, Setup
from sandboxer.errors import ConfigError, InvalidInput
from sandboxer.extensions.daytona import plan
from sandboxer.extensions.daytona.config import DEFAULT_API_URL, DaytonaConfig

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def daytona_profile(**update: Any) -> Profile:
    return Catalog.load().profile("profile.daytona").model_copy(update=update)


def body_for(profile: Profile, **given: Any) -> plan.CreatePlan:
    fields: dict[str, Any] = {
        "sandbox_id": "unitplan01",
        "extension": "ext.daytona",
        "profile": profile,
        "project": None,
        "expires_at": None,
        "env": {},
        "target": None,
        "grace_minutes": 15,
        "now": NOW,
    }
    return plan.plan_create(**{**fields, **given})


class TestConfig:
    def test_the_packaged_settings_are_valid(self) -> None:
        decl = Catalog.load().extensions_enabled()["ext.daytona"]
        config = DaytonaConfig.from_settings(decl.settings)
        assert (config.poll_interval, config.ready_timeout) == (1.0, 600.0)
        assert "api_key" not in decl.settings  # the SDK's DAYTONA_API_KEY applies

    @pytest.mark.parametrize(
        ("settings", "complaint"),
        [
            ({"api_token": "x"}, "unknown settings api_token"),
            ({"poll_interval": 0}, "settings.poll_interval must be a positive number"),
            ({"ready_timeout": "soon"}, "settings.ready_timeout must be a positive number"),
            ({"exec_timeout": True}, "settings.exec_timeout must be a positive number"),
            ({"workdir": "home/daytona"}, "settings.workdir must be an absolute path"),
        ],
    )
    def test_bad_settings_are_named(self, settings: dict[str, Any], complaint: str) -> None:
        with pytest.raises(ConfigError, match=complaint):
            DaytonaConfig.from_settings(settings)

    def test_settings_win_over_the_sdk_variables(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("DAYTONA_API_URL", "http://from-env/api")
        monkeypatch.setenv("DAYTONA_API_KEY", "env-key")
        monkeypatch.setenv("DAYTONA_TARGET", "eu")
        endpoint = DaytonaConfig.from_settings({}).endpoint()
        assert (endpoint.api_url.value, endpoint.key.source) == (
            "http://from-env/api",
            "env:DAYTONA_API_KEY",
        )
        assert endpoint.target is not None
        assert endpoint.target.value == "eu"
        given = DaytonaConfig.from_settings({"api_url": "http://self-hosted/api", "api_key": "k"})
        endpoint = given.endpoint()
        assert (endpoint.api_url.value, endpoint.key.source) == (
            "http://self-hosted/api",
            "settings.api_key",
        )

    def test_a_key_reference_names_its_source(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        for name in ("DAYTONA_API_URL", "DAYTONA_API_KEY", "DAYTONA_TARGET"):
            monkeypatch.delenv(name, raising=False)
        key_file = tmp_path / "key"
        key_file.write_text("file-key\n")
        endpoint = DaytonaConfig.from_settings({"api_key": f"file:{key_file}"}).endpoint()
        assert endpoint.api_url.value == DEFAULT_API_URL
        assert endpoint.key.source == f"settings.api_key (file:{key_file})"
        assert endpoint.target is None
        with pytest.raises(ConfigError, match="DAYTONA_API_KEY"):
            DaytonaConfig.from_settings({}).endpoint()


class TestCreateBody:
    def test_a_snapshot_profile(self) -> None:
        made = body_for(
            daytona_profile(),
            extension="ext.daytona-eu",
            project="acme",
            env={"TOKEN": "t"},
            target="eu",
            made_by=(2, 3),
        )
        assert made.body == {
            "name": "sandboxer-unitplan01",
            "labels": {
                "sandboxer_id": "unitplan01",
                "sandboxer_project": "acme",
                "sandboxer_extension": "ext.daytona-eu",  # the declaration that makes it
                "sandboxer_attempt": "2.3",  # the provisioning that makes it
                "sandboxer_labels": "2",
            },
            "env": {"TOKEN": "t"},
            "autoStopInterval": 60 + 15,  # profile.daytona's default TTL is 1h
            "autoDeleteInterval": 15,
            "target": "eu",
            "snapshot": "daytonaio/sandbox:0.4.3",
        }
        assert made.warnings == []

    def test_what_is_not_enforced_is_warned(self) -> None:
        profile = daytona_profile(
            network=Network(default="deny"),
            setup=Setup(instructions=["make"]),
            resources=Resources(memory_mb=4096),
        )
        made = body_for(profile)
        warnings = " | ".join(made.warnings)
        assert made.body["networkBlockAll"] is True  # deny is enforced now (docs/network.md)
        assert "by destination" not in warnings  # no entry has ports
        assert "essential services" in warnings  # but Daytona's stay reachable
        assert "setup.instructions are not run" in warnings
        assert "fixes cpu, memory, disk and gpu" in warnings
        assert "memory" not in body_for(profile).body

    @pytest.mark.parametrize(
        ("egress", "fields"),
        [
            (["10.1.2.0/24", "192.0.2.7"], {"networkAllowList": "10.1.2.0/24,192.0.2.7/32"}),
            (
                ["PyPI.org.", "*.pythonhosted.org"],
                {"domainAllowList": "pypi.org,*.pythonhosted.org"},
            ),
            (
                ["*.pypi.org:443", "10.0.0.0/8", "pypi.org:80", "files.example.org/tcp"],
                {
                    "networkAllowList": "10.0.0.0/8",
                    "domainAllowList": "*.pypi.org,pypi.org,files.example.org",
                },
            ),
        ],
    )
    def test_an_allowlist_sends_addresses_and_names_each_in_its_list(
        self, egress: list[str], fields: dict[str, str]
    ) -> None:
        """Daytona's CreateSandbox has networkAllowList (CIDRs) and domainAllowList (names,
        ``*.`` wildcards); a name entry was refused before (InvalidInput) though the spec
        takes it. Ports are dropped, as for addresses, and the ready warning says so."""
        made = body_for(daytona_profile(network=Network(egress=egress)))
        sent = {
            k: made.body[k]
            for k in ("networkBlockAll", "networkAllowList", "domainAllowList")
            if k in made.body
        }
        assert sent == fields
        ported = [e for e in Network(egress=egress).egress if ":" in e or "/tcp" in e]
        assert [w for w in made.warnings if "by destination" in w] == (
            [
                "network: Daytona allows egress by destination, not by port or protocol: "
                f"{', '.join(ported)} reach every port of their destination"
            ]
            if ported
            else []
        )

    @pytest.mark.parametrize(
        ("network", "warned"),
        [
            (Network(default="allow"), False),
            (Network(default="deny"), True),
            (Network(egress=["10.0.0.0/8"]), True),
            (Network(egress=["*.pypi.org"]), True),
        ],
    )
    def test_daytona_s_essential_services_are_warned_of_under_deny_and_allowlists(
        self, network: Network, warned: bool
    ) -> None:
        """Daytona's docs: "essential services are available on all tiers" (package and
        container registries, Git, CDNs, ...), and a tier 1 or 2 organisation's own
        restrictions take precedence: a deny or allowlist policy does not hold alone there.
        The ready warnings said nothing of it before."""
        made = body_for(daytona_profile(network=network))
        essential = [w for w in made.warnings if "essential services" in w]
        assert essential == (
            [
                "network: Daytona keeps its essential services (package registries, container "
                "registries, Git repositories, CDNs, platform services, system package "
                "managers) reachable under any policy, deny included; on a tier 1 or 2 "
                "organisation Daytona's own restrictions also take precedence over the "
                "policy's allowlist"
            ]
            if warned
            else []
        )

    def test_addresses_are_sent_as_the_fewest_cidr_blocks(self) -> None:
        egress = ["10.0.0.128/25:443", "10.0.0.0/25", "10.0.0.7", "192.0.2.7", "10.0.1.0/25"]
        egress += ["10.0.1.128/25", "192.0.2.7:22"]
        made = body_for(daytona_profile(network=Network(egress=egress)))
        assert made.body["networkAllowList"] == "10.0.0.0/23,192.0.2.7/32"

    def test_an_ipv6_entry_is_refused_before_asking_daytona(self) -> None:
        """Daytona's docs: "Use networkAllowList for IPv4 CIDR ranges". Routing keeps such a
        policy away by the declaration's network_ipv6: false; a copy of the declaration
        without it is caught here, naming the entries and the fix. Before, the IPv6 block
        was sent (2001:db8::1/128), for Daytona to refuse or drop."""
        egress = ["192.0.2.7", "[2001:db8::1]:53/udp", "pypi.org"]
        with pytest.raises(InvalidInput) as refused:
            body_for(daytona_profile(network=Network(egress=egress)))
        assert refused.value.message == (
            "profile profile.daytona: Daytona's networkAllowList takes IPv4 addresses only and "
            "the network policy names IPv6 [2001:db8::1]:53/udp: name those destinations by "
            "domain or as IPv4, or route the profile elsewhere (and give the declaration "
            "network_ipv6: false, so routing does)"
        )
        ipv4 = body_for(daytona_profile(network=Network(egress=egress[::2]))).body
        assert (ipv4["networkAllowList"], ipv4["domainAllowList"]) == ("192.0.2.7/32", "pypi.org")

    def test_more_cidr_blocks_than_daytona_takes_are_refused_before_asking_it(self) -> None:
        """Routing keeps such a policy away by the declaration's network_max_cidrs; a copy of
        the declaration without it is caught here, with the limit and the fix."""
        six = ["192.0.2.1", "192.0.2.3", "192.0.2.5", "192.0.2.7", "192.0.2.9", "192.0.2.11"]
        with pytest.raises(InvalidInput) as refused:
            body_for(daytona_profile(network=Network(egress=six)))
        assert refused.value.message == (
            "profile profile.daytona: Daytona's networkAllowList takes at most 5 CIDR blocks and "
            "the network policy's address entries make 6: cover them with 5 or fewer wider "
            "CIDRs or name them by domain, or route the profile elsewhere (and give the "
            "declaration network_max_cidrs: 5, so routing does)"
        )
        assert body_for(daytona_profile(network=Network(egress=six[:5]))).body[
            "networkAllowList"
        ] == ",".join(f"{a}/32" for a in six[:5])

    @pytest.mark.parametrize(
        ("gpu", "fields"),
        [("H100", {"gpu": 1, "gpuType": ["H100"]}), ("2", {"gpu": 2}), (None, {})],
    )
    def test_an_image_profile_is_sized(self, gpu: str | None, fields: dict[str, Any]) -> None:
        resources = Resources(cpu=0.5, memory_mb=1025, disk_mb=3072, gpu=gpu)
        made = body_for(
            daytona_profile(image="image:ghcr.io/acme/ci@sha256:ab", resources=resources)
        )
        assert made.body["buildInfo"] == {"dockerfileContent": "FROM ghcr.io/acme/ci@sha256:ab\n"}
        sized = {
            k: made.body[k] for k in ("cpu", "memory", "disk", "gpu", "gpuType") if k in made.body
        }
        assert sized == {"cpu": 1, "memory": 2, "disk": 3, **fields}

    @pytest.mark.parametrize(
        ("update", "complaint"),
        [
            ({"image": None}, "names no image"),
            ({"image": "  "}, "names no image"),
            ({"image": "image:ubuntu\nRUN curl evil"}, "not a container image reference"),
            ({"image": "image:x", "resources": Resources(gpu="A100")}, "not a count or one of"),
        ],
    )
    def test_refusals(self, update: dict[str, Any], complaint: str) -> None:
        with pytest.raises(InvalidInput, match=complaint):
            body_for(daytona_profile(**update))


def test_the_labels_say_which_declaration_made_the_sandbox() -> None:
    """Before the labels named the declaration, every sandbox said ext.daytona: one saying
    so without the labels' version may be any declaration's (None: the log decides)."""
    assert plan.maker(plan.our_labels("unitmake01", None, "ext.daytona")) == "ext.daytona"
    assert plan.maker(plan.our_labels("unitmake01", "p", "ext.daytona-eu")) == "ext.daytona-eu"
    older = {"sandboxer_id": "unitmake01", "sandboxer_extension": "ext.daytona"}
    assert plan.maker(older) is None
    assert plan.maker({"sandboxer_id": "unitmake01"}) is None


class TestLeakBackstop:
    def test_the_ttl_remaining_plus_the_grace(self) -> None:
        assert plan.auto_stop_minutes("2030-01-01T13:00:00Z", 0, 15, NOW) == 75
        assert plan.auto_stop_minutes("2030-01-01T12:00:30+00:00", 0, 15, NOW) == 16
        assert plan.auto_stop_minutes("2030-01-01T11:00:00", 0, 15, NOW) == 15  # already past
        assert plan.auto_stop_minutes(None, 7200, 15, NOW) == 135
        assert plan.auto_stop_minutes(None, 0, 0, NOW) == 1  # 0 would disable the auto-stop

    def test_expires_at_from_the_request_sets_the_body(self) -> None:
        made = body_for(daytona_profile(), expires_at="2030-01-01T14:00:00Z")
        assert made.body["autoStopInterval"] == 135


@pytest.mark.parametrize(
    ("state", "alive"),
    [
        ("started", True),
        ("creating", True),
        ("stopped", True),
        ("archived", True),
        ("error", False),
        ("build_failed", False),
        ("destroyed", False),
    ],
)
def test_states(state: str, alive: bool) -> None:
    assert plan.is_alive(state) is alive
