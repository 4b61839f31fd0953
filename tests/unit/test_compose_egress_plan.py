"""ext.compose-ssh's egress allowlist compiled: what the proxy, compose and nftables are given."""

from __future__ import annotations

import ipaddress
import json

import yaml

from sandboxer.config.network_policy import parse_policy
from sandboxer.extensions.compose_ssh.egress_plan import (
    PROXY_PORT,
    Bridge,
    allowlist_override,
    bridge_of,
    egress_support,
    network_name,
    nft_ruleset,
    proxy_config,
    uncarried_entries,
    unsafe_services,
)
from sandboxer.extensions.compose_ssh.gate_proxy import address_target, load_addresses
from sandboxer.extensions.local.egress_proxy import load_allowlist


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
