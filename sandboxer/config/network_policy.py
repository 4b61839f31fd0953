"""The network policy language: what a sandbox may connect to (docs/network.md). Pure.

A policy is ``{default: deny | allow, egress: [...]}``. Under ``deny`` only the
listed destinations are reachable; under ``allow`` everything is, and ``egress``
adds nothing (older profiles may still list entries there: they are kept, never
widened or narrowed by it).

An entry is a destination with optional ports and protocol, in one of two forms:

- compact: ``"10.1.2.0/24:443"``, ``"pypi.org:80,443"``, ``"*.pypi.org"``,
  ``"[2001:db8::1]:8000-8100/tcp"``, ``"10.0.0.53:53/udp"``;
- object: ``{to: "pypi.org", ports: [443, "8000-8100"], protocol: tcp}``.

Both parse to one :class:`Egress`, whose :meth:`Egress.compact` text is the
canonical form: profiles keep it, events record it and it parses back to the
same entry. Every error names the entry and says how to fix it.

A destination is an address or CIDR (IPv4 or IPv6) or a domain name; a
wildcard ``*.pypi.org`` matches every name under ``pypi.org`` (any depth), not
``pypi.org`` itself. No ports means every port; no protocol means TCP and UDP.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

from sandboxer.errors import InvalidNetworkPolicy

__all__ = [
    "DENY_ALL",
    "ENFORCEMENT_LEVELS",
    "MAX_EGRESS",
    "Egress",
    "Enforcement",
    "NetworkPolicy",
    "PortRange",
    "Protocol",
    "enforces",
    "listing",
    "narrows",
    "parse_entry",
    "parse_policy",
]

Protocol = Literal["tcp", "udp"]
PROTOCOLS: tuple[Protocol, ...] = ("tcp", "udp")

Enforcement = Literal["none", "all-or-nothing", "cidr", "domain"]
ENFORCEMENT_LEVELS: tuple[Enforcement, ...] = ("none", "all-or-nothing", "cidr", "domain")
"""What a backend can enforce, weakest first: each level can do all the ones before it."""

MAX_EGRESS = 256
"""Entries in one policy: an allowlist longer than this is a mistake (or an attack)."""
MAX_PORT_RANGES = 64
DESCRIBED = 6
"""Entries a one-line description shows before it says how many more there are."""
MAX_ENTRY_CHARS = 300
# Used with fullmatch: with match, '$' also matches before a final newline, and
# 'evil\n.pypi.org' would pass as a name.
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_PORTS = re.compile(r"\d{1,5}(?:-\d{1,5})?")

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, order=True)
class PortRange:
    low: int
    high: int

    def text(self) -> str:
        return str(self.low) if self.low == self.high else f"{self.low}-{self.high}"


ALL_PORTS = (PortRange(1, 65535),)


@dataclass(frozen=True)
class Egress:
    """One allowed destination."""

    to: str
    """Canonical: an address (``10.1.2.3``), a network (``10.1.2.0/24``), a name
    (``pypi.org``) or a wildcard (``*.pypi.org``)."""
    ports: tuple[PortRange, ...] = ()
    """Sorted and merged; empty: every port."""
    protocol: Protocol | None = None
    """None: TCP and UDP."""

    @property
    def is_domain(self) -> bool:
        return _as_network(self.to) is None

    @property
    def network(self) -> IpNetwork | None:
        """The address range of an address entry (a single address is a /32 or /128)."""
        return _as_network(self.to)

    @property
    def protocols(self) -> tuple[Protocol, ...]:
        return PROTOCOLS if self.protocol is None else (self.protocol,)

    @property
    def port_pairs(self) -> tuple[tuple[int, int], ...]:
        """The ports as ``(low, high)`` pairs; empty: every port."""
        return tuple((p.low, p.high) for p in self.ports)

    @property
    def port_ranges(self) -> tuple[PortRange, ...]:
        """The ports as ranges; every port when the entry names none."""
        return self.ports or ALL_PORTS

    def compact(self) -> str:
        """The canonical compact text, which :func:`parse_entry` reads back to this entry."""
        text = self.to
        if self.ports:
            if ":" in text:  # IPv6: brackets keep its colons apart from the ports'
                text = f"[{text}]"
            text += ":" + ",".join(p.text() for p in self.ports)
        if self.protocol is not None:
            text += f"/{self.protocol}"
        return text

    def to_object(self) -> dict[str, Any]:
        """The object form (``to``, ``ports``, ``protocol``), for JSON answers."""
        data: dict[str, Any] = {"to": self.to}
        if self.ports:
            data["ports"] = [p.low if p.low == p.high else p.text() for p in self.ports]
        if self.protocol is not None:
            data["protocol"] = self.protocol
        return data


@dataclass(frozen=True)
class NetworkPolicy:
    default: Literal["deny", "allow"] = "deny"
    egress: tuple[Egress, ...] = ()

    def needs(self) -> Enforcement:
        """The least a backend must enforce to honour this policy."""
        if self.default == "allow":
            return "none"
        if not self.egress:
            return "all-or-nothing"
        if any(entry.is_domain for entry in self.egress):
            return "domain"
        return "cidr"

    def record(self) -> dict[str, Any]:
        """What events record: the default and each entry's compact text."""
        return {"default": self.default, "egress": [e.compact() for e in self.egress]}

    def describe(self) -> str:
        """One line for people: ``deny; egress pypi.org:443, 10.0.0.0/8``."""
        if self.default == "allow":
            return "allow (all egress)"
        if not self.egress:
            return "deny (no egress)"
        shown = ", ".join(e.compact() for e in self.egress[:DESCRIBED])
        more = len(self.egress) - DESCRIBED
        return f"deny; egress {shown}" + (f" and {more} more" if more > 0 else "")

    @property
    def addresses(self) -> tuple[Egress, ...]:
        """The address and CIDR entries (empty under ``allow``)."""
        if self.default == "allow":
            return ()
        return tuple(e for e in self.egress if not e.is_domain)

    @property
    def domains(self) -> tuple[Egress, ...]:
        """The domain and wildcard entries (empty under ``allow``)."""
        if self.default == "allow":
            return ()
        return tuple(e for e in self.egress if e.is_domain)

    def address_blocks(self) -> tuple[IpNetwork, ...]:
        """The address entries as the fewest CIDR blocks covering exactly the same addresses
        (duplicates dropped, a block inside or next to another merged; IPv4 first): what a
        provider that allows by destination is given, and what its limit on blocks counts."""
        networks = [n for n in (e.network for e in self.addresses) if n is not None]
        v4 = [n for n in networks if isinstance(n, ipaddress.IPv4Network)]
        v6 = [n for n in networks if isinstance(n, ipaddress.IPv6Network)]
        return (*ipaddress.collapse_addresses(v4), *ipaddress.collapse_addresses(v6))

    def ipv6_addresses(self) -> list[str]:
        """The IPv6 address and CIDR entries: what a provider whose allowlist takes IPv4
        only (Daytona's, E2B's) cannot hold."""
        return [e.compact() for e in self.addresses if e.network and e.network.version == 6]

    def limits_ports(self) -> list[str]:
        """Entries whose ports or protocol narrow them: what a backend that allows by
        destination only cannot honour."""
        if self.default == "allow":
            return []
        return [e.compact() for e in self.egress if e.ports or e.protocol is not None]


