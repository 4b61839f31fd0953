"""ext.local egress, the parts without I/O: the input's checks, the rules, addresses, and
the proxy's parsers and name matching (slot allocation: test_host_slots.py)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import ssl
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandboxer.config.network_policy import parse_policy
from sandboxer.errors import InvalidInput
from sandboxer.extensions.local.egress_policy import (
    DENY,
    SLOTS,
    AddressRule,
    DomainRule,
    LocalEgress,
    host_ruleset,
    network_for,
    proxy_env,
    sandbox_ruleset,
)
from sandboxer.extensions.local.egress_proxy import (
    Allowlist,
    NotClientHello,
    Refused,
    _is_forbidden_target,
    client_hello_server_name,
    embedded_ipv4,
    normalize_name,
    parse_request,
    read_hosts_file,
    valid_pattern,
)
from sandboxer.extensions.local.steps import compile_policy

NAME = "abcdef12-0badf00d"


def net4(text: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(text)


def test_deny_is_loopback_only() -> None:
    assert DENY.denies_all
    assert not LocalEgress(allow_all=True).denies_all
    assert not LocalEgress(domains=(DomainRule("pypi.org"),)).denies_all


@pytest.mark.parametrize(
    ("egress", "reason"),
    [
        (LocalEgress(addresses=(AddressRule(net4("169.254.0.0/16")),)), "link-local"),
        (LocalEgress(addresses=(AddressRule(net4("169.254.169.254/32")),)), "link-local"),
        (LocalEgress(addresses=(AddressRule(net4("10.0.0.0/8"), ((0, 80),)),)), "ports"),
        (LocalEgress(addresses=(AddressRule(net4("10.0.0.0/8"), ((90, 80),)),)), "ports"),
        (LocalEgress(addresses=(AddressRule(net4("10.0.0.0/8"), ((1, 65536),)),)), "ports"),
        (LocalEgress(addresses=(AddressRule(net4("10.0.0.0/8"), protocol="icmp"),)), "protocol"),  # type: ignore[arg-type]
        (LocalEgress(addresses=(AddressRule("10.0.0.0/8"),)), "not a network"),  # type: ignore[arg-type]
        (LocalEgress(domains=(DomainRule("10.0.0.1"),)), "not a host name"),
        (LocalEgress(domains=(DomainRule("a.*.org"),)), "not a host name"),
        (LocalEgress(domains=(DomainRule('x" accept; flush ruleset'),)), "not a host name"),
        (LocalEgress(domains=(DomainRule("PyPI.org"),)), "not a host name"),
        (LocalEgress(domains=(DomainRule("pypi.org", ((443, 80),)),)), "ports"),
    ],
)
def test_hostile_or_wrong_input_is_refused_with_a_reason(egress: LocalEgress, reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason):
        egress.check()


def test_link_local_stays_refused_under_wide_rules_and_allow_all() -> None:
    net = network_for(NAME, SLOTS[0])
    wide = LocalEgress(addresses=(AddressRule(net4("0.0.0.0/0")),))
    wide.check()
    rules = sandbox_ruleset(wide, net, proxy=False)
    assert rules.index("ip daddr 169.254.0.0/16 goto refuse") < rules.index("ip daddr 0.0.0.0/0")
    everything = LocalEgress(allow_all=True)
    everything.check()
    rules = sandbox_ruleset(everything, net, proxy=False)
    assert rules.index("ip daddr 169.254.0.0/16 goto refuse") < rules.index("    accept\n")


def test_slot_addresses_names_and_reserved_blocks() -> None:
    net = network_for(NAME, 64)
    assert (str(net.gateway), str(net.address)) == ("169.254.1.1", "169.254.1.2")
    assert net.namespace == f"sbx-{NAME}"
    assert net.host_table == "sbx_abcdef12_0badf00d"
    assert net.host_interface == "sbxh64"
    assert max(len(network_for(NAME, slot).host_interface) for slot in SLOTS) <= 15
    covered = {ipaddress.ip_address(str(network_for(NAME, slot).gateway)) for slot in SLOTS}
    assert not any(address in net4("169.254.168.0/22") for address in covered)
    assert not any(address in net4("169.254.0.0/24") for address in covered)
    assert not any(address in net4("169.254.255.0/24") for address in covered)
    with pytest.raises(ValueError, match="outside"):
        network_for(NAME, 0)


def test_sandbox_rules_drop_by_default_and_allow_only_what_is_listed() -> None:
    egress = LocalEgress(
        addresses=(
            AddressRule(net4("10.1.0.0/16"), ((443, 443), (8000, 8100)), "tcp"),
            AddressRule(net4("10.2.0.5/32"), protocol="udp"),
            AddressRule(net4("10.3.0.0/24"), ((53, 53),)),
            AddressRule(ipaddress.IPv6Network("2001:db8::/32")),
        ),
        domains=(DomainRule("pypi.org"),),
    )
    net = network_for(NAME, 100)
    rules = sandbox_ruleset(egress, net, proxy=True)
    assert "policy drop;" in rules
    assert 'oifname "lo" accept' in rules
    assert "ct state established,related accept" in rules
    assert f"ip daddr {net.gateway} tcp dport 3128 accept" in rules
    assert "ip daddr 10.1.0.0/16 meta l4proto tcp th dport { 443, 8000-8100 } accept" in rules
    assert "ip daddr 10.2.0.5/32 meta l4proto udp accept" in rules
    assert "ip daddr 10.3.0.0/24 meta l4proto { tcp, udp } th dport { 53 } accept" in rules
    assert "ip6 daddr 2001:db8::/32 accept" in rules
    assert "meta l4proto tcp reject with tcp reset" in rules
    assert rules.rstrip().endswith("}")
    assert "\n    accept\n" not in rules  # no allow-all without allow_all
    no_proxy = sandbox_ruleset(egress, net, proxy=False)
    assert "3128" not in no_proxy


def test_host_rules_keep_the_sandbox_away_from_the_host_except_its_proxy() -> None:
    net = network_for(NAME, 100)
    rules = host_ruleset(net, proxy=True)
    iface = f'iifname "{net.host_interface}"'
    assert f"{iface} ip daddr {net.gateway} tcp dport 3128 accept" in rules
    assert rules.index("tcp dport 3128 accept") < rules.index(f"{iface} meta l4proto tcp reject")
    assert f"{iface} ip daddr 169.254.0.0/16 drop" in rules
    assert f"ip saddr {net.address}" in rules
    assert "masquerade" in rules
    assert "3128" not in host_ruleset(net, proxy=False)
    assert proxy_env(net)["HTTPS_PROXY"] == f"http://{net.gateway}:3128"


def test_names_and_patterns() -> None:
    assert normalize_name("PyPI.org.") == "pypi.org"
    for bad in ("", "10.0.0.1", "-a.org", "a..org", "a_b.org", "ü.org", "a" * 64 + ".org"):
        assert normalize_name(bad) is None, bad
    assert valid_pattern("*.pypi.org")
    assert valid_pattern("pypi.org")
    for bad in ("*", "*.", "a.*.org", "**.org", "pypi.org/x", "::1"):
        assert not valid_pattern(bad), bad
    rules = Allowlist((("pypi.org", ()), ("*.files.test", ((443, 443),))))
    assert rules.allows("pypi.org", 8080)
    assert not rules.allows("x.pypi.org", 443)  # a name does not allow its subdomains
    assert rules.allows("a.files.test", 443)
    assert rules.allows("a.b.files.test", 443)
    assert not rules.allows("files.test", 443)  # a wildcard does not allow the name itself
    assert not rules.allows("evilfiles.test", 443)
    assert not rules.allows("a.files.test", 80)


def test_a_name_with_a_newline_in_it_is_no_name() -> None:
    # '$' with match() also matches before a final newline: each label must match whole.
    for bad in ("evil\n.pypi.org", "pypi\n.org", "pypi.org\n.x"):
        assert normalize_name(bad) is None, bad
        assert not valid_pattern("*." + bad), bad
    with pytest.raises(Refused):
        parse_request(b"GET\n / HTTP/1.1\r\nHost: pypi.org\r\n\r\n")


@pytest.mark.parametrize(
    "address",
    [
        "169.254.169.254",
        "::ffff:169.254.169.254",  # IPv4-mapped: a dual-stack socket connects to the IPv4 one
        "::ffff:a9fe:a9fe",
        "::ffff:127.0.0.1",
        "::169.254.169.254",  # IPv4-compatible
        "64:ff9b::169.254.169.254",  # NAT64
        "2002:a9fe:a9fe::1",  # 6to4
        "2002:7f00:1::1",
        "::1",
        "fe80::1",
    ],
)
def test_addresses_of_the_host_and_local_links_are_forbidden_in_any_spelling(
    address: str,
) -> None:
    assert _is_forbidden_target(address)


def test_ipv6_addresses_are_judged_by_the_ipv4_address_they_carry() -> None:
    v4 = ipaddress.IPv4Address("198.51.100.7")
    for spelling in ("::ffff:198.51.100.7", "::198.51.100.7", "64:ff9b::c633:6407"):
        assert embedded_ipv4(ipaddress.ip_address(spelling)) == v4, spelling
    assert embedded_ipv4(ipaddress.ip_address("2002:c633:6407::1")) == v4
    assert embedded_ipv4(ipaddress.ip_address("2001:db8::1")) is None
    assert embedded_ipv4(v4) is None
    # An ordinary outside address stays allowed in each spelling (nothing here binds it).
    for spelling in ("198.51.100.7", "::ffff:198.51.100.7", "64:ff9b::c633:6407"):
        assert not _is_forbidden_target(spelling), spelling


def test_requests_are_routed_by_their_target_and_checked() -> None:
    connect = parse_request(b"CONNECT PyPI.org:443 HTTP/1.1\r\nHost: pypi.org:443\r\n\r\n")
    assert (connect.method, connect.host, connect.port, connect.head) == (
        "CONNECT",
        "pypi.org",
        443,
        b"",
    )
    absolute = parse_request(
        b"GET http://pypi.org/simple/?q=1 HTTP/1.1\r\nHost: pypi.org\r\n"
        b"Proxy-Connection: keep-alive\r\nProxy-Authorization: x\r\n\r\n"
    )
    assert (absolute.host, absolute.port) == ("pypi.org", 80)
    assert absolute.head == b"GET /simple/?q=1 HTTP/1.1\r\nHost: pypi.org\r\n\r\n"
    origin = parse_request(b"GET /x HTTP/1.0\r\nHost: files.test:8080\r\n\r\n")
    assert (origin.host, origin.port) == ("files.test", 8080)


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"CONNECT pypi.org HTTP/1.1\r\n\r\n", 400),  # no port
        (b"CONNECT 10.0.0.1:443 HTTP/1.1\r\n\r\n", 403),  # an address, not a name
        (b"CONNECT [::1]:443 HTTP/1.1\r\n\r\n", 403),
        (b"CONNECT pypi.org:99999 HTTP/1.1\r\n\r\n", 400),
        (b"GET http://pypi.org@evil.test/ HTTP/1.1\r\n\r\n", 400),  # userinfo
        (b"GET https://pypi.org/ HTTP/1.1\r\n\r\n", 400),
        (b"GET http://pypi.org/ HTTP/1.1\r\nHost: evil.test\r\n\r\n", 403),
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a.test\r\n folded\r\n\r\n", 400),
        (b"GET / HTTP/2\r\nHost: a.test\r\n\r\n", 400),
        (b"G\xc3\xa9T / HTTP/1.1\r\n\r\n", 400),
        (b"\r\n\r\n", 400),
    ],
)
def test_malformed_or_misleading_requests_are_refused(head: bytes, status: int) -> None:
    with pytest.raises(Refused) as refused:
        parse_request(head)
    assert refused.value.status == status


def _client_hello(server_name: str | None) -> bytes:
    """The handshake message a real TLS client sends first (records stripped)."""
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    if server_name is None:
        context.check_hostname = False
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    records = outgoing.read()
    message = b""
    while records:
        length = int.from_bytes(records[3:5], "big")
        message += records[5 : 5 + length]
        records = records[5 + length :]
    return message


def test_the_server_name_is_read_from_a_real_client_hello() -> None:
    assert client_hello_server_name(_client_hello("pkg.allowed.test")) == "pkg.allowed.test"


def test_a_client_hello_without_a_name_has_none() -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    records = outgoing.read()
    assert client_hello_server_name(records[5:]) is None


def test_truncated_client_hellos_are_refused_not_crashed_on() -> None:
    message = _client_hello("pkg.allowed.test")
    for cut in range(len(message) - 1):
        try:
            name = client_hello_server_name(message[:cut])
        except NotClientHello:
            continue
        assert name in {None, "pkg.allowed.test"}


@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_crash_the_client_hello_parser(data: bytes) -> None:
    # Framed as a ClientHello of the right length, so the parser gets past the first bytes.
    for message in (data, b"\x01" + len(data).to_bytes(3, "big") + data):
        with contextlib.suppress(NotClientHello):
            assert client_hello_server_name(message) is None or isinstance(
                client_hello_server_name(message), str
            )


def test_hosts_file(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("# comment\n198.18.0.2 a.test B.test  # trailing\nnot-an-address x.test\n\n")
    assert read_hosts_file(hosts) == {"a.test": ["198.18.0.2"], "b.test": ["198.18.0.2"]}
    assert read_hosts_file(None) == {}


def test_the_profile_policy_compiles_to_what_ext_local_enforces() -> None:
    assert compile_policy(parse_policy({"default": "deny"})) == DENY
    assert compile_policy(parse_policy({"default": "allow", "egress": ["10.0.0.1"]})) == (
        LocalEgress(allow_all=True)
    )
    egress = compile_policy(
        parse_policy(
            {
                "default": "deny",
                "egress": [
                    "10.1.2.0/24:443,8000-8100/tcp",
                    "10.0.0.53:53/udp",
                    "[2001:db8::1]:80",
                    "pypi.org:443",
                    "*.files.test",
                    "dns.test:53/udp",
                    "169.254.169.254",
                ],
            }
        )
    )
    assert egress.addresses == (
        AddressRule(net4("10.1.2.0/24"), ((443, 443), (8000, 8100)), "tcp"),
        AddressRule(net4("10.0.0.53/32"), ((53, 53),), "udp"),
        AddressRule(ipaddress.IPv6Network("2001:db8::1/128"), ((80, 80),)),
    )
    assert egress.domains == (DomainRule("pypi.org", ((443, 443),)), DomainRule("*.files.test"))
    egress.check()
    assert len(egress.warnings) == 3
    assert "dns.test:53/udp" in egress.warnings[0]
    assert "169.254.169.254" in egress.warnings[1]
    # Name entries without a protocol get their TCP half; the warning names them and the fix.
    assert egress.warnings[2].startswith("egress pypi.org:443, *.files.test: UDP not provided")
    assert "(pypi.org:443/tcp)" in egress.warnings[2]
    only_unenforceable = compile_policy(parse_policy({"egress": ["dns.test:53/udp"]}))
    assert only_unenforceable.denies_all
    assert only_unenforceable.warnings


async def test_the_proxys_waits_end_in_the_builtin_timeout_error() -> None:
    """The proxy's handlers catch the built-in TimeoutError; ``within`` raises it on every
    python3 the script runs on (before 3.11, ``wait_for`` raised asyncio's own)."""
    from sandboxer.extensions.local.egress_proxy import within

    never = asyncio.get_running_loop().create_future()
    with pytest.raises(TimeoutError, match=r"no answer within 0\.01 s"):
        await within(never, 0.01)
    assert await within(asyncio.sleep(0, "done"), 1.0) == "done"
