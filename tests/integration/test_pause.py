"""Pause and resume on ext.local, for real (nats-server, bubblewrap, the cgroup freezer):
a paused sandbox's processes stop and carry on after resume; its TTL does not run out
while paused and runs on afterwards; the pause limit expires one paused too long (and its
frozen processes are torn down); a backend without the capability refuses; replay equals
live after pauses."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from sandboxer.bus.connect import connect
from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.client import SandboxerClient
from sandboxer.commands.types import PauseSandbox
from sandboxer.config.catalog import Catalog
from sandboxer.config.settings import Settings
from sandboxer.domain.timestamps import seconds_between
from sandboxer.errors import CommandFailed, ExtensionError
from sandboxer.events.types import SYSTEM_ACTOR
from sandboxer.extensions.local import freezer
from sandboxer.extensions.local.backend import LocalExtension
from sandboxer.workers.deciding import apply
from sandboxer.workers.extension_worker import ExtensionWorker
from sandboxer.workers.jobs import Job, job_for
from sandboxer.workers.pause_job import UNDO_ATTEMPTS, PauseJob
from tests.integration import conftest
from tests.integration.conftest import Cli, Service, reap_local, start_service
from tests.integration.test_lifecycle import wait_status
from tests.waiting import logged

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SWEEP = 0.3
PAUSE_PROFILE = """\
id: profile.pausable
extension: ext.local
ttl: {default: 1m, max: 2m, max_pause: 1s}
"""
# The count lives in the sandbox's /tmp, a tmpfs, read from the host through the holder.
COUNTER = (
    "nohup sh -c 'i=0; while :; do i=$((i+1)); echo $i > /tmp/count; sleep 0.02; done' "
    ">/dev/null 2>&1 &"
)
# A counter that forks all the time, as a build or a test runner does.
FORKER = (
    "nohup sh -c 'i=0; while :; do i=$((i+1)); /bin/true; echo $i > /tmp/count; done' "
    ">/dev/null 2>&1 &"
)


@pytest.fixture(autouse=True)
def _quick_sweeps(monkeypatch: pytest.MonkeyPatch) -> None:
    original = conftest.settings_for

    def quick(*args: Any, **kwargs: Any) -> Settings:
        return dataclasses.replace(original(*args, **kwargs), expiry_interval=SWEEP)

    monkeypatch.setattr(conftest, "settings_for", quick)


async def events_of(client: SandboxerClient, sandbox_id: str) -> list[dict[str, Any]]:
    return [event async for _seq, event in client.events(sandbox_id=sandbox_id)]


def count_file(service: Service, sandbox_id: str) -> Path:
    """The counter's file, seen from the host through the sandbox's init (a frozen one too)."""
    state = json.loads((service.settings.local_root / sandbox_id / "state.json").read_text())
    return Path(f"/proc/{state['holder_pid']}/root/tmp/count")


def count(service: Service, sandbox_id: str) -> int:
    return int(count_file(service, sandbox_id).read_text().strip() or 0)


async def start_counter(service: Service, sandbox_id: str, script: str = COUNTER) -> None:
    code = await service.client.exec(sandbox_id, ["sh", "-c", script], lambda _s, _d: None)
    assert code == 0
    async with asyncio.timeout(5):
        while not count_file(service, sandbox_id).exists():
            await asyncio.sleep(0.02)


async def test_pause_freezes_every_process_and_resume_carries_on(service: Service) -> None:
    client = service.client
    sandbox_id = (await client.create())["sandbox_id"]
    await start_counter(service, sandbox_id)
    await asyncio.sleep(0.2)
    started = time.monotonic()
    paused = await client.pause(sandbox_id)
    pause_ms = (time.monotonic() - started) * 1000
    frozen_at = count(service, sandbox_id)
    await asyncio.sleep(0.5)
    assert count(service, sandbox_id) == frozen_at  # not one step while paused
    shown = await client.get(sandbox_id)
    assert shown is not None
    assert (shown["status"], shown["paused_at"], shown["due"]) == ("paused", paused["at"], None)
    listed = {s["sandbox_id"]: s["status"] for s in await client.list_sandboxes()}
    assert listed[sandbox_id] == "paused"
    with pytest.raises(CommandFailed, match="paused"):
        await client.exec(sandbox_id, ["true"], lambda _s, _d: None)
    with pytest.raises(CommandFailed) as twice:
        await client.pause(sandbox_id)
    assert twice.value.event["code"] == "already_paused"

    started = time.monotonic()
    resumed = await client.resume(sandbox_id)
    resume_ms = (time.monotonic() - started) * 1000
    assert resumed["paused_seconds"] >= 0.5
    async with asyncio.timeout(10):  # the same process carries on
        # (count() reads 0 when it meets the file between the counter's truncate and write)
        while count(service, sandbox_id) <= frozen_at:
            await asyncio.sleep(0.05)
    outputs: list[bytes] = []
    assert (
        await client.exec(sandbox_id, ["cat", "/tmp/count"], lambda _s, d: outputs.append(d)) == 0
    )
    print(f"\npause {pause_ms:.0f} ms, resume {resume_ms:.0f} ms (client round trips)")

    # A paused sandbox is torn down like any other: the teardown thaws it first.
    await client.pause(sandbox_id)
    await client.destroy(sandbox_id, timeout=30)
    assert not (service.settings.local_root / sandbox_id).exists()


async def test_a_sandbox_forking_all_the_time_is_paused_every_time(service: Service) -> None:
    """cgroup v1's freezer misses a task forked while it freezes (extensions/local/freezer.py):
    one write of ``FROZEN`` left about one such sandbox in six running, and its pause failed
    after 10 s. Each of twelve pauses in a row stops it, and each resume lets it go on."""
    client = service.client
    sandbox_id = (await client.create())["sandbox_id"]
    await start_counter(service, sandbox_id, FORKER)
    for _ in range(12):
        await client.pause(sandbox_id)
        frozen_at = count(service, sandbox_id)
        await asyncio.sleep(0.1)
        assert count(service, sandbox_id) == frozen_at
        await client.resume(sandbox_id)
        async with asyncio.timeout(10):
            while count(service, sandbox_id) <= frozen_at:
                await asyncio.sleep(0.01)
    await client.destroy(sandbox_id)


async def test_a_pause_job_held_up_past_a_resume_undoes_its_freeze(service: Service) -> None:
    """A worker held a pause job past the ack wait while another paused the sandbox, and a
    resume thawed it since. The held job's freeze lands now: the sandbox must not be left
    frozen while its log says it runs."""
    client = service.client
    sandbox_id = (await client.create())["sandbox_id"]
    await start_counter(service, sandbox_id)
    await client.pause(sandbox_id)
    store = JetStreamEventStore(client.nc, client.js)
    as_held = (await store.load(sandbox_id)).state  # paused; the held job saw it pausing
    await client.resume(sandbox_id)
    held = Job(job_id="held-pause", sandbox_id=sandbox_id, action="pause", version=1)
    late = PauseJob(store, LocalExtension(service.settings.local_root), explain=str)
    await late.run(held, msgspec.structs.replace(as_held, status="pausing"))
    assert (await client.get(sandbox_id) or {})["status"] in {"ready", "active"}
    before = count(service, sandbox_id)
    async with asyncio.timeout(5):  # its processes run on
        while count(service, sandbox_id) <= before:
            await asyncio.sleep(0.05)
    assert await client.exec(sandbox_id, ["true"], lambda _s, _d: None) == 0
    await client.destroy(sandbox_id, timeout=30)


class FreezeThatDoesNotSettle(LocalExtension):
    """ext.local whose first freeze does not settle (a task in uninterruptible sleep): as
    ``freezer.freeze`` does then, it thaws the group and raises, the sandbox left running."""

    failures = 1

    async def pause(self, sandbox_id: str, *, host: str | None = None) -> None:
        await super().pause(sandbox_id, host=host)
        if self.failures == 0:
            return
        self.failures -= 1
        await super().resume(sandbox_id, host=host)
        raise ExtensionError(
            f"local sandbox {sandbox_id}: its processes did not all stop within 0s; "
            "it was left running. Try the pause again",
            sandbox_id=sandbox_id,
            extension="ext.local",
        )


@pytest.mark.parametrize("freezes_that_fail", [1, 2])
async def test_a_pause_job_failing_after_another_attempt_paused_it_freezes_it_again(
    service: Service, freezes_that_fail: int
) -> None:
    """Two attempts at one pause job (one held up past the ack wait): the other froze the
    sandbox and recorded ``paused``; then this one's freeze did not settle and was undone,
    thawing it. Its ``pause_failed`` is not recorded (the log moved on), and on the old code
    the sandbox ran on while its log said ``paused``: the worker now freezes it again. With
    two, the freeze that undoes it does not settle either the first time (seen in a full
    run, where the v1 freezer missed a task forked while it froze, mended since in
    freezer.py; a task in uninterruptible sleep does the same), and once did nothing more:
    it is tried again."""
    client = service.client
    sandbox_id = (await client.create())["sandbox_id"]
    await start_counter(service, sandbox_id)
    store = JetStreamEventStore(client.nc, client.js)
    as_held = (await store.load(sandbox_id)).state  # ready; the held job saw it pausing
    await client.pause(sandbox_id)  # the other attempt
    held = Job(job_id="held-pause", sandbox_id=sandbox_id, action="pause", version=1)
    extension = FreezeThatDoesNotSettle(service.settings.local_root)
    extension.failures = freezes_that_fail
    failing = PauseJob(store, extension, explain=str)
    await failing.run(held, msgspec.structs.replace(as_held, status="pausing"))
    assert (await client.get(sandbox_id) or {})["status"] == "paused"
    frozen_at = count(service, sandbox_id)
    await asyncio.sleep(0.5)
    assert count(service, sandbox_id) == frozen_at  # frozen, as its log says
    await client.resume(sandbox_id)
    async with asyncio.timeout(5):  # and it carries on once resumed
        while count(service, sandbox_id) <= frozen_at:
            await asyncio.sleep(0.05)
    await client.destroy(sandbox_id, timeout=30)


def local_hosts(said: str) -> list[dict[str, Any]]:
    """ext.local's hosts of a drift report printed with --json (every extension answers)."""
    return [host for host in json.loads(said) if host["extension"] == "ext.local"]


