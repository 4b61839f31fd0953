"""A command whose handler keeps failing is settled by the control worker's ``_on_poison``
(workers/control.py): one its sandbox decided already has the job the sandbox waits for
sent again; any other is rejected ``internal_error``. Command ids are the clients' and one
namespace across projects: another project's create under the id of the create that made
a sandbox is not that create, and nothing of the sandbox is sent again for it.

Real NATS, projector and saas stub; the control worker is the real one with a fault
injected (its handler fails for the command ids a test names).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.msg import Msg

from sandboxer import subjects
from sandboxer.bus.connect import connect
from sandboxer.bus.event_store import Alongside, Loaded
from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.client import SandboxerClient
from sandboxer.commands.types import Command
from sandboxer.config.catalog import Catalog
from sandboxer.events.actor import Actor
from sandboxer.workers.control import ControlWorker
from tests.integration.conftest import Service, consumer_idle, send_again, start_service
from tests.integration.test_credits import account, bus_key, cut_off_after_its_hold
from tests.integration.test_ext_saas_stub import write_override

pytestmark = pytest.mark.integration


class FailingOn(ControlWorker):
    """The control worker, failing every time on the commands whose ids are in ``failing``
    (on those in ``failing_at_once`` before any check of its key; and noting each sandbox
    whose job it sends)."""

    failing: frozenset[str] = frozenset()
    failing_at_once: frozenset[str] = frozenset()
    dispatched: list[str]

    async def handle(self, msg: Msg) -> None:
        if msgspec.json.decode(msg.data).get("command_id") in self.failing_at_once:
            raise RuntimeError("injected: the handler fails before its checks")
        await super().handle(msg)

    async def _decide_and_append(
        self, command: Command, subject: str, job: Alongside
    ) -> Loaded | None:
        if command.command_id in self.failing:
            raise RuntimeError(f"injected: the handler fails on {command.command_id}")
        return await super()._decide_and_append(command, subject, job)

    async def _dispatch(self, loaded: Loaded | None, **kwargs: bool) -> None:
        if loaded is not None:
            self.dispatched.append(loaded.state.sandbox_id)
        await super()._dispatch(loaded, **kwargs)


@dataclasses.dataclass
class Poisoning:
    service: Service
    control: FailingOn


@pytest.fixture
async def poisoning(nats_server: NatsServerProcess, home: Path) -> AsyncIterator[Poisoning]:
    write_override(home, latency_ms=1)
    svc = await start_service(home, nats_server.url, ["projector", "ext.saas-stub"])
    nc = await connect([nats_server.url], name="test-control", long_lived=False)
    js = nc.jetstream()
    control = FailingOn(js, JetStreamEventStore(nc, js), Catalog.load(home), svc.settings, nc=nc)
    control.dispatched = []
    control.spec = dataclasses.replace(control.spec, max_failures=2)
    stop = asyncio.Event()
    task = asyncio.create_task(control.run(stop))
    try:
        await svc.fund()
        yield Poisoning(svc, control)
    finally:
        stop.set()
        await asyncio.wait([task], timeout=30)
        await nc.close()
        await svc.client.close()
        await svc.shutdown()


async def rejections(client: SandboxerClient, command_id: str) -> list[dict[str, Any]]:
    return [
        event
        async for _seq, event in client.events()
        if event.get("command_id") == command_id and event.get("type") == "rejected"
    ]


async def test_another_project_s_failing_create_under_a_create_s_id_sends_nothing_of_it(
    poisoning: Poisoning, nats_server: NatsServerProcess
) -> None:
    """beta's create under the id of the create that made the default project's sandbox
    fails past its deliveries: it is rejected, and nothing of that sandbox is sent again
    (on the old code it was taken for that create: its job sent again, no rejection). The
    project's own create sent again and failing so is still settled by its job."""
    client, control = poisoning.service.client, poisoning.control
    made = await client.create("profile.saas-stub", ttl="10m", command_id="shared-create-2")
    sandbox_id = made["sandbox_id"]
    control.failing = frozenset({"shared-create-2"})
    control.dispatched.clear()
    beta = await SandboxerClient.connect(
        [nats_server.url], actor={"type": "agt", "id": "b", "project": "beta"}
    )
    try:
        await send_again(beta, "shared-create-2", "profile.saas-stub", ttl="10m")
    finally:
        await beta.close()
    refused = await rejections(client, "shared-create-2")
    assert [(e["code"], e["actor"]["project"]) for e in refused] == [("internal_error", "beta")]
    assert control.dispatched == []

    # Once more (beta's went out under send_again's message id), as the project's own.
    own = {"command_id": "shared-create-2", "profile": "profile.saas-stub", "ttl": "10m"}
    own |= {"inputs": {}, "actor": client.actor}
    create = subjects.command_subject("create")
    await client.js.publish(create, msgspec.json.encode(own), headers={"Nats-Msg-Id": "own-2"})
    await consumer_idle(client, subjects.COMMANDS_STREAM, "control")
    assert control.dispatched == [sandbox_id]  # its own create: decided, its job sent again
    assert len(await rejections(client, "shared-create-2")) == 1
    sandbox = await client.get(sandbox_id)
    assert sandbox is not None
    assert sandbox["status"] == "ready"
    await client.destroy(sandbox_id)


