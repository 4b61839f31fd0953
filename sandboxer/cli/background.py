"""Finding the running service, or starting one in the background for ``sandboxer create``."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

from sandboxer.client import SandboxerClient
from sandboxer.config.settings import Settings
from sandboxer.errors import SandboxerError, ServiceNotRunning
from sandboxer.service_discovery import (
    client_credentials,
    find_service_urls,
    read_service_file,
)

__all__ = ["connect_client", "start_background_service"]

START_TIMEOUT = 30.0


def start_background_service(settings: Settings) -> int:
    """Start ``sandboxer up`` detached, logging to ``$SANDBOXER_HOME/service.log``; return its pid."""
    settings.home.mkdir(parents=True, exist_ok=True)
    with settings.log_file.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "sandboxer.cli.app", "up"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            env=os.environ.copy(),
        )
    return process.pid


async def _wait_until_healthy(settings: Settings, pid: int) -> SandboxerClient:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if read_service_file(settings) is not None:
            client = await SandboxerClient.connect(
                find_service_urls(settings), credentials=client_credentials(settings)
            )
            try:
                await client.health()
            except SandboxerError:
                await client.close()
            else:
                return client
        try:
            os.kill(pid, 0)
        except OSError:
            break
        await asyncio.sleep(0.1)
    raise ServiceNotRunning(
        f"the background service did not become healthy; see {settings.log_file}"
    )


async def connect_client(
    settings: Settings, *, autostart: bool, say: object = None
) -> SandboxerClient:
    """Connect to the running service; with ``autostart``, start one when none runs."""
    try:
        urls = find_service_urls(settings)
    except ServiceNotRunning:
        if not autostart:
            raise
        pid = start_background_service(settings)
        if callable(say):
            say(
                f"started sandboxer in the background (pid {pid}); log: {settings.log_file}; "
                "stop it with: sandboxer down"
            )
        return await _wait_until_healthy(settings, pid)
    return await SandboxerClient.connect(urls, credentials=client_credentials(settings))