@contextlib.asynccontextmanager
async def sweeping_worker(service: Service) -> AsyncIterator[ExtensionWorker]:
    """An ext.local worker of the service's log, whose start and leak sweep the test calls."""
    nc = await connect(list(service.settings.nats_urls), name="test-pause-sweep")
    try:
        js = nc.jetstream()
        store = JetStreamEventStore(nc, js)
        catalog = Catalog.load(service.settings.home)
        yield ExtensionWorker(js, store, catalog, LocalExtension(service.settings.local_root))
    finally:
        await nc.close()


def freezer_of(service: Service, sandbox_id: str) -> Path:
    state = json.loads((service.settings.local_root / sandbox_id / "state.json").read_text())
    control = freezer.find_control(Path(path) for path in state["cgroups"])
    assert control is not None
    return control


async def test_a_paused_sandbox_an_undo_left_running_is_frozen_again_by_the_leak_sweep(
    service: Service,
) -> None:
    """As above, but every freeze of the undo fails too (UNDO_ATTEMPTS of them): the job
    logs it and leaves the sandbox running while its log says ``paused``, its TTL clock
    standing still. The worker's next leak sweep finds it so and freezes it; the log is
    left as it is. (On the old code the sweep did nothing: it ran on until its next pause
    or resume.)"""
    client = service.client
    sandbox_id = (await client.create())["sandbox_id"]
    await start_counter(service, sandbox_id)
    store = JetStreamEventStore(client.nc, client.js)
    as_held = (await store.load(sandbox_id)).state
    await client.pause(sandbox_id)  # the other attempt
    extension = FreezeThatDoesNotSettle(service.settings.local_root)
    extension.failures = 1 + UNDO_ATTEMPTS  # its own freeze, then every freeze of the undo
    failing = PauseJob(store, extension, explain=str)
    held = Job(job_id="held-pause", sandbox_id=sandbox_id, action="pause", version=1)
    await failing.run(held, msgspec.structs.replace(as_held, status="pausing"))
    assert not freezer.is_frozen(freezer_of(service, sandbox_id))  # left running
    events = len(await events_of(client, sandbox_id))

    async with sweeping_worker(service) as worker:
        assert await worker.sweep_leaks() == []  # nothing removed
    assert freezer.is_frozen(freezer_of(service, sandbox_id))
    frozen_at = count(service, sandbox_id)
    await asyncio.sleep(0.3)
    assert count(service, sandbox_id) == frozen_at
    assert len(await events_of(client, sandbox_id)) == events  # nothing recorded
    await client.resume(sandbox_id)
    async with asyncio.timeout(5):
        while count(service, sandbox_id) <= frozen_at:
            await asyncio.sleep(0.05)
    await client.destroy(sandbox_id, timeout=30)


