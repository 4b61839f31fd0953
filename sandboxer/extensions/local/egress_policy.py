"""What a local sandbox may reach, and the nftables rules and addresses that enforce it (pure).

The input is :class:`LocalEgress`, compiled from the profile's network policy
(:func:`sandboxer.extensions.local.steps.local_egress_for`). Nothing here does
I/O: :mod:`.egress` applies what these functions return.

Every sandbox that may reach anything gets its own network namespace and a
veth pair to the host. Addresses come from 169.254.0.0/16 in /30 blocks, one
per SLOT (taken by :func:`.egress.link_slots`): ``.1`` on the host's end (where
the sandbox's proxy listens), ``.2`` inside the sandbox.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from sandboxer.errors import InvalidInput
from sandboxer.extensions.local.egress_proxy import valid_pattern

__all__ = [
    "DENY",
    "PROXY_PORT",
    "SANDBOX_TABLE",
    "SLOTS",
    "AddressRule",
    "DomainRule",
    "LocalEgress",
    "Network",
    "PortRange",
    "host_ruleset",
    "host_table_for",
    "namespace_for",
    "network_for",
    "proxy_env",
    "sandbox_ruleset",
]

PortRange = tuple[int, int]
PROXY_PORT = 3128
SANDBOX_TABLE = "sandboxer"
"""The table inside the sandbox's namespace (the namespace is the sandbox's, so one name fits all)."""

_LINK_LOCAL = ipaddress.ip_network("169.254.0.0/16")
# RFC 3927 reserves the first and last /24; 169.254.168.0/22 holds the cloud metadata
# service (169.254.169.254) and its neighbours, which a host route of ours must never shadow.
_FIRST_SLOT = 256 // 4
_LAST_SLOT = (254 * 256 + 252) // 4
_METADATA = range((168 * 256) // 4, (172 * 256) // 4)
SLOTS = tuple(n for n in range(_FIRST_SLOT, _LAST_SLOT + 1) if n not in _METADATA)
"""Every usable /30 block of 169.254.0.0/16, by number (block n starts at 169.254.0.0 + 4n)."""


@dataclass(frozen=True)
class AddressRule:
    """Allow a network, optionally only some ports (empty: all) and one protocol (None: any)."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    ports: tuple[PortRange, ...] = ()
    protocol: Literal["tcp", "udp"] | None = None


@dataclass(frozen=True)
class DomainRule:
    """Allow a name (``pypi.org``) or every name under one (``*.pypi.org``) through the proxy."""

    pattern: str
    ports: tuple[PortRange, ...] = ()
    """Ports the proxy may connect to for this name (empty: any)."""


@dataclass(frozen=True)
class LocalEgress:
    """What one local sandbox may reach besides its own loopback."""

    allow_all: bool = False
    addresses: tuple[AddressRule, ...] = ()
    domains: tuple[DomainRule, ...] = field(default=())
    warnings: tuple[str, ...] = ()
    """What the policy asked that these rules leave out (reported in ``ready``, never widened)."""

    @property
    def denies_all(self) -> bool:
        """Loopback only: no namespace of ours, no veth, no proxy (bwrap's own empty namespace)."""
        return not self.allow_all and not self.addresses and not self.domains

    def check(self) -> None:
        """Refuse values that are not what the types promise: they reach nft and the proxy."""
        for rule in self.addresses:
            if not isinstance(rule.network, ipaddress.IPv4Network | ipaddress.IPv6Network):
                raise InvalidInput(f"egress address {rule.network!r} is not a network")
            if rule.protocol not in {"tcp", "udp", None}:
                raise InvalidInput(f"egress protocol {rule.protocol!r}: expected tcp or udp")
            _check_ports(rule.ports, str(rule.network))
            if rule.network.is_link_local:
                raise InvalidInput(
                    f"egress address {rule.network} is link-local: ext.local never lets a "
                    "sandbox reach 169.254.0.0/16 or fe80::/10 (other sandboxes' links, "
                    "cloud metadata services)"
                )  # a wider network (0.0.0.0/0) is fine: its link-local part stays refused
        for domain in self.domains:
            if not isinstance(domain.pattern, str) or not valid_pattern(domain.pattern):
                raise InvalidInput(
                    f"egress name {domain.pattern!r} is not a host name or '*.' wildcard "
                    "(letters, digits, '-', dots; IP addresses go in address entries)"
                )
            _check_ports(domain.ports, domain.pattern)


DENY = LocalEgress()


def _check_ports(ports: Sequence[PortRange], what: str) -> None:
    for pair in ports:
        if (
            not isinstance(pair, tuple)
            or len(pair) != 2
            or not all(type(port) is int for port in pair)
            or not 1 <= pair[0] <= pair[1] <= 65535
        ):
            raise InvalidInput(
                f"egress ports {pair!r} of {what}: expected (low, high) with 1 <= low <= high <= 65535"
            )


@dataclass(frozen=True)
class Network:
    """One sandbox's link: its slot, the names and the addresses on both ends."""

    slot: int
    namespace: str
    host_interface: str
    gateway: ipaddress.IPv4Address
    """The host's end: the sandbox's default route and its proxy's address."""
    address: ipaddress.IPv4Address
    """The sandbox's end."""
    host_table: str

    @property
    def prefix(self) -> int:
        return 30


