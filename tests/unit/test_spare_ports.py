"""Spare ports come from below the kernel's ephemeral range, free and distinct."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from sandboxer import spare_ports as module
from sandboxer.spare_ports import spare_port, spare_ports


def test_ports_are_distinct_free_and_below_the_ephemeral_range() -> None:
    start = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = spare_ports(5)
    assert len(set(ports)) == 5
    for port in ports:
        assert 10_000 <= port < start
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # free: this would raise otherwise


def test_a_port_in_use_is_never_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        taken = held.getsockname()[1]
        held.listen()
        # Every candidate drawn is the held port: it is refused, then the kernel chooses.
        monkeypatch.setattr(module.random, "sample", lambda room, k: [taken] * k)
        assert spare_port() != taken


def test_with_no_room_below_the_range_the_kernel_chooses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(module, "_ephemeral_start", lambda: 10_500)
    ports = spare_ports(3)
    assert len(set(ports)) == 3
    assert all(port > 0 for port in ports)