async def test_a_running_sandbox_found_frozen_is_thawed_by_a_worker_s_start(
    service: Service,
) -> None:
    """Frozen behind the service's back while its log says it runs (an operator, a tool
    writing the cgroup): a user's exec would hang. A worker's start thaws it; a paused
    sandbox beside it stays frozen."""
    client = service.client
    running, paused = [(await client.create())["sandbox_id"] for _ in range(2)]
    for sandbox_id in (running, paused):
        await start_counter(service, sandbox_id)
    await client.pause(paused)
    await freezer.freeze(freezer_of(service, running), sandbox_id=running)

    async with sweeping_worker(service) as worker:
        await worker.reconcile()
    assert not freezer.is_frozen(freezer_of(service, running))
    assert freezer.is_frozen(freezer_of(service, paused))
    before = count(service, running)
    async with asyncio.timeout(5):
        while count(service, running) <= before:
            await asyncio.sleep(0.05)
    assert await client.exec(running, ["true"], lambda _s, _d: None) == 0
    assert (await client.get(paused) or {})["status"] == "paused"
    for sandbox_id in (running, paused):
        await client.destroy(sandbox_id, timeout=30)


async def test_a_late_failure_of_an_earlier_pause_is_not_the_next_pauses_outcome(
    service: Service,
) -> None:
    """A job of one pause held up past its ack wait: another attempt paused the sandbox, it
    was resumed, and a second pause is under way when the held job's freeze fails. On the
    old code its ``pause_failed`` landed on the second pause (status back to running, with
    the first one's reason) and the second pause's job then found nothing to do. Now the
    failure is not recorded, and the second pause pauses the sandbox."""
    client = service.client
    sandbox_id = (await client.create())["sandbox_id"]
    await start_counter(service, sandbox_id)
    store = JetStreamEventStore(client.nc, client.js)
    await client.pause(sandbox_id)
    as_held = (await store.load(sandbox_id)).state
    await client.resume(sandbox_id)
    # Decided on the log: still `resuming` there, the second pause would be refused.
    await logged(lambda: store.load(sandbox_id), lambda got: got.state.status != "resuming")
    second = PauseSandbox(command_id="second-pause", actor=SYSTEM_ACTOR, sandbox_id=sandbox_id)
    loaded, _ = await apply(store, sandbox_id, second)  # no job sent: this test is its worker
    assert loaded.state.status == "pausing"
    held = Job(
        job_id="held-pause",
        sandbox_id=sandbox_id,
        action="pause",
        version=1,
        for_command=as_held.correlation,
    )
    failing = PauseJob(store, FreezeThatDoesNotSettle(service.settings.local_root), explain=str)
    await failing.run(held, msgspec.structs.replace(as_held, status="pausing"))
    assert (await store.load(sandbox_id)).state.status == "pausing"
    job = job_for((await store.load(sandbox_id)).state)
    assert job is not None
    assert job.for_command == "second-pause"
    await PauseJob(store, LocalExtension(service.settings.local_root), explain=str).run(
        job, (await store.load(sandbox_id)).state
    )
    shown = await wait_status(client, sandbox_id, {"paused"}, timeout=10)
    assert shown["status"] == "paused"
    assert "pause_failed" not in [e["type"] for e in await events_of(client, sandbox_id)]
    frozen_at = count(service, sandbox_id)
    await asyncio.sleep(0.5)
    assert count(service, sandbox_id) == frozen_at  # frozen, as its log says
    await client.destroy(sandbox_id, timeout=30)


