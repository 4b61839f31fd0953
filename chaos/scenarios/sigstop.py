"""A worker frozen with SIGSTOP past ``ack_wait`` while creates are in flight, then resumed.

Two processes of each worker role pull from the same consumers. Round one freezes an
ext.local worker while creates are provisioning (their setup takes a second); round two
freezes a control worker right after the creates are published. JetStream hands a frozen
worker's messages to the other worker one ack wait later; then the frozen one wakes up and
carries on with the work it held. Whatever each of them does, every create must end once,
with one sandbox (one holder, one ``ready``), and both workers must live on.

Round three freezes an ext.local worker mid-setup again, and while it stays frozen the
other worker makes the sandboxes ready and each is recreated (generation 2, same id, same
backend). Thawed, the frozen worker must leave generation 2 alone: every sandbox still
runs, with one holder.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

from chaos.checks import Sent, check_all, no_leaks, read_log
from chaos.harness import ADMIN, ChaosService, Stopwatch, child_pids, finish
from chaos.result import ScenarioResult
from sandboxer import subjects
from sandboxer.events.sandbox_events import SandboxReady
from sandboxer.extensions.local.inventory import scan_sandboxes
from sandboxer.ids import derive_sandbox_id, new_command_id

NAME = "sigstop"
DEADLINE = 240.0
ACK_WAIT = 2.0
FROZEN_FOR = 3 * ACK_WAIT
CREATES = 8
ROLES = ("control", "control#2", "projector", "ext.local", "ext.local#2")
PROFILE = "profile.chaos-slow"
SLOW_PROFILE = f"""\
id: {PROFILE}
extension: ext.local
setup:
  instructions: ["sleep 1"]
"""
# Round three's setup outlasts the ack wait: the frozen worker's setup is still running when
# the other worker starts clean over its sandbox, so it fails, and its failure path runs.
LONG_PROFILE = "profile.chaos-slower"
LONGER_PROFILE = SLOW_PROFILE.replace(PROFILE, LONG_PROFILE).replace("sleep 1", "sleep 5")


async def _publish_creates(
    svc: ChaosService, sent: dict[str, Sent], profile: str = PROFILE
) -> list[str]:
    ids = []
    for _ in range(CREATES):
        command_id = new_command_id()
        sandbox_id = derive_sandbox_id(command_id)
        body = {"command_id": command_id, "profile": profile, "inputs": {}, "actor": ADMIN}
        await svc.client.js.publish(
            subjects.command_subject("create"),
            json.dumps(body).encode(),
            headers={"Nats-Msg-Id": command_id},
        )
        sent[command_id] = Sent("create", sandbox_id)
        ids.append(sandbox_id)
    return ids


async def _statuses(svc: ChaosService, ids: list[str]) -> Counter[str]:
    found: Counter[str] = Counter()
    for sandbox_id in ids:
        row = await svc.client.get(sandbox_id)
        found[row["status"] if row else "unknown"] += 1
    return found


async def _settle(svc: ChaosService, ids: list[str], timeout: float = 90) -> Counter[str]:
    """Until every sandbox is ready or failed (or the time is up): the final statuses."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        statuses = await _statuses(svc, ids)
        if set(statuses) <= {"ready", "failed"} or loop.time() > end:
            return statuses
        await asyncio.sleep(0.25)


async def _busiest(svc: ChaosService, roles: list[str]) -> str:
    """The one of ``roles`` running the most setup steps right now (children of its process):
    freezing it freezes work in flight. Waits until one runs any (30 s at most)."""
    for _ in range(600):
        running = {role: len(child_pids(svc.processes[role].pid)) for role in roles}
        busiest = max(roles, key=lambda r: running[r])
        if running[busiest]:
            return busiest
        await asyncio.sleep(0.05)
    return roles[0]


async def _frozen_round(
    svc: ChaosService, roles: list[str], sent: dict[str, Sent]
) -> tuple[str, list[str], Counter[str]]:
    ids = await _publish_creates(svc, sent)
    role = await _busiest(svc, roles) if roles[0].startswith("ext.") else roles[0]
    svc.freeze(role)
    await asyncio.sleep(FROZEN_FOR)
    svc.thaw(role)
    return role, ids, await _settle(svc, ids)


