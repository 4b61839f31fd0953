"""The public Python client (sandboxer.client.Sandboxer) against the real service, over
both transports: the bus (a real nats-server) and the HTTP gateway (uvicorn on a free
port, an API key from 'keys create'). Real ext.local sandboxes under bubblewrap.

The same lifecycle runs through each transport and must give the same typed results
and the same errors of the one tree: that is the client's promise.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.cli.key_commands import create_key
from sandboxer.client import (
    Accepted,
    Copied,
    Event,
    ExecResult,
    Sandbox,
    Sandboxer,
    SandboxerClient,
)
from sandboxer.errors import (
    AccessDenied,
    CommandFailed,
    InvalidInput,
    NotFound,
    PathRefused,
    RateLimited,
)
from tests.integration.conftest import Service, reap_local, serve_gateway, start_service

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROJECT = "acme"
UNKNOWN = "sbxnosuchsandbox0000"


@pytest.fixture
async def service(nats_server: NatsServerProcess, home: Path) -> AsyncIterator[Service]:
    svc = await start_service(home, nats_server.url)
    try:
        yield svc
    finally:
        await svc.client.close()
        await svc.shutdown()
        await reap_local(home)


async def new_key(service: Service, **limits: int) -> str:
    admin = SandboxerClient(service.client.nc, actor={"type": "adm", "id": "pytest-admin"})
    key, _ = await create_key(
        admin,
        project=PROJECT,
        key_type="agt",
        max_live=limits.get("max_live", 20),
        rate_per_second=limits.get("rate_per_second", 1000),
    )
    return key


@pytest.fixture
async def gateway(service: Service, home: Path) -> AsyncIterator[str]:
    async with serve_gateway(service, home) as url:
        yield url


@pytest.fixture(params=["bus", "http"])
async def sbx(
    request: pytest.FixtureRequest, service: Service, nats_server: NatsServerProcess, home: Path
) -> AsyncIterator[Sandboxer]:
    """The client over one transport, acting for an agent of project acme."""
    if request.param == "bus":
        client = await Sandboxer.over_bus(
            [nats_server.url], actor={"type": "agt", "id": "harness-1", "project": PROJECT}
        )
        async with client:
            yield client
        return
    key = await new_key(service)
    async with serve_gateway(service, home) as url, Sandboxer.over_http(url, key) as client:
        yield client


async def test_the_lifecycle_gives_the_same_typed_results_on_both_transports(
    sbx: Sandboxer, tmp_path: Path
) -> None:
    created = await sbx.create("profile.local", ttl="30m")
    assert isinstance(created, Sandbox)
    assert created.is_live, created
    assert (created.profile, created.extension, created.project) == (
        "profile.local",
        "ext.local",
        PROJECT,
    )
    assert created.expires_at is not None
    sandbox_id = created.sandbox_id
    got = await sbx.get(sandbox_id)
    assert got is not None
    assert got.sandbox_id == sandbox_id
    assert got.raw["sandbox_id"] == sandbox_id
    assert sandbox_id in {s.sandbox_id for s in await sbx.list_sandboxes()}

    # exec: stdin in, output collected and streamed to a callback, exit codes, a timeout
    seen: list[tuple[str, bytes]] = []
    result = await sbx.exec(
        sandbox_id,
        ["sh", "-c", "tr a-z A-Z; echo done >&2"],
        stdin=b"shout\n",
        on_output=lambda stream, data: seen.append((stream, data)),
    )
    assert isinstance(result, ExecResult)
    assert (result.exit_code, result.stdout, result.stderr) == (0, b"SHOUT\n", b"done\n")
    assert b"".join(d for s, d in seen if s == "stdout") == b"SHOUT\n"
    assert (await sbx.exec(sandbox_id, ["sh", "-c", "exit 3"])).exit_code == 3
    killed = await sbx.exec(sandbox_id, ["sleep", "30"], timeout=1)
    assert killed.timed_out
    assert killed.exit_code is None

    # cp: a binary file and a directory, in and back out
    blob = os.urandom(200_000) + bytes(range(256))
    (tmp_path / "blob.bin").write_bytes(blob)
    (tmp_path / "tree" / "src").mkdir(parents=True)
    (tmp_path / "tree" / "src" / "main.py").write_text("print('hi')\n")
    (tmp_path / "tree" / "zeros.bin").write_bytes(b"\0" * 4096)
    copied = await sbx.copy_in(sandbox_id, tmp_path / "blob.bin", "data/blob.bin")
    assert isinstance(copied, Copied)
    assert (copied.kind, copied.path) == ("file", "data/blob.bin")
    assert (await sbx.copy_in(sandbox_id, tmp_path / "tree", "tree")).kind == "dir"
    back = await sbx.copy_out(sandbox_id, "data/blob.bin", tmp_path / "blob.back")
    assert (back.kind, back.local) == ("file", tmp_path / "blob.back")
    assert (tmp_path / "blob.back").read_bytes() == blob
    (tmp_path / "out").mkdir()
    await sbx.copy_out(sandbox_id, "tree", tmp_path / "out")
    assert (tmp_path / "out" / "tree" / "src" / "main.py").read_text() == "print('hi')\n"
    assert (tmp_path / "out" / "tree" / "zeros.bin").read_bytes() == b"\0" * 4096
    checked = await sbx.exec(sandbox_id, ["sha256sum", "data/blob.bin"])
    assert checked.exit_code == 0
    with pytest.raises(PathRefused):
        await sbx.copy_out(sandbox_id, "../../etc/passwd", tmp_path / "nope")

    # events: the history so far, then resume after its last sequence once destroyed
    history = [event async for event in sbx.events(sandbox_id=sandbox_id)]
    assert all(isinstance(e, Event) and e.sandbox_id == sandbox_id for e in history)
    assert "ready" in [e.type for e in history]
    seqs = [e.seq for e in history]
    assert seqs == sorted(set(seqs))
    last = seqs[-1]

    destroyed = await sbx.destroy(sandbox_id)
    assert isinstance(destroyed, Sandbox)
    assert destroyed.status == "destroyed"
    later = [e async for e in sbx.events(sandbox_id=sandbox_id, after=last)]
    assert later, "nothing after the last event seen"
    assert all(e.seq > last for e in later)
    assert later[-1].type == "destroyed"
    only = [e.type async for e in sbx.events(sandbox_id=sandbox_id, types={"ready", "destroyed"})]
    assert only == ["ready", "destroyed"]

    # a destroyed sandbox runs nothing: refused at once, as a rejection
    with pytest.raises(CommandFailed) as gone:
        await sbx.exec(sandbox_id, ["true"])
    assert gone.value.event["code"] == "not_ready"


async def test_create_without_waiting_then_follow_its_events(sbx: Sandboxer) -> None:
    accepted = await sbx.create("profile.local", ttl="30m", wait=False)
    assert isinstance(accepted, Accepted)
    assert accepted.sandbox_id is not None
    types = []
    async for event in sbx.events(sandbox_id=accepted.sandbox_id, follow=True):
        types.append(event.type)
        if event.type in {"ready", "failed"}:
            break
    assert types[0] == "requested"
    assert types[-1] == "ready"
    assert (await sbx.destroy(accepted.sandbox_id, wait=False)).sandbox_id == accepted.sandbox_id


async def test_the_errors_are_the_same_on_both_transports(sbx: Sandboxer) -> None:
    assert await sbx.get(UNKNOWN) is None
    assert await sbx.snapshot_get("snpnosuchsnapshot00") is None
    with pytest.raises(NotFound) as unknown:
        await sbx.destroy(UNKNOWN)
    assert unknown.value.code == "unknown_sandbox"
    with pytest.raises(NotFound):
        await sbx.exec(UNKNOWN, ["true"])
    with pytest.raises(NotFound):
        await sbx.copy_out(UNKNOWN, "x", "/tmp/never-written")
    for bad in ("Not An Id!", "../../v1/health", "a/b/c/d/e/f/g/h"):
        with pytest.raises(InvalidInput):
            await sbx.get(bad)
        with pytest.raises(InvalidInput):
            await sbx.exec(bad, ["true"])
    with pytest.raises(CommandFailed) as rejected:
        await sbx.create("profile.does-not-exist")
    assert rejected.value.event["type"] == "rejected"
    assert rejected.value.event["code"] == "unknown_profile"
    assert rejected.value.event["reason"]


async def test_http_refusals_of_the_key_map_to_the_tree(service: Service, gateway: str) -> None:
    async with Sandboxer.over_http(gateway, "sbx_" + "x" * 43) as stranger:
        with pytest.raises(AccessDenied) as denied:
            await stranger.list_sandboxes()
        assert denied.value.code == "unauthorized"

    key = await new_key(service, rate_per_second=1)
    async with Sandboxer.over_http(gateway, key) as slow:

        async def burst() -> None:
            for _ in range(20):
                await slow.list_sandboxes()

        with pytest.raises(RateLimited) as limited:
            await burst()
        assert limited.value.code == "rate_limited"
        assert limited.value.retry_after is not None
        assert limited.value.retry_after >= 1


class DropFirstEventStream(httpx.AsyncBaseTransport):
    """A real HTTP transport whose first event stream breaks after one message: a network
    that drops the connection mid-stream (the gateway itself is untouched)."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.dropped = 0
        self.resumed_from: list[str | None] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if not request.url.path.endswith("/events"):
            return response
        self.resumed_from.append(request.headers.get("last-event-id"))
        if self.dropped:
            return response
        self.dropped += 1
        upstream = response.stream
        if not isinstance(upstream, httpx.AsyncByteStream):
            raise TypeError(f"an async transport answered with {type(upstream)}")
        source: httpx.AsyncByteStream = upstream  # narrowed, for the class below

        class Broken(httpx.AsyncByteStream):
            async def __aiter__(self) -> AsyncIterator[bytes]:
                buffered = b""
                async for chunk in source:
                    buffered += chunk
                    if b"\n\n" in buffered:  # one whole message, then the line drops
                        yield buffered[: buffered.index(b"\n\n") + 2]
                        raise httpx.ReadError("connection reset (test network)")

            async def aclose(self) -> None:
                await source.aclose()

        return httpx.Response(
            response.status_code, headers=response.headers, stream=Broken(), request=request
        )

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_an_http_event_stream_resumes_after_a_dropped_connection(
    service: Service, gateway: str
) -> None:
    key = await new_key(service)
    network = DropFirstEventStream()
    async with Sandboxer.over_http(gateway, key, transport=network) as sbx:
        sandbox = await sbx.create("profile.local", ttl="30m")
        await sbx.destroy(sandbox.sandbox_id)
        events = [e async for e in sbx.events(sandbox_id=sandbox.sandbox_id)]
    assert network.dropped == 1
    assert network.resumed_from[0] is None
    assert network.resumed_from[1] == str(events[0].seq)  # resumed after the one it had
    seqs = [e.seq for e in events]
    assert seqs == sorted(set(seqs)), "an event was repeated"
    assert events[0].type == "requested"
    assert events[-1].type == "destroyed"
