"""A compose sandbox's egress allowlist, compiled (pure: text in, text out).

Under ``default: deny`` with name entries, the stack's services sit on one
network of our own, created ``--internal`` (no route out), and the only way out
is a forward proxy (:mod:`.gate_proxy`: ext.local's ``egress_proxy.py``
unchanged for names, plus ``CONNECT`` to listed addresses; run by the host's
``python3``) listening on that network's gateway address, which is the host's
end of its bridge. An nftables table of the sandbox's own, in the
host's ruleset, drops everything the bridge would forward and everything it
would deliver to the host except the proxy's port and DNS (the engine's
resolver for service names): the stack cannot reach another of the host's
services, and a host that forwards packets does not make the network less
internal.

The proxy relays TCP: what a policy allows over UDP only is not carried, and
an entry without a protocol (TCP and UDP) gets its TCP half (``ready``
warnings name both), so the gate lets through less than such a policy, never
more (docs/network.md).
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any

from sandboxer.config.network_policy import NetworkPolicy

__all__ = [
    "EGRESS_OVERRIDE_FILE",
    "PROXY_PORT",
    "Bridge",
    "allowlist_override",
    "bridge_of",
    "egress_support",
    "gate_bypasses",
    "gate_leaks",
    "network_name",
    "nft_ruleset",
    "nft_table",
    "proxy_config",
    "proxy_env",
    "tcp_only_entries",
    "uncarried_entries",
    "unsafe_services",
]

EGRESS_OVERRIDE_FILE = ".sandboxer.egress.yaml"
"""Beside the secrets file: the compose override that puts every service on the egress network."""
PROXY_PORT = 3128
NETWORK_KEY = "sandboxer_egress"
"""The egress network's key in the override (its engine name is :func:`network_name`)."""
NO_PROXY = "localhost,127.0.0.1,::1"


def network_name(project: str) -> str:
    return f"{project}-egress"


def nft_table(sandbox_id: str) -> str:
    """The host's nftables table of one sandbox (ids are lowercase letters and digits)."""
    return f"sbx_compose_{sandbox_id}"


def uncarried_entries(policy: NetworkPolicy) -> list[str]:
    """Entries the proxy does not let through at all: UDP-only ones (it relays TCP)."""
    return [entry.compact() for entry in policy.egress if entry.protocols == ("udp",)]


def tcp_only_entries(policy: NetworkPolicy) -> list[str]:
    """Entries without a protocol (TCP and UDP) the proxy carries over TCP alone."""
    return [entry.compact() for entry in policy.egress if entry.protocol is None]


def proxy_config(policy: NetworkPolicy, listen: str, hosts_file: str | None) -> dict[str, Any]:
    """The proxy's config file (egress_proxy.py's format, plus gate_proxy.py's addresses)."""
    domains = [
        {"pattern": entry.to, "ports": [list(pair) for pair in entry.port_pairs]}
        for entry in policy.domains
        if "tcp" in entry.protocols
    ]
    addresses = [
        {"network": str(entry.network), "ports": [list(pair) for pair in entry.port_pairs]}
        for entry in policy.addresses
        if "tcp" in entry.protocols
    ]
    return {
        "listen": listen,
        "port": PROXY_PORT,
        "hosts_file": hosts_file,
        "domains": domains,
        "addresses": addresses,
    }


def proxy_env(gateway: str) -> dict[str, str]:
    """What each service's environment gets: tools read either spelling."""
    url = f"http://{gateway}:{PROXY_PORT}"
    env = {}
    for name in ("http_proxy", "https_proxy"):
        env[name] = env[name.upper()] = url
    env["no_proxy"] = env["NO_PROXY"] = NO_PROXY
    return env


