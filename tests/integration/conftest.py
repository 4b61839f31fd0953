"""Fixtures for whole-service tests: a real nats-server, the real roles, real bubblewrap."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from nats.aio.client import Client

from sandboxer import subjects
from sandboxer.bus import jetstream_store
from sandboxer.bus.connect import connect
from sandboxer.bus.event_reader import last_sequence
from sandboxer.bus.event_store import Loaded
from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.bus.streams import ensure_streams
from sandboxer.client import SandboxerClient
from sandboxer.config.catalog import Catalog
from sandboxer.config.settings import DEFAULT_EXEC_HEARTBEAT, Settings
from sandboxer.domain.sandbox_state import SandboxState, evolve
from sandboxer.errors import SandboxerError
from sandboxer.events.codec import decode_event
from sandboxer.events.types import Actor, SandboxRequested, SandboxRouted
from sandboxer.extensions.local.backend import LocalExtension
from sandboxer.service import all_roles, run_roles
from sandboxer.workers.extension_worker import ExtensionWorker
from sandboxer.workers.jobs import Job, job_for, with_known
from tests.conftest import require_tool


@pytest.fixture(autouse=True)
def _system_tools() -> None:
    require_tool("bwrap", "bubblewrap")
    require_tool("nsenter", "util-linux")


@pytest.fixture
async def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Path]:
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("SANDBOXER_HOME", str(path))
    yield path
    # Not every test starts its service with the `service` fixture (test_fallback.py starts
    # two in turn): what it left under this home (holders, their uids and link slots, slots
    # whose directory a test removed) goes now, or outlives the test until the host reboots.
    await reap_local(path)


@pytest.fixture
def read_starts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The start sequence of every batched direct get the event store makes from now on."""
    starts: list[int] = []
    read_subject = jetstream_store.read_subject

    def recording(*args: Any, **kwargs: Any) -> Any:
        starts.append(kwargs["start"])
        return read_subject(*args, **kwargs)

    monkeypatch.setattr(jetstream_store, "read_subject", recording)
    return starts


@pytest.fixture
async def new_store(
    nats_server: NatsServerProcess,
) -> AsyncIterator[Callable[[], JetStreamEventStore]]:
    """Makes event stores on one connection, the streams in place: each keeps what it saw
    apart, as another process's store would."""
    nc = await connect([nats_server.url], name="test-event-store", long_lived=False)
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        yield lambda: JetStreamEventStore(nc, js)
    finally:
        await nc.close()


def settings_for(
    home: Path, url: str, ack_wait: float = 5.0, input_roots: tuple[Path, ...] | None = None
) -> Settings:
    """Settings of a test's service; its workers accept host paths under the test's tmp_path
    (the parent of ``home``) unless ``input_roots`` says otherwise."""
    roots = (home.parent.resolve(),) if input_roots is None else input_roots
    return Settings(
        home=home, nats_urls=(url,), nats_server=None, ack_wait=ack_wait, input_roots=roots
    )


@dataclass
class Service:
    """Every role running in this test's event loop, and a client talking to it."""

    client: SandboxerClient
    settings: Settings
    stop: asyncio.Event
    task: asyncio.Task[None]

    async def shutdown(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 30)

    async def fund(self, project: str = "default", amount: int = 100_000_000) -> None:
        """Give ``project`` credits (``amount`` micro-USD; 100 USD by default), as an
        administrator: paid backends reserve a create's cost before it is made."""
        admin = await SandboxerClient.connect(
            list(self.settings.nats_urls), actor={"type": "adm", "id": "pytest-funder"}
        )
        try:
            await admin.account_command("add_credits", project, amount=amount)
        finally:
            await admin.close()


START_TIMEOUT = 30.0
"""How long the roles get to answer their first health query (a few hundred ms is usual)."""


async def start_service(
    home: Path,
    url: str,
    roles: list[str] | None = None,
    *,
    input_roots: tuple[Path, ...] | None = None,
    upload_max_mb: int | None = None,
    exec_heartbeat: float | None = None,
    leak_sweep_interval: float | None = None,
    checkpoint_after: int | None = None,
    view_checkpoint_after: int | None = None,
) -> Service:
    """Run ``roles`` (all by default) in this event loop; fail the test if they never answer.
    The settings given (not None) replace the tests' defaults (:func:`settings_for`)."""
    given = {
        "upload_max_mb": upload_max_mb,
        "exec_heartbeat": exec_heartbeat,
        "leak_sweep_interval": leak_sweep_interval,
        "checkpoint_after": checkpoint_after,
        "view_checkpoint_after": view_checkpoint_after,
    }
    settings = dataclasses.replace(
        settings_for(home, url, input_roots=input_roots),
        **{name: value for name, value in given.items() if value is not None},
    )
    catalog = Catalog.load(home)
    roles = roles or all_roles(catalog)
    nc = await connect([url], name="test-service")
    stop = asyncio.Event()

    info: dict[str, Any] = {"test": True}  # run_roles sets its "running"

    async def run() -> None:
        try:
            await run_roles(nc, roles, settings, catalog, stop, info=info)
        finally:
            await nc.drain()

    task = asyncio.create_task(run())
    client = await SandboxerClient.connect([url], actor={"type": "atm", "id": "pytest"})
    service = Service(client, settings, stop, task)
    if "projector" not in roles:
        return service  # nothing answers health queries; the caller waits for what it runs
    deadline = asyncio.get_running_loop().time() + START_TIMEOUT
    last: Exception | None = None
    while not task.done():
        try:
            await client.health()
        except SandboxerError as exc:
            last = exc
        else:
            # The projector answers before the other roles have started: an extension
            # worker's start-up reconcile may still be running.
            if info.get("running"):
                return service
            last = None
        if asyncio.get_running_loop().time() > deadline:
            await client.close()
            service.stop.set()
            task.cancel()  # roles that do not answer may not drain either
            await asyncio.wait([task], timeout=5)
            pytest.fail(
                f"the service (roles {', '.join(roles)}) did not answer {subjects.QUERY_HEALTH} "
                f"within {START_TIMEOUT:g}s on {url}; last error: {last}",
                pytrace=False,
            )
        await asyncio.sleep(0.05)
    await client.close()
    task.result()  # the roles ended before answering: raise what stopped them
    pytest.fail(f"the service (roles {', '.join(roles)}) stopped before it answered", pytrace=False)


