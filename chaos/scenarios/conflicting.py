"""1,000 conflicting commands on one sandbox, published at once in a random order: destroy,
recreate, extend_ttl, touch, pause and resume mixed, handled by two control workers and two
ext.local workers. Every one must end (applied, or rejected with a reason and a code that is
not ``internal_error``), the view must agree with the log's aggregate, and the backend must
hold exactly what the aggregate says.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

from chaos.checks import Sent, check_all, every_command_terminal, no_leaks, read_log
from chaos.harness import ADMIN, ChaosService, Stopwatch, finish, run_seed
from chaos.result import ScenarioResult
from sandboxer import subjects
from sandboxer.ids import new_command_id

NAME = "conflicting"
DEADLINE = 300.0
COMMANDS = 1000
ROLES = ("control", "control#2", "projector", "meter", "ext.local", "ext.local#2")
WEIGHTS = {
    "extend_ttl": 24,
    "touch": 24,
    "pause": 20,
    "resume": 20,
    "recreate": 10,
    "destroy": 2,
}
"""Destroys are few and only in the last quarter: the first one that lands ends the sandbox,
and everything after it is a plain rejection (less of a conflict)."""
BATCH = 50
SILENT_BY_DESIGN = {"touch", "destroy"}


def _body(verb: str, sandbox_id: str, command_id: str, rng: random.Random) -> dict[str, Any]:
    body: dict[str, Any] = {"command_id": command_id, "sandbox_id": sandbox_id, "actor": ADMIN}
    if verb == "extend_ttl":
        body["duration"] = rng.choice(["30s", "5m", "1h", "48h"])
    return body


async def _publish_mixed(svc: ChaosService, sandbox_id: str, rng: random.Random) -> dict[str, Sent]:
    """Publish COMMANDS commands on the sandbox, BATCH at a time concurrently."""
    # The first three quarters without a destroy, so most of them meet a live sandbox.
    alive = {verb: w for verb, w in WEIGHTS.items() if verb != "destroy"}
    early = COMMANDS * 3 // 4
    verbs = rng.choices(list(alive), weights=list(alive.values()), k=early)
    verbs += rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()), k=COMMANDS - early)
    sent: dict[str, Sent] = {}
    bodies = []
    for verb in verbs:
        command_id = new_command_id()
        sent[command_id] = Sent(verb, sandbox_id)
        bodies.append((verb, _body(verb, sandbox_id, command_id, rng)))
    js = svc.client.js
    for start in range(0, COMMANDS, BATCH):
        await asyncio.gather(
            *(
                js.publish(
                    subjects.command_subject(verb),
                    json.dumps(body).encode(),
                    headers={"Nats-Msg-Id": body["command_id"]},
                )
                for verb, body in bodies[start : start + BATCH]
            )
        )
    return sent


async def run(workdir: Path) -> ScenarioResult:
    watch = Stopwatch()
    seed = run_seed()
    rng = random.Random(seed)
    problems: list[str] = []
    async with ChaosService(workdir, roles=ROLES) as svc:
        sandbox_id = (await svc.client.create())["sandbox_id"]
        sent = await _publish_mixed(svc, sandbox_id, rng)
        # Every command ends before anything is compared.
        problems += await every_command_terminal(svc.nats_urls, sent, timeout=180)
        view = await read_log(svc.nats_urls)
        outcome: Counter[str] = Counter()
        codes: Counter[str] = Counter()
        silent: Counter[str] = Counter()
        for command_id, (verb, _) in sent.items():
            kinds = [kind for kind, _ in view.by_command.get(command_id, [])]
            outcome["rejected" if "rejected" in kinds else "applied" if kinds else "no-op"] += 1
            silent[verb] += not kinds
        # Silent by design: a touch soon after activity was recorded, a destroy of a sandbox
        # already being destroyed (the first destroy's outcome is the outcome of both).
        odd = {verb: n for verb, n in silent.items() if n and verb not in SILENT_BY_DESIGN}
        if odd:
            problems.append(f"commands that recorded nothing and were not rejected: {odd}")
        rejections = [
            json.loads(data)
            for _, subject, data in view.raw
            if subject.startswith("sandboxer.evt.command.") and subject.endswith(".rejected")
        ]
        for rejection in rejections:
            if rejection.get("command_id") not in sent:
                continue
            codes[str(rejection.get("code"))] += 1
            if not rejection.get("reason"):
                problems.append(f"rejection of {rejection.get('command_id')} has no reason")
        if codes["internal_error"]:
            problems.append(f"{codes['internal_error']} commands rejected as internal_error")
        # The aggregate, folded from the log, against the view and the backend.
        state = view.states()[sandbox_id]
        row = await svc.client.get(sandbox_id, min_seq=view.last_seq)
        if row is None or row["status"] != state.status:
            shown = None if row is None else row["status"]
            problems.append(f"the log says {state.status}, the view says {shown}")
        elif row.get("generation", state.generation) != state.generation:
            problems.append(
                f"generation: the log says {state.generation}, the view {row.get('generation')}"
            )
        problems += [
            f"before the final destroy: {p}" for p in await no_leaks(svc.nats_urls, svc.home)
        ]
        final = state.status
        if state.status not in {"destroyed", "failed"}:
            command_id = new_command_id()
            sent[command_id] = Sent("destroy", sandbox_id)
            await svc.client.destroy(sandbox_id, command_id=command_id, timeout=60)
        problems += await check_all(svc.nats_urls, svc.home, sent=sent)
        problems += svc.crashed()
        top = ", ".join(f"{code} {n}" for code, n in codes.most_common(3))
        figures: dict[str, object] = {
            "seed {}": seed,
            "commands": COMMANDS,
            "applied": outcome["applied"],
            "rejected": outcome["rejected"],
            "silent ({})": ", ".join(f"{v} {n}" for v, n in silent.items() if n) or "none",
            "generations": state.generation,
            "final {}": final,
            "top rejections ({})": top or "none",
        }
    return finish(NAME, watch, figures, problems)
