"""Loopback ports for servers we start ourselves and may start again on the same port.

A port the kernel hands to a socket bound to port 0 comes from its ephemeral range
(``net.ipv4.ip_local_port_range``), the same range every outgoing connection and every
other server started with port 0 draws from. Chosen that way and used seconds later, as
a cluster's route ports are, it can be taken in between: CI saw a forming cluster's
third node fail with "address already in use" twelve seconds after its port was chosen.
So these ports are drawn at random from below that range, where only a process that
names its port could take it, and each is checked free by binding it once.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

__all__ = ["spare_port", "spare_ports"]

_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 10_000  # above the ports well-known services are configured on
_DEFAULT_EPHEMERAL_START = 32_768  # Linux's default, when /proc cannot say


def _ephemeral_start() -> int:
    try:
        return int(_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _DEFAULT_EPHEMERAL_START


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def spare_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports on ``host`` that are free now and outside the ephemeral range.

    Falls back to a kernel-chosen port for any it cannot find there (a range
    set to start very low leaves little room below it).
    """
    top = _ephemeral_start()
    room = range(_LOWEST, top) if top - _LOWEST >= 1_000 else range(0)
    candidates = random.sample(room, k=min(len(room), 16 * count + 16))
    ports: list[int] = []
    for port in candidates:
        if len(ports) == count:
            break
        if _bindable(host, port):
            ports.append(port)
    while len(ports) < count:
        with socket.socket() as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in ports:
            ports.append(port)
    return ports


def spare_port(host: str = "127.0.0.1") -> int:
    """One port on ``host`` that is free now and outside the ephemeral range."""
    return spare_ports(1, host)[0]