DENY_ALL = NetworkPolicy()


def listing(entries: Sequence[str]) -> str:
    """Entries for a message, the first few and how many more: a reason stays one line."""
    more = len(entries) - DESCRIBED
    return ", ".join(entries[:DESCRIBED]) + (f" and {more} more" if more > 0 else "")


def enforces(level: Enforcement, need: Enforcement) -> bool:
    """A backend that enforces ``level`` can honour a policy that needs ``need``."""
    return ENFORCEMENT_LEVELS.index(level) >= ENFORCEMENT_LEVELS.index(need)


# --- parsing ------------------------------------------------------------------------------


def parse_policy(raw: object, where: str = "network") -> NetworkPolicy:
    """A policy from its mapping form (``default``, ``egress``); InvalidNetworkPolicy names the fault."""
    if isinstance(raw, NetworkPolicy):
        return raw
    if not isinstance(raw, Mapping):
        raise InvalidNetworkPolicy(
            f"{where} must be a mapping like {{default: deny, egress: [pypi.org:443]}}, "
            f"not {_show(raw)}"
        )
    unknown = sorted(str(k) for k in raw if k not in {"default", "egress"})
    if unknown:
        raise InvalidNetworkPolicy(
            f"{where} has unknown field(s) {', '.join(unknown)}: a policy has only "
            "'default' (deny or allow) and 'egress' (a list of entries)"
        )
    default = raw.get("default", "deny")
    if default not in ("deny", "allow"):
        raise InvalidNetworkPolicy(f"{where}.default is {_show(default)}: use deny or allow")
    entries = raw.get("egress") or []
    return NetworkPolicy(
        default=cast(Literal["deny", "allow"], default),
        egress=parse_egress(entries, f"{where}.egress"),
    )


