"""How a client finds the service: ``SANDBOXER_NATS_URL``, or the embedded one's record.

A running ``sandboxer up`` with its own NATS writes ``$SANDBOXER_HOME/service.json``
(its pid and NATS URL); a client on the same machine reads it. With
``SANDBOXER_NATS_URL`` set, every process uses that NATS and no record is needed.
A client authenticates as the ``client`` identity (:func:`client_credentials`): the
embedded server's generated credentials, or those ``SANDBOXER_NATS_AUTH`` names.
"""

from __future__ import annotations

import json
import os
from typing import Any

from sandboxer.bus.nats_auth import NatsCredentials, credentials_for
from sandboxer.bus.permissions import CLIENT
from sandboxer.config.settings import Settings
from sandboxer.errors import ServiceNotRunning
from sandboxer.extensions.local.procs import start_time

__all__ = ["client_credentials", "find_service_urls", "read_service_file"]


def read_service_file(settings: Settings) -> dict[str, Any] | None:
    """The running embedded service's record, if its process is still alive: the same
    process, by its start time too. A service killed with -9 leaves its record, and its pid
    may be another process's by now, which ``down`` would then have stopped."""
    try:
        record: dict[str, Any] = json.loads(settings.service_file.read_text())
        pid = int(record["pid"])
        os.kill(pid, 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no record, a torn one, or a service that died without removing it
    started = record.get("pid_start")
    if started is not None and start_time(pid) != started:
        return None  # the pid is another process's now
    return record


def find_service_urls(settings: Settings) -> list[str]:
    """The NATS servers to connect to; :class:`ServiceNotRunning` says how to start one."""
    if settings.nats_urls:
        return list(settings.nats_urls)
    record = read_service_file(settings)
    if record is None:
        raise ServiceNotRunning(
            f"no sandboxer service is running for {settings.home}; start one with "
            "'sandboxer up' (or set SANDBOXER_NATS_URL to use an existing NATS)"
        )
    return [str(record["nats_url"])]


def client_credentials(settings: Settings) -> NatsCredentials | None:
    """What a client (the CLI, a bus client) authenticates with; None: no authentication."""
    return credentials_for(settings, CLIENT)