@contextlib.asynccontextmanager
async def serving(
    home: Path, url: str, roles: list[str] | None = None, *, reap: bool = False, **options: Any
) -> AsyncIterator[Service]:
    """:func:`start_service` (``options`` are its own) for the length of an ``async with``:
    on the way out the client closes and the roles stop, then, with ``reap``, every ext.local
    sandbox under ``home`` is torn down (one a test restored locally, say)."""
    service = await start_service(home, url, roles, **options)
    try:
        yield service
    finally:
        await service.client.close()
        await service.shutdown()
        if reap:
            await reap_local(home)


@contextlib.asynccontextmanager
async def worker_running(worker: ExtensionWorker, nc: Client) -> AsyncIterator[ExtensionWorker]:
    """``worker`` (an extension worker of the test's own, on its connection ``nc``) runs for
    the length of an ``async with``; on the way out it stops and ``nc`` drains. A worker
    that failed raises its error here: a test must not pass beside a crashed worker."""
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        yield worker
    finally:
        stop.set()
        try:
            await running
        finally:
            await nc.drain()


async def state_as_of(client: SandboxerClient, sandbox_id: str, last: str) -> Loaded:
    """The sandbox's state as of its first ``last`` event, with that event's sequence."""
    state, seq_of_last = SandboxState(sandbox_id=sandbox_id), 0
    async for seq, event in client.events(sandbox_id=sandbox_id):
        decoded = decode_event(json.dumps(event).encode())
        state, seq_of_last = evolve(state, decoded), seq  # type: ignore[arg-type]
        if event["type"] == last:
            break
    return Loaded(state, seq_of_last)


async def resend_provision_job(
    client: SandboxerClient, sandbox_id: str, extension: str = "ext.local"
) -> Job:
    """Publish the sandbox's provision job again (to ``extension``'s workers), carrying its
    state as of `routed` (as the control worker made it), with a new message id: a
    redelivery JetStream does not drop."""
    routed = await state_as_of(client, sandbox_id, "routed")
    job = job_for(routed.state)
    assert job is not None
    assert job.action == "provision"
    stale = with_known(job, routed)
    assert stale.known_loaded() == routed
    await client.js.publish(subjects.job_subject(extension, sandbox_id), msgspec.json.encode(stale))
    return stale


async def resend_recreate_job(client: SandboxerClient, sandbox_id: str) -> Job:
    """Publish the job of the sandbox's first recreate again, as the control worker made it
    on `recreating`, with a new message id: a redelivery JetStream does not drop."""
    job = job_for((await state_as_of(client, sandbox_id, "recreating")).state)
    assert job is not None
    assert job.action == "recreate"
    await client.js.publish(subjects.job_subject("ext.local", sandbox_id), msgspec.json.encode(job))
    return job


async def consumer_idle(
    client: SandboxerClient, stream: str, durable: str, *, through: int = 0
) -> None:
    """Until the durable ``durable`` of ``stream`` has handled (acknowledged) every message
    sent to it so far: a worker done with what a test gave it. ``through`` is the stream
    sequence of a message the test has just published (its ack's ``seq``): asked at once, the
    durable may not count that message as pending yet, and looked idle before its worker had
    it (a CI flake in test_key_bus_rate.py)."""
    async with asyncio.timeout(60):
        while True:
            info = await client.js.consumer_info(stream, durable)
            floor = info.ack_floor.stream_seq if info.ack_floor else 0
            if info.num_pending == 0 and info.num_ack_pending == 0 and floor >= through:
                return
            await asyncio.sleep(0.05)