async def _all_made(svc: ChaosService, ids: list[str]) -> None:
    """Until every sandbox's holder runs (30 s at most), and a moment more: the worker that
    made one has let go of its lock by then. Frozen holding a sandbox's lock, a worker would
    hold up that sandbox until it is thawed (the other one waits, then gives up)."""
    for _ in range(600):
        found = await asyncio.to_thread(scan_sandboxes, svc.home / "local")
        if {item.sandbox_id for item in found if item.alive} >= set(ids):
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)


async def _recreated_round(svc: ChaosService, sent: dict[str, Sent]) -> tuple[list[str], int]:
    """Freeze an ext.local worker mid-setup, recreate every sandbox while it is frozen, thaw
    it. The sandboxes, and how many reached generation 2 ready before the thaw."""
    ids = await _publish_creates(svc, sent, LONG_PROFILE)
    await _all_made(svc, ids)
    role = await _busiest(svc, ["ext.local", "ext.local#2"])
    svc.freeze(role)
    try:
        await _settle(svc, ids)  # the other worker's attempt 2, one ack wait later
        recreates = []
        for sandbox_id in ids:
            command_id = new_command_id()
            sent[command_id] = Sent("recreate", sandbox_id)
            recreates.append(svc.client.recreate(sandbox_id, command_id=command_id, timeout=60))
        outcomes = await asyncio.gather(*recreates, return_exceptions=True)
    finally:
        svc.thaw(role)
    await asyncio.sleep(FROZEN_FOR)  # the thawed worker finishes what it held
    return ids, sum(isinstance(o, dict) and o.get("generation") == 2 for o in outcomes)


async def run(workdir: Path) -> ScenarioResult:
    watch = Stopwatch()
    problems: list[str] = []
    env = {"SANDBOXER_ACK_WAIT": str(ACK_WAIT)}
    svc = ChaosService(workdir, roles=ROLES, ack_wait=ACK_WAIT, env=env)
    (svc.home / "profiles").mkdir(exist_ok=True)
    (svc.home / "profiles" / f"{PROFILE}.yaml").write_text(SLOW_PROFILE)
    (svc.home / "profiles" / f"{LONG_PROFILE}.yaml").write_text(LONGER_PROFILE)
    sent: dict[str, Sent] = {}
    async with svc:
        ids: list[str] = []
        # An ext.local worker frozen in the middle of setups; a control worker frozen at once.
        for roles in (["ext.local", "ext.local#2"], ["control"]):
            role, made, statuses = await _frozen_round(svc, roles, sent)
            ids += made
            if statuses != Counter({"ready": len(made)}):
                problems.append(f"with {role} frozen: the creates ended {dict(statuses)}")
        recreated, second_generation = await _recreated_round(svc, sent)
        if second_generation != len(recreated):
            problems.append(f"{second_generation} of {len(recreated)} recreates became ready")
        # Before any destroy: every sandbox is live in the log, and runs, once.
        problems += [f"after the recreates: {p}" for p in await no_leaks(svc.nats_urls, svc.home)]
        ids += recreated
        for sandbox_id in ids:
            command_id = new_command_id()
            sent[command_id] = Sent("destroy", sandbox_id)
            await svc.client.destroy(sandbox_id, command_id=command_id, timeout=60)
        view = await read_log(svc.nats_urls)
        redelivered = 0
        for sandbox_id in ids:
            events = view.sandbox_events.get(sandbox_id, [])
            readies = Counter(e.generation for e in events if isinstance(e, SandboxReady))
            redelivered += any(getattr(e, "attempt", 1) > 1 for e in events)
            if set(readies.values()) != {1}:
                problems.append(f"{sandbox_id}: ready events per generation {dict(readies)}")
        problems += await check_all(svc.nats_urls, svc.home, sent=sent)
        problems += [f"crashed: {c}" for c in svc.crashed()]
        dead = [r for r in ROLES if not svc.alive(r)]
        if dead:
            problems.append(f"not alive after the freezes: {', '.join(dead)}")
        figures: dict[str, object] = {
            "creates": len(ids),
            "3 freezes, 2 of {} s": FROZEN_FOR,
            "recreated while frozen": second_generation,
            "ack wait {} s": ACK_WAIT,
            "redelivered": redelivered,
            "duplicates": sum("ready events per" in p or "duplicated" in p for p in problems),
        }
    return finish(NAME, watch, figures, problems)
