"""Recording host events: telemetry reads (``inspected``) and reaping (``reaped``).

Shared by the inventory service (``sandboxer inspect host``) and the
extension worker (profiles with ``setup.record_telemetry`` record a host's
telemetry before provisioning and once the sandbox is ready).
"""

from __future__ import annotations

import re
import socket
from typing import Any

from sandboxer.bus.event_store import EventStore
from sandboxer.clock import utc_now
from sandboxer.events.types import SYSTEM_ACTOR, HostInspected
from sandboxer.extensions.base import Extension
from sandboxer.extensions.capabilities import HostInspector

__all__ = ["event_host", "inspect_and_record", "local_host_name"]


def local_host_name() -> str:
    """How ext.local's machine is named in host events: ``local-<hostname>``."""
    return "local-" + re.sub(r"[^a-z0-9-]", "-", socket.gethostname().lower())[:50]


def event_host(host: str | None) -> str:
    """The name a host has in events: its hosts-file name, or this machine's for None."""
    return host if host is not None else local_host_name()


async def inspect_and_record(
    store: EventStore, extension: Extension, host: str | None
) -> dict[str, Any]:
    """Read one host's telemetry through the extension and record it; never raises for the host."""
    try:
        report = await extension.inspect_host(host) if isinstance(extension, HostInspector) else {}
    except Exception as exc:
        report = {"error": str(exc), "reachable": False}
    await store.record(
        HostInspected(
            host=event_host(host),
            extension=extension.id,
            actor=SYSTEM_ACTOR,
            at=utc_now(),
            report=report,
        )
    )
    return report
