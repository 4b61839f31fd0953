"""A key's commands on the bus are held to its rate by the control worker (workers/key_rate.py).

The control worker runs for real on nats-server, on a clock the test moves: how many of a
burst pass must not depend on how fast this machine handles it. The projector answers the
key's outcome queries. The key publishes on its own subjects, as its NATS identity does
(nats-server lets only the key publish there; test_key_identities runs that under auth).
Before, every command of a burst passed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import nats
import pytest

from sandboxer import subjects
from sandboxer.bus.connect import connect
from sandboxer.bus.direct_get import read_subject
from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.bus.key_users import key_inbox_prefix
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.client import Sandbox, Sandboxer, SandboxerClient
from sandboxer.client.bus_transport import BusTransport
from sandboxer.clock import utc_now
from sandboxer.commands.types import CreateKey
from sandboxer.config.catalog import Catalog
from sandboxer.domain.key_state import hash_key, key_id_for, new_key
from sandboxer.domain.rate_limit import REFILL_SECONDS
from sandboxer.errors import CommandFailed, OutcomePending, RateLimited
from sandboxer.events.types import Actor, SandboxRequested
from sandboxer.ids import derive_sandbox_id, new_command_id
from sandboxer.workers.control import ControlWorker
from sandboxer.workers.deciding import apply_key
from tests.integration.conftest import Service, consumer_idle, start_service
from tests.integration.test_credits import account, cut_off_after_its_hold

pytestmark = pytest.mark.integration

PROJECT = "alpha"
RATE = 5
BURST = 8


class Clock:
    """The control worker's monotonic clock, moved by the test alone."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def service(
    nats_server: NatsServerProcess, home: Path
) -> AsyncIterator[tuple[Service, Clock]]:
    """The projector as a role, and the real control worker beside it on the test's clock."""
    service = await start_service(home, nats_server.url, roles=["projector"])
    clock = Clock()
    nc = await connect([nats_server.url], name="test-control", long_lived=False)
    js = nc.jetstream()
    store = JetStreamEventStore(nc, js)
    control = ControlWorker(js, store, Catalog.load(home), service.settings, nc=nc, clock=clock)
    stop = asyncio.Event()
    task = asyncio.create_task(control.run(stop))
    try:
        yield service, clock
    finally:
        stop.set()
        await asyncio.wait([task], timeout=30)
        await nc.close()
        await service.client.close()
        await service.shutdown()
        if task.done():
            task.result()


async def _sandbox(store: JetStreamEventStore, actor: Actor) -> str:
    """A sandbox of ``actor``'s project that was never routed: a destroy ends it at once."""
    command_id = new_command_id()
    sandbox_id = derive_sandbox_id(command_id)
    requested = SandboxRequested(
        sandbox_id=sandbox_id,
        command_id=command_id,
        actor=actor,
        at=utc_now(),
        profile="profile.local",
        profile_version=1,
    )
    await store.append(await store.load(sandbox_id), [requested])
    return sandbox_id


async def _rejections(service: Service, command_id: str) -> list[dict[str, object]]:
    return [
        msgspec.json.decode(data)
        async for _seq, data in read_subject(
            service.client.nc, subjects.rejection_subject(command_id)
        )
    ]


