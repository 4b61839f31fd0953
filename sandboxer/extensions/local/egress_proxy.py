"""A forward proxy for ONE local sandbox that lets through only the names it was given.

Run as a script (standard library only, so it starts in a few tens of ms and
imports nothing of the service)::

    python -I egress_proxy.py --name sbx-<name> --config FILE [--ready-fd N]

It listens on the host's end of the sandbox's veth (an address only that
sandbox can reach) and accepts:

* ``CONNECT host:port``: the name must be allowed for that port; then the
  first bytes the client sends must be a TLS ClientHello whose SNI is that
  same name, or the tunnel is closed before a byte reaches the upstream;
* plain HTTP, in absolute form (``GET http://host/...``) or origin form with a
  ``Host`` header: the name must be allowed, and a ``Host`` header naming
  another host is refused.

Every upstream connection goes to the address the ALLOWED name resolves to
(the configured hosts file first, then the system resolver), so later bytes
on the same connection can only reach that host. Names resolving to this
host's own addresses, loopback, link-local or multicast are refused (an IPv6
address carrying an IPv4 one, such as ``::ffff:169.254.169.254``, is judged by that
one too): an allowed name must not become a way into the host. Refusals are answered at
once (403, or a closed tunnel) and logged.

The config file (JSON, written by :mod:`.egress`)::

    {"listen": "169.254.1.1", "port": 3128, "hosts_file": null,
     "domains": [{"pattern": "*.pypi.org", "ports": [[443, 443]]}]}
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import re
import signal
import socket
import sys
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

__all__ = [
    "Allowlist",
    "client_hello_server_name",
    "embedded_ipv4",
    "normalize_name",
    "unmapped",
    "valid_pattern",
    "within",
]

T = TypeVar("T")

MAX_HEAD = 16 * 1024
MAX_HELLO = 64 * 1024
# Waits here are bounded by within() (asyncio.wait_for), see there.
HEAD_TIMEOUT = 15.0
CONNECT_TIMEOUT = 10.0
MAX_CLIENTS = 256
MAX_LOG_LINES = 2000

# Used with fullmatch: with match, '$' also matches before a final newline, and
# 'evil\n.pypi.org' would pass as a name.
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_METHOD = re.compile(r"[A-Z]{1,16}")
_DROPPED_HEADERS = {"proxy-connection", "proxy-authorization", "proxy-authenticate"}


# -- names ---------------------------------------------------------------------------------


def normalize_name(name: str) -> str | None:
    """``name`` lowercased without a trailing dot if it is a DNS host name, else None."""
    name = name.lower().removesuffix(".")
    if not name or len(name) > 253 or not name.isascii():
        return None
    if not all(_LABEL.fullmatch(label) for label in name.split(".")):
        return None
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(name)
        return None  # an address literal is never a name: addresses have rules of their own
    return name


def valid_pattern(pattern: str) -> bool:
    """A host name, or ``*.`` followed by one (every name below it, not the name itself)."""
    if pattern != pattern.lower():
        return False
    bare = pattern.removeprefix("*.")
    return normalize_name(bare) == bare and "*" not in bare


@dataclass(frozen=True)
class Allowlist:
    """Allowed name patterns, each with its allowed port ranges (empty: any port)."""

    rules: tuple[tuple[str, tuple[tuple[int, int], ...]], ...]

    def allows(self, name: str, port: int) -> bool:
        for pattern, ports in self.rules:
            if pattern.startswith("*."):
                matched = name.endswith(pattern[1:]) and len(name) > len(pattern) - 1
            else:
                matched = name == pattern
            if matched and (not ports or any(low <= port <= high for low, high in ports)):
                return True
        return False


# -- TLS ClientHello -----------------------------------------------------------------------


class NotClientHello(ValueError):
    """The bytes are not a well-formed TLS ClientHello."""


def client_hello_server_name(handshake: bytes) -> str | None:
    """The SNI host name in a ClientHello handshake message (type byte first), or None.

    Raises :class:`NotClientHello` for anything malformed: every length is
    checked against what is left, so hostile input can only be refused.
    """

    class Cursor:
        def __init__(self, data: bytes) -> None:
            self.data, self.at = data, 0

        def take(self, count: int) -> bytes:
            if count < 0 or self.at + count > len(self.data):
                raise NotClientHello("truncated ClientHello")
            chunk = self.data[self.at : self.at + count]
            self.at += count
            return chunk

        def number(self, size: int) -> int:
            return int.from_bytes(self.take(size), "big")

        def vector(self, size: int) -> bytes:
            return self.take(self.number(size))

    message = Cursor(handshake)
    if message.number(1) != 1:
        raise NotClientHello("not a ClientHello")
    hello = Cursor(message.vector(3))
    hello.take(2 + 32)  # legacy version, random
    hello.vector(1)  # session id
    hello.vector(2)  # cipher suites
    hello.vector(1)  # compression methods
    if hello.at == len(hello.data):
        return None  # no extensions at all
    extensions = Cursor(hello.vector(2))
    while extensions.at < len(extensions.data):
        kind = extensions.number(2)
        body = extensions.vector(2)
        if kind != 0:  # server_name
            continue
        names = Cursor(Cursor(body).vector(2))
        while names.at < len(names.data):
            name_type = names.number(1)
            value = names.vector(2)
            if name_type == 0:  # host_name
                try:
                    return value.decode("ascii")
                except UnicodeDecodeError:
                    raise NotClientHello("server name is not ASCII") from None
        return None
    return None


async def read_client_hello(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """The raw TLS records that carry the ClientHello, and the handshake message itself."""
    raw = bytearray()
    handshake = bytearray()
    while True:
        header = await reader.readexactly(5)
        if header[0] != 22 or header[1] != 3:  # handshake record, TLS major version 3
            raise NotClientHello("the tunnel did not start with a TLS handshake")
        length = int.from_bytes(header[3:5], "big")
        if length == 0 or length > 16384 + 2048:
            raise NotClientHello("bad TLS record length")
        body = await reader.readexactly(length)
        raw += header + body
        handshake += body
        if len(handshake) >= 4:
            needed = 4 + int.from_bytes(handshake[1:4], "big")
            if needed > MAX_HELLO:
                raise NotClientHello("ClientHello too large")
            if len(handshake) >= needed:
                return bytes(raw), bytes(handshake[:needed])


# -- HTTP ----------------------------------------------------------------------------------


STANDALONE_SCRIPT = True
"""Run by ``python -I`` outside the package: its exceptions stay out of sandboxer.errors."""


class Refused(Exception):
    """A request the proxy answers with an error status, and why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