async def test_another_project_s_failing_create_under_a_create_s_id_gives_its_hold_back(
    poisoning: Poisoning, nats_server: NatsServerProcess, home: Path
) -> None:
    """beta's create held credits for the id (cut off before its append) while the create
    that made the default project's sandbox under the same command id came first; sent
    again, it fails past its deliveries. No delivery of it can ever be appended: its hold
    is given back (on the old code it was held for ever)."""
    client, control = poisoning.service.client, poisoning.control
    await poisoning.service.fund("beta")
    beta = await SandboxerClient.connect(
        [nats_server.url], actor={"type": "agt", "id": "b", "project": "beta"}
    )
    try:
        beta_actor = Actor(type="agt", id="b", project="beta")
        held = await cut_off_after_its_hold(beta, home, beta_actor, "shared-create-3", ttl="10m")
        made = await client.create("profile.saas-stub", ttl="10m", command_id="shared-create-3")
        assert made["sandbox_id"] == held.sandbox_id
        control.failing = frozenset({"shared-create-3"})
        await send_again(beta, "shared-create-3", "profile.saas-stub", ttl="10m")
    finally:
        await beta.close()
    async with asyncio.timeout(30):
        while (await account(client, "beta"))["reserved"] != 0:
            await asyncio.sleep(0.1)
    refused = await rejections(client, "shared-create-3")
    assert [(e["code"], e["actor"]["project"]) for e in refused] == [("internal_error", "beta")]
    sandbox = await client.get(held.sandbox_id)
    assert sandbox is not None
    assert (sandbox["status"], sandbox["actor"].get("project")) == ("ready", None)
    await client.destroy(held.sandbox_id)


async def test_a_project_s_own_failing_create_cut_off_after_its_hold_gives_it_back(
    poisoning: Poisoning, nats_server: NatsServerProcess, home: Path
) -> None:
    """beta's create held credits (cut off before its append) and, sent again, fails past its
    deliveries: rejected internal_error. No other create had the id, so nothing was ever to
    meter or release the hold (on the old code it was held for ever). Now the id is given up
    and the hold given back, once; the create sent again once more is not made."""
    client, control = poisoning.service.client, poisoning.control
    await poisoning.service.fund("beta")
    beta = await SandboxerClient.connect(
        [nats_server.url], actor={"type": "agt", "id": "b", "project": "beta"}
    )
    try:
        beta_actor = Actor(type="agt", id="b", project="beta")
        held = await cut_off_after_its_hold(beta, home, beta_actor, "own-create-4", ttl="10m")
        control.failing = frozenset({"own-create-4"})
        await send_again(beta, "own-create-4", "profile.saas-stub", ttl="10m")
        async with asyncio.timeout(30):
            while (await account(client, "beta"))["reserved"] != 0:
                await asyncio.sleep(0.1)
        refused = await rejections(client, "own-create-4")
        assert [(e["code"], e["actor"]["project"]) for e in refused] == [("internal_error", "beta")]

        control.failing = frozenset()
        control.dispatched.clear()
        own = {"command_id": "own-create-4", "profile": "profile.saas-stub", "ttl": "10m"}
        own |= {"inputs": {}, "actor": beta.actor}
        create = subjects.command_subject("create")
        await beta.js.publish(create, msgspec.json.encode(own), headers={"Nats-Msg-Id": "own-4"})
        await consumer_idle(client, subjects.COMMANDS_STREAM, "control")
    finally:
        await beta.close()
    assert control.dispatched == []  # nothing made, no job sent
    assert await client.get(held.sandbox_id) is None
    released = [
        event
        async for _seq, event in client.events()
        if event.get("project") == "beta" and event.get("type") == "credits_released"
    ]
    assert [(e["hold"], e["reason"]) for e in released] == [
        (f"reserve-{held.sandbox_id}", "internal_error")
    ]