async def test_a_keys_burst_on_the_bus_past_its_rate_is_refused_until_it_waits(
    service: tuple[Service, Clock],
) -> None:
    running, clock = service
    store = JetStreamEventStore(running.client.nc, running.client.js)
    key_hash = hash_key(new_key())
    key_id = key_id_for(key_hash)
    await apply_key(
        store,
        CreateKey(
            command_id=new_command_id(),
            actor=Actor(type="adm", id="ops"),
            project=PROJECT,
            key_type="atm",
            key_hash=key_hash,
            max_live=3,
            rate_per_second=RATE,
        ),
    )
    own = Actor(type="atm", id=key_id, project=PROJECT)
    sandboxes = [await _sandbox(store, own) for _ in range(BURST + 4)]
    # The key's replies come to its own inbox only (bus/replies.py).
    url = running.settings.nats_urls[0]
    key_nc = await nats.connect(url, inbox_prefix=key_inbox_prefix(key_id))
    key = SandboxerClient(key_nc, actor=msgspec.to_builtins(own), key_id=key_id)
    sbx = Sandboxer(BusTransport(key))
    try:
        # The burst, at once, at one instant of the worker's clock: exactly the rate passes.
        burst = {new_command_id(): sandbox_id for sandbox_id in sandboxes[:BURST]}
        outcomes = await asyncio.gather(
            *(sbx.destroy(s, command_id=c, timeout=30) for c, s in burst.items()),
            return_exceptions=True,
        )
        passed = [c for c, o in zip(burst, outcomes, strict=True) if isinstance(o, Sandbox)]
        limited = {c: o for c, o in zip(burst, outcomes, strict=True) if isinstance(o, RateLimited)}
        assert len(passed) == RATE, outcomes
        assert len(limited) == BURST - RATE, outcomes
        assert all(o.status == "destroyed" for o in outcomes if isinstance(o, Sandbox)), outcomes
        for refusal in limited.values():  # an empty bucket's wait: a token comes in 1/rate s
            assert refusal.retry_after == pytest.approx(1 / RATE, abs=0.001)
        # Each refusal is one rejection in the log, filed under the key, saying the wait.
        for command_id in limited:
            (rejected,) = await _rejections(running, command_id)
            assert rejected["code"] == "rate_limited"
            assert rejected["retry_after"] == pytest.approx(1 / RATE, abs=0.001)
            assert rejected["actor"] == msgspec.to_builtins(own)
        for command_id in passed:
            assert await _rejections(running, command_id) == []

        # What the gateway forwards as the key's actor was counted there: it passes here.
        forwarded = SandboxerClient(running.client.nc, actor=msgspec.to_builtins(own))
        await forwarded.destroy(sandboxes[BURST], timeout=30)

        # After the wait it was told, the key may send one more; not two.
        clock.now += 1 / RATE
        refused = list(limited)
        again = await sbx.destroy(burst[refused[0]], timeout=30)
        assert again.status == "destroyed"
        with pytest.raises(RateLimited):
            await sbx.destroy(burst[refused[1]], timeout=30)
        # A second later its bucket is full again.
        clock.now += REFILL_SECONDS
        rest = [burst[c] for c in refused[1:]] + sandboxes[BURST + 1 : BURST + 1 + RATE - 2]
        assert len(rest) == RATE
        for done in await asyncio.gather(*(sbx.destroy(s, timeout=30) for s in rest)):
            assert done.status == "destroyed"
    finally:
        await key_nc.close()


async def test_a_command_carried_out_and_sent_again_past_the_rate_is_not_rejected(
    service: tuple[Service, Clock],
) -> None:
    """A key's destroy carried out, sent again with its command id as a new message (past
    the commands stream's two-minute duplicate window) while the key is past its rate: a
    first delivery, so it takes a token, but its sandbox handled it, so nothing is rejected
    and its outcome still answers success. Before, a rate_limited rejection was recorded for
    it, and the outcome query (the gateway's status URL) answered 429 for a command that took
    effect."""
    running, _clock = service
    store = JetStreamEventStore(running.client.nc, running.client.js)
    key_hash = hash_key(new_key())
    key_id = key_id_for(key_hash)
    await apply_key(
        store,
        CreateKey(
            command_id=new_command_id(),
            actor=Actor(type="adm", id="ops"),
            project=PROJECT,
            key_type="atm",
            key_hash=key_hash,
            rate_per_second=RATE,
        ),
    )
    own = Actor(type="atm", id=key_id, project=PROJECT)
    sandboxes = [await _sandbox(store, own) for _ in range(RATE + 1)]
    key_nc = await nats.connect(
        running.settings.nats_urls[0], inbox_prefix=key_inbox_prefix(key_id)
    )
    key = SandboxerClient(key_nc, actor=msgspec.to_builtins(own), key_id=key_id)
    sbx = Sandboxer(BusTransport(key))

    async def send_again(command_id: str, sandbox_id: str) -> None:
        """As the key's identity does, under another message id: JetStream's window past."""
        ack = await key_nc.jetstream().publish(
            subjects.stamped(subjects.command_subject("destroy"), key_id),
            msgspec.json.encode(
                {"command_id": command_id, "sandbox_id": sandbox_id, "actor": key.actor}
            ),
            headers={"Nats-Msg-Id": f"{command_id}-again"},
        )
        await consumer_idle(running.client, subjects.COMMANDS_STREAM, "control", through=ack.seq)

    try:
        # The key's bucket emptied (the worker's clock stands still), the first destroy
        # among them.
        done = {new_command_id(): sandbox_id for sandbox_id in sandboxes[:RATE]}
        for command_id, sandbox_id in done.items():
            assert (await sbx.destroy(sandbox_id, command_id=command_id, timeout=30)).status == (
                "destroyed"
            )
        first, destroyed = next(iter(done.items()))
        await send_again(first, destroyed)
        assert await _rejections(running, first) == []
        last = (await running.client.js.stream_info(subjects.EVENTS_STREAM)).state.last_seq
        answer = await key.query(
            subjects.QUERY_REJECTION, {"command_id": first, "min_seq": last}, budget=10
        )
        assert answer["rejection"] is None
        # Past the rate still: a command not carried out is rejected as before.
        fresh = new_command_id()
        await send_again(fresh, sandboxes[RATE])
        (rejected,) = await _rejections(running, fresh)
        assert rejected["code"] == "rate_limited"
    finally:
        await key_nc.close()


