"""Recording host events: telemetry reads (``inspected``) and reaping (``reaped``).

Shared by the inventory service (``sandboxer inspect host``) and the
extension worker (profiles with ``setup.record_telemetry`` record a host's
telemetry before provisioning and once the sandbox is ready).
"""

from __future__ import annotations

import hashlib
import re
import socket
from typing import Any

import msgspec
from nats.js import JetStreamContext

from sandboxer import subjects
from sandboxer.clock import utc_now
from sandboxer.events.types import SYSTEM_ACTOR, HostEvent, HostInspected, encode_event
from sandboxer.extensions.base import Extension

__all__ = ["event_host", "inspect_and_record", "local_host_name", "record_host_event"]


def local_host_name() -> str:
    """How ext.local's machine is named in host events: ``local-<hostname>``."""
    return "local-" + re.sub(r"[^a-z0-9-]", "-", socket.gethostname().lower())[:50]


def event_host(host: str | None) -> str:
    """The name a host has in events: its hosts-file name, or this machine's for None."""
    return host if host is not None else local_host_name()


async def record_host_event(js: JetStreamContext, event: HostEvent) -> None:
    body = encode_event(event)
    event_id = hashlib.sha256(body).hexdigest()[:32]
    event = msgspec.structs.replace(event, event_id=event_id)
    await js.publish(
        subjects.host_event_subject(event.host, str(event.__struct_config__.tag)),
        encode_event(event),
        headers={"Nats-Msg-Id": event_id},
    )


async def inspect_and_record(
    js: JetStreamContext, extension: Extension, host: str | None
) -> dict[str, Any]:
    """Read one host's telemetry through the extension and record it; never raises for the host."""
    inspect = getattr(extension, "inspect_host", None)
    try:
        report: dict[str, Any] = await inspect(host) if inspect else {}
    except Exception as exc:
        report = {"error": str(exc), "reachable": False}
    await record_host_event(js, HostInspected(
        host=event_host(host), extension=extension.id, actor=SYSTEM_ACTOR, at=utc_now(),
        report=report,
    ))
    return report
