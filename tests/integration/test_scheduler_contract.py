"""The scheduler's contract (docs/integrations/scheduler.md): its two examples, run as written.

Each ```python block of the page is a whole program that imports nothing of sandboxer
(only nats-py or httpx), run in its own process as a scheduler would run it, against a
service on a nats-server with the real permissions: the service connects as the service
identity, the gateway and the durable-consumer example as the client identity, the SSE
example with an API key. Each example follows, is killed (SIGKILL: nothing is flushed or
acknowledged on the way out), misses sandboxes made while it is away, comes back, and
must have seen every event it filters for (none lost) and destroyed every sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import ConsumerConfig

from sandboxer import subjects
from sandboxer.bus import permissions
from sandboxer.bus.connect import connect
from sandboxer.bus.event_reader import read_events
from sandboxer.bus.nats_auth import AUTH_DIR_NAME, ensure_embedded_auth, read_credentials
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.cli.key_commands import create_key
from sandboxer.client import SandboxerClient
from sandboxer.config.catalog import Catalog
from sandboxer.gateway.serve import http_url, listen
from sandboxer.service import run_roles
from tests.integration.conftest import Service, reap_local, start_service

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DOC = Path(__file__).resolve().parents[2] / "docs" / "integrations" / "scheduler.md"
EXAMPLE = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)
PROJECT = "acme"
WAIT = 60.0


def example(first_line: str) -> str:
    """The page's example whose first line starts with ``first_line``."""
    [found] = [m[1] for m in EXAMPLE.finditer(DOC.read_text()) if m[1].startswith(first_line)]
    assert not re.search(r"^\s*(import|from)\s+sandboxer", found, re.MULTILINE), (
        "an example imports nothing of sandboxer"
    )
    return found


@dataclass
class Bus:
    """A nats-server with the embedded configuration's permissions, and its identities."""

    server: NatsServerProcess
    service_url: str
    client_url: str
    client_user: str
    client_password: str


def with_user(url: str, user: str, password: str) -> str:
    return url.replace("nats://", f"nats://{user}:{password}@", 1)


@pytest.fixture
async def bus(tmp_path: Path) -> AsyncIterator[Bus]:
    auth_home = tmp_path / "nats-home"
    config = ensure_embedded_auth(auth_home)
    server = NatsServerProcess(auth_home / "nats", config_file=config, server_name="sched")
    await server.start()
    found = {role: read_credentials(auth_home / AUTH_DIR_NAME, role) for role in permissions.ROLES}
    service, client = found["service"], found["client"]
    assert service is not None
    assert client is not None
    try:
        yield Bus(
            server,
            with_user(server.url, service.user, service.password),
            with_user(server.url, client.user, client.password),
            client.user,
            client.password,
        )
    finally:
        await server.stop()


@dataclass
class Deployment:
    service: Service
    admin: SandboxerClient
    """The client identity, acting as an administrator of project acme's sandboxes."""
    gateway_url: str
    api_key: str


@pytest.fixture
async def deployment(bus: Bus, home: Path) -> AsyncIterator[Deployment]:
    service = await start_service(home, bus.service_url)
    admin = await SandboxerClient.connect(
        [bus.client_url], actor={"type": "adm", "id": "pytest", "project": PROJECT}
    )
    key, _ = await create_key(
        admin, project=PROJECT, key_type="atm", max_live=50, rate_per_second=1000
    )
    try:
        async with gateway(service, home, bus) as url:
            yield Deployment(service, admin, url, key)
    finally:
        await admin.close()
        await service.client.close()
        await service.shutdown()
        await reap_local(home)


@contextlib.asynccontextmanager
async def gateway(service: Service, home: Path, bus: Bus) -> AsyncIterator[str]:
    """The gateway role as ``sandboxer up`` runs it under NATS credentials: its role on the
    service identity's connection, its commands and reads on the client identity's."""
    settings = dataclasses.replace(service.settings, http_addr=("127.0.0.1", 0))
    sock = listen(("127.0.0.1", 0))
    nc = await connect([bus.service_url], name="test-gateway")
    client_nc = await connect([bus.client_url], name="test-gateway-client")
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_roles(
            nc,
            ["gateway"],
            settings,
            Catalog.load(home),
            stop,
            info={},
            http_socket=sock,
            client_nc=client_nc,
        )
    )
    try:
        async with httpx.AsyncClient(base_url=http_url(sock), timeout=30) as probe:
            async with asyncio.timeout(WAIT):
                while True:
                    with contextlib.suppress(httpx.TransportError):
                        if (await probe.get("/v1/health")).status_code == 200:
                            break
                    await asyncio.sleep(0.05)
        yield http_url(sock)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await client_nc.drain()
        await nc.drain()