async def _key(store: JetStreamEventStore, project: str) -> tuple[str, Actor]:
    """A new ``atm`` key of ``project`` held to ``RATE``: its id and its actor."""
    key_hash = hash_key(new_key())
    key_id = key_id_for(key_hash)
    await apply_key(
        store,
        CreateKey(
            command_id=new_command_id(),
            actor=Actor(type="adm", id="ops"),
            project=project,
            key_type="atm",
            key_hash=key_hash,
            rate_per_second=RATE,
        ),
    )
    return key_id, Actor(type="atm", id=key_id, project=project)


async def test_another_projects_create_sent_again_past_the_rate_is_refused_as_an_unknown_one(
    service: tuple[Service, Clock],
) -> None:
    """Project alpha's key has a create carried out; project beta's key, past its rate,
    sends a create with that command id (its sandbox id derived from it: alpha's). It is
    answered as a create never seen: a rate_limited rejection under beta's key, naming no
    sandbox, and no job sent again for alpha's sandbox. Before, the rate refusal took it for
    alpha's create sent again (_decided_create): no rejection came, so beta learned the id
    was alpha's handled create, and alpha's job went out once more."""
    running, _clock = service
    store = JetStreamEventStore(running.client.nc, running.client.js)
    alpha_id, alpha = await _key(store, "alpha")
    beta_id, beta = await _key(store, "beta")
    url = running.settings.nats_urls[0]
    alpha_nc = await nats.connect(url, inbox_prefix=key_inbox_prefix(alpha_id))
    beta_nc = await nats.connect(url, inbox_prefix=key_inbox_prefix(beta_id))
    beta_key = SandboxerClient(beta_nc, actor=msgspec.to_builtins(beta), key_id=beta_id)

    async def create(nc: nats.NATS, key_id: str, actor: Actor, command_id: str) -> None:
        """A create as the key's identity publishes it, under a message id of its own (past
        the commands stream's duplicate window); returns once the control worker took it."""
        ack = await nc.jetstream().publish(
            subjects.stamped(subjects.command_subject("create"), key_id),
            msgspec.json.encode(
                {
                    "command_id": command_id,
                    "profile": "profile.local",
                    "inputs": {},
                    "actor": msgspec.to_builtins(actor),
                }
            ),
            headers={"Nats-Msg-Id": f"{command_id}-{key_id}"},
        )
        await consumer_idle(running.client, subjects.COMMANDS_STREAM, "control", through=ack.seq)

    async def jobs_sent() -> int:
        # The stream's last sequence, not its message count: the extension worker deletes
        # the jobs it handles (a work queue) whenever it acks them, here or not.
        return (await running.client.js.stream_info(subjects.JOBS_STREAM)).state.last_seq

    try:
        carried_out = new_command_id()
        await create(alpha_nc, alpha_id, alpha, carried_out)
        alphas = (await store.load(derive_sandbox_id(carried_out))).state
        assert carried_out in alphas.handled
        assert alphas.status not in ("new", "requested"), alphas.status  # decided: routed
        assert await _rejections(running, carried_out) == []

        # Beta's bucket emptied (the worker's clock stands still) by creates of its own.
        for _ in range(RATE):
            await create(beta_nc, beta_id, beta, new_command_id())
        unknown = new_command_id()
        await create(beta_nc, beta_id, beta, unknown)
        (never_seen,) = await _rejections(running, unknown)
        assert never_seen["code"] == "rate_limited"

        sent = await jobs_sent()
        await create(beta_nc, beta_id, beta, carried_out)
        (refused,) = await _rejections(running, carried_out)
        assert await jobs_sent() == sent  # alpha's job was not sent again
        assert refused["code"] == never_seen["code"]
        assert refused["reason"] == never_seen["reason"]
        assert refused["retry_after"] == never_seen["retry_after"]
        assert refused["sandbox_id"] is None  # as for the unknown id: nothing of alpha's
        assert refused["actor"] == msgspec.to_builtins(beta)
        # What beta's key reads of it is what it reads of the unknown one.
        last = (await running.client.js.stream_info(subjects.EVENTS_STREAM)).state.last_seq
        answers = [
            (
                await beta_key.query(
                    subjects.QUERY_REJECTION, {"command_id": c, "min_seq": last}, budget=10
                )
            )["rejection"]
            for c in (unknown, carried_out)
        ]
        assert answers[0] is not None
        assert answers[1] is not None
        assert answers[0]["code"] == answers[1]["code"] == "rate_limited"
        # Alpha's sandbox is as it was.
        assert (await store.load(derive_sandbox_id(carried_out))).state.status == alphas.status
    finally:
        await alpha_nc.close()
        await beta_nc.close()