async def test_a_pause_job_given_up_as_poison_after_its_freeze_thaws_the_sandbox(
    service: Service,
) -> None:
    """The freeze was done, then the worker kept failing (its ``paused`` never appended)
    until the job was given up as poison: ``pause_failed`` says the sandbox runs as before,
    and on the old code it stayed frozen. The outcome of a poison job is unknown, so the
    freeze is taken for done and undone where the log says otherwise."""
    client = service.client
    sandbox_id = (await client.create())["sandbox_id"]
    await start_counter(service, sandbox_id)
    store = JetStreamEventStore(client.nc, client.js)
    pausing = PauseSandbox(command_id="poison-pause", actor=SYSTEM_ACTOR, sandbox_id=sandbox_id)
    loaded, _ = await apply(store, sandbox_id, pausing)  # no job sent: this test is its worker
    assert loaded.state.status == "pausing"
    backend = LocalExtension(service.settings.local_root)
    await backend.pause(sandbox_id)  # done; then the worker failed past its deliveries
    job = Job(job_id="poison-pause-job", sandbox_id=sandbox_id, action="pause", version=1)
    given_up = PauseJob(store, backend, explain=str)
    await given_up.give_up(job, "worker error: the bus went away", outcome_unknown=True)
    shown = await wait_status(client, sandbox_id, {"ready", "active"}, timeout=10)
    before = count(service, sandbox_id)
    async with asyncio.timeout(5):  # runs, as its log says
        while count(service, sandbox_id) <= before:
            await asyncio.sleep(0.05)
    assert shown["status"] in {"ready", "active"}
    await client.destroy(sandbox_id, timeout=30)


