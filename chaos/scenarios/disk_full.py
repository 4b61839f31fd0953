"""The store's disk filled while commands flow, then freed.

nats-server's store and ``$SANDBOXER_HOME`` (the views' SQLite, ext.local's sandboxes) live on
a 64 MiB tmpfs. Commands (creates, extend_ttl, touch, destroys) are sent steadily; after a few
seconds a filler takes every free byte, the commands keep coming for FULL_FOR seconds, then the
filler is removed. nats-server stops storing when its disk fills and takes writes again only
after a restart (docs/reliability.md): while the disk fills and frees, the harness keeps on its
server the two watches ``sandboxer up`` keeps on its own (bus/embedded_restart.py,
bus/disk_room.py), and the service must decide a command again within FREED_WAIT seconds of
the space coming back, its server restarted by them; else that is a problem, and the harness
restarts the server on the same store and port, as an operator would, for the checks after.

sandboxer must wait rather than corrupt: no role crashes (its appends are retried, its messages
come back), every command whose publish was acknowledged ends exactly once, a command the client
was told failed either never landed or ended too, nothing half-made is left on disk, the log
replays to the live views, and a fresh create works.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from chaos.checks import LogView, Sent, check_all, every_command_terminal, read_log
from chaos.disk import fill, free, free_bytes, small_filesystem
from chaos.harness import ADMIN, ChaosService, Stopwatch, finish
from chaos.outcomes import account_unfinished, duplicated, failed_internally
from chaos.result import ScenarioResult
from sandboxer.bus.connect import connect
from sandboxer.bus.disk_room import restart_when_room
from sandboxer.bus.embedded_restart import keep_serving
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.cleanup_waits import cancel_until_done
from sandboxer.client import SandboxerClient
from sandboxer.ids import derive_sandbox_id, new_command_id

NAME = "disk-full"
DEADLINE = 300.0
SIZE_MB = 64
ROLES = ("control", "projector", "meter", "ext.local")
SEND_EVERY = 0.05
BEFORE = 3.0
"""Seconds of commands before the disk is filled."""
FULL_FOR = 10.0
FREED_WAIT = 10.0
"""Seconds the service gets to decide a command again once the space is back (its server
restarted by the watch, bus/disk_room.py, about a second after)."""
PROBE_TIMEOUT = 3.0
AFTER = 3.0
"""Seconds of commands after the service answers again."""


class Sender:
    """Sends a steady mix of commands until stopped, each publish in its own task."""

    def __init__(self, client: SandboxerClient) -> None:
        self.client = client
        self.sent: dict[str, Sent] = {}
        self.refused: dict[str, Sent] = {}
        self.reasons: Counter[str] = Counter()
        self.live: list[str] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.count = 0

    def _next(self) -> tuple[str, dict[str, Any]]:
        command_id = new_command_id()
        body: dict[str, Any] = {"command_id": command_id, "actor": ADMIN}
        turn = self.count % 6
        self.count += 1
        if turn == 0 or not self.live:
            self.live.append(derive_sandbox_id(command_id))
            return "create", body | {"profile": "profile.local", "inputs": {}}
        if turn == 5 and len(self.live) > 3:
            return "destroy", body | {"sandbox_id": self.live.pop(0)}
        sandbox_id = self.live[self.count % len(self.live)]
        if turn % 2:
            return "extend_ttl", body | {"sandbox_id": sandbox_id, "duration": "1m"}
        return "touch", body | {"sandbox_id": sandbox_id}

    async def _one(self, verb: str, body: dict[str, Any]) -> None:
        about = Sent(verb, body.get("sandbox_id") or derive_sandbox_id(body["command_id"]))
        try:
            await self.client.publish_command(verb, body)
        except Exception as exc:  # the client was told: not accepted
            self.refused[body["command_id"]] = about
            self.reasons[type(exc).__name__] += 1
        else:
            self.sent[body["command_id"]] = about

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            verb, body = self._next()
            task = asyncio.create_task(self._one(verb, body))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SEND_EVERY):
                    await stop.wait()
        await asyncio.gather(*self.tasks)

    async def destroy_rest(self) -> None:
        while self.live:
            body = {"command_id": new_command_id(), "actor": ADMIN, "sandbox_id": self.live.pop()}
            await self._one("destroy", body)


async def _lasting_client(svc: ChaosService) -> SandboxerClient:
    nc = await connect(svc.nats_urls, name="chaos-disk-full", long_lived=True)
    return SandboxerClient(nc, actor=ADMIN)


async def _decides(client: SandboxerClient, probes: dict[str, Sent]) -> bool:
    """Whether the service decides a command now, end to end (commands stream, control
    worker, events stream): an ``add_credits`` of one credit to the account ``probe``."""
    command_id = new_command_id()
    probes[command_id] = Sent("add_credits")
    try:
        await client.account_command(
            "add_credits", "probe", amount=1, command_id=command_id, timeout=PROBE_TIMEOUT
        )
    except Exception:
        return False
    return True


def _create_outcome(view: LogView, command_id: str, sent: Sent) -> str:
    """What became of an acknowledged create: rejected, made (ready once), failed, or
    destroyed before it was ready (the sender destroys the sandboxes it created, in turn,
    without waiting for them)."""
    if "rejected" in {kind for kind, _ in view.by_command.get(command_id, [])}:
        return "rejected"
    kinds = {type(e).__name__ for e in view.sandbox_events.get(sent.sandbox_id or "", [])}
    if "SandboxReady" in kinds:
        return "made"
    if "SandboxFailed" in kinds:
        return "failed"
    return "destroyed before ready" if "SandboxDestroyed" in kinds else "nothing"


def _errors_logged(log: Path) -> int:
    """``[ERR]`` lines nats-server logged (over all its starts)."""
    with contextlib.suppress(OSError):
        return sum(b"[ERR]" in line for line in log.read_bytes().splitlines())
    return 0


@contextlib.asynccontextmanager
async def _watched_as_embedded(server: NatsServerProcess) -> AsyncIterator[list[str]]:
    """The watches ``sandboxer up`` keeps on its own server, kept on ``server`` for the body:
    it is started again when it exits, and restarted once a disk that filled has room. Yields
    where a watch that gives up says why."""
    gave_up: list[str] = []
    watches = [
        asyncio.create_task(keep_serving(server, gave_up.append)),
        asyncio.create_task(restart_when_room(server)),
    ]
    try:
        yield gave_up
    finally:
        await cancel_until_done(*watches)


async def _fill_and_free(
    svc: ChaosService, disk: Path, prober: SandboxerClient, probes: dict[str, Sent]
) -> tuple[dict[str, object], list[str]]:
    """Fill the disk, wait, free it, and wait for the service to decide again, its server
    restarted by the embedded server's watches; the figures of what happened, and a problem
    when it does not decide again so (the harness then restarts the server, as an operator
    would) or never does."""
    assert svc.nats is not None
    problems = []
    first = svc.nats.pid
    async with _watched_as_embedded(svc.nats) as gave_up:
        taken = await fill(disk)
        filled_at = time.monotonic()
        await asyncio.sleep(FULL_FOR)
        decided_full = await _decides(prober, probes)
        restarted_full = svc.nats.pid != first
        free(disk)
        freed_at = time.monotonic()
        recovered_alone = False
        while time.monotonic() - freed_at < FREED_WAIT:
            if await _decides(prober, probes):
                recovered_alone = True
                break
            await asyncio.sleep(1)
    restarted = svc.nats.pid != first
    problems += [f"the embedded server's watch gave up: {why}" for why in gave_up]
    if restarted_full:
        problems.append("nats-server was restarted while its disk was still full")
    if not recovered_alone:
        problems.append(
            f"no command decided within {FREED_WAIT:g} s of the space coming back "
            f"(nats-server {'restarted' if restarted else 'not restarted'} by its watch); "
            "restarting it as an operator would"
        )
        await svc.nats.stop()
        await svc.nats.start()
    while not await _decides(prober, probes):
        if time.monotonic() - freed_at > 120:
            problems.append("no command decided within 120 s of the space coming back")
            break
        await asyncio.sleep(1)  # a probe refused at once must not become a flood of them
    figures: dict[str, object] = {
        "MiB disk": SIZE_MB,
        "MiB filled": round(taken / (1 << 20), 1),
        "s full": round(freed_at - filled_at, 1),
        "decided when full {}": "yes" if decided_full else "no",
        "restarted by its watch {}": "yes" if restarted else "no",
        "s to decide again": round(time.monotonic() - freed_at, 1),
    }
    return figures, problems


async def _verify(
    svc: ChaosService, sender: Sender, probes: dict[str, Sent]
) -> tuple[dict[str, object], list[str]]:
    problems = await check_all(svc.nats_urls, svc.home, sent=sender.sent, terminal_timeout=180)
    view = await read_log(svc.nats_urls)
    landed = {c: s for c, s in sender.refused.items() if c in view.by_command}
    problems += [
        f"refused yet landed: {p}"
        for p in await every_command_terminal(svc.nats_urls, landed, timeout=30)
    ]
    problems += account_unfinished(view, {c: s for c, s in probes.items() if c in view.by_command})
    problems += duplicated(view, sender.sent | landed)
    problems += failed_internally(view, sender.sent | landed)
    problems += [f"crashed: {c}" for c in svc.crashed()]
    creates = Counter(
        _create_outcome(view, c, s) for c, s in sender.sent.items() if s.verb == "create"
    )
    figures: dict[str, object] = {
        "commands": len(sender.sent) + len(sender.refused),
        "acked": len(sender.sent),
        "refused": len(sender.refused),
        **{f"refused {r}": n for r, n in sender.reasons.items()},
        "refused yet landed": len(landed),
        **{f"creates {k}": n for k, n in sorted(creates.items())},
    }
    return figures, problems


async def run(workdir: Path) -> ScenarioResult:
    watch = Stopwatch()
    problems: list[str] = []
    figures: dict[str, object] = {}
    async with small_filesystem(workdir / "disk", SIZE_MB) as disk:
        svc = ChaosService(workdir, roles=ROLES, nats_store=disk / "nats")
        svc.home = disk / "home"  # the views and the sandboxes on the small disk too
        svc.home.mkdir()
        probes: dict[str, Sent] = {}
        async with svc:
            # Clients that reconnect (the harness's does not): nats-server is restarted.
            sender = Sender(await _lasting_client(svc))
            prober = await _lasting_client(svc)
            stop = asyncio.Event()
            load = asyncio.create_task(sender.run(stop))
            await asyncio.sleep(BEFORE)
            fault, problems = await _fill_and_free(svc, disk, prober, probes)
            await asyncio.sleep(AFTER)
            stop.set()
            await load
            await sender.destroy_rest()
            await sender.client.close()
            await prober.close()
            outcome, found = await _verify(svc, sender, probes)
            problems += found
            figures = {
                **fault,
                **outcome,
                "nats-server errors logged": _errors_logged(svc.logs / "nats-server.log"),
                "MiB free at the end": round(free_bytes(disk) / (1 << 20), 1),
            }
    return finish(NAME, watch, figures, problems)
