"""ext.daytona's pause and resume against stops and starts that land late (review 2026-12-04).

Daytona takes a stop or a start (201) and its runner carries it out later: the
:class:`LateDouble` (the spec-enforcing Daytona double, subclassed) holds them until the
test lands them, or lands them right after a chosen write, so another attempt's stop or
start comes exactly between one of our looks and one of our writes. Whatever the order,
a stopped sandbox must keep its auto-delete lifted (-1: Daytona must not delete a paused
one) and a running one must have it (a backstop if sandboxer loses track of it); a resume
that fails leaves the sandbox stopped, as the log keeps it ``paused`` (and the worker starts
it again when another attempt at the same resume recorded ``resumed`` meanwhile).
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.config.catalog import Catalog
from sandboxer.config.settings import Settings
from sandboxer.errors import CommandFailed, ProviderError, ProviderUnavailable
from sandboxer.extensions.daytona.api import ProviderSandbox
from sandboxer.extensions.daytona.backend import DaytonaExtension
from sandboxer.workers.extension_worker import ExtensionWorker
from sandboxer.workers.jobs import Job
from sandboxer.workers.pause_job import PauseJob
from tests.doubles.daytona_double import DaytonaDouble, DaytonaServed, Record
from tests.doubles.spec_double import Answer, Call, Served
from tests.integration import conftest
from tests.integration.conftest import start_service
from tests.integration.test_ext_daytona import FAST, build, up
from tests.integration.test_hosted_service import daytona
from tests.waiting import logged, until

pytestmark = pytest.mark.integration

AUTODELETE_PATH = "/sandbox/{sandboxIdOrName}/autodelete/{interval}"
STOP_PATH = "/sandbox/{sandboxIdOrName}/stop"
START_PATH = "/sandbox/{sandboxIdOrName}/start"
GRACE = 15
"""The packaged declaration's leak_grace_minutes: a running sandbox's auto-delete."""


class LateDouble(DaytonaDouble):
    """The Daytona double whose stops and starts, while ``hold`` is set, are taken but carried
    out only when the test lands them (the sandbox meanwhile stays as it was, its
    ``desiredState`` the one it was asked for, as Daytona sets it when it takes the request),
    and whose auto-delete writes can land what is held, or wait for the test, as a test
    chooses."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = False
        self.tells_desired = True
        """False: the answers leave ``desiredState`` out (the spec does not require it)."""
        self.held: list[tuple[Record, str, str]] = []
        self.land_after: float | None = None
        """Land what is held right after an auto-delete set to this interval is applied."""
        self.wait_before: float | None = None
        """An auto-delete set to this interval waits for :meth:`release` before it applies."""
        self.waiting = 0
        self.released = threading.Event()
        """Set by the test (its thread is not the double's): the held writes go on."""

    def land(self) -> None:
        """Daytona's runner carries out the stops and starts it took."""
        held, self.held = self.held, []
        for record, moving, end in held:
            record.state, record.next_state, record.polls_left = moving, end, 1

    def _body(self, record: Record) -> dict[str, Any]:
        body = super()._body(record)
        for held, _, end in self.held:
            if held is record:
                body["desiredState"] = end
        if not self.tells_desired:
            del body["desiredState"]
        return body

    async def _stop(self, call: Call) -> Answer:
        return await self._late(call, "stopping", "stopped") or await super()._stop(call)

    async def _start(self, call: Call) -> Answer:
        return await self._late(call, "starting", "started") or await super()._start(call)

    async def _late(self, call: Call, moving: str, end: str) -> Answer | None:
        if not self.hold:
            return None
        record = self._find(call.path_params["sandboxIdOrName"], call)
        if record is None:
            return None  # the double's own handler answers the 404
        self.held.append((record, moving, end))
        return Answer(201, self._body(record))

    async def _autodelete(self, call: Call) -> Answer:
        interval = float(call.path_params["interval"])
        if interval == self.wait_before:
            self.waiting += 1
            while not self.released.is_set():
                await asyncio.sleep(0.01)
        answer = await super()._autodelete(call)
        if interval == self.land_after:
            self.land()
        return answer


