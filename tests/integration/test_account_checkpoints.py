"""Account checkpoints on a real nats-server: a fresh load of a long account starts from its
checkpoint and reads only the events after it, and a checkpoint is trusted only for the log
and the code it was made from (bus/checkpoints.py, bus/account_checkpoint.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from chaos.checks import checkpoints_agree
from sandboxer import subjects
from sandboxer.bus.account_checkpoint import encode_checkpoint, message_digest
from sandboxer.bus.checkpoints import AccountCheckpoints
from sandboxer.bus.connect import connect
from sandboxer.bus.event_store import LoadedAccount
from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.bus.streams import ensure_streams
from sandboxer.client import SandboxerClient
from sandboxer.clock import utc_now
from sandboxer.domain.account_state import AccountBook
from sandboxer.events.types import Actor, CreditsAdded
from tests.integration.conftest import serving

pytestmark = pytest.mark.integration

ADM = Actor(type="adm", id="ops")
AFTER = 50
"""Events a load folds before it writes a checkpoint, in these tests."""


@dataclass
class Bus:
    nc: Client
    js: JetStreamContext

    async def store(self, *, checkpoints: bool = True) -> JetStreamEventStore:
        """A fresh store (it keeps nothing folded yet), as a process just started has."""
        kept = await AccountCheckpoints.open(self.js, 1, after=AFTER) if checkpoints else None
        return JetStreamEventStore(self.nc, self.js, checkpoints=kept)


@pytest.fixture
async def bus(nats_server: NatsServerProcess) -> AsyncIterator[Bus]:
    nc = await connect([nats_server.url], name="test-checkpoints")
    js = nc.jetstream()
    await ensure_streams(js, 1)
    try:
        yield Bus(nc, js)
    finally:
        await nc.close()


async def add_credits(store: JetStreamEventStore, project: str, count: int, first: int = 0) -> None:
    loaded = await store.load_account(project)
    events = [
        CreditsAdded(project=project, command_id=f"add-{n}", actor=ADM, at=utc_now(), amount=n + 1)
        for n in range(first, first + count)
    ]
    await store.append_account(loaded, events)


async def written(store: JetStreamEventStore) -> None:
    assert store._checkpoints is not None
    await store._checkpoints.settled()


async def test_a_long_account_loads_from_its_checkpoint_and_the_events_after_it(
    bus: Bus,
) -> None:
    await add_credits(await bus.store(checkpoints=False), "acme", 3 * AFTER)
    first = await bus.store()
    loaded = await first.load_account("acme")  # folds all: writes a checkpoint
    await written(first)
    bucket = await bus.js.object_store(subjects.CHECKPOINTS_BUCKET)
    assert (await bucket.get_info("account.acme")).size

    await add_credits(await bus.store(checkpoints=False), "acme", 7, first=3 * AFTER)
    whole = await (await bus.store(checkpoints=False)).load_account("acme")
    resumed = await (await bus.store()).load_account("acme")
    assert resumed == whole
    assert resumed.book.handled == whole.book.handled
    assert resumed.state.balance == sum(range(1, 3 * AFTER + 8))
    assert resumed.last_seq > loaded.last_seq

    # A short account (fewer events than AFTER) is not worth one.
    await add_credits(await bus.store(checkpoints=False), "tiny", 3)
    short = await bus.store()
    await short.load_account("tiny")
    await written(short)
    assert "account.tiny" not in [info.name for info in await bucket.list()]


async def test_a_long_running_store_keeps_the_checkpoint_near_the_account_s_end(
    bus: Bus,
) -> None:
    """A service that appends to an account it keeps folded never loads it again; it
    writes the account's checkpoint as it goes, every AFTER events (and every tenth of the
    history), so its next start does not fold them all."""
    running = await bus.store()
    for n in range(5):
        await add_credits(running, "acme", AFTER // 2, first=n * AFTER // 2)
        assert running._checkpoints is not None
        await running._checkpoints.settled()
    reader = await AccountCheckpoints.open(bus.js, 1)
    checkpoint = await reader.read("acme")
    assert checkpoint is not None
    whole = await (await bus.store(checkpoints=False)).load_account("acme")
    assert whole.state.version == 5 * AFTER // 2
    assert checkpoint.state.version == 2 * AFTER  # written at 50 and 100 events, not at 125
    assert await (await bus.store()).load_account("acme") == whole


async def plant(bus: Bus, project: str, data: bytes) -> None:
    await AccountCheckpoints.open(bus.js, 1)  # the bucket, as the service makes it
    bucket = await bus.js.object_store(subjects.CHECKPOINTS_BUCKET)
    await bucket.put(f"account.{project}", data)


async def test_a_checkpoint_is_trusted_only_for_the_log_it_was_made_of(bus: Bus) -> None:
    """A checkpoint that holds what the log does not (its balance changed here) is read as
    the fold when its last event is in the log as it recorded it, which is what makes it
    worth keeping; it is not read when the log at its sequence holds another message (a
    stream made again from scratch), nor when it is unreadable or another project's."""
    await add_credits(await bus.store(checkpoints=False), "acme", 10)
    await add_credits(await bus.store(checkpoints=False), "other", 10)
    whole = await (await bus.store(checkpoints=False)).load_account("acme")
    last = await bus.js.get_msg(subjects.EVENTS_STREAM, seq=whole.last_seq, direct=True)
    digest = message_digest(last.subject or "", last.data or b"")
    forged_state = msgspec.structs.replace(whole.state, balance=10**9)
    forged = LoadedAccount(AccountBook(forged_state, whole.book.handled), whole.last_seq)

    await plant(bus, "acme", encode_checkpoint(forged, digest))
    assert (await (await bus.store()).load_account("acme")).state.balance == 10**9

    others = await (await bus.store(checkpoints=False)).load_account("other")
    planted = [
        encode_checkpoint(forged, "0" * 64),  # its last event is not the log's
        encode_checkpoint(LoadedAccount(forged.book, others.last_seq), digest),
        encode_checkpoint(LoadedAccount(forged.book, 10**6), digest),  # past the log's end
        encode_checkpoint(others, message_digest(last.subject or "", last.data or b"")),
        b"\x00" * 300_000,  # unreadable, over more than one chunk
    ]
    for data in planted:
        await plant(bus, "acme", data)
        assert await (await bus.store()).load_account("acme") == whole


