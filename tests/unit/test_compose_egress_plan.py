"""ext.compose-ssh's egress allowlist compiled: what the proxy, compose and nftables are given."""

from __future__ import annotations

import asyncio
import ipaddress
import json
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from sandboxer.config.network_policy import parse_policy
from sandboxer.config.profile import Profile
from sandboxer.errors import InvalidInput
from sandboxer.extensions.base import ProvisionRequest
from sandboxer.extensions.compose_ssh.backend import _network_mode
from sandboxer.extensions.compose_ssh.egress_plan import (
    PROXY_PORT,
    Bridge,
    allowlist_override,
    bridge_of,
    egress_support,
    gate_bypasses,
    gate_leaks,
    network_name,
    nft_ruleset,
    proxy_config,
    tcp_only_entries,
    uncarried_entries,
    unsafe_services,
)
from sandboxer.extensions.compose_ssh.gate_proxy import GateProxy, address_target, load_addresses
from sandboxer.extensions.local.egress_proxy import Allowlist, Refused, load_allowlist


def test_names_go_to_the_proxy_with_their_ports() -> None:
    policy = parse_policy(
        {
            "egress": [
                "pypi.org:443",
                "*.pythonhosted.org",
                {"to": "a.test", "ports": [80, "8000-8100"]},
            ]
        }
    )
    config = proxy_config(policy, "10.89.0.1", None)
    assert config == {
        "listen": "10.89.0.1",
        "port": PROXY_PORT,
        "hosts_file": None,
        "domains": [
            {"pattern": "pypi.org", "ports": [[443, 443]]},
            {"pattern": "*.pythonhosted.org", "ports": []},
            {"pattern": "a.test", "ports": [[80, 80], [8000, 8100]]},
        ],
        "addresses": [],
    }
    allowlist = load_allowlist(config["domains"])  # the proxy reads it as it is
    assert allowlist.allows("pypi.org", 443)
    assert not allowlist.allows("pypi.org", 80)
    assert allowlist.allows("files.pythonhosted.org", 1234)
    assert not allowlist.allows("pythonhosted.org", 443)


def test_addresses_go_to_the_proxy_too_and_udp_only_entries_are_named() -> None:
    policy = parse_policy(
        {
            "egress": [
                "pypi.org:443",
                "10.0.0.0/8",
                "192.0.2.7:53/udp",
                "dns.test:53/udp",
                "b.test/tcp",
            ]
        }
    )
    assert uncarried_entries(policy) == ["192.0.2.7:53/udp", "dns.test:53/udp"]
    # Entries without a protocol ask for UDP too: the proxy carries their TCP half only.
    assert tcp_only_entries(policy) == ["pypi.org:443", "10.0.0.0/8"]
    config = proxy_config(policy, "10.89.0.1", "/srv/hosts")
    assert config["addresses"] == [{"network": "10.0.0.0/8", "ports": []}]
    assert [d["pattern"] for d in config["domains"]] == ["pypi.org", "b.test"]
    rules = load_addresses(config["addresses"])
    assert any(rule.allows(ipaddress.ip_address("10.9.9.9"), 5432) for rule in rules)
    assert not any(rule.allows(ipaddress.ip_address("192.0.2.7"), 53) for rule in rules)


def test_only_a_connect_to_an_address_literal_is_the_gates_to_decide() -> None:
    assert address_target(b"CONNECT 10.1.2.3:5432 HTTP/1.1\r\n\r\n") == ("10.1.2.3", 5432)
    assert address_target(b"CONNECT [2001:db8::1]:443 HTTP/1.1\r\nHost: x\r\n\r\n") == (
        "2001:db8::1",
        443,
    )
    for head in (
        b"CONNECT pypi.org:443 HTTP/1.1\r\n\r\n",  # a name: egress_proxy's
        b"GET http://10.1.2.3/ HTTP/1.1\r\n\r\n",  # plain HTTP: egress_proxy refuses it
        b"CONNECT 10.1.2.3 HTTP/1.1\r\n\r\n",
        b"CONNECT 10.1.2.3:0 HTTP/1.1\r\n\r\n",
        b"CONNECT 10.1.2.3:99999 HTTP/1.1\r\n\r\n",
        b"CONNECT 2001:db8::1:443 HTTP/1.1\r\n\r\n",
        b"CONNECT \xff:1 HTTP/1.1\r\n\r\n",
        b"CONNECT 10.1.2.3:443 SPDY/3\r\n\r\n",
    ):
        assert address_target(head) is None, head


def test_an_ipv4_mapped_literal_is_judged_as_the_ipv4_address_it_is() -> None:
    for literal in (b"[::ffff:169.254.169.254]", b"[::ffff:a9fe:a9fe]"):
        head = b"CONNECT " + literal + b":80 HTTP/1.1\r\n\r\n"
        assert address_target(head) == ("169.254.169.254", 80)