@pytest.fixture
def late() -> Iterator[tuple[LateDouble, DaytonaServed]]:
    double = LateDouble()
    try:
        with Served(double.app) as served:
            yield double, DaytonaServed(double, served)
    finally:
        double.close()
    assert double.app.violations == [], double.app.violations


async def test_a_stop_landing_after_the_put_back_s_look_keeps_the_auto_delete_lifted(
    late: tuple[LateDouble, DaytonaServed],
) -> None:
    """The pause gave up waiting for its stop, and the stop landed between the put-back's
    look (still running) and its write: on the old code the sandbox was left stopped with
    the auto-delete set, for Daytona to delete a sandbox the log may come to call paused.
    Answers without ``desiredState`` (a Daytona that does not say a stop is pending: the
    pause cannot tell it will land, sees the sandbox settled as it runs, and fits the
    auto-delete to that; stopped, it is left lifted)."""
    double, served = late
    extension = build(served, ready_timeout=0.3)
    try:
        await up(extension, "dtrace0001")
        [record] = double.live()
        double.hold = True
        double.tells_desired = False
        double.land_after = GRACE  # the stop lands just after the put-back's write
        with pytest.raises(ProviderUnavailable, match="did not stop within"):
            await extension.pause("dtrace0001")
    finally:
        await extension.aclose()
    assert record.state in {"stopping", "stopped"}
    assert record.auto_delete == -1


async def test_a_put_back_beside_a_pause_that_stops_it_does_not_outlast_the_stop(
    late: tuple[LateDouble, DaytonaServed],
) -> None:
    """Two attempts at one pause: this one's stop is taken and lands later; the other gives
    up first. On the old code it saw the sandbox still run and put the auto-delete back, and
    the pause that succeeded (the log: ``paused``) left it stopped with the auto-delete set.
    Now it sees the stop pending (``desiredState``) and keeps it lifted; it sent no stop of
    its own, so it does not start the sandbox again either."""
    double, served = late
    extension = build(served)
    beside = build(served, ready_timeout=0.2)
    try:
        await up(extension, "dtrace0002")
        [record] = double.live()
        double.hold = True
        pausing = asyncio.create_task(extension.pause("dtrace0002"))
        await until(lambda: double.held)
        with pytest.raises(ProviderUnavailable, match="did not stop within"):
            await beside.pause("dtrace0002")
        assert (record.state, record.auto_delete) == ("started", -1)  # a stop is pending
        assert double.app.calls.count(("POST", START_PATH)) == 0
        double.land()
        await pausing
    finally:
        await extension.aclose()
        await beside.aclose()
    assert (record.state, record.auto_delete) == ("stopped", -1)


async def test_a_put_back_that_lifts_it_as_a_resume_starts_it_gives_it_back(
    late: tuple[LateDouble, DaytonaServed],
) -> None:
    """A failed pause's put-back saw the sandbox stopped and keeps the auto-delete lifted,
    but its write reaches Daytona only after a resume started the sandbox and set it: the
    put-back looks again after its write and gives a running sandbox its auto-delete back."""
    double, served = late
    extension = build(served)
    beside = build(served)
    try:
        await up(extension, "dtrace0003")
        [record] = double.live()
        await extension.pause("dtrace0003")
        double.hold = True
        resuming = asyncio.create_task(extension.resume("dtrace0003"))
        await until(lambda: double.held)
        double.hold = False
        double.app.faults.add("status", method="POST", pattern=AUTODELETE_PATH, status=400)
        double.wait_before = -1  # the put-back's write of -1 is held up
        failing = asyncio.create_task(beside.pause("dtrace0003"))
        await until(lambda: double.waiting)
        double.wait_before = None
        double.land()  # the resume's start lands, and it sets the auto-delete
        await resuming
        assert (record.state, record.auto_delete) == ("started", GRACE)
        double.released.set()
        with pytest.raises(ProviderError, match="400"):
            await failing
    finally:
        await extension.aclose()
        await beside.aclose()
    assert (record.state, record.auto_delete) == ("started", GRACE)