class Example:
    """One run of an example program; its stdout lines are JSON."""

    def __init__(self, source: str, directory: Path, env: dict[str, str]) -> None:
        self.script = directory / "example.py"
        self.script.write_text(source)
        self.directory = directory
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOXER_")} | env
        self.lines: list[dict[str, Any]] = []
        self.stderr = b""
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(self.script),
            cwd=self.directory,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read())
        await self.wait_for(lambda line: "following" in line)

    async def _read(self) -> None:
        assert self._process is not None
        assert self._process.stdout is not None
        async for raw in self._process.stdout:
            self.lines.append(json.loads(raw))

    async def wait_for(self, wanted: Any) -> None:
        # Past the wait, fail below with what it printed and its stderr, not a bare timeout.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(WAIT):
                while not any(wanted(line) for line in self.lines):
                    if self._process is not None and self._process.returncode is not None:
                        break
                    await asyncio.sleep(0.05)
        if not any(wanted(line) for line in self.lines):
            await self.kill()
            pytest.fail(f"the example never printed it; it printed {self.lines}\n{self.why()}")

    async def kill(self) -> None:
        """SIGKILL: nothing acknowledged or stored on the way out."""
        if self._process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self._process.kill()
        await self._process.wait()
        if self._reader is not None:
            await self._reader
        assert self._process.stderr is not None
        self.stderr += await self._process.stderr.read()
        self._process = None

    def why(self) -> str:
        return f"--- its stderr\n{self.stderr.decode()[-4000:]}"

    def destroyed(self, sandbox_id: str) -> Any:
        return lambda line: line.get("sandbox_id") == sandbox_id and line["action"] == "destroy"


async def sequences(admin: SandboxerClient, sandbox_ids: list[str], types: set[str]) -> set[int]:
    """The stream sequences of those sandboxes' events of ``types`` (as the log holds them)."""
    found = set()
    async for seq, subject, _data, _pending in read_events(admin.js):
        parts = subject.split(".")
        if parts[2] == "sandbox" and parts[3] in sandbox_ids and parts[4] in types:
            found.add(seq)
    return found


async def destroyed(admin: SandboxerClient, sandbox_id: str) -> None:
    async with asyncio.timeout(WAIT):
        while True:
            view = await admin.get(sandbox_id)
            if view is not None and view["status"] == "destroyed":
                return
            await asyncio.sleep(0.1)


async def follow_stop_miss_resume(
    deployment: Deployment, run: Example, types: set[str]
) -> tuple[list[str], set[int]]:
    """Start ``run``, make a sandbox, kill ``run``, make two more, start it again: every
    sandbox must be destroyed by it. Returns the sandboxes and the sequences it handled."""
    admin = deployment.admin
    await run.start()
    first = (await admin.create("profile.local"))["sandbox_id"]
    await run.wait_for(run.destroyed(first))
    await destroyed(admin, first)
    await run.kill()

    missed = [(await admin.create("profile.local"))["sandbox_id"] for _ in range(2)]
    await run.start()
    for sandbox_id in missed:
        await run.wait_for(run.destroyed(sandbox_id))
        await destroyed(admin, sandbox_id)
    made = [first, *missed]
    wanted = await sequences(admin, made, types)
    async with asyncio.timeout(WAIT):  # the destroys' own events arrive after the destroy
        while not wanted <= {line["seq"] for line in run.lines if "seq" in line}:
            await asyncio.sleep(0.05)
    await run.kill()
    assert "Traceback" not in run.stderr.decode(), run.why()
    return made, {line["seq"] for line in run.lines if "seq" in line}


