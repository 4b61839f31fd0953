"""The compose egress gate's proxy: ext.local's name-filtering proxy, plus address entries.

Run on a compose host as a script, beside an unmodified copy of
``sandboxer/extensions/local/egress_proxy.py`` (standard library only)::

    python3 -I gate_proxy.py --name sbx-<id> --config FILE [--ready-fd N]

Every request naming a host goes to egress_proxy's own code, unchanged:
names are allowed by its rules (CONNECT with the SNI check, plain HTTP).
What it refuses by design, a ``CONNECT`` to an address literal
(``CONNECT 10.1.2.3:5432``), is decided here instead: let through when
the address and port lie in one of the policy's address entries and the
address is not one of the host's own, loopback, link-local or multicast
(egress_proxy's own test, which also judges an IPv6 address by the IPv4 address it
carries; an IPv4-mapped literal such as ``[::ffff:10.1.2.3]`` is matched as the IPv4
address it is). No TLS check there: an address entry allows the
destination, whatever is spoken to it. Plain-HTTP requests to an address
literal stay refused (use CONNECT).

The config is egress_proxy's, plus
``"addresses": [{"network": "10.0.0.0/8", "ports": [[5432, 5432]]}]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import ipaddress
import json
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

__all__ = ["AddressRule", "address_target", "load_addresses"]

STANDALONE_SCRIPT = True
"""Run by ``python3 -I`` on a host, outside the package: its errors stay out of sandboxer.errors."""


def _load_beside() -> ModuleType:
    """egress_proxy.py from this script's own directory (``-I`` keeps that off sys.path)."""
    path = Path(__file__).resolve().with_name("egress_proxy.py")
    spec = importlib.util.spec_from_file_location("egress_proxy", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["egress_proxy"] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


if TYPE_CHECKING or __name__ != "__main__":
    from sandboxer.extensions.local import egress_proxy
else:
    egress_proxy = _load_beside()


@dataclass(frozen=True)
class AddressRule:
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    ports: tuple[tuple[int, int], ...]
    """Empty: every port."""

    def allows(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> bool:
        if address.version != self.network.version or address not in self.network:
            return False
        return not self.ports or any(low <= port <= high for low, high in self.ports)


def load_addresses(entries: Sequence[dict[str, object]]) -> tuple[AddressRule, ...]:
    rules = []
    for entry in entries:
        raw_ports = entry.get("ports") or []
        if not isinstance(raw_ports, list):
            raise ValueError(f"bad ports in {entry!r}")
        rules.append(
            AddressRule(
                ipaddress.ip_network(str(entry["network"])),
                tuple((int(low), int(high)) for low, high in raw_ports),
            )
        )
    return tuple(rules)


def address_target(head: bytes) -> tuple[str, int] | None:
    """``(address, port)`` when the head is ``CONNECT <address literal>:<port> HTTP/1.x``;
    None for anything else (egress_proxy then decides, and refuses what it must)."""
    line = head.split(b"\r\n", 1)[0]
    parts = line.split(b" ")
    if len(parts) != 3 or parts[0] != b"CONNECT" or parts[2] not in (b"HTTP/1.0", b"HTTP/1.1"):
        return None
    try:
        target = parts[1].decode("ascii")
    except UnicodeDecodeError:
        return None
    host, sep, port_text = target.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        return None  # an IPv6 address with a port goes in brackets
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    # [::ffff:169.254.169.254] is an IPv4 connection to 169.254.169.254: judged as that,
    # or an IPv6 entry such as ::/0 would let it through.
    return str(egress_proxy.unmapped(address)), int(port_text)


class _Replayed(asyncio.StreamReader):
    """The client's stream with the request head, already read here, put back in front."""

    def __init__(self, head: bytes, reader: asyncio.StreamReader) -> None:
        super().__init__(limit=egress_proxy.MAX_HEAD)
        self._head = head
        self._reader = reader

    async def readuntil(self, separator: Any = b"\n") -> bytes:
        if self._head:
            head, self._head = self._head, b""
            return head  # read with the same separator, so it ends there
        return await self._reader.readuntil(separator)

    async def readexactly(self, n: int) -> bytes:
        return await self._reader.readexactly(n)

    async def read(self, n: int = -1) -> bytes:
        return await self._reader.read(n)


class GateProxy(egress_proxy.Proxy):
    def __init__(
        self,
        allowlist: egress_proxy.Allowlist,
        hosts: dict[str, list[str]],
        addresses: tuple[AddressRule, ...],
    ) -> None:
        super().__init__(allowlist, hosts)
        self.addresses = addresses

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # within, not asyncio.timeout: the host's python3 may be 3.9 (egress_proxy.within).
        head = await egress_proxy.within(reader.readuntil(b"\r\n\r\n"), egress_proxy.HEAD_TIMEOUT)
        target = address_target(head)
        if target is None:
            await super()._serve(_Replayed(head, reader), writer)
            return
        address, port = target
        ip = ipaddress.ip_address(address)
        if not any(rule.allows(ip, port) for rule in self.addresses):
            raise egress_proxy.Refused(403, f"{address}:{port} is not on this sandbox's allowlist")
        if egress_proxy._is_forbidden_target(address):
            raise egress_proxy.Refused(403, f"{address} is this host's or a local link's address")
        try:
            up_reader, up_writer = await egress_proxy.within(
                asyncio.open_connection(address, port), egress_proxy.CONNECT_TIMEOUT
            )
        except (OSError, TimeoutError) as exc:
            raise egress_proxy.Refused(502, f"cannot connect to {address}:{port}: {exc}") from None
        self.log(f"allowed: CONNECT {address}:{port}")
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await egress_proxy._splice(reader, writer, up_reader, up_writer)


async def serve(config: dict[str, object], ready_fd: int | None) -> None:
    domains, addresses = config.get("domains") or [], config.get("addresses") or []
    assert isinstance(domains, list)
    assert isinstance(addresses, list)
    hosts_file = config.get("hosts_file")
    proxy = GateProxy(
        egress_proxy.load_allowlist(domains),
        egress_proxy.read_hosts_file(Path(str(hosts_file)) if hosts_file else None),
        load_addresses(addresses),
    )
    server = await asyncio.start_server(
        proxy.handle, str(config["listen"]), int(str(config["port"])), limit=egress_proxy.MAX_HEAD
    )
    if ready_fd is not None:
        os.write(ready_fd, b"ready\n")
        os.close(ready_fd)
    stopped = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stopped.set)
    async with server:
        await stopped.wait()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--name", required=True, help="sbx-<id>: whose proxy this is")
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--ready-fd", type=int)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(json.loads(args.config.read_text()), args.ready_fd))


if __name__ == "__main__":
    main()
