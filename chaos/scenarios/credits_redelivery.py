"""Credits under redelivery: paid sandboxes on the metered stub (ext.saas-stub) created,
extended and destroyed by several clients at once, while the roles that move money are hurt:
the control worker (reservations) and the meter (debits) are killed -9 and frozen with SIGSTOP
for three ack waits, again and again, so their messages are delivered a second time.

The account's checkpoint (bus/checkpoints.py) is written every few events here, not every
10,000 (``SANDBOXER_CHECKPOINT_AFTER``), so the processes killed and started again load the
account from it while money moves, and writes of it are cut off by kill -9.

Then, from the raw log: no credit movement recorded twice (checks.no_double_debit), every
destroyed sandbox metered once and its whole reservation released by that metering, nothing
left reserved, and the account's view (balance, reserved, metered) equal to what the log adds
up to; the checkpoint the fold of the log up to its event (checks.checkpoints_agree), and
read by a process started again at least once; no stub record left behind; and the usual
checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import yaml

from chaos.checks import LogView, Sent, check_all, read_log
from chaos.harness import ChaosService, Stopwatch, finish
from chaos.outcomes import duplicated, failed_internally
from chaos.result import ScenarioResult
from sandboxer import subjects
from sandboxer.client import SandboxerClient
from sandboxer.config.catalog import packaged_dir
from sandboxer.errors import SandboxerError
from sandboxer.ids import new_command_id

NAME = "credits-redelivery"
DEADLINE = 300.0
ACK_WAIT = 2.0
ROLES = ("control", "projector", "meter", "ext.saas-stub", "ext.local")
PROJECT = "acme"
FUNDS = 50_000_000
SANDBOXES = 60
CLIENTS = 6
FAULT_EVERY = (0.5, 1.5)
"""Seconds between faults, drawn uniformly."""
SEED = 4
CHECKPOINT_AFTER = 16
"""Events a process folds into the account before it writes the account's checkpoint."""
CHECKPOINT_READ = "read from its checkpoint"
CHECKPOINT_WRITTEN = "checkpoint written"
"""What bus/checkpoints.py logs as it reads and writes one (counted in the roles' logs)."""
ACTOR: dict[str, Any] = {"type": "adm", "id": "chaos-payer", "project": PROJECT}


def _stub_override(home: Path) -> None:
    """The packaged stub, fast and with room for every sandbox at once."""
    declaration = yaml.safe_load((packaged_dir("extensions") / "ext.saas-stub.yaml").read_text())
    declaration["settings"].update(latency_ms=5, max_live=SANDBOXES + 10)
    (home / "extensions").mkdir(parents=True, exist_ok=True)
    (home / "extensions" / "ext.saas-stub.yaml").write_text(yaml.safe_dump(declaration))


async def _lifecycle(
    client: SandboxerClient,
    rng: random.Random,
    queue: asyncio.Queue[int],
    sent: dict[str, Sent],
    outcomes: Counter[str],
) -> None:
    """Create, maybe extend, destroy, one sandbox after another from ``queue``."""
    while True:
        try:
            queue.get_nowait()
        except asyncio.QueueEmpty:
            return
        create_id = new_command_id()
        sandbox_id: str | None = None
        try:
            ready = await client.create(
                "profile.saas-stub", ttl="10m", command_id=create_id, timeout=120
            )
            sandbox_id = str(ready["sandbox_id"])
            sent[create_id] = Sent("create", sandbox_id)
            if rng.random() < 0.5:
                extend_id = new_command_id()
                sent[extend_id] = Sent("extend_ttl", sandbox_id)
                await client.extend_ttl(sandbox_id, "5m", command_id=extend_id)
            await asyncio.sleep(rng.uniform(0.5, 2.5))  # a few billable seconds
        except SandboxerError as exc:
            outcomes[f"create or extend {type(exc).__name__}"] += 1
            sandbox_id = sandbox_id or str(getattr(exc, "sandbox_id", None) or "") or None
            if sandbox_id is not None:
                sent.setdefault(create_id, Sent("create", sandbox_id))
        if sandbox_id is None:
            continue
        destroy_id = new_command_id()
        sent[destroy_id] = Sent("destroy", sandbox_id)
        try:
            await client.destroy(sandbox_id, command_id=destroy_id, timeout=120)
            outcomes["destroyed"] += 1
        except SandboxerError as exc:
            outcomes[f"destroy {type(exc).__name__}"] += 1


async def _faults(svc: ChaosService, rng: random.Random, done: asyncio.Event) -> Counter[str]:
    """Until ``done``: kill -9 or freeze (3 ack waits) the control worker or the meter."""
    made: Counter[str] = Counter()
    while not done.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(rng.uniform(*FAULT_EVERY)):
                await done.wait()
        if done.is_set():
            break
        role = rng.choice(("control", "meter"))
        if rng.random() < 0.5:
            await svc.restart(role, signal.SIGKILL)
            made[f"kill -9 {role}"] += 1
        else:
            svc.freeze(role)
            await asyncio.sleep(3 * ACK_WAIT)
            svc.thaw(role)
            made[f"SIGSTOP {role}"] += 1
    return made


