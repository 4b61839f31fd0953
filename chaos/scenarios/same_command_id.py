"""The same create command id sent 10 times, then the same destroy command id 10 times: one
sandbox, one effect each (JetStream drops copies within its duplicate window; the service
decides nothing for an id it has handled, docs/protocol.md#commands)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from chaos.checks import Sent, check_all, read_log
from chaos.harness import ADMIN, ChaosService, Stopwatch, finish
from chaos.result import ScenarioResult
from sandboxer import subjects
from sandboxer.ids import derive_sandbox_id, new_command_id

NAME = "same-command-id"
DEADLINE = 240.0
COPIES = 10


async def _send(svc: ChaosService, verb: str, body: dict[str, object], dedupe: bool) -> None:
    """Publish ``body`` through JetStream; without ``dedupe`` no ``Nats-Msg-Id`` header, so every
    copy reaches the control worker and its own idempotency must hold."""
    headers = {"Nats-Msg-Id": f"{body['command_id']}"} if dedupe else None
    await svc.client.js.publish(
        subjects.command_subject(verb), json.dumps(body).encode(), headers=headers
    )


async def run(workdir: Path) -> ScenarioResult:
    watch = Stopwatch()
    problems: list[str] = []
    figures: dict[str, object] = {}
    async with ChaosService(workdir) as svc:
        sent: dict[str, Sent] = {}
        # Two rounds: copies with the header (the stream dedupes them) and copies without
        # (each one is delivered: the aggregate's `handled` must stop them).
        sandboxes = []
        for dedupe in (True, False):
            create_id = new_command_id()
            sandbox_id = derive_sandbox_id(create_id)
            sandboxes.append(sandbox_id)
            create: dict[str, object] = {
                "command_id": create_id,
                "profile": "profile.local",
                "inputs": {},
                "actor": ADMIN,
            }
            await asyncio.gather(*(_send(svc, "create", create, dedupe) for _ in range(COPIES)))
            sent[create_id] = Sent("create", sandbox_id)
            await _wait_status(svc, sandbox_id, {"ready", "failed"})
            destroy_id = new_command_id()
            destroy: dict[str, object] = {
                "command_id": destroy_id,
                "sandbox_id": sandbox_id,
                "actor": ADMIN,
            }
            await asyncio.gather(*(_send(svc, "destroy", destroy, dedupe) for _ in range(COPIES)))
            sent[destroy_id] = Sent("destroy", sandbox_id)
            await _wait_status(svc, sandbox_id, {"destroyed", "failed"})
        problems += await check_all(svc.nats_urls, svc.home, sent=sent)
        view = await read_log(svc.nats_urls)
        for sandbox_id in sandboxes:
            kinds = [type(e).__name__ for e in view.sandbox_events.get(sandbox_id, [])]
            counts = {k: kinds.count(k) for k in set(kinds)}
            for kind in (
                "SandboxRequested",
                "SandboxReady",
                "SandboxDestroying",
                "SandboxDestroyed",
            ):
                if counts.get(kind, 0) != 1:
                    problems.append(f"{sandbox_id}: {counts.get(kind, 0)} {kind} events, not 1")
        extra = [s for s in view.sandbox_events if s not in sandboxes and s in view.states()]
        made = len(sandboxes) + len(extra) - 1  # still_serves made one of its own
        figures = {"ids sent x10": len(sent), "sandboxes": made}
        problems += svc.crashed()
    return finish(NAME, watch, figures, problems)


async def _wait_status(svc: ChaosService, sandbox_id: str, wanted: set[str]) -> None:
    async with asyncio.timeout(90):
        while True:
            row = await svc.client.get(sandbox_id)
            if row is not None and row["status"] in wanted:
                return
            await asyncio.sleep(0.1)
