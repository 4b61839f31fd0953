"""A key's burst of restores or recreates at ``max_live`` - 1: exactly one passes.

The control worker runs for real (its pull loop handles the burst at once) on nats-server;
the view it asks for the project's live count is a stand-in that never catches up (2 live
sandboxes of 3, whatever is appended), so only what the worker holds between the view's
answer and the view catching up keeps the second command out. Creates and restores were
held so; a recreate of a failed sandbox was not, and two of them both passed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.msg import Msg

from sandboxer import subjects
from sandboxer.bus.direct_get import read_subject
from sandboxer.bus.event_store import LoadedSnapshot
from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.bus.streams import ensure_streams
from sandboxer.client import SandboxerClient
from sandboxer.clock import utc_now
from sandboxer.commands.types import CreateKey
from sandboxer.domain.key_state import hash_key, key_id_for, new_key
from sandboxer.domain.route_signals import RouteSignals
from sandboxer.domain.snapshot_state import SnapshotState
from sandboxer.events.types import (
    Actor,
    SandboxEvent,
    SandboxFailed,
    SandboxRequested,
    SandboxRouted,
    SnapshotCreated,
    SnapshotRequested,
)
from sandboxer.ids import derive_sandbox_id, derive_snapshot_id, new_command_id
from sandboxer.workers.deciding import apply_key
from tests.integration.conftest import Service, start_service

pytestmark = pytest.mark.integration

PROJECT = "alpha"
MAX_LIVE = 3
VIEWED = 2
"""The live sandboxes the stand-in view counts in the project, always: ``MAX_LIVE`` - 1."""


async def _answer(msg: Msg) -> None:
    """Route signals as a view that never catches up answers them (position 1)."""
    request = msgspec.json.decode(msg.data)
    counts = {request["project"]: VIEWED} if "project" in request else {}
    signals = RouteSignals(live_by_project=counts).to_dict()
    await msg.respond(msgspec.json.encode({"ok": True, "position": 1, "signals": signals}))


@pytest.fixture
async def control(nats_server: NatsServerProcess, home: Path) -> AsyncIterator[Service]:
    """The control worker alone, and the stand-in view on the test's connection."""
    service = await start_service(home, nats_server.url, roles=["control"])
    await ensure_streams(service.client.js)  # the worker makes them too, in its own time
    view = await service.client.nc.subscribe(subjects.QUERY_ROUTE_SIGNALS, cb=_answer)
    try:
        yield service
    finally:
        await view.unsubscribe()
        await service.client.close()
        await service.shutdown()


async def _sandbox(store: JetStreamEventStore, actor: Actor, *, failed: bool) -> str:
    """A sandbox of ``actor``'s project on ext.local, failed or live, written to the log."""
    command_id = new_command_id()
    sandbox_id = derive_sandbox_id(command_id)
    head = {"sandbox_id": sandbox_id, "command_id": command_id, "actor": actor, "at": utc_now()}
    events: list[SandboxEvent] = [
        SandboxRequested(**head, profile="profile.local", profile_version=1),
        SandboxRouted(**head, extension="ext.local", reason="test"),
    ]
    if failed:
        events.append(SandboxFailed(**head, reason="gone", stage="provision", retryable=False))
    await store.append(await store.load(sandbox_id), events)
    return sandbox_id


async def _snapshot(store: JetStreamEventStore, actor: Actor, sandbox_id: str) -> str:
    """A created snapshot of ``sandbox_id``, written to the log."""
    command_id = new_command_id()
    snapshot_id = derive_snapshot_id(command_id)
    head = {"snapshot_id": snapshot_id, "command_id": command_id, "actor": actor, "at": utc_now()}
    digest = "0" * 64
    events = [
        SnapshotRequested(
            **head,
            sandbox_id=sandbox_id,
            extension="ext.local",
            profile="profile.local",
            project=PROJECT,
        ),
        SnapshotCreated(
            **head,
            bucket=subjects.WORKSPACES_BUCKET,
            object=f"sha256-{digest}",
            size=1,
            sha256=digest,
        ),
    ]
    await store.append_snapshot(LoadedSnapshot(SnapshotState(snapshot_id=snapshot_id), 0), events)
    return snapshot_id


async def _outcome(service: Service, command_id: str, sandbox_id: str, made: str) -> str:
    """``passed`` once the command has brought its sandbox to status ``made``, or the code of
    the command's rejection."""
    store = JetStreamEventStore(service.client.nc, service.client.js)
    async with asyncio.timeout(30):
        while True:
            state = (await store.load(sandbox_id)).state
            if command_id in state.handled and state.status == made:
                return "passed"
            async for _seq, data in read_subject(
                service.client.nc, subjects.rejection_subject(command_id)
            ):
                return str(msgspec.json.decode(data)["code"])
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("verb", ["recreate", "restore"])
async def test_a_keys_burst_at_its_limit_less_one_lets_exactly_one_through(
    control: Service, verb: str
) -> None:
    store = JetStreamEventStore(control.client.nc, control.client.js)
    key_hash = hash_key(new_key())
    key_id = key_id_for(key_hash)
    await apply_key(
        store,
        CreateKey(
            command_id=new_command_id(),
            actor=Actor(type="adm", id="ops"),
            project=PROJECT,
            key_type="agt",
            key_hash=key_hash,
            max_live=MAX_LIVE,
        ),
    )
    own = Actor(type="agt", id=key_id, project=PROJECT)
    for _ in range(VIEWED):
        await _sandbox(store, own, failed=False)
    # As the gateway forwards the key's commands: on the plain subjects, as the key's actor.
    forwarded = SandboxerClient(control.client.nc, actor=msgspec.to_builtins(own))
    commands: list[dict[str, Any]] = []
    if verb == "recreate":
        for _ in range(2):
            failed = await _sandbox(store, own, failed=True)
            commands.append({"command_id": new_command_id(), "sandbox_id": failed, "actor": own})
        made = "recreating"
    else:
        snapshot_id = await _snapshot(store, own, await _sandbox(store, own, failed=True))
        for _ in range(2):
            command_id = new_command_id()
            commands.append(
                {
                    "command_id": command_id,
                    "snapshot_id": snapshot_id,
                    "sandbox_id": derive_sandbox_id(command_id),
                    "actor": own,
                }
            )
        made = "routed"
    # At once: the worker's pull loop takes both in one fetch and handles them together.
    await asyncio.gather(*(forwarded.publish_command(verb, c) for c in commands))

    outcomes = sorted(
        await asyncio.gather(
            *(_outcome(control, c["command_id"], c["sandbox_id"], made) for c in commands)
        )
    )
    assert outcomes == ["live_limit", "passed"], outcomes
