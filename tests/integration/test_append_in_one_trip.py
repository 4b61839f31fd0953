"""The events of one decision go out together, and land only one right after the other.

A create decides ``requested`` and ``routed``. The JetStream store sends both before either
is acknowledged when its own appends are all answered: the second expects its scope's
last sequence to be the first's (guessed from the last sequence the store saw
acknowledged) and the stream's last message to be the first (``Nats-Expected-Last-Msg-Id``).
A real nats-server holds it to that: with anyone's event between them, or a wrong guess,
the second is refused and sent again in turn. These tests run each case against it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from sandboxer import subjects
from sandboxer.bus import jetstream_store
from sandboxer.bus.ack_inbox import publish_all_for_ack
from sandboxer.bus.connect import connect
from sandboxer.bus.event_reader import read_events
from sandboxer.bus.event_store import Alongside
from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.bus.nats_cluster import NatsCluster
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.bus.publish import is_expectation_failure
from sandboxer.bus.streams import ensure_streams
from sandboxer.clock import utc_now
from sandboxer.errors import BusError, ConcurrencyConflict
from sandboxer.events.codec import encode_event
from sandboxer.events.types import (
    Actor,
    SandboxEvent,
    SandboxRequested,
    SandboxRouted,
    SandboxTouched,
)
from sandboxer.workers.job_dispatch import dispatch_job, job_message
from sandboxer.workers.jobs import Job

pytestmark = pytest.mark.integration

ACTOR = Actor(type="agt", id="pytest")


def decision(sandbox_id: str) -> list[SandboxEvent]:
    head = {"sandbox_id": sandbox_id, "command_id": f"c-{sandbox_id}", "actor": ACTOR}
    return [
        SandboxRequested(**head, at=utc_now(), profile="profile.local", profile_version=1),
        SandboxRouted(**head, at=utc_now(), extension="ext.local", reason="pytest"),
    ]


def touched(sandbox_id: str, n: int) -> SandboxTouched:
    return SandboxTouched(sandbox_id=sandbox_id, command_id=f"t{n}", actor=ACTOR, at=utc_now())


@pytest.fixture
def sends(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many events each send of the store put on the wire at once, in order."""
    counts: list[int] = []
    together, one = jetstream_store.publish_all_for_ack, jetstream_store.publish_durably

    async def sent_together(nc: Any, messages: Any, **kwargs: Any) -> Any:
        counts.append(len(messages))
        return await together(nc, messages, **kwargs)

    async def sent_alone(*args: Any, **kwargs: Any) -> Any:
        counts.append(1)
        return await one(*args, **kwargs)

    monkeypatch.setattr(jetstream_store, "publish_all_for_ack", sent_together)
    monkeypatch.setattr(jetstream_store, "publish_durably", sent_alone)
    return counts


async def logged(store: JetStreamEventStore, sandbox_id: str) -> list[tuple[int, str]]:
    """(sequence, type) of the sandbox's events as the stream holds them."""
    scope = f"sandboxer.evt.sandbox.{sandbox_id}.>"
    return [
        (seq, subject.rsplit(".", 1)[1])
        async for seq, subject, _data, _pending in read_events(store._js, filter_subject=scope)
    ]


async def test_a_decision_goes_out_at_once_and_lands_in_order(
    new_store: Callable[[], JetStreamEventStore], sends: list[int]
) -> None:
    """A store that knows the stream's last sequence sends both events at once; they land
    one after the other, and what it returns is what a fresh load folds."""
    store = new_store()
    await store.append(await store.load("trip00000001"), [touched("trip00000001", 0)])
    sends.clear()
    appended = await store.append(await store.load("trip00000002"), decision("trip00000002"))
    assert sends == [2]
    events = await logged(store, "trip00000002")
    assert [kind for _, kind in events] == ["requested", "routed"]
    assert events[1][0] == events[0][0] + 1
    assert appended == await new_store().load("trip00000002")
    assert appended.state.status == "routed"


async def jobs_for(store: JetStreamEventStore, sandbox_id: str) -> list[Job]:
    """The provision jobs the jobs stream holds for the sandbox (on ext.local): none, or the
    one there is (a job's id is its message id: a second publish of it is dropped)."""
    subject = subjects.job_subject("ext.local", sandbox_id)
    info = await store._js.stream_info(subjects.JOBS_STREAM, subjects_filter=subject)
    held = (info.state.subjects or {}).get(subject, 0)
    assert held <= 1, f"{held} jobs for {sandbox_id}"
    if not held:
        return []
    last = await store._js.get_last_msg(subjects.JOBS_STREAM, subject)
    return [msgspec.json.decode(last.data or b"", type=Job)]