def allowlist_override(services: list[str], project: str, gateway: str) -> str:
    """A compose file (JSON is YAML) merged over the project's: every service on the
    egress network only, with the proxy in its environment."""
    env = proxy_env(gateway)
    document = {
        "services": {name: {"networks": [NETWORK_KEY], "environment": env} for name in services},
        "networks": {NETWORK_KEY: {"external": True, "name": network_name(project)}},
    }
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def unsafe_services(compose: object) -> list[str]:
    """Services of a parsed compose file that choose their own network (``networks:`` or
    ``network_mode:``): merged with the override they would keep a way out."""
    return _services_with(compose, "networks", "network_mode")


def gate_bypasses(compose: object, name: str) -> list[str]:
    """Why the parsed compose file ``name`` would give its services a way around the egress
    gate, one reason each, naming its fix; empty when it gives none.

    Only this file is read, so what compose would merge into it from elsewhere is refused
    as well: ``extends:`` (the extended service's networks are merged with the override's,
    and keep their way out) and ``include:``. :func:`gate_leaks` then checks compose's
    own merged model before anything starts."""
    if not isinstance(compose, dict):
        return [f"{name} is not a mapping of top-level keys (services:, ...); fix the compose file"]
    reasons = []
    own = unsafe_services(compose)
    if own:
        reasons.append(
            f"services {', '.join(own)} of {name} choose their own networks (networks: or "
            "network_mode:), which would bypass the egress allowlist; remove those keys "
            "(every service is put on the allowlist's network)"
        )
    extending = _services_with(compose, "extends")
    if extending:
        reasons.append(
            f"services {', '.join(extending)} of {name} extend other services (extends:), "
            "whose networks would be merged in and bypass the egress allowlist; write out "
            "what they take from there in the services themselves"
        )
    if "include" in compose:
        reasons.append(
            f"{name} includes other compose files (include:), whose services would not "
            f"be checked for networks of their own; move those services into {name}"
        )
    return reasons


def gate_leaks(resolved: object, project: str) -> list[str]:
    """Services of compose's merged model (``config`` with the override) that would not
    be on the egress network alone, and what else in it points past the gate; empty
    when nothing does.

    The model is what ``up`` will make, whatever merged into it (extends, include, tags
    that :func:`gate_bypasses` cannot see): each service on :data:`NETWORK_KEY` only, no
    ``network_mode``, and that network the sandbox's own, external one. An ``extends:``
    still in the model (podman-compose prints it unresolved) is a leak: its networks are
    not shown. A model that cannot be read is a leak too: nothing unseen is started."""
    if not isinstance(resolved, dict) or not isinstance(resolved.get("services"), dict):
        return ["compose printed no model of the stack's services"]
    leaks = []
    networks = resolved.get("networks")
    ours = networks.get(NETWORK_KEY) if isinstance(networks, dict) else None
    if not (
        isinstance(ours, dict)
        and ours.get("external") is True
        and ours.get("name") == network_name(project)
    ):
        leaks.append(
            f"the network {NETWORK_KEY} is not the sandbox's egress network "
            f"{network_name(project)} (the compose file must not define {NETWORK_KEY})"
        )
    stray = []
    for service, body in resolved["services"].items():
        joined = body.get("networks") if isinstance(body, dict) else None
        # Docker Compose prints a service's networks as a mapping, podman-compose as a list.
        on = sorted(str(key) for key in joined) if isinstance(joined, dict | list) else None
        if (
            on != [NETWORK_KEY]
            or not isinstance(body, dict)
            or "network_mode" in body
            or "extends" in body
        ):
            stray.append(str(service))
    if stray:
        leaks.append(
            f"services {', '.join(sorted(stray))} would not be on the egress network alone "
            "(compose merged in other networks, a network_mode or an extends:)"
        )
    return leaks


def _services_with(compose: object, *keys: str) -> list[str]:
    """Services of a parsed compose file that have any of ``keys``."""
    if not isinstance(compose, dict):
        return []
    services = compose.get("services")
    if not isinstance(services, dict):
        return []
    return sorted(
        str(name)
        for name, body in services.items()
        if isinstance(body, dict) and any(key in body for key in keys)
    )


@dataclass(frozen=True)
class Bridge:
    """The host's side of the egress network."""

    interface: str
    gateway: str


