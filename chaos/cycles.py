"""What the create/destroy scenarios share: commands sent until they end (the same id again
when a wait runs out, which is safe by contract), and roles killed -9 and restarted."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from chaos.checks import (
    Held,
    Sent,
    every_command_terminal,
    held_settles,
    no_double_debit,
    no_secret_bytes,
    read_log,
    replay_equals_live,
    still_serves,
)
from chaos.harness import ChaosService
from chaos.outcomes import duplicated, failed_internally
from sandboxer.client import CommandFailed
from sandboxer.errors import SandboxerError
from sandboxer.ids import derive_sandbox_id, new_command_id

__all__ = ["BackendCycles", "Cycles"]


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
        inputs: Mapping[str, str] | None = None,
        ttl: str | None = None,
    ) -> dict[str, Any] | None:
        """Send one create or destroy until it ends (same id each time): its outcome event
        (``ready``, ``destroyed``), or None when it failed, was rejected or never ended
        (each a problem). ``inputs`` and ``ttl``: a create's."""
        self.sent[command_id] = Sent(verb, sandbox_id)
        client = self.svc.client
        started = time.monotonic()
        for attempt in range(self.attempts):
            self.resends += attempt > 0
            try:
                if verb == "create":
                    outcome = await client.create(
                        profile, inputs, command_id=command_id, ttl=ttl, timeout=self.wait
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


class BackendCycles(Cycles):
    """Create/destroy cycles that take the given backends in turn, while a seeded schedule
    kills -9 the given roles: each of ``first`` once (in a random order), then any of
    ``killed``, ``apart`` seconds apart (a random span), each restarted after a random
    pause. Done once there were ``cycles`` cycles and ``kills`` kills."""

    def __init__(
        self,
        svc: ChaosService,
        seed: int,
        *,
        creates: Mapping[str, tuple[str, Mapping[str, str]]],
        first: Sequence[str],
        killed: Sequence[str],
        cycles: int,
        kills: int,
        ttl: str | None = None,
        apart: tuple[float, float] = (0.3, 2.5),
    ) -> None:
        super().__init__(svc, seed)
        self.seed = seed
        self.creates = dict(creates)
        """Backend -> the profile and inputs of a create on it."""
        self.first = list(first)
        self.killed = list(killed)
        self.kills: dict[str, int] = dict.fromkeys(killed, 0)
        self.by_backend: dict[str, int] = dict.fromkeys(creates, 0)
        self._cycles, self._kills, self._ttl, self._apart = cycles, kills, ttl, apart

    @property
    def done(self) -> bool:
        return self.cycles >= self._cycles and sum(self.kills.values()) >= self._kills

    async def loop(self, offset: int) -> None:
        """Cycles until done, starting at the ``offset``-th backend."""
        backends = list(self.creates)
        turn = offset
        while not self.done:
            backend = backends[turn % len(backends)]
            turn += 1
            profile, inputs = self.creates[backend]
            create_id = new_command_id()
            sandbox_id = derive_sandbox_id(create_id)
            created = await self.bus_command(
                "create", sandbox_id, create_id, profile=profile, inputs=inputs, ttl=self._ttl
            )
            if created is not None:
                await self.bus_command("destroy", sandbox_id, new_command_id())
            self.by_backend[backend] += 1
            self.cycles += 1

    async def killer(self) -> None:
        order = list(self.first)
        self.rng.shuffle(order)
        while not self.done:
            await asyncio.sleep(self.rng.uniform(*self._apart))
            role = order.pop() if order else self.rng.choice(self.killed)
            self.kills[role] += 1
            await self.kill_and_restart(role)

    async def run(self, loops: int) -> None:
        """The killer and ``loops`` loops, until done."""
        await asyncio.gather(self.killer(), *(self.loop(n) for n in range(loops)))

    async def checked(
        self,
        read_held: Callable[[], Awaitable[Sequence[Held]]],
        *,
        settle: float,
        serves: str,
        secrets: Sequence[str] = (),
    ) -> tuple[list[str], dict[str, object]]:
        """The cycles' own problems and every check after them: each command terminal, what
        ``read_held`` reads held against the log (waited for up to ``settle`` s), no double
        debit, none of ``secrets`` in the log or any role's log, replay equal to live, a fresh
        create of ``serves`` and its destroy, nothing recorded twice or rejected
        ``internal_error``, no role crash. And the figures every such scenario prints."""
        urls = self.svc.nats_urls
        problems = list(self.problems)
        problems += await every_command_terminal(urls, self.sent)
        left, settled = await held_settles(urls, read_held, within=settle)
        problems += left
        problems += await no_double_debit(urls)
        if secrets:
            logs = list(self.svc.logs.iterdir())
            problems += await no_secret_bytes(secrets, urls, files=logs)
        problems += await replay_equals_live(urls)
        problems += await still_serves(urls, profile=serves)
        view = await read_log(urls)
        problems += view.undecodable + duplicated(view, self.sent)
        problems += failed_internally(view, self.sent)
        problems += self.svc.crashed()
        figures: dict[str, object] = {
            "seed {}": self.seed,
            "cycles": self.cycles,
            **{b.removeprefix("ext."): n for b, n in self.by_backend.items()},
            "kills": sum(self.kills.values()),
            "resends": self.resends,
            "settled in {} s": settled,
            "slowest command {} s": self.slowest,
        }
        return problems, figures