async def _published_create(
    running: Service, nc: nats.NATS, key_id: str, actor: Actor, command_id: str
) -> None:
    """A create as a key's identity may publish it: under a new message id each time (so
    the commands stream's duplicate window does not drop it); returns once the control
    worker took it."""
    ack = await nc.jetstream().publish(
        subjects.stamped(subjects.command_subject("create"), key_id),
        msgspec.json.encode(
            {
                "command_id": command_id,
                "profile": "profile.local",
                "inputs": {},
                "actor": msgspec.to_builtins(actor),
            }
        ),
        headers={"Nats-Msg-Id": new_command_id()},
    )
    await consumer_idle(running.client, subjects.COMMANDS_STREAM, "control", through=ack.seq)


async def test_another_projects_key_sending_a_command_under_its_id_does_not_reject_it(
    service: tuple[Service, Clock],
) -> None:
    """Project alpha's create, forwarded by the gateway (the plain subject, alpha's key's
    actor) and waited for; project beta's key, past its rate, sends a create under alpha's
    command id (on its own subject, under a message id of its own). Its rate_limited
    rejection lands on the command id's rejection subject, filed under beta's key; alpha's
    wait goes on to its own outcome (none: no backend runs here), and so does a re-send of
    it that reads the log back. Before, alpha's client took beta's rejection for its
    create's, and the gateway answered alpha 429 for a create that was carried out.

    Then beta sends a command under the id alpha uses next, and alpha's command is rejected
    for a reason of its own: alpha is told that reason. Before, rejections were one per
    command id (the second was dropped as a duplicate append), so alpha's never landed."""
    running, _clock = service
    store = JetStreamEventStore(running.client.nc, running.client.js)
    _alpha_id, alpha = await _key(store, "alpha")
    beta_id, beta = await _key(store, "beta")
    beta_nc = await nats.connect(
        running.settings.nats_urls[0], inbox_prefix=key_inbox_prefix(beta_id)
    )
    gateway = SandboxerClient(running.client.nc, actor=msgspec.to_builtins(alpha))
    command_id = new_command_id()
    sandbox_id = derive_sandbox_id(command_id)
    waiting = asyncio.create_task(
        gateway.create("profile.local", command_id=command_id, wait=True, timeout=6)
    )
    try:
        async with asyncio.timeout(10):
            while command_id not in (await store.load(sandbox_id)).state.handled:
                await asyncio.sleep(0.02)
        for _ in range(RATE):  # beta's bucket emptied (the worker's clock stands still)
            await _published_create(running, beta_nc, beta_id, beta, new_command_id())
        await _published_create(running, beta_nc, beta_id, beta, command_id)
        (refused,) = await _rejections(running, command_id)
        assert refused["code"] == "rate_limited"
        assert refused["actor"] == msgspec.to_builtins(beta)
        assert not waiting.done()

        with pytest.raises(OutcomePending):
            await waiting
        with pytest.raises(OutcomePending):  # sent again: the log is read back
            await gateway.create("profile.local", command_id=command_id, wait=True, timeout=1)
        created = (await store.load(sandbox_id)).state
        assert created.status not in ("new", "requested", "failed"), created.status
        assert created.actor == alpha

        following = new_command_id()
        await _published_create(running, beta_nc, beta_id, beta, following)
        with pytest.raises(CommandFailed) as rejected:
            await gateway.create("profile.nope", command_id=following, wait=True, timeout=10)
        assert rejected.value.event["code"] == "unknown_profile"
        assert rejected.value.event["actor"] == msgspec.to_builtins(alpha)
        codes = [r["code"] for r in await _rejections(running, following)]
        assert codes == ["rate_limited", "unknown_profile"]
    finally:
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        await beta_nc.close()