def parse_egress(raw: object, where: str = "network.egress") -> tuple[Egress, ...]:
    """A list of entries, each in either form; duplicates are dropped, order is kept."""
    if isinstance(raw, str | bytes) or not isinstance(raw, Sequence):
        raise InvalidNetworkPolicy(
            f"{where} must be a list of entries (e.g. [pypi.org:443]), not {_show(raw)}"
        )
    if len(raw) > MAX_EGRESS:
        raise InvalidNetworkPolicy(
            f"{where} has {len(raw)} entries; at most {MAX_EGRESS} are allowed (use CIDRs or "
            "wildcard names to cover many destinations)"
        )
    seen: dict[Egress, None] = {}
    for index, item in enumerate(raw):
        seen.setdefault(parse_entry(item, f"{where}[{index}]"), None)
    return tuple(seen)


def parse_entry(raw: object, where: str = "egress entry") -> Egress:
    """One entry in compact (string) or object form."""
    if isinstance(raw, Egress):
        return raw
    if isinstance(raw, str):
        return _parse_compact(raw, where)
    if isinstance(raw, Mapping):
        return _parse_object(raw, where)
    raise InvalidNetworkPolicy(
        f'{where} is {_show(raw)}: an entry is a string like "pypi.org:443" or an object '
        "like {to: pypi.org, ports: [443], protocol: tcp}"
    )


def _parse_object(raw: Mapping[Any, Any], where: str) -> Egress:
    unknown = sorted(str(k) for k in raw if k not in {"to", "ports", "protocol"})
    if unknown:
        raise InvalidNetworkPolicy(
            f"{where} has unknown field(s) {', '.join(unknown)}: an entry object has 'to', "
            "'ports' and 'protocol'"
        )
    to = raw.get("to")
    if not isinstance(to, str):
        raise InvalidNetworkPolicy(
            f"{where} needs 'to': an address, CIDR or domain (e.g. to: pypi.org)"
        )
    label = f"{where} ({_show(to)})"
    if len(to) > MAX_ENTRY_CHARS:
        raise InvalidNetworkPolicy(f"{where}: 'to' is longer than {MAX_ENTRY_CHARS} characters")
    if _is_bare_network(to.strip()):
        destination = _destination(to.strip(), label)
    else:
        head, ports_text, protocol_text = _split(to.strip(), label)
        if ports_text is not None or protocol_text is not None:
            raise InvalidNetworkPolicy(
                f"{label}: 'to' names the destination only; give its ports in 'ports' and its "
                "protocol in 'protocol'"
            )
        destination = _destination(head, label)
    ports = _ports_of_list(raw.get("ports"), label)
    protocol = _protocol(raw.get("protocol"), label)
    return Egress(destination, ports, protocol)


def _parse_compact(text: str, where: str) -> Egress:
    label = f"{where} ({_show(text)})"
    if len(text) > MAX_ENTRY_CHARS:
        raise InvalidNetworkPolicy(f"{where} is longer than {MAX_ENTRY_CHARS} characters")
    text = text.strip()
    if not text:
        raise InvalidNetworkPolicy(f"{where} is empty: write a destination like pypi.org:443")
    protocol: Protocol | None = None
    lowered = text.lower()
    for name in PROTOCOLS:
        if lowered.endswith("/" + name):
            protocol, text = name, text[: -len(name) - 1]
            break
    if _is_bare_network(text):
        return Egress(_destination(text, label), (), protocol)
    head, ports_text, extra_protocol = _split(text, label)
    if extra_protocol is not None:
        raise InvalidNetworkPolicy(f"{label}: write the protocol once, at the end (/tcp or /udp)")
    ports = _ports_of_text(ports_text, label) if ports_text is not None else ()
    return Egress(_destination(head, label), ports, protocol)