class GivesUpOnItsStop(DaytonaExtension):
    """Says when a pause has given up waiting for its stop (and goes on as it would)."""

    gave_up: asyncio.Event

    async def _wait_for(
        self, sandbox_id: str, wanted: set[str], action: str, **kwargs: Any
    ) -> ProviderSandbox:
        try:
            return await super()._wait_for(sandbox_id, wanted, action, **kwargs)
        except ProviderUnavailable:
            if action == "stop":
                self.gave_up.set()
            raise


async def test_a_failed_pause_s_own_stop_landing_after_it_gave_up_is_started_again(
    late: tuple[LateDouble, DaytonaServed],
) -> None:
    """The pause's stop is taken, but Daytona carries it out only after the pause gave up
    waiting for it, past its put-back's last look on the old code: the pause failed (the log
    keeps the sandbox ``ready``), and Daytona had it stopped, with the auto-delete set to
    delete it a grace later. Now the failed pause waits for the stop Daytona took (its
    ``desiredState``) to land, starts the sandbox again and gives it back its auto-delete,
    and says so."""
    double, served = late
    extension = build(served, kind=GivesUpOnItsStop, ready_timeout=2)
    assert isinstance(extension, GivesUpOnItsStop)
    extension.gave_up = asyncio.Event()
    try:
        await up(extension, "dtrace0006")
        [record] = double.live()
        double.hold = True
        pausing = asyncio.create_task(extension.pause("dtrace0006"))
        await until(extension.gave_up.is_set)
        double.hold = False
        double.land()  # Daytona carries out the stop it took
        with pytest.raises(ProviderUnavailable, match="did not stop within") as caught:
            await pausing
    finally:
        await extension.aclose()
    assert (record.state, record.auto_delete) == ("started", GRACE)
    assert double.app.calls.count(("POST", START_PATH)) == 1
    assert "it was started again: pause it again" in str(caught.value)


async def test_a_failed_pause_whose_stop_is_still_pending_keeps_the_auto_delete_lifted(
    late: tuple[LateDouble, DaytonaServed],
) -> None:
    """The pause's stop is taken and not carried out, even once the failed pause has waited
    for it as long again: Daytona may stop the sandbox any time, so the auto-delete stays
    lifted (on the old code it was set, and Daytona would delete the sandbox a grace after
    the stop landed while the log says ``ready``), and the error says to pause it again."""
    double, served = late
    extension = build(served, ready_timeout=0.3)
    try:
        await up(extension, "dtrace0007")
        [record] = double.live()
        double.hold = True
        with pytest.raises(ProviderUnavailable, match="did not stop within") as caught:
            await extension.pause("dtrace0007")
        assert (record.state, record.auto_delete) == ("started", -1)
        assert "not carried out its stop yet" in str(caught.value)
        double.hold = False
        double.land()
        await extension.pause("dtrace0007")  # paused again, as the error says
    finally:
        await extension.aclose()
    assert (record.state, record.auto_delete) == ("stopped", -1)


@pytest.mark.parametrize(("status", "tries"), [(400, 1), (503, 4)])
async def test_a_resume_whose_auto_delete_fails_stops_it_again(
    late: tuple[LateDouble, DaytonaServed], status: int, tries: int
) -> None:
    """Daytona started the sandbox but the auto-delete could not be set back: on the old code
    the resume failed (the log keeps it ``paused``) with the sandbox running at Daytona,
    billed and with no auto-delete. Now it is stopped again and the error says so."""
    double, served = late
    extension = build(served)
    try:
        await up(extension, "dtrace0004")
        [record] = double.live()
        await extension.pause("dtrace0004")
        double.app.faults.add(
            "status", method="POST", pattern=AUTODELETE_PATH, status=status, times=tries
        )
        with pytest.raises(ProviderError, match="stopped again and stays paused") as caught:
            await extension.resume("dtrace0004")
        assert f"({status})" in str(caught.value) or f" {status}:" in str(caught.value)
        assert caught.value.retryable == (status == 503)
        assert (record.state, record.auto_delete) == ("stopped", -1)
        await extension.resume("dtrace0004")  # resumed again, it runs with its auto-delete
        assert (record.state, record.auto_delete) == ("started", GRACE)
    finally:
        await extension.aclose()


