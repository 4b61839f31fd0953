"""The network policy language, pure: both entry forms, canonical text, errors, narrowing."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandboxer.config.network_policy import (
    DENY_ALL,
    MAX_EGRESS,
    Egress,
    NetworkPolicy,
    PortRange,
    _port_range,
    enforces,
    listing,
    narrows,
    parse_entry,
    parse_policy,
)
from sandboxer.config.profile import Profile
from sandboxer.errors import InvalidNetworkPolicy


def policy(*entries: str | dict[str, object], default: str = "deny") -> NetworkPolicy:
    return parse_policy({"default": default, "egress": list(entries)})


@pytest.mark.parametrize(
    ("text", "to", "ports", "protocol"),
    [
        ("10.1.2.0/24:443", "10.1.2.0/24", [(443, 443)], None),
        ("pypi.org:443", "pypi.org", [(443, 443)], None),
        ("*.pypi.org", "*.pypi.org", [], None),
        ("PyPI.Org.:80,443", "pypi.org", [(80, 80), (443, 443)], None),
        ("10.0.0.53:53/udp", "10.0.0.53", [(53, 53)], "udp"),
        ("10.0.0.0/8/tcp", "10.0.0.0/8", [], "tcp"),
        ("[2001:db8::1]:8000-8100/tcp", "2001:db8::1", [(8000, 8100)], "tcp"),
        ("2001:db8::/32", "2001:db8::/32", [], None),
        ("1.2.3.4/32", "1.2.3.4", [], None),
        ("host.example:1-65535", "host.example", [], None),  # every port, said the long way
        ("a.example:80,81,82-90,85", "a.example", [(80, 90)], None),
    ],
)
def test_compact_entries_parse_to_their_canonical_meaning(
    text: str, to: str, ports: list[tuple[int, int]], protocol: str | None
) -> None:
    entry = parse_entry(text)
    assert (entry.to, list(entry.port_pairs), entry.protocol) == (to, ports, protocol)
    assert parse_entry(entry.compact()) == entry


def test_the_object_form_means_what_the_compact_form_does() -> None:
    assert parse_entry(
        {"to": "10.1.2.0/24", "ports": [443, "8000-8100"], "protocol": "tcp"}
    ) == parse_entry("10.1.2.0/24:443,8000-8100/tcp")
    assert parse_entry({"to": "pypi.org"}) == parse_entry("pypi.org")
    assert parse_entry({"to": "2001:db8::/48", "ports": ["53"]}).compact() == "[2001:db8::/48]:53"


def test_older_profiles_keep_their_meaning() -> None:
    """Profiles of before the language: ``host:port`` strings, read as they always were."""
    old = Profile.model_validate(
        {
            "id": "profile.old",
            "extension": "ext.e2b",
            "network": {"default": "deny", "egress": ["pypi.org:443", "10.0.0.1:5432"]},
        }
    )
    assert old.network.egress == ["pypi.org:443", "10.0.0.1:5432"]
    assert old.network.policy() == policy("pypi.org:443", "10.0.0.1:5432")
    assert (
        Profile.model_validate({"id": "profile.none", "extension": "ext.local"}).network.policy()
        == DENY_ALL
    )


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("10.1.2.3/24", "host bits set; the network is 10.1.2.0/24"),
        ("pypi.org:99999", "port 99999 is out of range"),
        ("pypi.org:0", "port 0 is out of range"),
        ("pypi.org:90-80", "runs backwards; write 80-90"),
        ("pypi.org:", "no port"),
        ("pypi.org:https", "not a port or a range"),
        ("*", "use default: allow"),
        ("*.com", "too wide"),
        ("localhost", "single label"),
        ("a.*.example", "'*.' at the start only"),
        ("bücher.example", "punycode"),
        ("2001:db8::1:443x", "in brackets"),
        ("[2001:db8::1", "no closing"),
        ("fe80::1%eth0", "scoped"),
        ("pypi.org:443/tcp/udp", "protocol once"),
        ("", "empty"),
        ("x" * 400, "longer than"),
        ({"to": "pypi.org:443"}, "'to' names the destination only"),
        ({"to": "pypi.org", "port": 443}, "unknown field(s) port"),
        ({"to": "pypi.org", "protocol": "icmp"}, "not tcp or udp"),
        ({"to": "pypi.org", "ports": []}, "leave it out"),
        ({"to": "pypi.org", "ports": [True]}, "not a port"),
        ({"ports": [443]}, "needs 'to'"),
        (443, "an entry is a string"),
    ],
)
def test_errors_name_the_entry_and_the_fix(raw: object, says: str) -> None:
    with pytest.raises(InvalidNetworkPolicy) as caught:
        parse_entry(raw, "network.egress[3]")
    assert caught.value.message.startswith("network.egress[3]")
    assert says in caught.value.message


@pytest.mark.parametrize(
    "raw",
    ["evil\n.pypi.org:443", "*.evil\n.pypi.org", "pypi\n.org", {"to": "evil\n.pypi.org"}],
)
def test_a_name_with_a_newline_inside_is_refused(raw: object) -> None:
    # '$' with match() also matches before a final newline: each label must match whole.
    with pytest.raises(InvalidNetworkPolicy, match="is not a domain name"):
        parse_entry(raw, "network.egress[0]")


def test_a_port_with_a_newline_is_no_port() -> None:
    # Entries reach _port_range stripped; the range itself must match whole all the same.
    with pytest.raises(InvalidNetworkPolicy, match="not a port or a range"):
        _port_range("443\n", "network.egress[0]")


def test_policy_errors() -> None:
    with pytest.raises(InvalidNetworkPolicy, match="default is 'block': use deny or allow"):
        parse_policy({"default": "block"})
    with pytest.raises(InvalidNetworkPolicy, match="unknown field"):
        parse_policy({"ingress": []})
    with pytest.raises(InvalidNetworkPolicy, match=f"at most {MAX_EGRESS}"):
        parse_policy({"egress": [f"10.0.{i // 250}.{i % 250 + 1}" for i in range(MAX_EGRESS + 1)]})
    with pytest.raises(InvalidNetworkPolicy, match="must be a list"):
        parse_policy({"egress": "pypi.org"})


def test_a_profile_names_the_field_of_a_bad_entry() -> None:
    with pytest.raises(ValueError, match=r"network\.egress\[1\] \('10\.1\.1\.1/8'\)"):
        Profile.model_validate(
            {
                "id": "profile.bad",
                "extension": "ext.e2b",
                "network": {"egress": ["pypi.org", "10.1.1.1/8"]},
            }
        )


def test_what_a_policy_needs() -> None:
    assert policy(default="allow").needs() == "none"
    assert policy("pypi.org", default="allow").needs() == "none"
    assert DENY_ALL.needs() == "all-or-nothing"
    assert policy("10.0.0.0/8", "1.2.3.4:53/udp").needs() == "cidr"
    assert policy("10.0.0.0/8", "*.pypi.org").needs() == "domain"


def test_address_blocks_merge_repeated_inner_and_adjacent_networks() -> None:
    """What a provider's address allowlist is given (Daytona takes at most five blocks):
    ports and protocols do not split a block, names are not addresses, IPv4 comes first."""
    p = policy(
        "2001:db8::1",
        "10.0.0.128/25:443",
        "10.0.0.0/25",
        "10.0.0.7/udp",
        "192.0.2.7",
        "pypi.org",
        "192.0.2.7:22",
    )
    blocks = [block.with_prefixlen for block in p.address_blocks()]
    assert blocks == ["10.0.0.0/24", "192.0.2.7/32", "2001:db8::1/128"]
    assert policy("10.0.0.0/8", default="allow").address_blocks() == ()
    assert policy("pypi.org").address_blocks() == ()


def test_ipv6_addresses_are_the_ipv6_address_entries_as_written() -> None:
    """What an IPv4-only provider (Daytona, E2B) cannot hold: names are not addresses, an
    IPv4-mapped address is IPv6 notation, and under allow nothing is listed."""
    p = policy("10.0.0.1", "[2001:db8::1]:53/udp", "2001:db8::/32", "::ffff:192.0.2.1", "a.org")
    assert p.ipv6_addresses() == ["[2001:db8::1]:53/udp", "2001:db8::/32", "::ffff:c000:201"]
    assert policy("10.0.0.0/8", "pypi.org").ipv6_addresses() == []
    assert policy("2001:db8::/32", default="allow").ipv6_addresses() == []
    assert listing([str(n) for n in range(8)]) == "0, 1, 2, 3, 4, 5 and 2 more"
    assert listing(["a", "b"]) == "a, b"


def test_the_enforcement_ladder() -> None:
    for level, need in [
        ("domain", "cidr"),
        ("cidr", "all-or-nothing"),
        ("all-or-nothing", "none"),
        ("none", "none"),
    ]:
        assert enforces(level, need)
    assert not enforces("cidr", "domain")
    assert not enforces("all-or-nothing", "cidr")
    assert not enforces("none", "all-or-nothing")


# --- narrowing ----------------------------------------------------------------------------

PROFILE = policy("*.pypi.org:443", "10.0.0.0/8", "192.168.1.10:5432/tcp", "db.example:5432")


@pytest.mark.parametrize(
    "asked",
    [
        DENY_ALL,
        policy("files.pypi.org:443"),
        policy("*.files.pypi.org:443/tcp"),
        policy("10.1.0.0/16:22", "10.2.3.4/udp"),
        policy("192.168.1.10:5432/tcp"),
        policy({"to": "db.example", "ports": [5432], "protocol": "udp"}),
    ],
)
def test_a_narrower_policy_narrows(asked: NetworkPolicy) -> None:
    assert narrows(PROFILE, asked) is None


@pytest.mark.parametrize(
    ("asked", "says"),
    [
        (policy(default="allow"), "default: allow is wider"),
        (policy("pypi.org:443"), "no entry of the profile covers pypi.org"),  # apex not in *.
        (policy("files.pypi.org:80"), "tcp port 80 to files.pypi.org is not allowed"),
        (policy("files.pypi.org"), "tcp port 1 to files.pypi.org"),
        (policy("11.0.0.0/8"), "covers 11.0.0.0/8"),
        (policy("0.0.0.0/0"), "covers 0.0.0.0/0"),
        (
            policy("192.168.1.10:5432"),
            "udp port 5432 to 192.168.1.10",
        ),  # the profile allows tcp only
        (policy("db.example"), "tcp port 1 to db.example"),
        (policy("10.0.0.0/8", "*.db.example:5432"), "covers *.db.example"),
    ],
)
def test_a_wider_policy_is_refused_with_the_entry_that_widens_it(
    asked: NetworkPolicy, says: str
) -> None:
    refusal = narrows(PROFILE, asked)
    assert refusal is not None
    assert says in refusal


def test_names_and_addresses_never_cover_each_other() -> None:
    """A name may resolve anywhere: no address range covers it, and no name covers an address."""
    assert narrows(policy("0.0.0.0/0", "::/0"), policy("pypi.org")) is not None
    assert narrows(policy("*.pypi.org"), policy("10.0.0.1")) is not None


def test_anything_narrows_default_allow() -> None:
    assert narrows(policy(default="allow"), policy("pypi.org")) is None
    assert narrows(policy(default="allow"), policy(default="allow")) is None


def test_coverage_may_come_from_several_entries() -> None:
    split = policy("h.example:1-100/tcp", "h.example:101-200", "h.example:1-200/udp")
    assert narrows(split, policy("h.example:50-150")) is None
    assert narrows(split, policy("h.example:50-201")) is not None


# --- properties ---------------------------------------------------------------------------

LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
TOP = st.from_regex(r"[a-z][a-z0-9]{1,5}", fullmatch=True)  # a top-level label is not a number
NAMES = st.builds(
    lambda labels, top: ".".join([*labels, top]), st.lists(LABEL, min_size=1, max_size=3), TOP
)
DOMAINS = st.one_of(NAMES, NAMES.map(lambda name: "*." + name))
V4 = st.builds(
    lambda addr, length: ipaddress.ip_network(f"{addr}/{length}", strict=False),
    st.ip_addresses(v=4),
    st.integers(0, 32),
)
V6 = st.builds(
    lambda addr, length: ipaddress.ip_network(f"{addr}/{length}", strict=False),
    st.ip_addresses(v=6),
    st.integers(0, 128),
)
NETWORKS = st.one_of(V4, V6).map(
    lambda net: str(net.network_address) if net.num_addresses == 1 else net.with_prefixlen
)
RANGES = st.tuples(st.integers(1, 65535), st.integers(0, 500)).map(
    lambda pair: PortRange(pair[0], min(65535, pair[0] + pair[1]))
)
ENTRIES = st.builds(
    lambda to, ports, protocol: parse_entry(
        {"to": to, "ports": [r.text() for r in ports] or None, "protocol": protocol}
    ),
    st.one_of(DOMAINS, NETWORKS),
    st.lists(RANGES, max_size=4),
    st.sampled_from([None, "tcp", "udp"]),
)
POLICIES = st.builds(
    lambda default, egress: NetworkPolicy(default, tuple(dict.fromkeys(egress))),
    st.sampled_from(["deny", "deny", "allow"]),
    st.lists(ENTRIES, max_size=6),
)


@settings(max_examples=100)
@given(ENTRIES)
def test_an_entry_reads_back_from_its_compact_text_and_its_object(entry: Egress) -> None:
    assert parse_entry(entry.compact()) == entry
    assert parse_entry(entry.to_object()) == entry


@settings(max_examples=100)
@given(POLICIES)
def test_a_policy_reads_back_from_what_events_record(p: NetworkPolicy) -> None:
    assert parse_policy(p.record()) == p


@settings(max_examples=100)
@given(POLICIES)
def test_every_policy_narrows_itself_and_deny_all_narrows_every_policy(p: NetworkPolicy) -> None:
    assert narrows(p, p) is None
    assert narrows(p, DENY_ALL) is None


@settings(max_examples=100)
@given(POLICIES, st.data())
def test_a_subset_of_the_entries_narrows(p: NetworkPolicy, data: st.DataObject) -> None:
    if p.default == "allow":
        return
    kept = data.draw(st.lists(st.sampled_from(p.egress), unique=True)) if p.egress else []
    assert narrows(p, NetworkPolicy("deny", tuple(kept))) is None


@settings(max_examples=100)
@given(POLICIES, POLICIES, POLICIES)
def test_narrowing_is_transitive(a: NetworkPolicy, b: NetworkPolicy, c: NetworkPolicy) -> None:
    if narrows(a, b) is None and narrows(b, c) is None:
        assert narrows(a, c) is None


@settings(max_examples=200)
@given(st.one_of(st.text(max_size=60), st.binary(max_size=30).map(lambda b: b.decode("latin-1"))))
def test_hostile_text_is_an_entry_or_a_policy_error_never_a_crash(text: str) -> None:
    try:
        entry = parse_entry(text)
    except InvalidNetworkPolicy as exc:
        message = exc.message
        assert message.startswith("egress entry")
        return
    assert parse_entry(entry.compact()) == entry


@settings(max_examples=200)
@given(POLICIES)
def test_address_blocks_cover_exactly_the_addresses_of_the_entries(p: NetworkPolicy) -> None:
    """Merging never widens nor drops: the blocks are disjoint, each entry lies in one, and
    each block is filled by the entries inside it."""
    blocks = p.address_blocks()
    nets = [e.network for e in p.addresses if e.network is not None]
    for i, block in enumerate(blocks):
        assert not any(block.overlaps(other) for other in blocks[i + 1 :])
        inside = [n for n in nets if n.version == block.version and n.subnet_of(block)]
        widest = {n for n in inside if not any(m != n and n.subnet_of(m) for m in inside)}
        assert sum(n.num_addresses for n in widest) == block.num_addresses
    for net in nets:
        assert any(net.version == b.version and net.subnet_of(b) for b in blocks)
