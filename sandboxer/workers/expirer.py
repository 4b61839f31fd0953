"""The expirer: publishes ``sandboxer.cmd.expire`` for every sandbox whose deadline passed.

It holds no timers of its own. Every ``SANDBOXER_EXPIRY_INTERVAL`` seconds it asks the
sandbox view (``sandboxer.query.sandbox.list`` with ``due_before``, answered from an index)
which sandboxes are due, so after a restart or a crash it finds exactly what the log says
is overdue. Each expire carries a command id derived from the sandbox and its version
(``expire-<sandbox_id>-<version>``): several control workers, a view that lags, or a sweep
repeated after a crash all send the same id, which the commands stream deduplicates and the
sandbox's ``handled`` ids decide only once. The domain checks the deadline again when it
decides, so a sandbox touched or extended meanwhile is not expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.js import JetStreamContext

from sandboxer import subjects
from sandboxer.bus.publish import publish_durably
from sandboxer.clock import utc_now
from sandboxer.events.types import Actor

__all__ = ["EXPIRER_ACTOR", "Expirer", "expire_command"]

log = logging.getLogger(__name__)

EXPIRER_ACTOR = Actor(type="atm", id="sandboxer-expirer")
SWEEP_LIMIT = 500
"""Expiries sent per sweep; more wait for the next one (they are all overdue anyway)."""
QUIET_FAILURES = 30.0
"""Seconds of failed sweeps logged at debug level (a projector still starting, say)."""


def expire_command(sandbox: dict[str, Any]) -> dict[str, Any]:
    """The expire command for a sandbox row of the view, with its deterministic id."""
    due = sandbox.get("due") or {}
    return {
        "command_id": f"expire-{sandbox['sandbox_id']}-{sandbox['version']}",
        "sandbox_id": sandbox["sandbox_id"],
        "actor": msgspec.to_builtins(EXPIRER_ACTOR),
        "reason": f"{due.get('cause', 'deadline')} deadline {due.get('at')} passed",
    }


async def _stopped(stop: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds`` or until ``stop`` is set; whether it was."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()
    return stop.is_set()


class Expirer:
    def __init__(self, nc: Client, js: JetStreamContext, *, interval: float) -> None:
        self._nc = nc
        self._js = js
        self._interval = interval

    async def run(self, stop: asyncio.Event) -> None:
        """Sweep every interval until ``stop``. The first sweep comes one interval after the
        start, not at once: the projector starting beside it has a moment to catch up, and an
        operator can start with a long interval to look at what is overdue first."""
        failing_since: float | None = None
        while not await _stopped(stop, self._interval):
            try:
                await self.sweep()
                failing_since = None
            except Exception as exc:
                # A projector starting or restarting, or an election: the next sweep finds the
                # same work. Only a lasting failure is worth a warning.
                now = time.monotonic()
                failing_since = failing_since or now
                lasting = now - failing_since >= QUIET_FAILURES
                log.log(
                    logging.WARNING if lasting else logging.DEBUG,
                    "expiry sweep failed (%s: %s); retrying",
                    type(exc).__name__,
                    exc,
                )

    async def overdue(self, now: str | None = None) -> list[dict[str, Any]]:
        """Sandboxes whose TTL or idle deadline is at or before ``now``, per the view."""
        request = {"due_before": now or utc_now(), "limit": SWEEP_LIMIT}
        reply = await self._nc.request(
            subjects.QUERY_LIST, msgspec.json.encode(request), timeout=10
        )
        answer = msgspec.json.decode(reply.data)
        if not answer.get("ok"):
            raise RuntimeError(f"the sandbox view refused the query: {answer.get('error')}")
        sandboxes: list[dict[str, Any]] = answer["sandboxes"]
        return sandboxes

    async def sweep(self) -> list[str]:
        """Publish an expire for each overdue sandbox; returns their ids."""
        sent = []
        for sandbox in await self.overdue():
            command = expire_command(sandbox)
            await publish_durably(
                self._js,
                subjects.command_subject("expire"),
                msgspec.json.encode(command),
                headers={"Nats-Msg-Id": command["command_id"]},
            )
            sent.append(sandbox["sandbox_id"])
        if sent:
            log.info("expiring %d overdue sandbox(es): %s", len(sent), ", ".join(sent))
        return sent