def network_for(name: str, slot: int) -> Network:
    """Names and addresses of slot ``slot`` for the sandbox whose resources are called ``name``.

    ``name`` is ``<sandbox id>-<root tag>`` (as for cgroups): the namespace
    ``sbx-<name>`` and the host table ``sbx_<name>`` start with the sandbox's
    id, so leftovers are found by name. The host's veth end is named by slot
    (``sbxh<slot>``, 15 characters at most) and carries ``sbx-<name>`` as its alias.
    """
    if slot not in SLOTS:
        raise ValueError(f"slot {slot} is outside 169.254.1.0-169.254.254.255")
    block = int(_LINK_LOCAL.network_address) + 4 * slot
    return Network(
        slot=slot,
        namespace=namespace_for(name),
        host_interface=f"sbxh{slot}",
        gateway=ipaddress.IPv4Address(block + 1),
        address=ipaddress.IPv4Address(block + 2),
        host_table=host_table_for(name),
    )


def namespace_for(name: str) -> str:
    """``sbx-<sandbox id>-<root tag>``: the sandbox's network namespace."""
    return f"sbx-{name}"


def host_table_for(name: str) -> str:
    """``sbx_<sandbox id>_<root tag>``: the sandbox's table in the host's nftables."""
    return "sbx_" + name.replace("-", "_")


def _ports(ports: Sequence[PortRange]) -> str:
    items = [str(low) if low == high else f"{low}-{high}" for low, high in ports]
    return "{ " + ", ".join(items) + " }"


def _address_rule(rule: AddressRule) -> str:
    family = "ip" if rule.network.version == 4 else "ip6"
    match = f"{family} daddr {rule.network}"
    if rule.ports:
        protocol = rule.protocol or "{ tcp, udp }"
        match += f" meta l4proto {protocol} th dport {_ports(rule.ports)}"
    elif rule.protocol:
        match += f" meta l4proto {rule.protocol}"
    return f"    {match} accept"


def sandbox_ruleset(egress: LocalEgress, net: Network, *, proxy: bool) -> str:
    """The table loaded inside the sandbox's namespace before anything runs there.

    Default drop; loopback and replies pass; the proxy and each allowed
    target pass; any other TCP connect is refused at once with a reset, the
    rest with an ICMP "administratively prohibited". Link-local addresses
    (other sandboxes' links, cloud metadata) are refused even under allow_all.
    Nothing connects in from outside. Code in the sandbox has no
    CAP_NET_ADMIN (bwrap drops it), so it cannot change this table.
    """
    lines = [
        f"table inet {SANDBOX_TABLE} {{",
        "  chain refuse {",
        "    meta l4proto tcp reject with tcp reset",
        "    reject with icmpx admin-prohibited",
        "  }",
        "  chain egress {",
        "    type filter hook output priority filter; policy drop;",
        '    oifname "lo" accept',
        "    ct state established,related accept",
    ]
    if proxy:
        lines.append(f"    ip daddr {net.gateway} tcp dport {PROXY_PORT} accept")
    lines += ["    ip daddr 169.254.0.0/16 goto refuse", "    ip6 daddr fe80::/10 goto refuse"]
    lines += [_address_rule(rule) for rule in egress.addresses]
    if egress.allow_all:
        lines.append("    accept")
    lines += [
        "    goto refuse",
        "  }",
        "  chain ingress {",
        "    type filter hook input priority filter; policy drop;",
        '    iifname "lo" accept',
        "    ct state established,related accept",
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def host_ruleset(net: Network, *, proxy: bool) -> str:
    """The sandbox's own table in the HOST's namespace, loaded before its link exists.

    Whatever the sandbox's rules allow, this keeps it away from the host
    itself (NATS, sshd, anything listening on any address, and any port the
    host forwards elsewhere by DNAT) except its proxy, and from every other
    link-local network (other sandboxes). Its forwarded
    traffic leaves with the host's address (masquerade), so replies from
    beyond this host find their way back.
    """
    iface = f'iifname "{net.host_interface}"'
    proxy_rule = f"    {iface} ip daddr {net.gateway} tcp dport {PROXY_PORT} accept"

    def refuse(match: str) -> list[str]:
        return [
            f"    {match} meta l4proto tcp reject with tcp reset",
            f"    {match} reject with icmpx admin-prohibited",
        ]

    lines = [
        f"table inet {net.host_table} {{",
        # Before the host's own DNAT (priority dstnat, -100), so what is looked at is the
        # address the sandbox asked for: one of the host's own is the host, whether the host
        # then delivers the connection or forwards it (docker's published ports, NodePorts).
        # An address that is not the host's and that the host redirects (a Kubernetes
        # ClusterIP) is left to the sandbox's own rules, as any other address is.
        "  chain prerouting {",
        "    type filter hook prerouting priority mangle; policy accept;",
        *([proxy_rule] if proxy else []),
        *refuse(f"{iface} fib daddr type local"),
        "  }",
        # Whatever is delivered to the host all the same (redirected to it from an address
        # not its own) is refused here.
        "  chain input {",
        "    type filter hook input priority filter; policy accept;",
        *([proxy_rule] if proxy else []),
        *refuse(iface),
        "  }",
        "  chain forward {",
        "    type filter hook forward priority filter; policy accept;",
        f"    {iface} ip daddr 169.254.0.0/16 drop",
        f"    {iface} meta nfproto ipv6 drop",
        "  }",
        "  chain postrouting {",
        "    type nat hook postrouting priority srcnat; policy accept;",
        f'    ip saddr {net.address} oifname != "{net.host_interface}" masquerade',
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def proxy_env(net: Network) -> dict[str, str]:
    """The variables that point HTTP clients in the sandbox at its proxy."""
    url = f"http://{net.gateway}:{PROXY_PORT}"
    no_proxy = "localhost,127.0.0.1,::1"
    return {
        "HTTP_PROXY": url,
        "HTTPS_PROXY": url,
        "http_proxy": url,
        "https_proxy": url,
        "NO_PROXY": no_proxy,
        "no_proxy": no_proxy,
    }
