"""kill -9 of each hosted backend's extension worker (ext.e2b, ext.daytona, ext.modal) and of
the control worker, at random points during at least 200 create/destroy cycles across the
three, each killed worker restarted after a random pause.

The providers are the local servers that enforce their published specs (chaos/hosted.py).
A worker killed between its provider's create and our ``ready`` leaves a provider sandbox the
log does not know; its job, delivered again, makes the sandbox once more (a later attempt),
and the earlier one must go: fenced by the attempt labels, or swept (``SANDBOXER_LEAK_SWEEP_
INTERVAL``, a few seconds here). So besides the common checks, once every cycle has ended and
the sweeps have had their time, each provider must hold exactly what the log calls live on
it: nothing of a sandbox destroyed or unknown (a leak), never two of one (a duplicate). The
seed is in the figures; ``CHAOS_SEED`` replays a run's schedule of kills.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from pathlib import Path

from chaos.checks import (
    ENDED,
    LIVE,
    LogView,
    every_command_terminal,
    no_double_debit,
    no_secret_bytes,
    read_log,
    replay_equals_live,
    still_serves,
)
from chaos.cycles import Cycles
from chaos.harness import ChaosService, Stopwatch, finish
from chaos.hosted import HOSTED_PROFILES, HostedDoubles
from chaos.outcomes import duplicated, failed_internally
from chaos.result import ScenarioResult
from sandboxer.ids import derive_sandbox_id, new_command_id

NAME = "kill-hosted"
DEADLINE = 300.0
CYCLES = 200
MIN_KILLS = 10
LOOPS = 4
ROLES = ("control", "projector", "meter", *HOSTED_PROFILES)
KILLED = (*HOSTED_PROFILES, "control")
"""Each hosted worker is killed once first (in a random order), then any of these."""
SWEEP = 2.0
"""Seconds between a hosted worker's leak sweeps (SANDBOXER_LEAK_SWEEP_INTERVAL)."""
SETTLE = 60.0
"""Seconds the providers get, once every cycle has ended, to hold only what the log says."""
FUNDS = 10_000_000_000
"""Micro-USD for the default project: the hosted backends reserve each create's cost."""
TTL = "10m"


class Run(Cycles):
    """The cycles (chaos/cycles.py) over the three hosted backends, and the kills."""

    def __init__(self, svc: ChaosService, seed: int) -> None:
        super().__init__(svc, seed)
        self.kills: dict[str, int] = dict.fromkeys(KILLED, 0)
        self.by_backend: dict[str, int] = dict.fromkeys(HOSTED_PROFILES, 0)

    @property
    def done(self) -> bool:
        return self.cycles >= CYCLES and sum(self.kills.values()) >= MIN_KILLS

    async def loop(self, offset: int) -> None:
        backends = list(HOSTED_PROFILES)
        turn = offset
        while not self.done:
            backend = backends[turn % len(backends)]
            turn += 1
            create_id = new_command_id()
            sandbox_id = derive_sandbox_id(create_id)
            created = await self.bus_command(
                "create", sandbox_id, create_id, profile=HOSTED_PROFILES[backend], ttl=TTL
            )
            if created is not None:
                await self.bus_command("destroy", sandbox_id, new_command_id())
            self.by_backend[backend] += 1
            self.cycles += 1

    async def killer(self) -> None:
        order = list(HOSTED_PROFILES)
        self.rng.shuffle(order)
        while not self.done:
            await asyncio.sleep(self.rng.uniform(0.3, 2.5))
            role = order.pop() if order else self.rng.choice(KILLED)
            self.kills[role] += 1
            await self.kill_and_restart(role)


def provider_problems(view: LogView, live: dict[str, dict[str, int]]) -> list[str]:
    """What each provider holds against what the log says: a provider sandbox of a sandbox
    the log calls ended (or never heard of) is a leak, two of one sandbox a duplicate, and a
    sandbox live in the log with none at its provider is lost."""
    states = view.states()
    problems: list[str] = []
    for backend, held in sorted(live.items()):
        for sandbox_id, count in sorted(held.items()):
            state = states.get(sandbox_id)
            status = "unknown to the log" if state is None else state.status
            if state is None or state.status in ENDED:
                problems.append(
                    f"{backend}: {count} provider sandbox(es) of {sandbox_id}, {status}"
                )
            elif count > 1:
                problems.append(f"{backend}: {sandbox_id} duplicated, {count} provider sandboxes")
        for sandbox_id, state in sorted(states.items()):
            if state.extension == backend and state.status in LIVE and sandbox_id not in held:
                problems.append(f"{backend}: {sandbox_id} {state.status} in the log, not there")
    return problems


async def settled(svc: ChaosService, doubles: HostedDoubles) -> tuple[list[str], float]:
    """The providers' problems once they hold what the log says (or SETTLE has passed), and
    how long that took."""
    started = time.monotonic()
    while True:
        problems = provider_problems(await read_log(svc.nats_urls), doubles.live())
        if not problems or time.monotonic() - started > SETTLE:
            return problems, time.monotonic() - started
        await asyncio.sleep(0.5)


async def run(workdir: Path) -> ScenarioResult:
    watch = Stopwatch()
    seed = int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(10**6))
    async with HostedDoubles(workdir) as doubles:
        env = doubles.env | {"SANDBOXER_LEAK_SWEEP_INTERVAL": str(SWEEP)}
        async with ChaosService(workdir, roles=ROLES, env=env) as svc:
            await svc.client.account_command("add_credits", "default", amount=FUNDS)
            state = Run(svc, seed)
            await asyncio.gather(state.killer(), *(state.loop(n) for n in range(LOOPS)))
            urls = svc.nats_urls
            problems = list(state.problems)
            problems += await every_command_terminal(urls, state.sent)
            leftovers, settle_seconds = await settled(svc, doubles)
            problems += leftovers
            problems += await no_double_debit(urls)
            problems += await no_secret_bytes(
                doubles.secrets(), urls, files=list(svc.logs.iterdir())
            )
            problems += await replay_equals_live(urls)
            problems += await still_serves(urls, profile=HOSTED_PROFILES["ext.e2b"])
            view = await read_log(urls)
            problems += view.undecodable + duplicated(view, state.sent)
            problems += failed_internally(view, state.sent)
            problems += doubles.violations()
            problems += svc.crashed()
            figures: dict[str, object] = {
                "seed {}": seed,
                "cycles": state.cycles,
                **{backend.removeprefix("ext."): n for backend, n in state.by_backend.items()},
                "kills": sum(state.kills.values()),
                "resends": state.resends,
                "provider sandboxes made": doubles.made(),
                "settled in {} s": round(settle_seconds, 1),
                "slowest command {} s": state.slowest,
            }
    return finish(NAME, watch, figures, problems)
