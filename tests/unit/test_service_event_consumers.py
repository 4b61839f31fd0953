"""The service's durable consumers on the events stream are the ones clients are denied
(sandboxer/bus/permissions.py, docs/security.md#jetstream-api-subjects-and-why): a new one
left off the list would be open to every client's fetches and acks."""

from __future__ import annotations

import re
from pathlib import Path

from sandboxer.bus import permissions
from sandboxer.statehub import follower

PACKAGE = Path(__file__).resolve().parents[2] / "sandboxer"


def test_every_durable_the_service_keeps_on_the_events_stream_is_denied_to_clients() -> None:
    named = set()
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        if "EVENTS_STREAM" not in text or path.parent.name == "bus":
            continue
        named |= set(re.findall(r'\bdurable="([A-Za-z0-9_-]+)"', text))
        named |= set(re.findall(r'^DURABLE = "([A-Za-z0-9_-]+)"', text, re.MULTILINE))
    assert follower.DURABLE in named  # the scan sees the consumers it is meant to
    assert "meter" in named
    assert named <= set(permissions.SERVICE_EVENT_CONSUMERS)


def test_the_client_is_denied_each_of_them() -> None:
    denied = permissions.PERMISSIONS[permissions.CLIENT].publish_deny
    for name in permissions.SERVICE_EVENT_CONSUMERS:
        assert f"$JS.API.CONSUMER.MSG.NEXT.SANDBOXER_EVENTS.{name}" in denied
        assert f"$JS.ACK.SANDBOXER_EVENTS.{name}.>" in denied
        assert f"$JS.API.CONSUMER.DELETE.SANDBOXER_EVENTS.{name}" in denied