async def test_a_create_s_job_goes_out_with_its_events_and_says_where_they_landed(
    new_store: Callable[[], JetStreamEventStore], sends: list[int]
) -> None:
    """The provision job a create leads to is sent right after its two events, in the same
    round trip, carrying the state they fold to at the position the last one landed at; all
    three acknowledged, it is marked sent, so its maker publishes nothing more."""
    store = new_store()
    await store.append(await store.load("trip00000021"), [touched("trip00000021", 0)])
    sends.clear()
    job = Alongside(job_message)
    appended = await store.append(
        await store.load("trip00000022"), decision("trip00000022"), alongside=job
    )
    assert sends == [3]
    assert job.sent
    (sent,) = await jobs_for(store, "trip00000022")
    carried = sent.known_loaded()
    assert carried is not None
    assert (carried.state, carried.last_seq) == (appended.state, appended.last_seq)
    assert carried.last_seq == (await logged(store, "trip00000022"))[-1][0]
    assert carried.state.status == "routed"
    # Guessed, not read back: it names its last event, which its worker's append expects
    # to find as the stream's last message.
    last = await store._js.get_last_msg(
        subjects.EVENTS_STREAM, "sandboxer.evt.sandbox.trip00000022.routed"
    )
    assert carried.unconfirmed == (last.headers or {})["Nats-Msg-Id"]


async def test_a_wrong_guess_leaves_the_job_to_its_maker(
    new_store: Callable[[], JetStreamEventStore], sends: list[int]
) -> None:
    """Another process appended since this store's last ack: ``routed`` is refused and sent
    again in turn, and the job that went with it carries the guessed position. It is not
    marked sent: its maker publishes it again, a copy the stream drops by its id, and the
    worker's first append, expecting the guess, conflicts and reads the log instead."""
    store, other = new_store(), new_store()
    await store.append(await store.load("trip00000023"), [touched("trip00000023", 0)])
    await other.append(await other.load("trip00000024"), [touched("trip00000024", 0)])
    sends.clear()
    job = Alongside(job_message)
    appended = await store.append(
        await store.load("trip00000025"), decision("trip00000025"), alongside=job
    )
    assert sends == [3, 1]
    assert not job.sent
    await dispatch_job(store._js, appended)  # what the control worker does then
    (stored,) = await jobs_for(store, "trip00000025")
    carried = stored.known_loaded()
    assert carried is not None
    assert carried.last_seq != appended.last_seq


async def test_a_store_that_sends_one_by_one_sends_no_job(
    new_store: Callable[[], JetStreamEventStore], sends: list[int]
) -> None:
    store = new_store()
    job = Alongside(job_message)
    await store.append(await store.load("trip00000026"), decision("trip00000026"), alongside=job)
    assert sends == [1, 1]
    assert not job.sent
    assert await jobs_for(store, "trip00000026") == []


async def test_a_store_that_knows_no_sequence_yet_sends_them_one_by_one(
    new_store: Callable[[], JetStreamEventStore], sends: list[int]
) -> None:
    store = new_store()
    await store.append(await store.load("trip00000003"), decision("trip00000003"))
    assert sends == [1, 1]
    assert [kind for _, kind in await logged(store, "trip00000003")] == ["requested", "routed"]


async def test_another_writers_event_first_makes_the_guess_wrong_and_the_rest_goes_in_turn(
    new_store: Callable[[], JetStreamEventStore], sends: list[int]
) -> None:
    """Another process appended since this store's last ack: ``requested`` lands one past
    the guess, the stream refuses ``routed`` (its scope's last is not the guessed one), and
    the store sends it again expecting ``requested``'s real sequence."""
    store, other = new_store(), new_store()
    await store.append(await store.load("trip00000004"), [touched("trip00000004", 0)])
    await other.append(await other.load("trip00000005"), [touched("trip00000005", 0)])
    sends.clear()
    appended = await store.append(await store.load("trip00000006"), decision("trip00000006"))
    assert sends == [2, 1]
    events = await logged(store, "trip00000006")
    assert [kind for _, kind in events] == ["requested", "routed"]
    assert appended == await new_store().load("trip00000006")
    # The guess is right again: the store saw the stream's last sequence in the acks.
    sends.clear()
    await store.append(await store.load("trip00000007"), decision("trip00000007"))
    assert sends == [2]