def bridge_of(engine: str, inspect_json: str) -> Bridge | None:
    """The bridge and gateway from ``docker|podman network inspect`` output, or None."""
    try:
        data = json.loads(inspect_json)
    except ValueError:
        return None
    if not isinstance(data, list) or len(data) != 1 or not isinstance(data[0], dict):
        return None
    item = data[0]
    if engine == "podman":
        interface = item.get("network_interface")
        subnets = item.get("subnets") or []
        gateways = [s.get("gateway") for s in subnets if isinstance(s, dict)]
    else:
        options = item.get("Options") or {}
        interface = options.get("com.docker.network.bridge.name") or (
            f"br-{str(item.get('Id', ''))[:12]}" if item.get("Id") else None
        )
        configs = (item.get("IPAM") or {}).get("Config") or []
        gateways = [c.get("Gateway") for c in configs if isinstance(c, dict)]
    v4 = [g for g in gateways if isinstance(g, str) and _is_ipv4(g)]
    if not isinstance(interface, str) or not _safe_interface(interface) or not v4:
        return None
    return Bridge(interface, v4[0])


def _is_ipv4(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).version == 4
    except ValueError:
        return False


def _safe_interface(name: str) -> bool:
    return 0 < len(name) <= 15 and all(c.isalnum() or c in "-_." for c in name)


def nft_ruleset(table: str, bridge: Bridge) -> str:
    """The sandbox's table: nothing from the bridge is forwarded elsewhere (services on it
    still reach each other, also where br_netfilter shows bridged packets to these hooks),
    and the host takes from it only the proxy's port on the gateway and DNS (the engine's
    resolver)."""
    iface, gateway = json.dumps(bridge.interface), bridge.gateway
    return f"""table inet {table} {{
  chain forward {{
    type filter hook forward priority -10; policy accept;
    iifname {iface} oifname {iface} accept
    iifname {iface} drop
  }}
  chain input {{
    type filter hook input priority -10; policy accept;
    iifname {iface} ip daddr {gateway} tcp dport {PROXY_PORT} accept
    iifname {iface} ip daddr {gateway} udp dport 53 accept
    iifname {iface} ip daddr {gateway} tcp dport 53 accept
    iifname {iface} drop
  }}
}}
"""


MIN_PYTHON = (3, 9)
"""The proxy script's oldest Python (``str.removesuffix``)."""


_PODMAN_NETAVARK = (
    "podman's netavark network backend (apt netavark aardvark-dns, and network_backend = "
    '"netavark" in containers.conf; with CNI an internal network has no gateway for the proxy)'
)


def egress_support(tools_output: str) -> dict[str, Any]:
    """``inspect host``'s ``egress_allowlist`` entry, from lines ``TOOL yes|no``,
    ``python3_version X.Y`` and, for podman, ``podman_network_backend NAME``: ``ready``, and
    ``missing`` with what to install."""
    found: dict[str, str] = {}
    for line in tools_output.splitlines():
        key, _, value = line.strip().partition(" ")
        if key:
            found[key] = value.strip()
    missing = []
    if found.get("python3") != "yes":
        missing.append("python3 (apt python3-minimal)")
    else:
        version = found.get("python3_version", "")
        major, _, minor = version.partition(".")
        if not (major.isdigit() and minor.isdigit()) or (int(major), int(minor)) < MIN_PYTHON:
            missing.append(f"python3 >= {MIN_PYTHON[0]}.{MIN_PYTHON[1]} (found {version or '?'})")
    if found.get("nft") != "yes":
        missing.append("nft (apt nftables)")
    if found.get("setsid") != "yes":
        missing.append("setsid (apt util-linux)")
    if found.get("podman_network_backend") == "cni":  # its internal networks have no gateway
        missing.append(_PODMAN_NETAVARK)
    report: dict[str, Any] = {"ready": not missing, "python3": found.get("python3_version")}
    if missing:
        report["missing"] = missing
    return report
