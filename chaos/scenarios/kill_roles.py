"""kill -9 of each role (control, projector, meter, ext.local, gateway) at random points
during at least 200 create/destroy cycles, each killed role restarted after a random pause.

Cycles run through the bus (three loops) and through the HTTP gateway (one loop, with an
``Idempotency-Key`` so a request cut by the gateway's death is sent again as the same
command). The projector loses its view with each kill (its SQLite files removed, as a lost
home would): it starts again from the view's checkpoint, stored every few events here, or
rebuilds the view from the log (the first time always: the view's checkpoints are removed
with it), and the checks hold the view it then keeps to a rebuild.
Meanwhile a reader lists the sandboxes over and over, as a client that wrote nothing (no
read-your-writes position): every list it is answered must hold the few sandboxes made
ready before the cycles started, as a view behind the log might not (a projector answers
such a read ``view_behind`` until it has caught up: docs/protocol.md#queries).
A cycle retries its own command id when its wait runs out: publishing an id again is safe
by contract, so nothing a client does here can duplicate a sandbox. The seed is in the
figures; ``CHAOS_SEED`` replays a run's schedule of kills.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import httpx
from nats.js.errors import NotFoundError

from chaos.checks import Sent, check_all
from chaos.cycles import BackendCycles
from chaos.harness import DEFAULT_ROLES, ChaosService, Stopwatch, finish, run_seed
from chaos.result import ScenarioResult
from sandboxer import subjects
from sandboxer.bus.view_checkpoints import ViewCheckpoints
from sandboxer.cli.key_commands import create_key
from sandboxer.errors import SandboxerError, ViewBehind
from sandboxer.ids import derive_sandbox_id, new_command_id

NAME = "kill-roles"
DEADLINE = 300.0
CYCLES = 200
MIN_KILLS = 10
BUS_LOOPS = 3
ATTEMPTS = 4
"""Sends of one command id before the cycle counts as lost."""
HTTP_BUDGET = 120.0
"""Seconds one HTTP command is sent again while it gets 503s, 202s or no connection."""
WAIT = 45.0
"""Seconds one send waits for its outcome (several ack waits: a kill costs about one)."""
VIEW_CHECKPOINT_AFTER = 50
"""Events the projector folds before it stores its view's checkpoint (100,000 by default)."""
VIEW_READ = "read from its checkpoint"
"""What the projector logs as it starts a view from the checkpoint."""
RESIDENTS = 3
"""Sandboxes made ready before the cycles and destroyed after them: every list holds them."""
READ_EVERY = 0.05
"""Seconds between the reader's lists."""


