"""The State Hub projection against a real HTTP hub (Starlette on uvicorn) that goes down,
comes back and answers errors, with real sandboxes on ext.local and a role killed with -9
(docs/integrations/state-hub.md)."""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from sandboxer import subjects
from sandboxer.bus.connect import connect
from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.bus.streams import ensure_streams
from sandboxer.client import SandboxerClient
from sandboxer.events.types import (
    Actor,
    SandboxProvisioning,
    SandboxReady,
    SandboxRequested,
    SandboxRouted,
)
from sandboxer.statehub.body import DELIVERED_TYPES
from sandboxer.statehub.follower import DURABLE, StateHubFollower, status_file
from tests.integration.conftest import Cli, Service, reap_local, start_service
from tests.ports import closed_port

pytestmark = pytest.mark.integration

ROLES = ["control", "projector", "ext.local"]
TOKEN = "hub-token-7f3a9c-never-logged"
DOCUMENTED_BODY = Path(__file__).resolve().parents[2] / "docs" / "integrations" / "state-hub.md"


async def endless(pause: float, chunk: bytes) -> AsyncIterator[bytes]:
    """An answer's body that never ends: ``chunk`` after ``chunk``, ``pause`` apart."""
    while True:
        yield chunk
        await asyncio.sleep(pause)