async def test_a_store_without_the_bucket_s_chunks_folds_from_the_start(bus: Bus) -> None:
    """A checkpoint whose chunks are gone (its metadata left) is a load from sequence 1."""
    await add_credits(await bus.store(checkpoints=False), "acme", 2 * AFTER)
    first = await bus.store()
    whole = await first.load_account("acme")
    await written(first)
    info = await (await bus.js.object_store(subjects.CHECKPOINTS_BUCKET)).get_info("account.acme")
    await bus.js.purge_stream(
        f"OBJ_{subjects.CHECKPOINTS_BUCKET}",
        subject=f"$O.{subjects.CHECKPOINTS_BUCKET}.C.{info.nuid}",
    )
    assert await (await bus.store()).load_account("acme") == whole


async def test_the_chunks_of_a_write_cut_off_are_purged_when_the_bucket_is_opened(
    bus: Bus,
) -> None:
    """A write killed between its chunks and its metadata leaves chunks no checkpoint names:
    a service process opening the bucket purges those older than its grace, and the
    checkpoints stay whole."""
    await add_credits(await bus.store(checkpoints=False), "acme", 2 * AFTER)
    first = await bus.store()
    whole = await first.load_account("acme")
    await written(first)
    stray = f"$O.{subjects.CHECKPOINTS_BUCKET}.C.cutoffwrite0001"
    await bus.js.publish(stray, b"x" * 1000, stream=f"OBJ_{subjects.CHECKPOINTS_BUCKET}")

    async def chunk_subjects() -> list[str]:
        stream = f"OBJ_{subjects.CHECKPOINTS_BUCKET}"
        info = await bus.js.stream_info(stream, subjects_filter="$O.>")
        return sorted(s for s in info.state.subjects or {} if ".C." in s)

    before = await chunk_subjects()
    assert len(before) == 2  # the checkpoint's, and the stray
    await AccountCheckpoints.open(bus.js, 1)  # within the grace: a write may be running
    assert await chunk_subjects() == before
    await AccountCheckpoints.open(bus.js, 1, stray_grace=0)
    assert await chunk_subjects() == [s for s in before if s != stray]
    assert await (await bus.store()).load_account("acme") == whole


async def test_the_service_writes_checkpoints_as_its_setting_says(
    nats_server: NatsServerProcess, home: Path
) -> None:
    """``SANDBOXER_CHECKPOINT_AFTER`` reaches the service's store: once its control worker has
    appended that many events to an account, it writes the account's checkpoint, which the
    bucket lists and a fresh load reads as the fold of the log."""
    async with serving(home, nats_server.url, ["control"], checkpoint_after=5) as service:
        admin = await SandboxerClient.connect(
            list(service.settings.nats_urls), actor={"type": "adm", "id": "ops"}
        )
        try:
            for amount in range(1, 6):
                await admin.account_command("add_credits", "acme", amount=amount)
        finally:
            await admin.close()
    nc = await connect([nats_server.url], name="test-checkpoints-setting")
    try:
        checkpoints = await AccountCheckpoints.open(nc.jetstream(), 1)
        assert await checkpoints.projects() == ["acme"]  # the service settled its writes
        kept = await checkpoints.read("acme")
        whole = await JetStreamEventStore(nc, nc.jetstream()).load_account("acme")
        assert kept == whole
        assert whole.state.balance == 15
    finally:
        await nc.close()


async def test_the_fault_suite_finds_a_checkpoint_that_is_not_the_fold_of_the_log(
    bus: Bus, nats_server: NatsServerProcess
) -> None:
    """``make chaos`` holds every checkpoint to the log (chaos/checks.py): the true fold
    passes, and one the log does not add up to (its balance changed here) is named."""
    assert await checkpoints_agree([nats_server.url]) == []  # no bucket yet: nothing to hold
    await add_credits(await bus.store(checkpoints=False), "acme", 10)
    whole = await (await bus.store(checkpoints=False)).load_account("acme")
    last = await bus.js.get_msg(subjects.EVENTS_STREAM, seq=whole.last_seq, direct=True)
    digest = message_digest(last.subject or "", last.data or b"")

    await plant(bus, "acme", encode_checkpoint(whole, digest))
    assert await checkpoints_agree([nats_server.url]) == []

    forged_state = msgspec.structs.replace(whole.state, balance=10**9)
    forged = LoadedAccount(AccountBook(forged_state, whole.book.handled), whole.last_seq)
    await plant(bus, "acme", encode_checkpoint(forged, digest))
    assert await checkpoints_agree([nats_server.url]) == [
        f"the checkpoint of account acme at event {whole.last_seq} is not the fold of the log "
        "up to it"
    ]