async def test_a_conflict_on_the_first_event_leaves_nothing_of_the_decision(
    new_store: Callable[[], JetStreamEventStore], sends: list[int]
) -> None:
    """Another writer of the same sandbox came first: the first event is refused, so is the
    second (the first is not the stream's last), and the store raises the conflict."""
    store, other = new_store(), new_store()
    await store.append(await store.load("trip00000008"), [touched("trip00000008", 0)])
    stale = await store.load("trip00000009")
    await other.append(await other.load("trip00000009"), [touched("trip00000009", 1)])
    sends.clear()
    with pytest.raises(ConcurrencyConflict):
        await store.append(stale, decision("trip00000009"))
    assert sends == [2]
    assert [kind for _, kind in await logged(store, "trip00000009")] == ["touched"]


async def test_an_event_between_the_two_on_the_same_sandbox_is_caught_by_the_message_id(
    nats_server: NatsServerProcess,
) -> None:
    """The case the last-message-id header is there for: another writer's event on the same
    sandbox lands between the two, at the very sequence guessed for the first. The scope's
    last sequence is then as the second expects, and only the header refuses it."""
    nc = await connect([nats_server.url], name="test-trip", long_lived=False)
    try:
        await ensure_streams(nc.jetstream())
        scope = "sandboxer.evt.sandbox.trip00000010.>"
        first, second = decision("trip00000010")
        cut_in = touched("trip00000010", 2)
        subject = "sandboxer.evt.sandbox.trip00000010."

        def headers(event_id: str, expected: int, last_id: str | None = None) -> dict[str, str]:
            found = {
                "Nats-Msg-Id": event_id,
                "Nats-Expected-Last-Subject-Sequence": str(expected),
                "Nats-Expected-Last-Subject-Sequence-Subject": scope,
            }
            if last_id is not None:
                found["Nats-Expected-Last-Msg-Id"] = last_id
            return found

        (landed,) = await publish_all_for_ack(
            nc, [(subject + "requested", encode_event(first), headers("e1", 0))], timeout=5
        )
        assert not isinstance(landed, Exception)
        (between,) = await publish_all_for_ack(
            nc,
            [(subject + "touched", encode_event(cut_in), headers("x1", landed.seq))],
            timeout=5,
        )
        assert not isinstance(between, Exception)
        (refused,) = await publish_all_for_ack(
            nc,
            [(subject + "routed", encode_event(second), headers("e2", between.seq, "e1"))],
            timeout=5,
        )
        assert is_expectation_failure(refused)
        assert refused.err_code == 10070  # wrong last message id
    finally:
        await nc.close()


async def test_a_send_that_fails_surfaces_as_the_one_by_one_append_would_say_it(
    nats_server: NatsServerProcess,
) -> None:
    """The connection closed under the store: the decision is not half sent in silence, and
    the error is sandboxer's (BusError), as for any single append."""
    nc = await connect([nats_server.url], name="test-trip-closed", long_lived=False)
    js = nc.jetstream()
    await ensure_streams(js)
    store = JetStreamEventStore(nc, js)
    await store.append(await store.load("trip00000011"), [touched("trip00000011", 0)])
    loaded = await store.load("trip00000012")
    await nc.close()
    with pytest.raises(BusError):
        await store.append(loaded, decision("trip00000012"))


async def test_a_replicated_stream_gets_one_event_at_a_time(
    tmp_path: Path, sends: list[int]
) -> None:
    """On a stream of three replicas a decision's events go one by one: the followers check
    ``Nats-Expected-Last-Msg-Id`` again as they apply, and after a leader was killed found
    it unmet where the leader had found it met, which left the stream with no leader (the
    fault suite's ``leader-kill``, 2026-12-07)."""
    async with NatsCluster(tmp_path / "cluster", size=3) as cluster:
        nc = await connect(cluster.urls, name="test")
        try:
            js = nc.jetstream()
            await ensure_streams(js, replicas=3)
            store = JetStreamEventStore(nc, js)
            await store.append(await store.load("trip00000031"), [touched("trip00000031", 0)])
            sends.clear()
            await store.append(await store.load("trip00000032"), decision("trip00000032"))
            assert sends == [1, 1]
            kinds = [kind for _, kind in await logged(store, "trip00000032")]
            assert kinds == ["requested", "routed"]
        finally:
            await nc.close()
