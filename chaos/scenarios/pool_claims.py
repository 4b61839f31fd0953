"""Warm pool claims under kill -9: at least 150 create/destroy cycles of a pooled profile from
four loops, some creates at once so that claims race, while the ext.local workers (which run
the pool keepers and make the claims) are killed -9 at random points, and the control worker
at least once, each restarted after a random pause.

Two pooled profiles take turns: one with a setup instruction to apply at the claim, one with
nothing to apply, whose creates send `provisioning`, `claimed` and `ready` in one write after
the member was moved (workers/claim_ahead.py), so a kill lands between the move and the record
too. Two ext.local processes share the node's pools: within one process the keeper never hands
a member to two of its creates, so only claims across processes meet the log's check (the
claim's append expects the member's ``ready`` as its last event), which is the one that
must let exactly one through.

A member must go to exactly one create, whatever dies when; a create cut short by a kill is
sent again with its own command id; after the run the keeper (restarted) must square the pool
directory with the log and refill it (docs/pools.md). The seed is in the figures;
``CHAOS_SEED`` replays a run's schedule of kills and bursts.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

from chaos.checks import LogView, check_all, pool_claims_once, read_log
from chaos.cycles import Cycles
from chaos.harness import DEFAULT_ROLES, ChaosService, HarnessError, Stopwatch, finish, run_seed
from chaos.outcomes import duplicated, failed_internally
from chaos.result import ScenarioResult
from sandboxer.errors import SandboxerError
from sandboxer.events.sandbox_events import SandboxProvisioning, SandboxReady
from sandboxer.ids import derive_sandbox_id, new_command_id

NAME = "pool-claims"
DEADLINE = 150.0
CYCLES = 150
LOOPS = 4
BURSTS = (1, 1, 2, 3)
"""How many creates one loop sends at once, picked at random per round: up to 12 in flight
against a pool of 6, so claims race and the pool runs dry at times (those creates go cold)."""
MIN_KILLS = 8
ROLES = (*DEFAULT_ROLES, "ext.local#2")
KILLED = ("ext.local", "ext.local#2", "ext.local", "ext.local#2", "control")
"""Roles the killer picks from: mostly the keepers' workers, the control worker too."""
PROFILE = "profile.chaos-warm"
PLAIN = "profile.chaos-plain"
"""A pooled profile with nothing to apply at the claim: its creates go in one write."""
PROFILES = (PROFILE, PLAIN)
MIN_READY = MAX = 6
WARM_PROFILE = f"""\
id: {PROFILE}
extension: ext.local
pool: {{min_ready: {MIN_READY}, max: {MAX}}}
setup:
  instructions: ["echo claimed > /workspace/hello"]
"""
PLAIN_PROFILE = f"""\
id: {PLAIN}
extension: ext.local
pool: {{min_ready: {MIN_READY}, max: {MAX}}}
"""
FILL_TIMEOUT = 60.0


class Run(Cycles):
    """The loops' shared state (chaos/cycles.py), the creates by origin, the kills."""

    wait = 20.0
    """A kill costs a job about one ack wait (5 s) and a restart: 20 s is several of those."""

    def __init__(self, svc: ChaosService, seed: int) -> None:
        super().__init__(svc, seed)
        self.from_pool = 0
        self.plain_from_pool = 0
        self.cold = 0
        self.kills: Counter[str] = Counter()

    @property
    def done(self) -> bool:
        return (
            self.cycles >= CYCLES
            and sum(self.kills.values()) >= MIN_KILLS
            and self.kills["control"] >= 1
        )

    async def create(self, profile: str) -> str | None:
        """One create of a pooled profile until it ends: its sandbox when ready."""
        command_id = new_command_id()
        sandbox_id = derive_sandbox_id(command_id)
        ready = await self.bus_command("create", sandbox_id, command_id, profile=profile)
        if ready is None:
            return None
        if ready.get("pool_member"):
            self.from_pool += 1
            self.plain_from_pool += profile == PLAIN
        else:
            self.cold += 1
        return sandbox_id

    async def loop(self) -> None:
        while not self.done:
            burst = self.rng.choice(BURSTS)
            profile = self.rng.choice(PROFILES)
            made = await asyncio.gather(*(self.create(profile) for _ in range(burst)))
            await asyncio.gather(
                *(self.bus_command("destroy", s, new_command_id()) for s in made if s)
            )
            self.cycles += burst

    async def killer(self) -> None:
        """The control worker once among the first three kills, else mostly an ext.local."""
        control_at = self.rng.randrange(3)
        while not self.done:
            await asyncio.sleep(self.rng.uniform(0.5, 2.5))
            kills = sum(self.kills.values())
            role = "control" if kills == control_at else self.rng.choice(KILLED)
            self.kills[role] += 1
            await self.kill_and_restart(role)


async def wait_pool_full(svc: ChaosService) -> None:
    """Until the keeper reports the pools made (every member ready, none being made)."""
    deadline = time.monotonic() + FILL_TIMEOUT
    while time.monotonic() < deadline:
        try:
            pools = {p["profile"]: p for p in await svc.client.pools()}
        except SandboxerError:
            pools = {}
        if all(
            (pool := pools.get(profile)) and pool["ready"] >= MIN_READY and not pool["provisioning"]
            for profile in PROFILES
        ):
            return
        await asyncio.sleep(0.1)
    raise HarnessError(
        f"the pools of {', '.join(PROFILES)} were not made within {FILL_TIMEOUT:g} s"
    )


def claims_redelivered(view: LogView) -> int:
    """Creates served by the pool whose job was delivered more than once (a kill cut the
    first attempt short): the path where a retried claim must find its earlier one."""
    found = 0
    for events in view.sandbox_events.values():
        pooled = any(isinstance(e, SandboxReady) and e.pool_member for e in events)
        retried = any(isinstance(e, SandboxProvisioning) and e.attempt > 1 for e in events)
        found += pooled and retried
    return found


async def run(workdir: Path) -> ScenarioResult:
    watch = Stopwatch()
    seed = run_seed()
    svc = ChaosService(workdir, roles=ROLES)
    (svc.home / "profiles").mkdir()
    (svc.home / "profiles" / f"{PROFILE}.yaml").write_text(WARM_PROFILE)
    (svc.home / "profiles" / f"{PLAIN}.yaml").write_text(PLAIN_PROFILE)
    async with svc:
        await wait_pool_full(svc)
        state = Run(svc, seed)
        await asyncio.gather(state.killer(), *(state.loop() for _ in range(LOOPS)))
        problems = list(state.problems)
        if not state.from_pool or not state.plain_from_pool:
            problems.append("a pool served no create: the scenario proved nothing of it")
        problems += await check_all(svc.nats_urls, svc.home, sent=state.sent)
        problems += [
            f"pool_claims_once: {p}"
            for p in await pool_claims_once(
                svc.nats_urls, svc.home, bounds=dict.fromkeys(PROFILES, (MIN_READY, MAX))
            )
        ]
        view = await read_log(svc.nats_urls)
        problems += duplicated(view, state.sent) + failed_internally(view, state.sent)
        problems += svc.crashed()
        figures: dict[str, object] = {
            "seed {}": seed,
            "cycles": state.cycles,
            "creates from the pools": state.from_pool,
            "of them with nothing to apply": state.plain_from_pool,
            "cold": state.cold,
            "pooled creates redelivered": claims_redelivered(view),
            "kills of ext.local": state.kills["ext.local"] + state.kills["ext.local#2"],
            "of control": state.kills["control"],
            "resends": state.resends,
            "slowest command {} s": state.slowest,
        }
    return finish(NAME, watch, figures, problems)