async def test_a_keys_create_past_its_rate_on_another_projects_id_gives_its_hold_back(
    service: tuple[Service, Clock], home: Path
) -> None:
    """beta's key's create held credits for an id (a paid backend) and was cut off before its
    append; alpha's sandbox took the id meanwhile. The key, past its rate, sends the create
    again (its own subject, a message id of its own): it is refused ``rate_limited`` as one
    never handled (the id is another project's), and that refusal gave nothing back, unlike
    the same create within its rate (``sandbox_exists``): the hold was kept. Now it is given
    back there too (a usage_metered of zero on beta's account), the answer unchanged."""
    running, _clock = service
    store = JetStreamEventStore(running.client.nc, running.client.js)
    beta_id, beta = await _key(store, "beta")
    await running.fund("beta")
    command_id = new_command_id()
    held = await cut_off_after_its_hold(
        running.client, home, beta, command_id, ttl="10m", sandbox_id="ratedout01"
    )
    alphas = SandboxRequested(
        sandbox_id=held.sandbox_id,
        command_id=new_command_id(),
        actor=Actor(type="agt", id="a", project="alpha"),
        at=utc_now(),
        profile="profile.saas-stub",
        profile_version=1,
    )
    await store.append(await store.load(held.sandbox_id), [alphas])
    beta_nc = await nats.connect(
        running.settings.nats_urls[0], inbox_prefix=key_inbox_prefix(beta_id)
    )
    try:
        for _ in range(RATE):  # beta's bucket emptied (the worker's clock stands still)
            await _published_create(running, beta_nc, beta_id, beta, new_command_id())
        again = {"command_id": command_id, "profile": "profile.saas-stub", "ttl": "10m"}
        again |= {"sandbox_id": held.sandbox_id, "inputs": {}}
        again |= {"actor": msgspec.to_builtins(beta)}
        ack = await beta_nc.jetstream().publish(
            subjects.stamped(subjects.command_subject("create"), beta_id),
            msgspec.json.encode(again),
            headers={"Nats-Msg-Id": new_command_id()},
        )
        await consumer_idle(running.client, subjects.COMMANDS_STREAM, "control", through=ack.seq)
    finally:
        await beta_nc.close()
    (refused,) = await _rejections(running, command_id)
    assert refused["code"] == "rate_limited"
    account_now = (await store.load_account("beta")).state
    assert held.sandbox_id not in account_now.reservations  # given back, by the log
    settled = await account(running.client, "beta", metered=1)
    assert settled["reserved"] == 0