def _split(text: str, label: str) -> tuple[str, str | None, str | None]:
    """Destination, ports text and protocol text of ``dest[:ports][/proto]``."""
    protocol: str | None = None
    lowered = text.lower()
    for name in PROTOCOLS:
        if lowered.endswith("/" + name):
            protocol, text = name, text[: -len(name) - 1]
            break
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise InvalidNetworkPolicy(
                f"{label}: an opening '[' has no closing ']' (write [2001:db8::1]:443)"
            )
        head, rest = text[1:close], text[close + 1 :]
        if rest and not rest.startswith(":"):
            raise InvalidNetworkPolicy(
                f"{label}: after ']' comes ':' and the ports (write [2001:db8::1]:443)"
            )
        return head, (rest[1:] if rest else None), protocol
    head, sep, ports = text.rpartition(":")
    if not sep:
        return text, None, protocol
    if ":" in head:
        raise InvalidNetworkPolicy(
            f"{label}: an IPv6 destination with ports goes in brackets: [2001:db8::1]:443"
        )
    return head, ports, protocol


def _is_bare_network(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


def _destination(text: str, label: str) -> str:
    if not text:
        raise InvalidNetworkPolicy(
            f"{label}: the destination is missing (write pypi.org:443 or 10.0.0.0/8)"
        )
    if "%" in text:
        raise InvalidNetworkPolicy(
            f"{label}: scoped IPv6 addresses (with %zone) are not destinations"
        )
    if "/" in text or _looks_numeric(text):
        try:
            network = ipaddress.ip_network(text, strict=True)
        except ValueError:
            try:
                loose = ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise InvalidNetworkPolicy(
                    f"{label}: {text!r} is not an address or CIDR (write 10.1.2.0/24 or 10.1.2.3)"
                ) from None
            raise InvalidNetworkPolicy(
                f"{label}: {text!r} has host bits set; the network is {loose.with_prefixlen}"
            ) from None
        return _canonical(network)
    return _domain(text, label)


def _looks_numeric(text: str) -> bool:
    return ":" in text or all(part.isdigit() for part in text.split(".") if part)


def _canonical(network: IpNetwork) -> str:
    if network.num_addresses == 1:
        return str(network.network_address)
    return network.with_prefixlen


def _as_network(to: str) -> IpNetwork | None:
    if to.startswith("*") or (not _looks_numeric(to) and "/" not in to):
        return None
    try:
        return ipaddress.ip_network(to, strict=True)
    except ValueError:
        return None


def _domain(text: str, label: str) -> str:
    name = text.lower().rstrip(".")
    wildcard = name.startswith("*.")
    base = name[2:] if wildcard else name
    if name in {"*", "*."}:
        raise InvalidNetworkPolicy(
            f"{label}: '*' would allow every name; use default: allow instead"
        )
    if not name.isascii():
        raise InvalidNetworkPolicy(
            f"{label}: write an international name in its ASCII (punycode) form, xn--..."
        )
    if len(base) > 253:
        raise InvalidNetworkPolicy(f"{label}: a domain name is at most 253 characters")
    labels = base.split(".")
    if "*" in base:
        raise InvalidNetworkPolicy(
            f"{label}: a wildcard is '*.' at the start only (write *.pypi.org, not {text})"
        )
    bad = [part for part in labels if not _LABEL.fullmatch(part)]
    if bad:
        raise InvalidNetworkPolicy(
            f"{label}: {text!r} is not a domain name, address or CIDR (labels are letters, "
            f"digits and inner '-', 1 to 63 characters; {bad[0]!r} is not)"
        )
    if wildcard and len(labels) < 2:
        raise InvalidNetworkPolicy(
            f"{label}: a wildcard covers the names under a domain of two or more labels, "
            "like *.pypi.org (a whole top-level domain is too wide)"
        )
    if len(labels) < 2:
        raise InvalidNetworkPolicy(
            f"{label}: {text!r} is a single label; write a full name (pypi.org), an address or a CIDR"
        )
    return name


def _ports_of_text(text: str, label: str) -> tuple[PortRange, ...]:
    if not text:
        raise InvalidNetworkPolicy(
            f"{label}: ':' is followed by no port (write :443, :80,443 or :8000-8100)"
        )
    return _merged((_port_range(part.strip(), label) for part in text.split(",")), label)


def _ports_of_list(raw: object, label: str) -> tuple[PortRange, ...]:
    if raw is None:
        return ()
    if isinstance(raw, int | str) and not isinstance(raw, bool):
        raw = [raw]
    if not isinstance(raw, list | tuple):
        raise InvalidNetworkPolicy(
            f'{label}: ports is a list like [443, "8000-8100"], not {_show(raw)}'
        )
    if not raw:
        raise InvalidNetworkPolicy(f"{label}: ports is empty; leave it out to allow every port")
    ranges = []
    for item in raw:
        if isinstance(item, bool) or not isinstance(item, int | str):
            raise InvalidNetworkPolicy(
                f"{label}: port {_show(item)} is not a port or a range like 8000-8100"
            )
        ranges.append(_port_range(str(item).strip(), label))
    return _merged(ranges, label)


def _port_range(text: str, label: str) -> PortRange:
    if not _PORTS.fullmatch(text):
        raise InvalidNetworkPolicy(
            f"{label}: {text!r} is not a port or a range (write 443 or 8000-8100)"
        )
    low_text, _, high_text = text.partition("-")
    low, high = int(low_text), int(high_text or low_text)
    for port in (low, high):
        if not 1 <= port <= 65535:
            raise InvalidNetworkPolicy(
                f"{label}: port {port} is out of range; ports are 1 to 65535"
            )
    if low > high:
        raise InvalidNetworkPolicy(f"{label}: the range {text} runs backwards; write {high}-{low}")
    return PortRange(low, high)


def _merged(ranges: Iterable[PortRange], label: str) -> tuple[PortRange, ...]:
    ordered = sorted(ranges)
    if len(ordered) > MAX_PORT_RANGES:
        raise InvalidNetworkPolicy(f"{label}: at most {MAX_PORT_RANGES} ports or ranges per entry")
    out: list[PortRange] = []
    for item in ordered:
        if out and item.low <= out[-1].high + 1:
            out[-1] = PortRange(out[-1].low, max(out[-1].high, item.high))
        else:
            out.append(item)
    if out == list(ALL_PORTS):
        return ()  # every port, written the short way
    return tuple(out)


def _protocol(raw: object, label: str) -> Protocol | None:
    if raw is None:
        return None
    if raw not in PROTOCOLS:
        raise InvalidNetworkPolicy(
            f"{label}: protocol {_show(raw)} is not tcp or udp (leave it out for both)"
        )
    return raw


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --- narrowing ----------------------------------------------------------------------------


def narrows(allowed: NetworkPolicy, asked: NetworkPolicy) -> str | None:
    """None when ``asked`` lets through nothing that ``allowed`` does not; else why not.

    Conservative where it cannot know: a name is never within an address range (it may
    resolve anywhere), nor an address within a name.
    """
    if allowed.default == "allow":
        return None
    if asked.default == "allow":
        return f"default: allow is wider than the profile's network policy ({allowed.describe()})"
    for entry in asked.egress:
        gap = _uncovered(entry, allowed.egress)
        if gap is not None:
            return (
                f"egress {entry.compact()} is not within the profile's network policy "
                f"({allowed.describe()}): {gap}"
            )
    return None


def _uncovered(entry: Egress, allowed: Sequence[Egress]) -> str | None:
    covering = [outer for outer in allowed if _covers_destination(outer, entry)]
    if not covering:
        return f"no entry of the profile covers {entry.to}"
    for protocol in entry.protocols:
        ranges = [r for outer in covering if protocol in outer.protocols for r in outer.port_ranges]
        for wanted in entry.port_ranges:
            gap = _first_gap(wanted, ranges)
            if gap is not None:
                return f"{protocol} port {gap} to {entry.to} is not allowed"
    return None


def _covers_destination(outer: Egress, inner: Egress) -> bool:
    outer_net, inner_net = outer.network, inner.network
    if outer_net is not None and inner_net is not None:
        return outer_net.version == inner_net.version and inner_net.subnet_of(outer_net)  # type: ignore[arg-type]
    if outer_net is not None or inner_net is not None:
        return False
    if outer.to == inner.to:
        return True
    if outer.to.startswith("*."):
        suffix = outer.to[1:]  # ".pypi.org"
        return inner.to.removeprefix("*.").endswith(suffix) and inner.to != outer.to
    return False


def _first_gap(wanted: PortRange, ranges: Sequence[PortRange]) -> int | None:
    """The first port of ``wanted`` outside the union of ``ranges``; None when there is none."""
    at = wanted.low
    for item in sorted(ranges):
        if item.low > at:
            break
        at = max(at, item.high + 1)
        if at > wanted.high:
            return None
    return at if at <= wanted.high else None
