"""The leak sweep of a running extension worker: which steps it takes (pure), what one sweep
does on the in-memory log with a backend that records its teardowns, and the loop that
repeats it (failures logged and tried again, a prompt stop)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from sandboxer.bus.memory_store import MemoryEventStore
from sandboxer.commands.types import CreateSandbox, DestroySandbox
from sandboxer.config.settings import DEFAULT_LEAK_SWEEP_INTERVAL, Settings
from sandboxer.domain.drift import (
    LEAK_STEPS,
    MATCH_STEPS,
    reconcile_step,
    removal_scope,
    sweep_step,
)
from sandboxer.domain.found import FoundSandbox, Frozen, MadeBy
from sandboxer.domain.sandbox_decide import (
    AdmittedCreate,
    MarkFailed,
    MarkReady,
    StartProvisioning,
)
from sandboxer.domain.sandbox_state import SandboxState, Status
from sandboxer.errors import ExtensionError, SettingError
from sandboxer.events.types import SYSTEM_ACTOR, HostReaped, SandboxEvent
from sandboxer.workers.deciding import apply
from sandboxer.workers.extension_worker import LEAK_SWEEP_ACTOR, ExtensionWorker
from sandboxer.workers.leak_sweep import run_leak_sweep
from sandboxer.workspaces.limits import ArchiveLimits
from sandboxer.workspaces.materialize import DirectoryInputs

HERE = "ext.held"


def state(status: Status, extension: str | None = HERE, attempt: int = 1) -> SandboxState:
    return SandboxState(
        sandbox_id="sandbox00001",
        status=status,
        extension=extension,
        generation=1,
        attempt=attempt,
    )


def held(
    made_by: MadeBy | None = (1, 1), *, alive: bool = True, frozen: Frozen | None = None
) -> FoundSandbox:
    return FoundSandbox(sandbox_id="sandbox00001", alive=alive, made_by=made_by, frozen=frozen)


@pytest.mark.parametrize(
    ("found", "logged", "live", "step"),
    [
        (held(), state("failed"), None, "remove"),
        (held(), state("destroyed"), None, "remove"),
        (held(), state("ready", "ext.other"), None, "remove_copy"),
        (held((1, 1)), state("ready", attempt=2), (1, 2), "remove_earlier_attempt"),
        # Decided by the start alone: each appends to the sandbox's log, or reports.
        (held(alive=False), state("ready"), None, "leave"),  # the start's fail
        (held(), state("destroying"), None, "leave"),  # the start's finish_teardown
        (held(), state("new", None), None, "leave"),  # the start's unknown
        (held(), state("ready"), None, "leave"),  # the start's adopt
        (held(), state("provisioning"), None, "leave"),
        # Set as paused as the log says: nothing appended, only ever towards the log.
        (held(frozen="none"), state("paused"), None, "freeze"),
        (held(frozen="part"), state("ready"), None, "thaw"),
        (held(frozen="all"), state("paused"), None, "leave"),  # the start's adopt
        (held(frozen="all"), state("pausing"), None, "leave"),  # its job's
    ],
)
def test_the_sweep_takes_only_the_steps_that_remove_what_no_live_sandbox_is_or_match_the_log(
    found: FoundSandbox, logged: SandboxState, live: MadeBy | None, step: str
) -> None:
    assert sweep_step(found, HERE, logged, live) == step
    start = reconcile_step(found, HERE, logged, live)
    assert step == (start if start in LEAK_STEPS | MATCH_STEPS else "leave")


def test_a_removal_never_reaches_a_later_attempt_than_the_step_may() -> None:
    copy = held((1, 1))
    # The copy's own attempt: the live one (1.2) stays.
    assert removal_scope("remove_earlier_attempt", copy, state("ready", attempt=2)) == (1, 1)
    # The attempt the log last recorded: a recreate started since (2.1) stays.
    assert removal_scope("remove", copy, state("failed", attempt=3)) == (1, 3)
    # A fallback numbers attempts from 1 again elsewhere: everything of the id here goes.
    assert removal_scope("remove_copy", held((1, 3)), state("ready", "ext.other")) is None


class Held:
    """An attempt-labelling backend that lists what it is given and records its teardowns."""

    id = HERE
    host_local = False

    def __init__(self, found: Sequence[FoundSandbox]) -> None:
        self.found = list(found)
        self.removed: list[tuple[str, MadeBy | None]] = []

    async def list_sandboxes(self) -> Sequence[FoundSandbox]:
        return self.found

    async def teardown(self, sandbox_id: str, *, host: str | None = None) -> None:
        self.removed.append((sandbox_id, None))

    async def teardown_attempt(
        self, sandbox_id: str, made_by: MadeBy, *, host: str | None = None
    ) -> None:
        self.removed.append((sandbox_id, made_by))


async def logged_as(store: MemoryEventStore, sandbox_id: str, *steps: str) -> None:
    """Give ``sandbox_id`` a log on ext.held: created, then each of ``steps`` (``start``: a
    provisioning attempt, ``ready``, ``failed``, ``destroy``)."""
    create = CreateSandbox(command_id=f"c-{sandbox_id}", actor=SYSTEM_ACTOR, profile="p")
    admitted = AdmittedCreate(
        command=create,
        sandbox_id=sandbox_id,
        profile_version=1,
        inputs={},
        extension=HERE,
        route_reason="test",
    )
    await apply(store, sandbox_id, admitted)
    for n, step in enumerate(steps):
        job = f"j-{sandbox_id}-{n}"
        if step == "start":
            await apply(store, sandbox_id, StartProvisioning(job_id=job, worker="w"))
        elif step == "ready":
            await apply(store, sandbox_id, MarkReady(job_id=job, reachability={}, warnings=[]))
        elif step == "failed":
            await apply(store, sandbox_id, MarkFailed(job_id=job, reason="x", stage="provision"))
        else:
            destroy = DestroySandbox(
                command_id=f"d-{sandbox_id}", actor=SYSTEM_ACTOR, sandbox_id=sandbox_id
            )
            await apply(store, sandbox_id, destroy)


def worker_of(store: MemoryEventStore, backend: Held, tmp_path: Path) -> ExtensionWorker:
    none: Any = None  # the bus and the catalog: a sweep uses neither
    extension: Any = backend
    inputs = DirectoryInputs(none, roots=(), staging_root=tmp_path, limits=ArchiveLimits())
    return ExtensionWorker(none, store, none, extension, directories=inputs)


async def test_one_sweep_removes_the_leaks_and_decides_nothing_else(tmp_path: Path) -> None:
    store = MemoryEventStore()
    await logged_as(store, "twocopies001", "start", "start", "ready")  # live: attempt 1.2
    await logged_as(store, "failedleft01", "start", "failed")
    await logged_as(store, "deadready001", "start", "ready")
    await logged_as(store, "destroying01", "start", "ready", "destroy")
    await logged_as(store, "jobinhand001", "start", "failed")
    backend = Held(
        [
            FoundSandbox(sandbox_id="twocopies001", alive=True, made_by=(1, 2)),
            FoundSandbox(sandbox_id="twocopies001", alive=True, made_by=(1, 1)),
            FoundSandbox(sandbox_id="failedleft01", alive=True, made_by=(1, 1)),
            FoundSandbox(sandbox_id="deadready001", alive=False, made_by=(1, 1)),
            FoundSandbox(sandbox_id="destroying01", alive=True, made_by=(1, 1)),
            FoundSandbox(sandbox_id="jobinhand001", alive=True, made_by=(1, 1)),
            FoundSandbox(sandbox_id="nevermade001", alive=True, made_by=(1, 1)),
        ]
    )
    worker = worker_of(store, backend, tmp_path)
    before = len(store.log)
    async with worker._lock("jobinhand001"):  # as a job of this worker holds it
        removed = await worker.sweep_leaks()
    assert removed == ["twocopies001", "failedleft01"]
    # The earlier attempt's copy with its own attempt (never the live 1.2); the failed
    # sandbox's with the attempt the log last recorded.
    assert backend.removed == [("twocopies001", (1, 1)), ("failedleft01", (1, 1))]
    # Nothing on any sandbox's log (no failed, no destroyed): one host event.
    [reaped] = store.log[before:]
    assert isinstance(reaped, HostReaped)
    assert (reaped.extension, reaped.actor, reaped.removed, reaped.marked_failed) == (
        HERE,
        LEAK_SWEEP_ACTOR,
        ["twocopies001", "failedleft01"],
        [],
    )
    assert not any(isinstance(e, SandboxEvent) for e in store.log[before:])

    backend.found = backend.found[4:5]  # only the sandbox being destroyed
    before = len(store.log)
    assert await worker.sweep_leaks() == []
    assert len(store.log) == before  # nothing removed, nothing recorded


async def test_the_start_shares_the_path_and_takes_every_step(tmp_path: Path) -> None:
    """The start's reconcile goes through the same steps, and also those the sweep leaves:
    a dead sandbox the log calls ready is marked failed, an interrupted teardown finished."""
    store = MemoryEventStore()
    await logged_as(store, "twocopies001", "start", "start", "ready")
    await logged_as(store, "failedleft01", "start", "failed")
    await logged_as(store, "deadready001", "start", "ready")
    await logged_as(store, "destroying01", "start", "ready", "destroy")
    backend = Held(
        [
            FoundSandbox(sandbox_id="twocopies001", alive=True, made_by=(1, 2)),
            FoundSandbox(sandbox_id="twocopies001", alive=True, made_by=(1, 1)),
            FoundSandbox(sandbox_id="failedleft01", alive=True, made_by=(1, 1)),
            FoundSandbox(sandbox_id="deadready001", alive=False, made_by=(1, 1)),
            FoundSandbox(sandbox_id="destroying01", alive=True, made_by=(1, 1)),
        ]
    )
    worker = worker_of(store, backend, tmp_path)
    await worker.reconcile()
    assert backend.removed == [
        ("twocopies001", (1, 1)),
        ("failedleft01", (1, 1)),
        ("deadready001", None),
        ("destroying01", None),
    ]
    assert (await store.load("twocopies001")).state.status == "ready"
    assert (await store.load("deadready001")).state.status == "failed"
    assert (await store.load("destroying01")).state.status == "destroyed"
    assert not any(isinstance(e, HostReaped) for e in store.log)  # the start records none


async def test_failures_are_logged_and_the_next_period_tries_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stop = asyncio.Event()
    calls: list[int] = []

    async def sweep() -> list[str]:
        calls.append(1)
        if len(calls) <= 2:
            raise ExtensionError("E2B does not answer")
        if len(calls) == 3:
            raise RuntimeError("a bug")
        stop.set()
        return ["sandbox00001"]

    caplog.set_level(logging.DEBUG, "sandboxer.workers.leak_sweep")
    async with asyncio.timeout(5):
        await run_leak_sweep(sweep, 0.01, stop, name=HERE)
    assert len(calls) == 4
    said = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert said == [
        (
            logging.WARNING,
            f"{HERE}: leak sweep failed, tried again later: ExtensionError: E2B does not answer",
        ),
        (
            logging.DEBUG,
            f"{HERE}: leak sweep failed, tried again later: ExtensionError: E2B does not answer",
        ),  # the same again: said once
        (logging.ERROR, f"{HERE}: leak sweep failed, tried again later"),
        (logging.INFO, f"{HERE}: leak sweep removed sandbox00001"),
    ]


async def test_a_stop_ends_the_loop_at_once_a_sweep_under_way_included() -> None:
    stop = asyncio.Event()
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def sweep() -> list[str]:
        started.set()
        try:
            await asyncio.sleep(3600)  # a provider that never answers
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return []

    loop = asyncio.create_task(run_leak_sweep(sweep, 0.01, stop, name=HERE))
    async with asyncio.timeout(5):
        await started.wait()
    stop.set()
    async with asyncio.timeout(1):
        await loop
    assert cancelled.is_set()


async def test_an_interval_of_0_sweeps_never() -> None:
    async def sweep() -> list[str]:
        raise AssertionError("swept")

    async with asyncio.timeout(1):
        await run_leak_sweep(sweep, 0, asyncio.Event(), name=HERE)


def test_the_interval_setting_defaults_to_5_minutes_and_0_turns_it_off(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SANDBOXER_HOME", str(tmp_path))
    monkeypatch.delenv("SANDBOXER_LEAK_SWEEP_INTERVAL", raising=False)
    assert Settings.from_env().leak_sweep_interval == DEFAULT_LEAK_SWEEP_INTERVAL == 300
    for raw, seconds in (("0", 0.0), ("2.5", 2.5), ("3600", 3600.0)):
        monkeypatch.setenv("SANDBOXER_LEAK_SWEEP_INTERVAL", raw)
        assert Settings.from_env().leak_sweep_interval == seconds
    for raw in ("-1", "soon", "inf", "nan"):
        monkeypatch.setenv("SANDBOXER_LEAK_SWEEP_INTERVAL", raw)
        with pytest.raises(SettingError) as caught:
            Settings.from_env()
        assert caught.value.variable == "SANDBOXER_LEAK_SWEEP_INTERVAL"
        assert "or 0 to turn it off" in caught.value.message