async def test_a_key_s_failing_create_claiming_another_project_s_actor_gives_up_nothing_of_it(
    poisoning: Poisoning, nats_server: NatsServerProcess, home: Path
) -> None:
    """beta's create held credits for its id and was cut off before its append (kill -9; its
    delivery comes again). alpha's key publishes, on its own subject, a create claiming
    beta's actor, command id and sandbox id, and its handling fails past its deliveries.
    On the old code the poison path took the actor as written: beta's id was given up
    (``create_abandoned``) and its hold released, so beta's own create, delivered again,
    was refused. Now it is rejected ``actor_mismatch`` under alpha's key, as handle rejects
    it, and nothing of beta's is touched; beta's create is made on its hold."""
    client, control = poisoning.service.client, poisoning.control
    await poisoning.service.fund("beta")
    alpha_key, _alpha, _store = await bus_key(client, "alpha")
    beta = await SandboxerClient.connect(
        [nats_server.url], actor={"type": "agt", "id": "b", "project": "beta"}
    )
    try:
        beta_actor = Actor(type="agt", id="b", project="beta")
        held = await cut_off_after_its_hold(beta, home, beta_actor, "beta-flight-1", ttl="10m")
        reserved = (await account(client, "beta"))["reserved"]
        control.failing_at_once = frozenset({"beta-flight-1"})
        forged = {"command_id": "beta-flight-1", "profile": "profile.saas-stub", "ttl": "10m"}
        forged |= {"inputs": {}, "actor": beta.actor, "sandbox_id": held.sandbox_id}
        await client.js.publish(
            subjects.stamped(subjects.command_subject("create"), alpha_key),
            msgspec.json.encode(forged),
            headers={"Nats-Msg-Id": "beta-flight-1-forged"},
        )
        await consumer_idle(client, subjects.COMMANDS_STREAM, "control")
        given_up = [
            event["type"]
            async for _seq, event in client.events()
            if event.get("sandbox_id") == held.sandbox_id and event.get("type") != "rejected"
        ]
        assert given_up == ["credits_reserved"]  # beta's id is not given up, nor its hold
        assert (await account(client, "beta"))["reserved"] == reserved
        refused = await rejections(client, "beta-flight-1")
        assert [(e["code"], e["actor"]["id"]) for e in refused] == [("actor_mismatch", alpha_key)]

        # beta's own create, delivered again, is made on its hold.
        control.failing_at_once = frozenset()
        await send_again(beta, "beta-flight-1", "profile.saas-stub", ttl="10m")
    finally:
        await beta.close()
    assert len(await rejections(client, "beta-flight-1")) == 1
    async with asyncio.timeout(30):
        while (sandbox := await client.get(held.sandbox_id)) is None or sandbox[
            "status"
        ] != "ready":
            await asyncio.sleep(0.1)
    assert sandbox["actor"]["project"] == "beta"
    await client.destroy(held.sandbox_id)


async def test_a_key_s_failing_command_claiming_another_project_s_actor_sends_nothing_of_it(
    poisoning: Poisoning,
) -> None:
    """The default project's create made a sandbox. alpha's key publishes, on its own
    subject, that create again (its command id, its actor), and its handling fails past its
    deliveries: on the old code the poison path found it decided by the sandbox and sent
    the sandbox's job again for a command its project never sent. Now it is rejected
    ``actor_mismatch`` and nothing of the sandbox is sent."""
    client, control = poisoning.service.client, poisoning.control
    made = await client.create("profile.saas-stub", ttl="10m", command_id="made-create-6")
    alpha_key, _alpha, _store = await bus_key(client, "alpha")
    control.failing_at_once = frozenset({"made-create-6"})
    control.dispatched.clear()
    forged = {"command_id": "made-create-6", "profile": "profile.saas-stub", "ttl": "10m"}
    forged |= {"inputs": {}, "actor": client.actor}
    await client.js.publish(
        subjects.stamped(subjects.command_subject("create"), alpha_key),
        msgspec.json.encode(forged),
        headers={"Nats-Msg-Id": "made-create-6-forged"},
    )
    await consumer_idle(client, subjects.COMMANDS_STREAM, "control")
    assert control.dispatched == []
    refused = await rejections(client, "made-create-6")
    assert [(e["code"], e["actor"]["id"]) for e in refused] == [("actor_mismatch", alpha_key)]
    await client.destroy(made["sandbox_id"])