def _error_code(answer: httpx.Response) -> str:
    """The error shape's ``code`` (docs/http-api.md#errors), or nothing (a 202)."""
    try:
        return str(answer.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return ""


class Run(BackendCycles):
    """The bus loops and the kills of every role (chaos/cycles.py), and the loop over HTTP."""

    attempts = ATTEMPTS
    wait = WAIT

    def __init__(self, svc: ChaosService, seed: int) -> None:
        super().__init__(
            svc,
            seed,
            creates={"ext.local": ("profile.local", {})},
            first=DEFAULT_ROLES,
            killed=DEFAULT_ROLES,
            cycles=CYCLES,
            kills=MIN_KILLS,
        )
        self.http_cycles = 0
        self.views_lost = 0
        self.reads: Counter[str] = Counter()

    async def forget_view_checkpoints(self) -> None:
        """Remove the view's checkpoints, so that the first projector to lose its view
        builds it from the log, as one does before any checkpoint was stored (the reads
        meanwhile are what the reader checks)."""
        js = self.svc.client.js
        try:
            bucket = await js.object_store(subjects.CHECKPOINTS_BUCKET)
        except NotFoundError:  # no checkpoint written yet
            return
        await ViewCheckpoints(js, bucket).forget()

    async def reader(self, residents: set[str]) -> None:
        """Lists the sandboxes until the cycles are done, as a client that wrote nothing:
        each list answered must hold every one of ``residents``."""
        client = await self.svc.connect()
        try:
            while not self.done:
                await asyncio.sleep(READ_EVERY)
                try:
                    page = await client.list_sandboxes(limit=1000)
                except ViewBehind:
                    self.reads["view_behind"] += 1
                    continue
                except SandboxerError:
                    self.reads["unanswered"] += 1  # the projector is down, or starting
                    continue
                self.reads["answered"] += 1
                # Creation order: the residents, made before anything else, lead every list.
                missing = residents - {row["sandbox_id"] for row in page}
                if missing:
                    self.problems.append(
                        f"a list left out {len(missing)} of the {len(residents)} sandboxes "
                        f"ready since before the cycles: {', '.join(sorted(missing))}"
                    )
        finally:
            await client.close()

    async def residents(self) -> set[str]:
        """``RESIDENTS`` sandboxes made ready (those that were)."""
        made = set()
        for _ in range(RESIDENTS):
            command_id = new_command_id()
            sandbox_id = derive_sandbox_id(command_id)
            if await self.bus_command("create", sandbox_id, command_id) is not None:
                made.add(sandbox_id)
        return made

    async def kill_and_restart(self, role: str, pause: tuple[float, float] = (0.0, 1.5)) -> None:
        if role != "projector":
            await super().kill_and_restart(role, pause)
            return
        await self.svc.kill(role)
        for view_file in self.svc.home.glob("projections.sqlite3*"):
            view_file.unlink()
        if not self.views_lost:
            await self.forget_view_checkpoints()
        self.views_lost += 1
        await asyncio.sleep(self.rng.uniform(*pause))
        await self.svc.restart(role)

    async def http_send(
        self, http: httpx.AsyncClient, method: str, path: str
    ) -> tuple[int | None, str]:
        """One HTTP command, sent again (same key) while the gateway is down, answers 503 or its
        wait runs out (202), for HTTP_BUDGET seconds; its final status (None when it never got
        one) and its sandbox."""
        key = new_command_id()
        verb = "create" if method == "POST" else "destroy"
        sandbox_id = derive_sandbox_id(key) if verb == "create" else path.rsplit("/", 1)[1]
        self.sent[key] = Sent(verb, sandbox_id)
        body = {"profile": "profile.local"} if verb == "create" else None
        seen: list[str] = []  # what each send got, for the report
        end = time.monotonic() + HTTP_BUDGET
        while time.monotonic() < end:
            try:
                answer = await http.request(
                    method, f"{path}?wait=30s", json=body, headers={"Idempotency-Key": key}
                )
            except httpx.TransportError as exc:
                seen.append(type(exc).__name__)
                await asyncio.sleep(0.5)  # the gateway is being restarted
                continue
            if answer.status_code in {202, 503}:
                seen.append(f"{answer.status_code} {_error_code(answer)}".strip())
                self.resends += 1
                await asyncio.sleep(0.5)
                continue
            return answer.status_code, sandbox_id
        answers = ", ".join(f"{a} x{n}" for a, n in Counter(seen).items())
        self.problems.append(
            f"HTTP {method} {path} (key {key}): no outcome in {HTTP_BUDGET:g} s ({answers})"
        )
        return None, sandbox_id

    async def http_loop(self, key: str) -> None:
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(
            base_url=self.svc.http_url, headers=headers, timeout=60
        ) as http:
            while not self.done:
                status, sandbox_id = await self.http_send(http, "POST", "/v1/sandboxes")
                if status not in {200, 201}:
                    if status is not None:
                        self.problems.append(f"HTTP create of {sandbox_id}: {status}")
                    self.cycles += 1
                    continue
                status, _ = await self.http_send(http, "DELETE", f"/v1/sandboxes/{sandbox_id}")
                if status not in {200, 204, None}:
                    self.problems.append(f"HTTP destroy of {sandbox_id}: {status}")
                self.cycles += 1
                self.http_cycles += 1


async def run(workdir: Path) -> ScenarioResult:
    watch = Stopwatch()
    seed = run_seed()
    env = {"SANDBOXER_VIEW_CHECKPOINT_AFTER": str(VIEW_CHECKPOINT_AFTER)}
    async with ChaosService(workdir, env=env) as svc:
        key, _ = await create_key(
            svc.client,
            project="chaos",
            key_type="adm",
            name="chaos",
            max_live=100,
            rate_per_second=1000,
        )
        state = Run(svc, seed)
        residents = await state.residents()
        await asyncio.gather(
            state.run(loops=BUS_LOOPS), state.http_loop(key), state.reader(residents)
        )
        for sandbox_id in sorted(residents):
            await state.bus_command("destroy", sandbox_id, new_command_id())
        if not state.reads["answered"]:
            state.problems.append(f"no list was answered ({dict(state.reads)})")
        problems = state.problems + await check_all(svc.nats_urls, svc.home, sent=state.sent)
        problems += svc.crashed()
        read = sum(log.read_text().count(VIEW_READ) for log in svc.logs.glob("projector.*.log"))
        if state.views_lost >= 2 and not read:
            # The first loss may come before any checkpoint; the next finds the one stored
            # right after that rebuild, if not a later one.
            problems.append(f"{state.views_lost} views lost, none read from the checkpoint")
        figures: dict[str, object] = {
            "seed {}": seed,
            "cycles": state.cycles,
            "over HTTP": state.http_cycles,
            "kills": sum(state.kills.values()),
            "resends": state.resends,
            "commands": len(state.sent),
            "slowest command {} s": state.slowest,
            "views lost": state.views_lost,
            "read from the checkpoint": read,
            "lists answered": state.reads["answered"],
            "view_behind": state.reads["view_behind"],
        }
    return finish(NAME, watch, figures, problems)