@pytest.mark.parametrize(
    "literal",
    [
        "::ffff:169.254.169.254",  # IPv4-mapped: an IPv4 connection to the metadata service
        "::ffff:127.0.0.1",
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
    ],
)
async def test_the_gate_refuses_ipv6_literals_that_carry_a_forbidden_ipv4_address(
    literal: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A profile entry covering every IPv6 address must not open the IPv4 ones they carry."""
    dialled: list[object] = []

    async def dial(*args: object, **kwargs: object) -> None:
        dialled.append(args)
        raise OSError("no dialling in a unit test")

    monkeypatch.setattr(asyncio, "open_connection", dial)
    gate = GateProxy(Allowlist(()), {}, load_addresses([{"network": "::/0", "ports": []}]))
    reader = asyncio.StreamReader()
    reader.feed_data(f"CONNECT [{literal}]:80 HTTP/1.1\r\n\r\n".encode())
    reader.feed_eof()
    with pytest.raises(Refused) as refused:
        await gate._serve(reader, cast(asyncio.StreamWriter, None))
    assert refused.value.status == 403, refused.value.reason
    assert dialled == []


def test_the_override_puts_every_service_on_the_egress_network_only() -> None:
    text = allowlist_override(["db", "web"], "sbx-abc12345", "10.89.0.1")
    document = yaml.safe_load(text)
    assert document["networks"] == {
        "sandboxer_egress": {"external": True, "name": network_name("sbx-abc12345")}
    }
    for name in ("db", "web"):
        service = document["services"][name]
        assert service["networks"] == ["sandboxer_egress"]
        assert service["environment"]["HTTPS_PROXY"] == f"http://10.89.0.1:{PROXY_PORT}"
        assert service["environment"]["http_proxy"] == f"http://10.89.0.1:{PROXY_PORT}"
        assert "localhost" in service["environment"]["NO_PROXY"]


def test_services_that_choose_their_own_network_are_found() -> None:
    compose = {
        "services": {
            "a": {"image": "x"},
            "b": {"networks": ["front"]},
            "c": {"network_mode": "host"},
        }
    }
    assert unsafe_services(compose) == ["b", "c"]
    assert unsafe_services(None) == []
    assert unsafe_services({"services": ["not", "a", "map"]}) == []


ALLOWLIST = Profile.model_validate(
    {
        "id": "profile.t",
        "extension": "ext.compose-ssh",
        "network": {"default": "deny", "egress": ["pypi.org:443"]},
    }
)


def mode_of(tmp_path: Path, compose: str, **others: str) -> str:
    """_network_mode of a repo holding ``compose.yml`` (and ``others``) under an allowlist."""
    for name, text in {"compose.yml": compose, **others}.items():
        (tmp_path / name).write_text(text)
    request = ProvisionRequest(sandbox_id="abcdefgh12", profile=ALLOWLIST, inputs={})
    return _network_mode(request, tmp_path / "compose.yml", "ext.compose-ssh")


BASE = "services:\n  base:\n    image: busybox\n    networks: [outside]\n"


@pytest.mark.parametrize(
    ("compose", "says"),
    [
        # compose merges base's networks with the override's: outside stays a way out
        (
            "services:\n  web:\n    image: busybox\n    extends: {file: base.yml, service: base}\n",
            "services web of compose.yml extend other services (extends:)",
        ),
        (
            "services:\n  web:\n    image: busybox\n    extends: base\n" + BASE[9:],
            "services base of compose.yml choose their own networks",
        ),
        ("include: [base.yml]\nservices:\n  web: {image: busybox}\n", "include"),
        # a tag PyYAML does not know: compose reads the file, so must we
        (
            "services:\n  web:\n    image: busybox\n    networks: [outside]\n"
            "    labels: !reset {}\nnetworks:\n  outside: {}\n",
            "tag '!reset' (line 5)",
        ),
        ("services: [web\n", "line 2"),
        ("- web\n", "not a mapping"),
        ("", "not a mapping"),
    ],
)
def test_compose_files_that_could_bypass_the_gate_are_refused(
    tmp_path: Path, compose: str, says: str
) -> None:
    with pytest.raises(InvalidInput) as refused:
        mode_of(tmp_path, compose, **{"base.yml": BASE})
    assert says in refused.value.message
    assert "\n" not in refused.value.message


def test_a_plain_compose_file_gets_the_allowlist(tmp_path: Path) -> None:
    assert mode_of(tmp_path, "services:\n  web: {image: busybox}\n") == "allowlist"
    reasons = gate_bypasses({"include": ["x.yml"], "services": {"a": {"extends": "b"}}}, "c.yml")
    assert len(reasons) == 2


def merged(**services: dict[str, Any]) -> dict[str, Any]:
    """A merged model as compose prints it, with the override's network."""
    egress = {"external": True, "name": network_name("sbx-abc12345")}
    return {"networks": {"sandboxer_egress": egress}, "services": services}


def test_the_merged_model_must_put_every_service_on_the_egress_network_alone() -> None:
    on = {"image": "x", "networks": {"sandboxer_egress": {}}}
    assert gate_leaks(merged(db=on, web={"networks": ["sandboxer_egress"]}), "sbx-abc12345") == []
    # docker-compose 1.29's `config` of a service extending one with networks: [outside]
    leaked = merged(db=on, web={"networks": {"outside": {}, "sandboxer_egress": {}}})
    assert gate_leaks(leaked, "sbx-abc12345") == [
        "services web would not be on the egress network alone (compose merged in other "
        "networks, a network_mode or an extends:)"
    ]
    for body in (
        {"networks": ["sandboxer_egress"], "network_mode": "host"},
        {"networks": ["sandboxer_egress"], "extends": {"service": "base"}},  # podman-compose
        {"image": "x"},  # no networks: the project's default network
        {"networks": "sandboxer_egress"},
        "not a service",
    ):
        assert "services web would not" in gate_leaks(merged(db=on, web=body), "sbx-abc12345")[0]
    redefined = merged(db=on)
    redefined["networks"]["sandboxer_egress"] = {"driver": "bridge"}
    assert "is not the sandbox's egress network" in gate_leaks(redefined, "sbx-abc12345")[0]
    assert gate_leaks(merged(db=on), "sbx-other1234")  # another sandbox's network
    for unreadable in (None, "text", {"services": None}, []):
        assert gate_leaks(unreadable, "sbx-abc12345") == [
            "compose printed no model of the stack's services"
        ]


def test_bridges_are_read_from_either_engine() -> None:
    docker = [
        {
            "Id": "fc4e12652f1a9de4",
            "IPAM": {"Config": [{"Subnet": "172.17.0.0/16", "Gateway": "172.17.0.1"}]},
            "Options": {},
        }
    ]
    podman = [
        {
            "network_interface": "podman3",
            "subnets": [
                {"subnet": "fd00::/64", "gateway": "fd00::1"},
                {"subnet": "10.89.2.0/24", "gateway": "10.89.2.1"},
            ],
        }
    ]
    assert bridge_of("docker", json.dumps(docker)) == Bridge("br-fc4e12652f1a", "172.17.0.1")
    assert bridge_of("podman", json.dumps(podman)) == Bridge("podman3", "10.89.2.1")


def test_hostile_or_odd_inspect_output_is_no_bridge() -> None:
    assert bridge_of("docker", "not json") is None
    assert bridge_of("docker", "[]") is None
    assert (
        bridge_of(
            "podman",
            json.dumps(
                [{"network_interface": "x; rm -rf /", "subnets": [{"gateway": "10.0.0.1"}]}]
            ),
        )
        is None
    )
    assert (
        bridge_of(
            "podman",
            json.dumps(
                [{"network_interface": "podman1", "subnets": [{"gateway": "10.0.0.1 accept"}]}]
            ),
        )
        is None
    )
    assert (
        bridge_of("podman", json.dumps([{"network_interface": "podman1", "subnets": []}])) is None
    )


def test_the_rules_let_the_bridge_reach_only_the_proxy_and_dns() -> None:
    rules = nft_ruleset("sbx_compose_abc12345", Bridge("podman1", "10.89.0.1"))
    assert rules.startswith("table inet sbx_compose_abc12345 {")
    lines = [line.strip() for line in rules.splitlines()]
    assert 'iifname "podman1" oifname "podman1" accept' in lines
    assert lines.index('iifname "podman1" oifname "podman1" accept') < lines.index(
        'iifname "podman1" drop'
    )
    assert f'iifname "podman1" ip daddr 10.89.0.1 tcp dport {PROXY_PORT} accept' in lines
    assert 'iifname "podman1" ip daddr 10.89.0.1 udp dport 53 accept' in lines
    assert lines.count('iifname "podman1" drop') == 2  # forward and input both end so


def test_host_support_names_what_is_missing() -> None:
    assert egress_support("python3 yes\nnft yes\nsetsid yes\npython3_version 3.11\n") == {
        "ready": True,
        "python3": "3.11",
    }
    report = egress_support("python3 yes\nnft no\nsetsid yes\npython3_version 3.7\n")
    assert report["ready"] is False
    assert report["missing"] == ["python3 >= 3.9 (found 3.7)", "nft (apt nftables)"]
    assert egress_support("")["missing"][0].startswith("python3 ")
    tools = "python3 yes\nnft yes\nsetsid yes\npython3_version 3.11\n"
    assert egress_support(tools + "podman_network_backend netavark\n")["ready"] is True
    cni = egress_support(tools + "podman_network_backend cni\n")
    assert cni["ready"] is False
    assert "netavark" in cni["missing"][0]
