"""What the create/destroy scenarios share: commands sent until they end (the same id again
when a wait runs out, which is safe by contract), and roles killed -9 and restarted."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from chaos.checks import Sent
from chaos.harness import ChaosService
from sandboxer.client import CommandFailed
from sandboxer.errors import SandboxerError

__all__ = ["Cycles"]


class Cycles:
    """A scenario's shared state: the commands sent, the counts, the problems, its random
    schedule (seeded), and the means to send a command and to kill a role."""

    attempts = 4
    """Sends of one command id before it counts as lost."""
    wait = 45.0
    """Seconds one send waits for its outcome (several ack waits: a kill costs about one)."""

    def __init__(self, svc: ChaosService, seed: int) -> None:
        self.svc = svc
        self.rng = random.Random(seed)
        self.sent: dict[str, Sent] = {}
        self.cycles = 0
        self.resends = 0
        self.slowest = 0.0
        self.problems: list[str] = []

    async def bus_command(
        self,
        verb: str,
        sandbox_id: str,
        command_id: str,
        *,
        profile: str = "profile.local",
        ttl: str | None = None,
    ) -> dict[str, Any] | None:
        """Send one create or destroy until it ends (same id each time): its outcome event
        (``ready``, ``destroyed``), or None when it failed, was rejected or never ended
        (each a problem). ``ttl``: a create's, instead of its profile's default."""
        self.sent[command_id] = Sent(verb, sandbox_id)
        client = self.svc.client
        started = time.monotonic()
        for attempt in range(self.attempts):
            self.resends += attempt > 0
            try:
                if verb == "create":
                    outcome = await client.create(
                        profile, command_id=command_id, ttl=ttl, timeout=self.wait
                    )
                else:
                    outcome = await client.destroy(
                        sandbox_id, command_id=command_id, timeout=self.wait
                    )
            except CommandFailed as exc:
                self.problems.append(f"{verb} {command_id} of {sandbox_id}: {exc.message}")
                return None
            except (SandboxerError, TimeoutError):
                continue  # no outcome yet: send the same command again
            self.slowest = max(self.slowest, time.monotonic() - started)
            return outcome
        self.problems.append(
            f"{verb} {command_id} of {sandbox_id}: no outcome in {self.attempts} sends"
        )
        return None

    async def kill_and_restart(self, role: str, pause: tuple[float, float] = (0.0, 1.5)) -> None:
        """kill -9 ``role``, then start it again after a random pause."""
        await self.svc.kill(role)
        await asyncio.sleep(self.rng.uniform(*pause))
        await self.svc.restart(role)