async def test_a_short_ttl_stands_still_while_paused_and_runs_on_after(service: Service) -> None:
    """6 s: the create and the pause must land within it (a loaded machine's can take a
    couple of seconds), and the wait paused runs well past it."""
    client = service.client
    ttl = 6
    sandbox_id = (await client.create(ttl=f"{ttl}s"))["sandbox_id"]
    await client.pause(sandbox_id)
    await asyncio.sleep(ttl + 1.5)  # well past the TTL, and many sweeps
    still = await client.get(sandbox_id)
    assert still is not None
    assert still["status"] == "paused"
    resumed = await client.resume(sandbox_id)
    gone = await wait_status(client, sandbox_id, {"destroyed"}, timeout=15)
    assert gone["expiry"] == "ttl"
    events = {event["type"]: event for event in await events_of(client, sandbox_id)}
    ran_before = seconds_between(events["requested"]["at"], events["paused"]["at"])
    left = ttl - ran_before
    # It expired once the time it had left when paused had run after the resume, not before.
    assert events["expired"]["due_at"] == resumed["expires_at"]
    after_resume = seconds_between(events["resumed"]["at"], events["expired"]["at"])
    assert left - 0.01 <= after_resume <= left + SWEEP + 1.5
    report = await client.replay(verify=True)
    assert report["verified"], report["differences"]


async def test_the_pause_limit_expires_a_sandbox_paused_too_long(
    nats_server: NatsServerProcess, home: Path
) -> None:
    (home / "profiles").mkdir()
    (home / "profiles" / "profile.pausable.yaml").write_text(PAUSE_PROFILE)
    service = await start_service(home, nats_server.url)
    try:
        client = service.client
        sandbox_id = (await client.create("profile.pausable"))["sandbox_id"]
        await start_counter(service, sandbox_id)
        paused = await client.pause(sandbox_id)
        shown = await client.get(sandbox_id)
        assert shown is not None
        assert shown["due"]["cause"] == "pause_limit"
        assert seconds_between(paused["at"], shown["due"]["at"]) == 1
        gone = await wait_status(client, sandbox_id, {"destroyed"}, timeout=15)
        assert gone["expiry"] == "pause_limit"
        types = [event["type"] for event in await events_of(client, sandbox_id)]
        assert types[-3:] == ["pause_limit_reached", "destroying", "destroyed"]
        # The frozen processes went with it.
        assert not (service.settings.local_root / sandbox_id).exists()
        report = await client.replay(verify=True)
        assert report["verified"], report["differences"]
    finally:
        await service.client.close()
        await service.shutdown()
        await reap_local(home)


async def test_a_backend_without_the_capability_refuses_before_any_work(
    nats_server: NatsServerProcess, home: Path
) -> None:
    declaration = (Path(__file__).parents[2] / "extensions" / "ext.local.yaml").read_text()
    (home / "extensions").mkdir()
    (home / "extensions" / "ext.local.yaml").write_text(
        declaration.replace("pause: true", "pause: false")
    )
    service = await start_service(home, nats_server.url)
    try:
        client = service.client
        sandbox_id = (await client.create())["sandbox_id"]
        with pytest.raises(CommandFailed) as refused:
            await client.pause(sandbox_id)
        assert refused.value.event["code"] == "pause_unsupported"
        assert "capabilities.pause" in refused.value.event["reason"]
        types = [event["type"] for event in await events_of(client, sandbox_id)]
        assert "pausing" not in types
    finally:
        await service.client.close()
        await service.shutdown()
        await reap_local(home)