async def test_the_durable_consumer_example_resumes_and_destroys(
    deployment: Deployment, bus: Bus, tmp_path: Path
) -> None:
    run = Example(
        example("# durable consumer"),
        tmp_path,
        {
            "NATS_URL": bus.server.url,
            "NATS_USER": bus.client_user,
            "NATS_PASSWORD": bus.client_password,
            "KEEP_ACCESS": "ssh",
        },
    )
    every = {"requested", "routed", "provisioning", "ready", "destroying", "destroyed"}
    made, handled = await follow_stop_miss_resume(deployment, run, every)
    assert await sequences(deployment.admin, made, every) <= handled  # none lost
    info = await deployment.admin.js.consumer_info(subjects.EVENTS_STREAM, "scheduler")
    assert info.num_ack_pending == 0  # everything it handled is acknowledged
    # Each sandbox was destroyed by the example's command, named after its ready event.
    for sandbox_id in made:
        view = await deployment.admin.get(sandbox_id)
        assert view is not None
        assert view["status"] == "destroyed"


async def test_the_event_stream_example_resumes_and_destroys(
    deployment: Deployment, tmp_path: Path
) -> None:
    run = Example(
        example("# event stream"),
        tmp_path,
        {
            "SANDBOXER_HTTP_URL": deployment.gateway_url,
            "SANDBOXER_API_KEY": deployment.api_key,
            "POSITION_FILE": str(tmp_path / "scheduler.position"),
            "KEEP_ACCESS": "ssh",
        },
    )
    made, handled = await follow_stop_miss_resume(deployment, run, {"ready"})
    assert await sequences(deployment.admin, made, {"ready"}) == handled  # none lost, no other
    resumed = [line for line in run.lines if "following" in line]
    assert resumed[0]["following"] is None
    assert resumed[1]["following"] is not None  # the second run sent Last-Event-ID


async def test_a_client_may_not_touch_the_services_own_consumers(
    deployment: Deployment, bus: Bus
) -> None:
    """The durable consumers the client identity may use stop short of the meter's."""
    del deployment  # running: the meter's consumer exists
    violations: list[str] = []

    async def on_error(exc: Exception) -> None:
        violations.append(str(exc))

    nc = await nats.connect(bus.client_url, error_cb=on_error)
    try:
        js = nc.jetstream()
        for name in permissions.SERVICE_EVENT_CONSUMERS:
            subject = f"$JS.API.CONSUMER.MSG.NEXT.{subjects.EVENTS_STREAM}.{name}"
            with pytest.raises(NatsTimeout):
                await nc.request(subject, b'{"batch": 1}', timeout=0.5)
            with pytest.raises(NatsTimeout):
                await js.add_consumer(
                    subjects.EVENTS_STREAM,
                    ConsumerConfig(name=name, durable_name=name, filter_subject="x.>"),
                    timeout=0.5,
                )
            with pytest.raises(NatsTimeout):
                await nc.request(
                    f"$JS.API.CONSUMER.DELETE.{subjects.EVENTS_STREAM}.{name}", b"", timeout=0.5
                )
        await nc.flush()
        await asyncio.sleep(0.1)
        for name in permissions.SERVICE_EVENT_CONSUMERS:
            assert any(f"sandboxer_events.{name}" in line.lower() for line in violations), (
                violations
            )
        # Its own durable consumer is allowed.
        await js.add_consumer(
            subjects.EVENTS_STREAM,
            ConsumerConfig(
                name="mine", durable_name="mine", filter_subject="sandboxer.evt.sandbox.*.>"
            ),
        )
        await js.delete_consumer(subjects.EVENTS_STREAM, "mine")
    finally:
        await nc.close()


async def test_the_health_answer_never_shows_the_password_of_the_services_url(
    bus: Bus, tmp_path: Path
) -> None:
    """A worker given nats://user:password@host answers health (which any key, and
    /v1/health with none, may read) with the URL, not with the password in it."""
    env = {
        **os.environ,
        "SANDBOXER_HOME": str(tmp_path / "worker-home"),
        "SANDBOXER_NATS_URL": bus.service_url,
    }
    worker = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "sandboxer"), "worker", "projector", env=env
    )
    client = await SandboxerClient.connect([bus.client_url], actor={"type": "atm", "id": "t"})
    try:
        async with asyncio.timeout(60):
            while True:
                try:
                    health = await client.health()
                    break
                except Exception:
                    await asyncio.sleep(0.2)
        password = bus.service_url.split("@")[0].rsplit(":", 1)[1]
        assert "nats_url" in json.dumps(health)
        assert password not in json.dumps(health)
    finally:
        await client.close()
        worker.terminate()
        await worker.wait()