_STATUS_TEXT = {
    400: "Bad Request",
    403: "Forbidden",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


def error_response(status: int, reason: str) -> bytes:
    body = f"sandboxer egress proxy: {reason}\n".encode()
    return (
        f"HTTP/1.1 {status} {_STATUS_TEXT.get(status, 'Error')}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


@dataclass(frozen=True)
class Request:
    method: str
    host: str
    port: int
    head: bytes
    """What to send upstream first (None-empty for CONNECT: the tunnel starts empty)."""


def _split_authority(authority: str, default_port: int | None) -> tuple[str, int]:
    host, sep, port_text = authority.rpartition(":")
    if not sep or "]" in port_text:
        host, port_text = authority, ""
    if not port_text:
        if default_port is None:
            raise Refused(400, f"{authority!r} has no port")
        port = default_port
    elif port_text.isdigit() and 0 < int(port_text) < 65536:
        port = int(port_text)
    else:
        raise Refused(400, f"bad port in {authority!r}")
    name = normalize_name(host)
    if name is None:
        raise Refused(403, f"{host[:255]!r} is not an allowed name (only names, not addresses)")
    return name, port


def parse_request(head: bytes) -> Request:
    """Decide where a request goes from its head (request line and headers)."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise Refused(400, "request head is not ASCII") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if (
        len(parts) != 3
        or not _METHOD.fullmatch(parts[0])
        or parts[2] not in {"HTTP/1.0", "HTTP/1.1"}
    ):
        raise Refused(400, "malformed request line")
    method, target, version = parts
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or line[0] in " \t":
            raise Refused(400, "malformed header line")
        headers.append((name, value.strip()))
    hosts = [value for name, value in headers if name.lower() == "host"]
    if len(hosts) > 1:
        raise Refused(400, "more than one Host header")
    if method == "CONNECT":
        name, port = _split_authority(target, None)
        return Request(method, name, port, b"")
    if target.startswith("/"):
        if not hosts:
            raise Refused(400, "no Host header")
        name, port = _split_authority(hosts[0], 80)
        path = target
    else:
        url = urlsplit(target)
        if url.scheme.lower() != "http" or not url.netloc or "@" in url.netloc:
            raise Refused(400, "only http:// URLs (use CONNECT for https)")
        name, port = _split_authority(url.netloc, 80)
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        if hosts and _split_authority(hosts[0], 80)[0] != name:
            raise Refused(403, "the Host header names another host than the URL")
    kept = [f"{name}: {value}" for name, value in headers if name.lower() not in _DROPPED_HEADERS]
    upstream = "\r\n".join([f"{method} {path} {version}", *kept]) + "\r\n\r\n"
    return Request(method, name, port, upstream.encode("ascii"))


# -- the server ----------------------------------------------------------------------------


def read_hosts_file(path: Path | None) -> dict[str, list[str]]:
    """``/etc/hosts``-style lines: ADDRESS NAME..., consulted before the system resolver."""
    mapping: dict[str, list[str]] = {}
    if path is None:
        return mapping
    for line in path.read_text().splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        with contextlib.suppress(ValueError):
            ipaddress.ip_address(fields[0])
            for name in fields[1:]:
                mapping.setdefault(name.lower(), []).append(fields[0])
    return mapping


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


def embedded_ipv4(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> ipaddress.IPv4Address | None:
    """The IPv4 address inside an IPv6 address of a form whose connections may end at it:
    IPv4-mapped (``::ffff:a.b.c.d``: a dual-stack socket connects to a.b.c.d itself),
    IPv4-compatible (``::a.b.c.d``), NAT64 (``64:ff9b::a.b.c.d``, which a NAT64 gateway
    forwards to a.b.c.d) and 6to4 (``2002:AABB:CCDD::/48``). None for any other address.

    Python before 3.13 does not look inside (``ipaddress.ip_address("::ffff:127.0.0.1")
    .is_loopback`` is False), so every check of an address also checks this one."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or ip in _IPV4_COMPATIBLE:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def unmapped(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """``ip``, or the IPv4 address it maps (``::ffff:a.b.c.d``): a connection to a mapped
    address IS an IPv4 connection, so rules for IPv4 destinations must judge it."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _is_forbidden_target(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    # ::ffff:169.254.169.254 reaches the metadata service as 169.254.169.254 does: an
    # address carrying an IPv4 one is forbidden when that one is.
    inner = embedded_ipv4(ip)
    if inner is not None and _is_forbidden_target(str(inner)):
        return True
    if ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified:
        return True
    # One of this host's own addresses: binding to it succeeds only then.
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError:
            return False
    return True


class Proxy:
    def __init__(self, allowlist: Allowlist, hosts: dict[str, list[str]]) -> None:
        self.allowlist = allowlist
        self.hosts = hosts
        self.clients = asyncio.Semaphore(MAX_CLIENTS)
        self.logged = 0

    def log(self, message: str) -> None:
        if self.logged < MAX_LOG_LINES:
            print(message, file=sys.stderr, flush=True)
        elif self.logged == MAX_LOG_LINES:
            print("further log lines suppressed", file=sys.stderr, flush=True)
        self.logged += 1

    async def resolve(self, name: str, port: int) -> list[str]:
        if name in self.hosts:
            return self.hosts[name]
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(name, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise Refused(502, f"{name} does not resolve: {exc}") from None
        return list(dict.fromkeys(str(info[4][0]) for info in infos))

    async def open_upstream(
        self, name: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        addresses = await self.resolve(name, port)
        usable = [address for address in addresses if not _is_forbidden_target(address)]
        if not usable:
            raise Refused(403, f"{name} resolves only to addresses of this host or local links")
        last: Exception | None = None
        for address in usable:
            try:
                return await within(asyncio.open_connection(address, port), CONNECT_TIMEOUT)
            except (OSError, TimeoutError) as exc:
                last = exc
        raise Refused(502, f"cannot connect to {name}:{port}: {last}")

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.clients.locked():
            writer.write(error_response(503, "too many connections"))
            await _close(writer)
            return
        async with self.clients:
            try:
                await self._serve(reader, writer)
            except Refused as refusal:
                self.log(f"refused: {refusal.reason}")
                with contextlib.suppress(OSError):
                    writer.write(error_response(refusal.status, refusal.reason))
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                pass
            except ValueError as exc:  # a head over the limit, or a malformed ClientHello
                self.log(f"refused: {exc}")
            finally:
                await _close(writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await within(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
        request = parse_request(head)
        if not self.allowlist.allows(request.host, request.port):
            raise Refused(403, f"{request.host}:{request.port} is not on this sandbox's allowlist")
        if request.method == "CONNECT":
            await self._tunnel(request, reader, writer)
            return
        up_reader, up_writer = await self.open_upstream(request.host, request.port)
        self.log(f"allowed: {request.method} http://{request.host}:{request.port}")
        up_writer.write(request.head)
        await _splice(reader, writer, up_reader, up_writer)

    async def _tunnel(
        self, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        up_reader, up_writer = await self.open_upstream(request.host, request.port)
        try:
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            try:
                raw, hello = await within(read_client_hello(reader), HEAD_TIMEOUT)
                server_name = client_hello_server_name(hello)
            except NotClientHello as exc:
                self.log(f"refused: CONNECT {request.host}:{request.port}: {exc}")
                return
            sni = normalize_name(server_name or "")
            if sni != request.host:
                self.log(
                    f"refused: CONNECT {request.host}:{request.port} with TLS server name "
                    f"{(server_name or '(none)')[:255]!r}"
                )
                return
            self.log(f"allowed: CONNECT {request.host}:{request.port}")
            up_writer.write(raw)
            await _splice(reader, writer, up_reader, up_writer)
        finally:
            await _close(up_writer)


async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while chunk := await source.read(65536):
            sink.write(chunk)
            await sink.drain()
        if sink.can_write_eof():
            sink.write_eof()
    except OSError:
        sink.close()


async def _splice(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
) -> None:
    try:
        await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
    finally:
        await _close(up_writer)


async def within(awaitable: Awaitable[T], seconds: float) -> T:
    """``awaitable``, or the built-in TimeoutError after ``seconds``, on every python3 this
    script runs on.

    Not asyncio.timeout, which the rest of sandboxer uses (TID251 in pyproject.toml): this
    script (and gate_proxy.py) also runs on a compose host's own python3, 3.9 or newer
    (compose_ssh/egress_plan.MIN_PYTHON), which has none. Before 3.11, wait_for raises
    asyncio.TimeoutError, not the built-in the handlers here catch: a slow client or upstream
    ended the connection with an unhandled error instead of a 502 (or a quiet close). What
    wait_for gets wrong on 3.11, a cancellation landing as the wait ends is dropped, can
    only hold up this process's exit: nothing cancels a connection but the end of
    asyncio.run, after a SIGTERM that a SIGKILL follows (or a SIGKILL at once).
    """
    try:
        return await asyncio.wait_for(awaitable, seconds)  # noqa: TID251 (see above)
    except asyncio.TimeoutError:  # noqa: UP041 (before 3.11 not the built-in)
        raise TimeoutError(f"no answer within {seconds:g} s") from None


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


def load_allowlist(domains: Sequence[dict[str, object]]) -> Allowlist:
    rules = []
    for entry in domains:
        pattern = str(entry["pattern"])
        if not valid_pattern(pattern):
            raise ValueError(f"bad name pattern {pattern!r}")
        raw_ports = entry.get("ports") or []
        assert isinstance(raw_ports, list)
        rules.append((pattern, tuple((int(low), int(high)) for low, high in raw_ports)))
    return Allowlist(tuple(rules))


async def serve(config: dict[str, object], ready_fd: int | None) -> None:
    domains = config["domains"]
    assert isinstance(domains, list)
    hosts_file = config.get("hosts_file")
    proxy = Proxy(
        load_allowlist(domains), read_hosts_file(Path(str(hosts_file)) if hosts_file else None)
    )
    server = await asyncio.start_server(
        proxy.handle, str(config["listen"]), int(str(config["port"])), limit=MAX_HEAD
    )
    if ready_fd is not None:
        os.write(ready_fd, b"ready\n")
        os.close(ready_fd)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="sbx-<name>: whose proxy this is")
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--ready-fd", type=int)
    args = parser.parse_args(argv)
    config = json.loads(args.config.read_text())
    asyncio.run(serve(config, args.ready_fd))


if __name__ == "__main__":
    main()