async def _metering_settled(svc: ChaosService, timeout: float = 90) -> None:
    """Until the meter's consumer holds nothing (every destroyed event handled)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        with contextlib.suppress(Exception):
            info = await svc.client.js.consumer_info(subjects.EVENTS_STREAM, "meter")
            if info.num_pending == 0 and info.num_ack_pending == 0:
                return
        await asyncio.sleep(0.5)


def _ledger(view: LogView, ours: set[str]) -> tuple[dict[str, int], list[str]]:
    """What the raw log adds up to for PROJECT, and every reservation of ``ours`` (sandboxes)
    not settled right."""
    added = debited = 0
    held: dict[str, int] = defaultdict(int)
    problems: list[str] = []
    metered: set[str] = set()
    for event in view.account_events:
        if event.get("project") != PROJECT:
            continue
        kind, sandbox_id = event.get("type"), str(event.get("sandbox_id"))
        if kind == "credits_added":
            added += int(event["amount"])
        elif kind == "credits_reserved":
            kept = 0 if event.get("reason") == "reroute" else held[sandbox_id]
            held[sandbox_id] = kept + int(event["amount"])
        elif kind == "credits_released":
            # A hold nothing will use, given back before any metering: an extension the
            # sandbox refused for good, or a create's whole hold once its id was given up.
            held[sandbox_id] = max(0, held[sandbox_id] - int(event["amount"]))
        elif kind == "usage_metered":
            debited += int(event["amount"])
            released = int(event.get("reserved_released") or 0)
            if released != held[sandbox_id]:
                problems.append(
                    f"{sandbox_id}: metering released {released}, {held[sandbox_id]} was held"
                )
            held[sandbox_id] = 0
            metered.add(sandbox_id)
    destroyed = {
        sid
        for sid, events in view.sandbox_events.items()
        if sid in ours and any(type(e).__name__ == "SandboxDestroyed" for e in events)
    }
    reserved_sandboxes = {sid for sid, amount in held.items() if amount} | metered
    problems += [f"{sid}: destroyed, never metered" for sid in sorted(destroyed - metered)]
    problems += [
        f"{sid}: {held[sid]} still reserved after its sandbox was destroyed"
        for sid in sorted(reserved_sandboxes & destroyed)
        if held[sid]
    ]
    totals = {
        "balance": added - debited,
        "reserved": sum(held.values()),
        "metered": len(metered),
        "debited": debited,
    }
    return totals, problems


def _logged(logs: Path, mark: str) -> int:
    """Lines of every role's every incarnation that say ``mark``."""
    return sum(
        line.count(mark) for log in logs.glob("*.log") for line in log.read_text().splitlines()
    )


async def run(workdir: Path) -> ScenarioResult:
    watch = Stopwatch()
    problems: list[str] = []
    rng = random.Random(SEED)
    svc = ChaosService(
        workdir,
        roles=ROLES,
        ack_wait=ACK_WAIT,
        env={
            "SANDBOXER_ACK_WAIT": str(ACK_WAIT),
            "SANDBOXER_CHECKPOINT_AFTER": str(CHECKPOINT_AFTER),
        },
    )
    _stub_override(svc.home)
    sent: dict[str, Sent] = {}
    outcomes: Counter[str] = Counter()
    figures: dict[str, object] = {}
    async with svc:
        payer = await svc.connect(ACTOR)
        try:
            fund_id = new_command_id()
            await payer.account_command("add_credits", PROJECT, amount=FUNDS, command_id=fund_id)
            queue: asyncio.Queue[int] = asyncio.Queue()
            for number in range(SANDBOXES):
                queue.put_nowait(number)
            done = asyncio.Event()
            faults = asyncio.create_task(_faults(svc, rng, done))
            try:
                await asyncio.gather(
                    *(_lifecycle(payer, rng, queue, sent, outcomes) for _ in range(CLIENTS))
                )
            finally:
                done.set()
                made = await faults
            # Whatever the faults' timing: the control worker started once more, past all
            # of them, loads the account from its checkpoint for its first command.
            await svc.restart("control", signal.SIGKILL)
            await payer.account_command("add_credits", PROJECT, amount=1)
            await _metering_settled(svc)
            problems += await check_all(svc.nats_urls, svc.home, sent=sent)
            view = await read_log(svc.nats_urls)
            problems += duplicated(view, sent)
            problems += failed_internally(view, sent)
            ours = {s.sandbox_id for s in sent.values() if s.sandbox_id}
            totals, unsettled = _ledger(view, ours)
            problems += unsettled
            (account,) = await payer.credits(PROJECT)
            for field, value in totals.items():
                if field in account and account[field] != value:
                    problems.append(f"account view {field} {account[field]}, the log says {value}")
            if totals["reserved"]:
                problems.append(f"{totals['reserved']} credits still reserved at the end")
            left = sorted(p.name for p in (svc.home / "saas-stub").rglob("*.json"))
            if left:
                problems.append(f"stub records left behind: {left[:5]}")
        finally:
            await payer.close()
        problems += [f"crashed: {c}" for c in svc.crashed()]
        read, written = _logged(svc.logs, CHECKPOINT_READ), _logged(svc.logs, CHECKPOINT_WRITTEN)
        if not read:
            problems.append("no process read the account from its checkpoint: none was tested")
        figures = {
            "sandboxes": SANDBOXES,
            "destroyed": outcomes["destroyed"],
            **{k: v for k, v in outcomes.items() if k != "destroyed"},
            **dict(made),
            "metered": totals["metered"],
            "debited": totals["debited"],
            "checkpoints written": written,
            "read": read,
        }
    return finish(NAME, watch, figures, problems)