async def test_the_cli_pauses_shows_and_resumes(service: Service, cli_env: dict[str, str]) -> None:
    cli = Cli(cli_env)
    sandbox_id = json.loads((await cli("create", "--json")).stdout)["sandbox_id"]
    paused = json.loads((await cli("pause", sandbox_id, "--json")).stdout)
    assert paused["type"] == "paused"
    assert f"paused_at    {paused['at']}" in (await cli("get", sandbox_id)).stdout
    assert "paused" in (await cli("list")).stdout
    refused = await cli("exec", sandbox_id, "--", "true", check=False)
    assert refused.returncode != 0
    assert "resume it first" in refused.stderr
    said = (await cli("resume", sandbox_id)).stdout
    assert said.startswith(f"resumed {sandbox_id} after ")
    shown = json.loads((await cli("get", sandbox_id, "--json")).stdout)
    assert shown["status"] == "ready"
    await cli("destroy", sandbox_id)


async def test_a_paused_sandbox_whose_holder_died_is_a_corpse_that_reap_marks_failed(
    service: Service,
) -> None:
    client = service.client
    local = LocalExtension(service.settings.local_root)
    sandbox_id = (await client.create())["sandbox_id"]
    await client.pause(sandbox_id)
    [found] = [f for f in await local.list_sandboxes() if f.sandbox_id == sandbox_id]
    assert found.alive  # frozen, not dead
    # A host reboot, say: the processes are gone while the log says paused. (A frozen task
    # acts on SIGKILL only once thawed, so thaw it behind sandboxer's back first.)
    [freezer_dir] = [Path(p) for p in found.detail["cgroups"] if "/freezer/" in p]
    (freezer_dir / "freezer.state").write_text("THAWED")
    os.kill(found.detail["holder_pid"], signal.SIGKILL)
    async with asyncio.timeout(10):
        while any(f.alive for f in await local.list_sandboxes() if f.sandbox_id == sandbox_id):
            await asyncio.sleep(0.05)
    [stale] = await client.inventory("stale", "ext.local", {})
    assert [c["sandbox_id"] for c in stale["hosts"][0]["corpses"]] == [sandbox_id]
    [reaped] = await client.inventory("reap", "ext.local", {"apply": True})
    assert reaped["hosts"][0]["marked_failed"] == [sandbox_id]
    state = await client.get(sandbox_id)
    assert state is not None
    assert (state["status"], state["paused_at"]) == ("failed", None)


async def test_inspect_stale_lists_a_sandbox_not_as_paused_as_its_log_and_reap_sets_it_so(
    service: Service, cli_env: dict[str, str]
) -> None:
    """An operator sees it before any sweep comes: ``inspect stale`` lists it unmatched,
    with the step; ``reap-stale --apply`` takes it, and records nothing on the sandbox."""
    client = service.client
    sandbox_id = (await client.create())["sandbox_id"]
    await start_counter(service, sandbox_id)
    await freezer.freeze(freezer_of(service, sandbox_id), sandbox_id=sandbox_id)
    events = len(await events_of(client, sandbox_id))
    cli = Cli(cli_env)

    said = (await cli("inspect", "stale")).stdout
    assert f"unmatched  {sandbox_id}" in said, said
    assert "active in the log; all of it frozen" in said, said  # used since: active
    [stale] = local_hosts((await cli("inspect", "stale", "--json")).stdout)
    assert [(u["sandbox_id"], u["step"]) for u in stale["unmatched"]] == [(sandbox_id, "thaw")]
    assert freezer.is_frozen(freezer_of(service, sandbox_id))  # a look changes nothing

    [reaped] = local_hosts((await cli("reap-stale", "--apply", "--json")).stdout)
    assert reaped["matched"] == [{"sandbox_id": sandbox_id, "step": "thaw"}]
    assert not freezer.is_frozen(freezer_of(service, sandbox_id))
    assert len(await events_of(client, sandbox_id)) == events
    assert "no drift" in (await cli("inspect", "stale")).stdout
    await client.destroy(sandbox_id, timeout=30)