async def test_a_resume_that_cannot_stop_it_again_says_it_may_run(
    late: tuple[LateDouble, DaytonaServed],
) -> None:
    """The auto-delete refused and the stop as well: the error says Daytona may run it while
    sandboxer has it paused, and the failed stop's put-back gives the running sandbox its
    auto-delete, a backstop if sandboxer loses track of it."""
    double, served = late
    extension = build(served)
    try:
        await up(extension, "dtrace0005")
        [record] = double.live()
        await extension.pause("dtrace0005")
        double.app.faults.add("status", method="POST", pattern=AUTODELETE_PATH, status=400)
        double.app.faults.add("status", method="POST", pattern=STOP_PATH, status=400)
        with pytest.raises(ProviderError, match="Daytona may run it, billed"):
            await extension.resume("dtrace0005")
        assert (record.state, record.auto_delete) == ("started", GRACE)
    finally:
        await extension.aclose()


async def test_through_the_bus_a_resume_whose_auto_delete_fails_leaves_it_paused(
    nats_server: Any,
    home: Path,
    daytona_double: DaytonaServed,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The service and its Daytona worker (real NATS): the resume fails, the log keeps the
    sandbox ``paused`` (``pause_failed``, its reason saying it was stopped again) and
    Daytona has it stopped, not running as on the old code; resumed again, it runs."""
    provider = daytona(daytona_double)
    for name, value in provider.env.items():
        monkeypatch.setenv(name, value)
    service = await start_service(
        home, nats_server.url, roles=["control", "projector", provider.extension]
    )
    try:
        await service.fund()
        client = service.client
        sandbox_id = (await client.create(provider.profile, ttl="10m"))["sandbox_id"]
        await client.pause(sandbox_id)
        [record] = daytona_double.double.live()
        daytona_double.app.faults.add("status", method="POST", pattern=AUTODELETE_PATH, status=400)
        with pytest.raises(CommandFailed, match="stopped again and stays paused"):
            await client.resume(sandbox_id, timeout=60)
        store = JetStreamEventStore(client.nc, client.js)
        loaded = await logged(  # its `pause_failed` in the log
            lambda: store.load(sandbox_id), lambda got: got.state.status != "resuming"
        )
        assert loaded.state.status == "paused"
        assert (record.state, record.auto_delete) == ("stopped", -1)
        await client.resume(sandbox_id, timeout=60)
        assert (record.state, record.auto_delete) == ("started", GRACE)
        await client.destroy(sandbox_id)
    finally:
        await service.client.close()
        await service.shutdown()


class HeldUpResume(DaytonaExtension):
    """A worker frozen past the ack wait between its resume's failure and the stop that
    puts the sandbox back (:meth:`DaytonaExtension._paused_again`), until the test lets it go."""

    held_up: asyncio.Event
    go: asyncio.Event

    async def _paused_again(self, sandbox_id: str, failed: Exception) -> ProviderError:
        self.held_up.set()
        await self.go.wait()
        return await super()._paused_again(sandbox_id, failed)


def held_up_resume(served: DaytonaServed, settings: Settings) -> HeldUpResume:
    decl = Catalog.load().extensions_enabled()["ext.daytona"]
    given = {"api_url": served.api_url, "api_key": served.key, **FAST, "ready_timeout": 1}
    extension = HeldUpResume.from_declaration(decl.model_copy(update={"settings": given}), settings)
    assert isinstance(extension, HeldUpResume)
    extension.held_up, extension.go = asyncio.Event(), asyncio.Event()
    return extension


async def test_an_earlier_resume_failing_after_a_later_one_succeeded_leaves_it_started(
    nats_server: Any,
    home: Path,
    late: tuple[LateDouble, DaytonaServed],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two attempts at one resume job (the job redelivered past the ack wait): the earlier
    one's start is taken but not carried out in time, so it fails, and is held up before it
    stops the sandbox again; the start lands, the later attempt (the service's worker)
    records ``resumed``. Then the earlier one stops it: its ``pause_failed`` is not recorded
    (the log moved on), and on the old code Daytona kept it stopped while the log said
    ``ready``. The worker now starts it again, with its auto-delete."""
    double, served = late
    provider = daytona(served)
    for name, value in provider.env.items():
        monkeypatch.setenv(name, value)
    service = await start_service(
        home, nats_server.url, roles=["control", "projector", provider.extension]
    )
    earlier = held_up_resume(served, service.settings)
    try:
        await service.fund()
        client = service.client
        sandbox_id = (await client.create(provider.profile, ttl="10m"))["sandbox_id"]
        await client.pause(sandbox_id)
        [record] = double.live()
        store = JetStreamEventStore(client.nc, client.js)
        as_held = (await store.load(sandbox_id)).state  # paused; the job sees it resuming
        job = Job(job_id="held-resume", sandbox_id=sandbox_id, action="resume", version=1)
        double.hold = True  # the earlier attempt's start is taken, not carried out
        attempt = asyncio.create_task(
            PauseJob(store, earlier, explain=str).run(
                job, msgspec.structs.replace(as_held, status="resuming")
            )
        )
        await until(earlier.held_up.is_set)  # it gave up waiting for its start
        double.hold = False
        double.land()  # Daytona carries that start out after all
        await client.resume(sandbox_id, timeout=60)  # the later attempt
        assert (record.state, record.auto_delete) == ("started", GRACE)
        stops = double.app.calls.count(("POST", STOP_PATH))
        earlier.go.set()  # the earlier attempt stops it again and gives up
        await attempt
        assert double.app.calls.count(("POST", STOP_PATH)) > stops  # it did stop it
        assert (await store.load(sandbox_id)).state.status in {"ready", "active"}
        assert (record.state, record.auto_delete) == ("started", GRACE)
        await client.destroy(sandbox_id)
    finally:
        await earlier.aclose()
        await service.client.close()
        await service.shutdown()


async def test_a_sandbox_stopped_while_its_log_says_ready_is_started_by_the_leak_sweep(
    nats_server: Any,
    home: Path,
    daytona_double: DaytonaServed,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stop still pending past a failed pause's second wait lands later: Daytona has the
    sandbox stopped, its auto-delete lifted, while the log keeps it ``ready`` (on the old
    code it stayed so, the user's sandbox gone from under them). The worker's leak sweep
    starts it again, with its auto-delete; one past its TTL is left to its expiry."""
    provider = daytona(daytona_double)
    for name, value in provider.env.items():
        monkeypatch.setenv(name, value)
    original = conftest.settings_for

    def no_expiry_sweep(*args: Any, **kwargs: Any) -> Settings:
        return dataclasses.replace(original(*args, **kwargs), expiry_interval=3600)

    monkeypatch.setattr(conftest, "settings_for", no_expiry_sweep)
    service = await start_service(
        home, nats_server.url, roles=["control", "projector", provider.extension]
    )
    extension = build(daytona_double)
    try:
        await service.fund()
        client = service.client
        sandbox_id = (await client.create(provider.profile, ttl="10m"))["sandbox_id"]
        [record] = daytona_double.double.live()
        record.state, record.auto_delete = "stopped", -1  # the late stop lands
        store = JetStreamEventStore(client.nc, client.js)
        # Its `ready` in the log, where the sweep reads it (still provisioning, it is left).
        await logged(lambda: store.load(sandbox_id), lambda got: got.state.status == "ready")
        worker = ExtensionWorker(client.js, store, Catalog.load(home), extension)
        assert await worker.sweep_leaks() == []
        assert (record.state, record.auto_delete) == ("started", GRACE)
        assert (await store.load(sandbox_id)).state.status in {"ready", "active"}

        # Past its TTL (no expiry sweep comes here), a stopped one stays stopped.
        overdue = (await client.create(provider.profile, ttl="1s"))["sandbox_id"]
        [late] = [r for r in daytona_double.double.live() if r is not record]
        await asyncio.sleep(1.2)
        late.state = "stopped"
        await worker.sweep_leaks()
        assert late.state == "stopped"
        for each in (sandbox_id, overdue):
            await client.destroy(each)
    finally:
        await extension.aclose()
        await service.client.close()
        await service.shutdown()