class Hub:
    """The State Hub: stores each POST it answers 2xx; ``faults`` are answered instead, in
    turn (a status, or ``"hang"``: no answer before the client gives up; ``"endless"``: the
    POST is stored and answered 202 with a body that never ends; ``"endless-503"``: a 503
    whose body never ends; ``"drip-503"``: a 503 whose body comes a byte at a time, never
    ending). ``down()`` stops
    listening (connections are refused) and ``up()`` listens on the same port again.
    ``hold()`` keeps the next POST unanswered until ``release()``."""

    def __init__(self) -> None:
        self.port = closed_port()
        self.url = f"http://127.0.0.1:{self.port}/v1/sandbox-events"
        self.stored: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.faults: collections.deque[int | str] = collections.deque()
        self.answered: list[int | str] = []
        self.arrived = threading.Event()  # a held POST has arrived
        self._open = threading.Event()
        self._open.set()
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    async def _endpoint(self, request: Request) -> Response:
        body = await request.json()
        with self._lock:
            fault = self.faults.popleft() if self.faults else None
            self.answered.append(fault or 200)
        if fault == "hang":
            await asyncio.sleep(3)  # the client timed out long before
            return Response(status_code=503)
        if fault == "endless":
            with self._lock:
                self.stored.append(body)
                self.headers.append(dict(request.headers))
            return StreamingResponse(endless(0.02, b"x" * 16384), status_code=202)
        if fault == "endless-503":
            return StreamingResponse(endless(0.02, b"busy " * 3000), status_code=503)
        if fault == "drip-503":
            return StreamingResponse(endless(0.2, b"."), status_code=503)
        if isinstance(fault, int):
            return JSONResponse({"error": "injected"}, status_code=fault)
        if not self._open.is_set():
            self.arrived.set()
            await asyncio.to_thread(self._open.wait, 60)
        with self._lock:
            self.stored.append(body)
            self.headers.append(dict(request.headers))
        return JSONResponse({"stored": body["event_id"]}, status_code=202)

    def up(self) -> None:
        app = Starlette(routes=[Route("/v1/sandbox-events", self._endpoint, methods=["POST"])])
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        for _ in range(500):
            if self._server.started:
                return
            threading.Event().wait(0.01)
        raise AssertionError("the hub did not start")

    def down(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
            self._server = None

    def hold(self) -> None:
        self.arrived.clear()
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def ids(self) -> list[str]:
        with self._lock:
            return [body["event_id"] for body in self.stored]


@pytest.fixture
def hub() -> Iterator[Hub]:
    served = Hub()
    served.up()
    try:
        yield served
    finally:
        served.release()
        served.down()


@pytest.fixture
async def service(nats_server: NatsServerProcess, home: Path) -> AsyncIterator[Service]:
    svc = await start_service(home, nats_server.url, ROLES)
    try:
        yield svc
    finally:
        await svc.client.close()
        await svc.shutdown()
        await reap_local(home)


async def lifecycle_in_log(client: SandboxerClient) -> list[dict[str, Any]]:
    """Every event the hub is to receive, in log order."""
    return [event async for _seq, event in client.events() if event["type"] in DELIVERED_TYPES]


async def hub_has(hub: Hub, client: SandboxerClient, *, but: set[str] | None = None) -> None:
    """Wait until the hub stored every lifecycle event of the log (except ``but``)."""
    async with asyncio.timeout(30):
        while True:
            wanted = {e["event_id"] for e in await lifecycle_in_log(client)} - (but or set())
            if wanted <= set(hub.ids()):
                return
            await asyncio.sleep(0.1)


def first_arrivals(ids: list[str]) -> list[str]:
    return list(dict.fromkeys(ids))


def assert_in_order_at_least_once(hub: Hub, logged: list[dict[str, Any]]) -> None:
    """Deduplicated on its id, the hub holds exactly the log's lifecycle, in log order; every
    repeat is of the event just before it (a redelivery of the one in hand)."""
    ids = hub.ids()
    assert first_arrivals(ids) == [event["event_id"] for event in logged]
    for n, event_id in enumerate(ids):
        assert event_id not in ids[:n] or event_id == ids[n - 1], f"{event_id} came back late"
    seqs = [body["stream_seq"] for body in hub.stored]
    assert all(a <= b for a, b in itertools.pairwise(seqs)), seqs


async def test_every_lifecycle_event_reaches_a_hub_that_fails_in_order_and_once_or_more(
    service: Service,
    hub: Hub,
    home: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("HUB_TOKEN", TOKEN)
    client = service.client
    http = httpx.AsyncClient(timeout=1.0)  # a hung hub is given up on within 1 s
    follower = StateHubFollower(
        client.nc,
        client.js,
        url=hub.url,
        token_ref="env:HUB_TOKEN",
        home=home,
        ack_wait=2.0,
        client=http,
        wait_max=0.2,
    )
    stop = asyncio.Event()
    role = asyncio.create_task(follower.run(stop))
    try:
        first = (await client.create())["sandbox_id"]
        await hub_has(hub, client)

        # The hub goes down: sandboxes are still made, used, snapshotted and destroyed.
        hub.down()
        second = (await client.create())["sandbox_id"]
        code = await client.exec(second, ["true"], lambda _stream, _data: asyncio.sleep(0))
        assert code == 0
        snapshot = await client.snapshot(second, name="while-the-hub-was-down")
        assert snapshot["status"] == "created"
        await client.destroy(first)
        async with asyncio.timeout(10):
            while (status := await follower.status_reply())["retrying"] is None:
                await asyncio.sleep(0.05)
        assert "unreachable" in status["last_error"]["error"]
        assert status["events_behind"] > 0

        # It comes back answering errors and timing out before it stores anything.
        hub.faults.extend([500, 503, 429, "hang", 408])
        hub.up()
        await client.destroy(second)
        await hub_has(hub, client)
        assert {500, 503, 429, "hang", 408} <= set(hub.answered)

        # A body it refuses for good is passed, and kept in the status.
        hub.faults.append(422)
        third = (await client.create())["sandbox_id"]
        await client.destroy(third)
        logged = await lifecycle_in_log(client)
        refused = next(e for e in logged if e.get("sandbox_id") == third)  # its requested
        assert refused["type"] == "requested"
        await hub_has(hub, client, but={refused["event_id"]})
        status = await follower.status_reply()
        assert status["refused_count"] == 1
        assert status["refused"][0]["event_id"] == refused["event_id"]
        assert status["refused"][0]["status"] == 422
        async with asyncio.timeout(10):
            while (await follower.status_reply())["events_behind"]:
                await asyncio.sleep(0.1)
    finally:
        stop.set()
        await role
        await follower.aclose()
        await http.aclose()

    delivered = [e for e in logged if e["event_id"] != refused["event_id"]]
    assert_in_order_at_least_once(hub, delivered)
    for sandbox in (first, second):
        kinds = [b["type"] for b in hub.stored if b["sandbox_id"] == sandbox]
        assert first_arrivals(kinds)[:3] == ["requested", "provisioning", "ready"]
        assert first_arrivals(kinds)[-2:] == ["destroying", "destroyed"]
    taken = [b for b in hub.stored if b["type"] == "snapshot_created"]
    assert [(b["snapshot_id"], b["sandbox_id"]) for b in taken] == [
        (snapshot["snapshot_id"], second)
    ]
    # Every body has the documented fields, and the context of its sandbox.
    documented = set(json.loads(DOCUMENTED_BODY.read_text().split("```json\n")[1].split("```")[0]))
    for body in hub.stored:
        assert set(body) == documented
        routed = None if body["type"] == "requested" else "ext.local"  # routing comes next
        assert (body["profile_id"], body["extension_id"]) == ("profile.local", routed)
        assert body["consumer"] == {"actor_id": "pytest", "actor_type": "atm", "project": None}
    assert {h["authorization"] for h in hub.headers} == {f"Bearer {TOKEN}"}
    assert all(
        h["idempotency-key"] == b["event_id"] for h, b in zip(hub.headers, hub.stored, strict=True)
    )
    # The token is in no log line, no status and no event.
    assert TOKEN not in caplog.text
    assert TOKEN not in status_file(home).read_text()
    async for _seq, event in client.events():
        assert TOKEN not in json.dumps(event)


def start_role(home: Path, nats_url: str, hub: Hub, token_file: Path) -> subprocess.Popen[bytes]:
    env = dict(
        os.environ,
        SANDBOXER_HOME=str(home),
        SANDBOXER_NATS_URL=nats_url,
        SANDBOXER_STATE_HUB_URL=hub.url,
        SANDBOXER_STATE_HUB_TOKEN=f"file:{token_file}",
        SANDBOXER_ACK_WAIT="1",
    )
    with (home / "statehub.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "sandboxer.cli.app", "worker", "statehub"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


async def test_a_role_killed_mid_delivery_resumes_from_its_position_without_loss(
    service: Service, hub: Hub, home: Path, nats_server: NatsServerProcess, cli_env: dict[str, str]
) -> None:
    client = service.client
    token_file = home / "hub.token"
    token_file.write_text(TOKEN + "\n")
    first = (await client.create())["sandbox_id"]
    role = start_role(home, nats_server.url, hub, token_file)
    try:
        await hub_has(hub, client)
        # The next POST (a snapshot's created) is held by the hub; the role is killed while it
        # waits for the answer, and what it remembered of the sandbox goes with it.
        hub.hold()
        snapshot = await client.snapshot(first)
        assert await asyncio.to_thread(hub.arrived.wait, 30)
        role.send_signal(signal.SIGKILL)
        await asyncio.to_thread(role.wait, 10)
        hub.release()
        await client.destroy(first)
        second = (await client.create())["sandbox_id"]
        await client.destroy(second)

        # While no role runs, the status comes from the server and the last one written.
        cli = Cli(cli_env)
        down = json.loads((await cli("statehub", "status", "--json")).stdout)
        assert down["running"] is False
        assert down["events_behind"] >= 1  # the held event was never acknowledged
        assert down["last_delivered"]["sandbox_id"] == first

        role = start_role(home, nats_server.url, hub, token_file)
        await hub_has(hub, client)
        async with asyncio.timeout(15):
            while True:
                status = await cli("statehub", "status", "--json")
                up = json.loads(status.stdout)
                if up["running"] and up["events_behind"] == 0:
                    break
                await asyncio.sleep(0.2)
        assert up["hub_url"] == hub.url
        shown = (await cli("statehub", "status")).stdout
        assert "events behind:  0" in shown
        assert "destroyed" in shown  # the last delivered
    finally:
        role.send_signal(signal.SIGTERM)
        await asyncio.to_thread(role.wait, 20)
    logged = await lifecycle_in_log(client)
    assert_in_order_at_least_once(hub, logged)
    # The event in hand at the kill reached the hub twice, with the same id, and the restarted
    # role read its sandbox's context back from the log.
    repeated = [b for b in hub.stored if b["type"] == "snapshot_created"]
    assert [b["event_id"] for b in repeated] == [repeated[0]["event_id"]] * 2
    assert repeated[-1]["snapshot_id"] == snapshot["snapshot_id"]
    assert (repeated[-1]["sandbox_id"], repeated[-1]["profile_id"]) == (first, "profile.local")
    assert repeated[-1]["extension_id"] == "ext.local"
    assert all(b["profile_id"] == "profile.local" for b in hub.stored)
    assert TOKEN not in (home / "statehub.log").read_text()


async def test_a_process_that_missed_deliveries_reads_the_context_back_from_the_log(
    nats_server: NatsServerProcess, hub: Hub, home: Path
) -> None:
    """Two statehub processes on one durable take turns: one of them did not see the
    sandbox's ``routed``, and must not send the bodies after it without its host."""
    nc = await connect([nats_server.url], name="test-statehub-pair", long_lived=False)
    followers: list[StateHubFollower] = []
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        store = JetStreamEventStore(nc, js)
        common: dict[str, Any] = {
            "sandbox_id": "sbxpairpairpair01",
            "command_id": "c-pair",
            "actor": Actor(type="atm", id="pytest"),
            "at": "2026-12-03T10:00:00.000Z",
        }
        await store.append(
            await store.load(common["sandbox_id"]),
            [
                SandboxRequested(**common, profile="profile.local", profile_version=1),
                SandboxRouted(**common, extension="ext.local", reason="test", host="node-7"),
                SandboxProvisioning(**common, extension="ext.local"),
                SandboxReady(**common, reachability={"kind": "local-exec"}),
            ],
        )
        followers = [
            StateHubFollower(nc, js, url=hub.url, token_ref=None, home=home / name)
            for name in ("one", "two")
        ]
        await followers[0].ensure_consumer()
        psub = await js.pull_subscribe_bind(durable=DURABLE, stream=subjects.EVENTS_STREAM)
        one, two = followers
        for follower in (one, two, one, one):  # the second process takes ``routed``
            [msg] = await psub.fetch(batch=1, timeout=5)
            await follower._handle(msg)
            await msg.ack_sync()
    finally:
        for follower in followers:
            await follower.aclose()
        await nc.close()
    sent = {body["type"]: (body["extension_id"], body["host"]) for body in hub.stored}
    assert sent == {
        "requested": (None, None),
        "provisioning": ("ext.local", "node-7"),
        "ready": ("ext.local", "node-7"),
    }


async def test_an_endless_answer_neither_holds_the_deliveries_nor_fills_the_memory(
    nats_server: NatsServerProcess, hub: Hub, home: Path
) -> None:
    """A hub that answers a 2xx, or a 503, with a body that never ends: the 2xx is the event
    taken (its body is not read), the 503 is retried after reading a few bytes of its reason,
    and every event after them is delivered."""
    nc = await connect([nats_server.url], name="test-statehub-endless", long_lived=False)
    follower: StateHubFollower | None = None
    stop = asyncio.Event()
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        store = JetStreamEventStore(nc, js)
        common: dict[str, Any] = {
            "sandbox_id": "sbxendlessendless1",
            "command_id": "c-endless",
            "actor": Actor(type="atm", id="pytest"),
            "at": "2026-12-04T10:00:00.000Z",
        }
        events = [
            SandboxRequested(**common, profile="profile.local", profile_version=1),
            SandboxRouted(**common, extension="ext.local", reason="test", host="node-7"),
            SandboxProvisioning(**common, extension="ext.local"),
            SandboxReady(**common, reachability={"kind": "local-exec"}),
        ]
        await store.append(await store.load(common["sandbox_id"]), events)
        hub.faults.extend(["endless", "endless-503"])
        follower = StateHubFollower(nc, js, url=hub.url, token_ref=None, home=home, wait_max=0.2)
        running = asyncio.create_task(follower.run(stop))
        try:
            async with asyncio.timeout(20):  # the old code read the first answer for ever
                while len(hub.ids()) < 3:
                    await asyncio.sleep(0.1)
        finally:
            stop.set()
            await running
        status = follower.status.as_dict()
    finally:
        if follower is not None:
            await follower.aclose()
        await nc.close()
    assert [body["type"] for body in hub.stored] == ["requested", "provisioning", "ready"]
    assert len(set(hub.ids())) == 3
    assert hub.answered[:2] == ["endless", "endless-503"]
    assert status["last_error"]["status"] == 503
    assert len(status["last_error"]["error"]) < 400  # a few bytes of the endless reason


async def test_an_answer_dripped_a_byte_at_a_time_is_cut_off_at_the_deadline(hub: Hub) -> None:
    """httpx's timeout is per read: a hub sending a byte every 0.2 s never reached it, and
    held the delivery for ever. An attempt now has one deadline for all of it."""
    from sandboxer.errors import DeliveryFailed
    from sandboxer.workers.http_delivery import HttpDelivery

    failures: list[DeliveryFailed] = []
    delivery = HttpDelivery(
        hub.url, label="test", timeout=1.0, wait_max=0.2, on_failure=failures.append
    )
    hub.faults.append("drip-503")
    try:
        async with asyncio.timeout(15):
            status = await delivery.post(
                json.dumps({"event_id": "e-drip"}).encode(), {}, what="e-drip"
            )
    finally:
        await delivery.aclose()
    assert status == 202
    assert hub.ids() == ["e-drip"]
    assert [f.status for f in failures] == [None]
    assert "did not answer in time" in failures[0].message


async def test_a_token_file_with_a_line_break_never_puts_the_token_in_the_log_or_status(
    nats_server: NatsServerProcess, hub: Hub, home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A token file holding a second line: the HTTP client refused the header with an error
    quoting its whole value, which went into the log and the status. The token is now checked
    first: the status names the file, and the event goes once the file is fixed."""
    nc = await connect([nats_server.url], name="test-statehub-token", long_lived=False)
    follower: StateHubFollower | None = None
    stop = asyncio.Event()
    token_file = home / "hub.token"
    token_file.write_text("hub-token-first-part\nsecret-second-line-5c1e\n")
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        store = JetStreamEventStore(nc, js)
        await store.append(
            await store.load("sbxtokentokentok1"),
            [
                SandboxRequested(
                    sandbox_id="sbxtokentokentok1",
                    command_id="c-token",
                    actor=Actor(type="atm", id="pytest"),
                    at="2026-12-04T10:00:00.000Z",
                    profile="profile.local",
                    profile_version=1,
                )
            ],
        )
        follower = StateHubFollower(
            nc, js, url=hub.url, token_ref=f"file:{token_file}", home=home, wait_max=0.2
        )
        running = asyncio.create_task(follower.run(stop))
        try:
            async with asyncio.timeout(20):
                while follower.status.last_error is None:
                    await asyncio.sleep(0.05)
                token_file.write_text("hub-token-fixed\n")
                while not hub.ids():
                    await asyncio.sleep(0.05)
        finally:
            stop.set()
            await running
    finally:
        if follower is not None:
            await follower.aclose()
        await nc.close()
    status = status_file(home).read_text()
    assert "secret-second-line" not in status
    assert "secret-second-line" not in caplog.text
    assert str(token_file) in status  # the error names the file to fix
    assert [h["authorization"] for h in hub.headers] == ["Bearer hub-token-fixed"]
