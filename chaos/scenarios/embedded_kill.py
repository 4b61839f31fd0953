"""kill -9 of ``sandboxer up``'s own nats-server during create/destroy cycles.

The service most users run: ``sandboxer up`` with no ``SANDBOXER_NATS_URL``, every role in one
process and a nats-server of its own (with its generated users). Its server is killed -9 at
random points, ``KILLS`` times, ``APART`` seconds apart, while three loops create and destroy
local sandboxes through the bus, each command sent again under its own id when its wait runs
out. The service starts its server again itself (sandboxer/bus/embedded_restart.py; the
kills stay under its limit of 5 exits a minute): nothing is restarted by the harness. Then
the common checks: every command terminal, one sandbox per create and none leaked, no double
debit, replay equal to live, a fresh create served; and ``sandboxer up`` never exited.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from chaos.checks import check_all
from chaos.cycles import BackendCycles
from chaos.harness import EMBEDDED_ROLE, ChaosService, Stopwatch, finish, run_seed
from chaos.result import ScenarioResult

NAME = "embedded-kill"
DEADLINE = 150.0
CYCLES = 60
KILLS = 4
APART = (6.0, 12.0)
"""Seconds between kills: four within a minute at most, one short of the service's limit."""
LOOPS = 3


class Run(BackendCycles):
    """The loops, and the server killed where the scenarios of roles kill a role."""

    wait = 15.0
    """Seconds one send waits for its outcome (a client cut off from the server reconnects
    and reads from the log what it missed meanwhile, within a second or so)."""

    def __init__(self, svc: ChaosService, seed: int) -> None:
        super().__init__(
            svc,
            seed,
            creates={"ext.local": ("profile.local", {})},
            first=["nats-server"],
            killed=["nats-server"],
            cycles=CYCLES,
            kills=KILLS,
            apart=APART,
        )
        self.back_within: list[float] = []

    async def kill_and_restart(self, role: str, pause: tuple[float, float] = (0.0, 0.0)) -> None:
        del role, pause  # the service starts its server again, at once, by itself
        self.back_within.append(await self.svc.kill_embedded_nats())

    async def killer(self) -> None:
        """``KILLS`` kills and no more (a fifth within a minute would end the service)."""
        while sum(self.kills.values()) < KILLS:
            await asyncio.sleep(self.rng.uniform(*APART))
            self.kills["nats-server"] += 1
            await self.kill_and_restart("nats-server")


async def run(workdir: Path) -> ScenarioResult:
    watch = Stopwatch()
    seed = run_seed()
    async with ChaosService(workdir, embedded=True) as svc:
        state = Run(svc, seed)
        await state.run(loops=LOOPS)
        problems = state.problems + await check_all(
            svc.nats_urls, svc.home, sent=state.sent, client_urls=svc.client_urls
        )
        problems += svc.crashed()
        if not svc.alive(EMBEDDED_ROLE):
            problems.append("sandboxer up is not running after the kills")
        figures: dict[str, object] = {
            "seed {}": seed,
            "cycles": state.cycles,
            "server kills": sum(state.kills.values()),
            "server back within {} ms": round(1000 * max(state.back_within, default=0.0)),
            "resends": state.resends,
            "commands": len(state.sent),
            "slowest command {} s": state.slowest,
        }
    return finish(NAME, watch, figures, problems)