async def send_again(client: SandboxerClient, command_id: str, profile: str, **fields: Any) -> None:
    """The create ``command_id`` once more, past JetStream's duplicate window (another
    message id), as a redelivery after a crash is; returns once the control worker has
    handled it."""
    again = {
        "command_id": command_id,
        "profile": profile,
        "inputs": {},
        "actor": client.actor,
        **fields,
    }
    ack = await client.js.publish(
        subjects.command_subject("create"),
        msgspec.json.encode(again),
        headers={"Nats-Msg-Id": f"{command_id}-again"},
    )
    await consumer_idle(client, subjects.COMMANDS_STREAM, "control", through=ack.seq)


async def reap_local(home: Path) -> None:
    """Tear down every ext.local sandbox (and pool member) under ``home``, and free the slots
    and groups of any whose directory is gone: holders, uids, link slots and cgroups outlive
    the test otherwise."""
    await LocalExtension(home / "local").tear_down_everything()


@pytest.fixture
def exec_heartbeat() -> float:
    """Seconds between the workers' heartbeats to an exec's or copy's client in the
    ``service`` fixture: the default; a test that waits on them parametrizes a shorter one
    (``@pytest.mark.parametrize("exec_heartbeat", [1.0])``), the mechanism is the same."""
    return DEFAULT_EXEC_HEARTBEAT


@pytest.fixture
async def service(
    nats_server: NatsServerProcess, home: Path, exec_heartbeat: float
) -> AsyncIterator[Service]:
    svc = await start_service(home, nats_server.url, exec_heartbeat=exec_heartbeat)
    try:
        yield svc
    finally:
        await svc.client.close()
        await svc.shutdown()
        await reap_local(home)


def start_worker(
    home: Path, url: str, extension: str = "ext.local", *, heartbeat: float | None = None
) -> subprocess.Popen[bytes]:
    """``sandboxer worker EXTENSION`` in its own process (to be killed with -9), its log in
    ``home/worker.log``; the defaults users get (ack wait, and the exec heartbeat unless
    ``heartbeat`` sets ``SANDBOXER_EXEC_HEARTBEAT``)."""
    env = dict(os.environ, SANDBOXER_HOME=str(home), SANDBOXER_NATS_URL=url)
    env.pop("SANDBOXER_ACK_WAIT", None)
    env.pop("SANDBOXER_EXEC_HEARTBEAT", None)
    if heartbeat is not None:
        env["SANDBOXER_EXEC_HEARTBEAT"] = f"{heartbeat:g}"
    with (home / "worker.log").open("ab") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "sandboxer.cli.app", "worker", extension],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


@dataclass
class Cli:
    """Runs the real ``sandboxer`` CLI in a subprocess against the test's NATS.

    Awaitable, so the in-process service in the same event loop keeps serving
    while the CLI waits for it.
    """

    env: dict[str, str]

    async def __call__(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "sandboxer.cli.app", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"sandboxer {' '.join(args)} exited {result.returncode}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result


@pytest.fixture
def cli_env(home: Path, nats_server: NatsServerProcess) -> dict[str, str]:
    env = dict(os.environ)
    env["SANDBOXER_HOME"] = str(home)
    env["SANDBOXER_NATS_URL"] = nats_server.url
    return env


@contextlib.asynccontextmanager
async def serve_gateway(service: Service, home: Path, **settings: Any) -> AsyncIterator[str]:
    """The gateway role beside ``service`` on a free port of 127.0.0.1; yields its base URL
    once it answers ``/v1/health``, stops it afterwards (the service is the caller's).
    ``settings`` replace the service's own for the gateway (``http_max_streams=2``)."""
    from sandboxer.gateway.serve import http_url, listen

    gateway_settings = dataclasses.replace(service.settings, http_addr=("127.0.0.1", 0), **settings)
    sock = listen(("127.0.0.1", 0))
    nc = await connect(list(service.settings.nats_urls), name="test-gateway")
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_roles(
            nc, ["gateway"], gateway_settings, Catalog.load(home), stop, info={}, http_socket=sock
        )
    )
    try:
        async with httpx.AsyncClient(base_url=http_url(sock), timeout=30) as probe:
            for _ in range(200):
                with contextlib.suppress(httpx.TransportError):
                    if (await probe.get("/v1/health")).status_code == 200:
                        break
                await asyncio.sleep(0.05)
            else:
                pytest.fail("the gateway never answered /v1/health", pytrace=False)
        yield http_url(sock)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await nc.drain()


async def routed_sandboxes(nc: Client, prefix: str, first: int, count: int) -> int:
    """``requested`` and ``routed`` of each of ``count`` sandboxes (``<prefix><n>``, n from
    ``first``), appended through the real store; the log's last sequence after them."""
    js = nc.jetstream()
    store = JetStreamEventStore(nc, js)
    actor = Actor(type="atm", id="test")
    at = "2026-12-02T00:00:00.000Z"
    for n in range(first, first + count):
        sandbox_id = f"{prefix}{n:06d}"
        head = {"sandbox_id": sandbox_id, "command_id": f"c{n}", "actor": actor, "at": at}
        await store.append(
            Loaded(SandboxState(sandbox_id=sandbox_id), 0),
            [
                SandboxRequested(**head, profile="profile.local", profile_version=1),
                SandboxRouted(**head, extension="ext.local", reason="test"),
            ],
        )
    return await last_sequence(js)
