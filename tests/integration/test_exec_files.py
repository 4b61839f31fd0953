"""Exec with standard input and a timeout, and files in and out of sandboxes, against the
real service and real ext.local sandboxes: over the bus (the Python client and the CLI)
and over HTTP (the gateway, with httpx as a plain HTTP client).

Traversal is tried every way a client can: ``..``, absolute paths, NUL, and symlinks
planted inside the sandbox that lead out; each is refused with its reason, and the
host's files are neither read nor written.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import tarfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.errors import NotFoundError

from sandboxer.bus.connect import connect
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.cli.key_commands import create_key
from sandboxer.client import CommandFailed, SandboxerClient
from sandboxer.config.settings import DEFAULT_EXEC_HEARTBEAT
from sandboxer.errors import InvalidInput, PathRefused, ServiceNotRunning, WorkspaceRefused
from sandboxer.exec_protocol.heartbeat import HEADER as HEARTBEAT
from sandboxer.exec_protocol.wire import EXEC_HEADER, STDIN_HEADER
from sandboxer.subjects import EVENTS_STREAM, WORKSPACES_BUCKET, exec_subject
from sandboxer.workers import exec_service, file_service
from sandboxer.workers.file_service import HEADER, files_subject
from sandboxer.workers.in_flight import STOP_GRACE
from sandboxer.workspaces.bucket import open_or_create_bucket
from tests.integration.conftest import Cli, Service, reap_local, serve_gateway, start_service

pytestmark = [pytest.mark.integration]


def binary(size: int, seed: int = 0) -> bytes:
    """Bytes of every value, NULs and newlines included, not compressible to nothing."""
    block = bytes(range(256)) + hashlib.sha256(str(seed).encode()).digest()
    return (block * (size // len(block) + 1))[:size] + os.urandom(64)


def nested_tree(root: Path) -> Path:
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "top.bin").write_bytes(binary(70_000, 1))
    (root / "a" / "mid.txt").write_text("middle\n")
    (root / "a" / "b" / "c" / "deep.bin").write_bytes(binary(5_000, 2))
    (root / "a" / "run.sh").write_text("#!/bin/sh\necho ran\n")
    (root / "a" / "run.sh").chmod(0o755)
    (root / "a" / "link").symlink_to("mid.txt")
    (root / "empty").mkdir()
    return root


def listing(root: Path) -> dict[str, Any]:
    """Every entry below ``root``: a file's digest and executable bit, a link's target."""
    found: dict[str, Any] = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        if path.is_symlink():
            found[name] = ("link", os.readlink(path))
        elif path.is_dir():
            found[name] = ("dir",)
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            found[name] = ("file", digest, os.access(path, os.X_OK))
    return found


async def run_in(client: SandboxerClient, sandbox_id: str, script: str) -> tuple[int, str]:
    out: list[bytes] = []
    code = await client.exec(sandbox_id, ["sh", "-c", script], lambda _s, d: out.append(d))
    return code, b"".join(out).decode(errors="replace")


@pytest.fixture
async def sandbox(service: Service) -> str:
    ready = await service.client.create("profile.local", {})
    return str(ready["sandbox_id"])


# -- exec: stdin and timeout -----------------------------------------------------------------


async def test_cat_echoes_binary_stdin_byte_for_byte(service: Service, sandbox: str) -> None:
    data = binary(1_500_000)  # many chunks: the acknowledged feeding keeps their order
    out: list[bytes] = []
    code = await service.client.exec(
        sandbox, ["cat"], lambda s, d: out.append(d) if s == "stdout" else None, stdin=data
    )
    assert code == 0
    assert b"".join(out) == data

    async def pieces() -> AsyncIterator[bytes]:
        for index in range(5):
            await asyncio.sleep(0.05)  # input that arrives over time, as from a pipe
            yield bytes([index]) * 1000

    out.clear()
    code = await service.client.exec(
        sandbox,
        ["sh", "-c", "wc -c; exit 7"],
        lambda s, d: out.append(d) if s == "stdout" else None,
        stdin=pieces(),
    )
    assert code == 7
    assert b"".join(out).strip() == b"5000"


async def test_a_command_that_ignores_its_input_ends_and_without_stdin_input_is_empty(
    service: Service, sandbox: str
) -> None:
    code = await service.client.exec(sandbox, ["true"], lambda _s, _d: None, stdin=binary(3 << 20))
    assert code == 0
    out: list[bytes] = []
    code = await service.client.exec(sandbox, ["cat"], lambda _s, d: out.append(d))
    assert (code, out) == (0, [])


async def test_a_timeout_kills_the_command_and_says_so(service: Service, sandbox: str) -> None:
    out: list[bytes] = []
    began = time.monotonic()
    with pytest.raises(CommandFailed) as failed:
        await service.client.exec(
            sandbox,
            ["sh", "-c", "echo before; sleep 300; echo after"],
            lambda _s, d: out.append(d),
            command_timeout=1.5,
        )
    assert time.monotonic() - began < 10
    assert failed.value.event["timed_out"] is True
    assert "timeout of 1.5 s" in failed.value.message
    assert "killed" in failed.value.message
    assert b"".join(out) == b"before\n"
    # Nothing of it is left running in the sandbox.
    code, text = await run_in(
        service.client, sandbox, "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '"
    )
    assert code == 0
    assert "sleep 300" not in text


async def test_an_invalid_timeout_is_refused(service: Service, sandbox: str) -> None:
    for bad in (0, -1, 10**9):  # the worker's refusal: code invalid_input
        with pytest.raises(InvalidInput, match="timeout must be"):
            await service.client.exec(sandbox, ["true"], lambda _s, _d: None, command_timeout=bad)


async def raw_exec(
    client: SandboxerClient,
    sandbox_id: str,
    request: dict[str, Any],
    every: float = DEFAULT_EXEC_HEARTBEAT,
) -> tuple[Subscription, Msg]:
    """An exec request straight on the bus, as any client sends it: the inbox subscribed to,
    and the worker's first answer (``started``)."""
    inbox = client.nc.new_inbox()
    sub = await client.nc.subscribe(inbox)
    await client.nc.publish(exec_subject(sandbox_id), msgspec.json.encode(request), reply=inbox)
    started = await sub.next_msg(timeout=10)
    # It says how often its ``alive`` checks (its heartbeats) come (heartbeat.py): ``every``.
    assert started.headers == {EXEC_HEADER: "started", HEARTBEAT: f"{every:g}"}, started.data
    return sub, started


async def next_exit(sub: Subscription, timeout: float) -> dict[str, Any]:
    """The body of the exec's ``exit``, skipping output and ``alive`` checks."""
    async with asyncio.timeout(timeout):
        while True:
            msg = await sub.next_msg(timeout=None)
            if (msg.headers or {}).get(EXEC_HEADER) == "exit":
                return dict(msgspec.json.decode(msg.data))


async def left_running(client: SandboxerClient, sandbox_id: str, pid: str = "") -> bool:
    """Whether ``sleep 300``, or process ``pid``, still runs in the sandbox."""
    if pid and (await run_in(client, sandbox_id, f"test -d /proc/{pid}"))[0] == 0:
        return True
    script = "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '"
    return "sleep 300" in (await run_in(client, sandbox_id, script))[1]


# A check every 2 s instead of 10, to keep the test short; the mechanism is the same.
@pytest.mark.parametrize("exec_heartbeat", [2.0])
async def test_a_command_whose_client_went_away_is_killed(service: Service, sandbox: str) -> None:
    client = service.client
    # No stdin and no timeout: nothing but the client's going can end it before 300 s.
    argv = ["sh", "-c", "echo $$ >p; sleep 300"]
    sub, _started = await raw_exec(client, sandbox, {"argv": argv}, every=2.0)
    async with asyncio.timeout(10):
        while not (pid := (await run_in(client, sandbox, "cat p 2>/dev/null"))[1].strip()):
            await asyncio.sleep(0.1)
    # While the inbox is subscribed, the worker's checks arrive and need no answer (older
    # clients give none): the command goes on.
    for _ in range(2):
        check = await sub.next_msg(timeout=10)
        assert check.headers == {EXEC_HEADER: "alive"}
        assert check.reply
    assert await left_running(client, sandbox, pid)

    await sub.unsubscribe()  # the client goes: Ctrl-C, a dropped connection, a gateway timeout
    async with asyncio.timeout(20):
        while await left_running(client, sandbox, pid):
            await asyncio.sleep(0.5)


async def test_stopping_the_worker_kills_running_commands_and_tells_their_clients(
    service: Service, sandbox: str
) -> None:
    running = asyncio.create_task(
        service.client.exec(sandbox, ["sleep", "300"], lambda _s, _d: None)
    )
    async with asyncio.timeout(10):
        while not await left_running(service.client, sandbox):
            await asyncio.sleep(0.1)
    began = time.monotonic()
    await service.shutdown()  # gives up (fails) after 30 s
    assert time.monotonic() - began < exec_service.STOP_GRACE + 15
    with pytest.raises(ServiceNotRunning, match="the worker stopped; the command was stopped"):
        await asyncio.wait_for(running, 5)


def stall_uploads(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Uploads into sandboxes stall after their first chunk (set once it is sent)."""
    arrived = asyncio.Event()
    read_file = file_service._read_file

    async def stalling(path: Path) -> AsyncIterator[bytes]:
        async for chunk in read_file(path):
            yield chunk  # the first chunk enters the sandbox; the rest never comes
            arrived.set()
            await asyncio.Event().wait()

    monkeypatch.setattr(file_service, "_read_file", stalling)
    return arrived


async def test_stopping_the_worker_stops_copies_after_the_grace_leaving_nothing(
    service: Service, sandbox: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copy on its way into the sandbox when the worker stops gets the grace an exec
    gets, not its half hour, and holds no exec past its own; then it is stopped, its
    client told at once, and neither a half-written file nor the part that arrived, nor
    the worker's staging, is left."""
    arrived = stall_uploads(monkeypatch)
    client = service.client
    big = tmp_path / "big.bin"
    big.write_bytes(binary(3_000_000))
    copying = asyncio.create_task(client.copy_in(sandbox, big, "in/big.bin"))
    running = asyncio.create_task(client.exec(sandbox, ["sleep", "300"], lambda _s, _d: None))
    ended: list[float] = []
    running.add_done_callback(lambda _task: ended.append(time.monotonic()))
    async with asyncio.timeout(20):
        await arrived.wait()
        while not await left_running(client, sandbox):
            await asyncio.sleep(0.1)
    await asyncio.sleep(1)  # the chunk is written in the sandbox by now
    began = time.monotonic()
    await service.shutdown()  # gives up (fails) after 30 s
    assert time.monotonic() - began < STOP_GRACE + 15
    with pytest.raises(ServiceNotRunning, match="the worker stopped; the command was stopped"):
        await asyncio.wait_for(running, 5)
    assert ended[0] - began < STOP_GRACE + 3  # not after the copies' grace
    with pytest.raises(ServiceNotRunning, match="the worker stopped; the copy was stopped"):
        await asyncio.wait_for(copying, 5)
    workspace = service.settings.home / "local" / sandbox / "workspace"
    assert sorted(workspace.rglob("*")) == []
    assert list((service.settings.staging_root / "files").iterdir()) == []


@pytest.mark.parametrize("exec_heartbeat", [1.0])  # 10 s in earnest
async def test_a_copy_whose_client_went_away_is_stopped_leaving_nothing(
    service: Service, sandbox: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client closed mid-copy (a killed process, Ctrl-C, a caller hanging up) leaves its
    inbox: the worker's next ``alive`` check finds nobody, as exec's does, and the copy is
    stopped: neither what arrived in the sandbox nor the worker's staging is left, and a
    copy out's command in the sandbox is killed."""
    arrived = stall_uploads(monkeypatch)
    # A copy out whose tar in the sandbox takes (nearly) for ever.
    monkeypatch.setattr(file_service, "GET_SCRIPT", "echo $$ >/tmp/get.pid; exec sleep 300")
    big = tmp_path / "big.bin"
    big.write_bytes(binary(3_000_000))
    workspace = service.settings.home / "local" / sandbox / "workspace"
    staging = service.settings.staging_root / "files"
    for op in ("put", "get"):
        client = await SandboxerClient.connect(list(service.settings.nats_urls))
        if op == "put":
            copying = asyncio.create_task(client.copy_in(sandbox, big, "in/big.bin"))
        else:
            copying = asyncio.create_task(client.copy_out(sandbox, "in", tmp_path / "out"))
        async with asyncio.timeout(20):
            if op == "put":
                await arrived.wait()
                while not list(workspace.glob(".sandboxer-cp-*.tar")):
                    await asyncio.sleep(0.1)
            else:
                while not await left_running(service.client, sandbox):
                    await asyncio.sleep(0.1)
        assert list(staging.iterdir())
        await client.close()  # its inbox goes with its connection
        await asyncio.gather(copying, return_exceptions=True)
        async with asyncio.timeout(10):
            while list(staging.iterdir()) or await left_running(service.client, sandbox):
                await asyncio.sleep(0.2)
        assert sorted(workspace.rglob("*")) == []


async def test_a_stopped_copy_out_leaves_no_chunks_in_the_bucket(
    nats_server: NatsServerProcess, tmp_path: Path
) -> None:
    """A copy out stopped while its result goes into the bucket (its client gone, the worker
    stopping) leaves none of the chunks stored so far: no object names them, and nothing
    else would ever remove them."""
    nc = await connect([nats_server.url], name="test-bucket")
    try:
        bucket = await open_or_create_bucket(nc.jetstream(), 1)
        result = tmp_path / "result"
        result.write_bytes(binary(1_000_000))
        hold = threading.Event()

        class Slow(io.BufferedReader):
            def readinto(self, buffer: Any) -> int:
                if self.tell() > 0:  # the first chunk goes in; the next waits
                    hold.wait(10)
                return super().readinto(buffer)

        stream = f"OBJ_{WORKSPACES_BUCKET}"
        with Slow(io.FileIO(result)) as handle:
            storing = asyncio.create_task(file_service._store_object(bucket, "x", handle))
            async with asyncio.timeout(10):
                while (await nc.jetstream().stream_info(stream)).state.messages == 0:
                    await asyncio.sleep(0.05)
            storing.cancel()
            hold.set()
            await asyncio.gather(storing, return_exceptions=True)
        assert (await nc.jetstream().stream_info(stream)).state.messages == 0
    finally:
        await nc.close()


async def test_with_no_worker_running_exec_and_cp_say_so_at_once(
    nats_server: NatsServerProcess, home: Path, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """nats-server answers "no responders" at once when nothing subscribes to the subject an
    exec or a copy is sent on: the clients say that no worker runs, rather than waiting for
    an answer for an hour."""
    service = await start_service(home, nats_server.url, roles=["control", "projector"])
    try:
        client = service.client
        sandbox_id = "nowhere01"
        (tmp_path / "f").write_bytes(b"x")
        began = time.monotonic()
        with pytest.raises(ServiceNotRunning, match=r"nothing serves exec \(sandboxer\.exec\."):
            await asyncio.wait_for(client.exec(sandbox_id, ["true"], lambda _s, _d: None), 10)
        with pytest.raises(ServiceNotRunning, match=r"nothing serves file copies \(sandboxer"):
            await asyncio.wait_for(client.copy_in(sandbox_id, tmp_path / "f", "f"), 10)
        with pytest.raises(ServiceNotRunning, match="no extension worker is running"):
            await asyncio.wait_for(client.copy_out(sandbox_id, "f", tmp_path / "g"), 10)
        assert time.monotonic() - began < 4  # at once, not after the 5 s a silent worker gets
        cli = Cli(cli_env)
        for args in (["exec", sandbox_id, "--", "true"], ["cp", f"{sandbox_id}:f", "here"]):
            result = await cli(*args, check=False, timeout=60)
            assert result.returncode == 1
            assert "no extension worker is running" in result.stderr, result.stderr
    finally:
        await service.client.close()
        await service.shutdown()


async def test_stdin_sent_without_waiting_for_answers_ends_the_exec(
    service: Service, sandbox: str
) -> None:
    client = service.client
    # A client that waits for each answer is held back by a command that reads late, and
    # all of its input arrives.
    data = binary(2_000_000, 5)
    out: list[bytes] = []
    code = await client.exec(
        sandbox, ["sh", "-c", "sleep 2; wc -c"], lambda _s, d: out.append(d), stdin=data
    )
    assert (code, b"".join(out).strip()) == (0, str(len(data)).encode())

    # One that floods without waiting, into a command that never reads: the worker holds a
    # few chunks, not the flood, and ends the exec with the reason. Big chunks overflow the
    # unanswered chunks; small ones arrive in bursts the subscription's buffer drops.
    for size, count in ((64 * 1024, 300), (16, 5000)):
        sub, started = await raw_exec(client, sandbox, {"argv": ["sleep", "300"], "stdin": True})
        stdin = msgspec.json.decode(started.data)["stdin"]
        chunk = os.urandom(size)
        for _ in range(count):
            await client.nc.publish(stdin, chunk, headers={STDIN_HEADER: "data"})
        await client.nc.flush()
        exit_body = await next_exit(sub, 30)
        await sub.unsubscribe()
        assert "faster than it was answered" in exit_body["error"], exit_body
        assert not await left_running(client, sandbox)


async def test_an_exec_and_its_input_are_answered_only_in_an_inbox(
    service: Service, sandbox: str
) -> None:
    """nats-server never checks a request's reply subject, and the service may publish to
    the log (docs/security.md): an exec, or a chunk of its input, that names another subject
    for its answer puts nothing there."""
    client = service.client
    forged = {kind: f"sandboxer.evt.sandbox.{sandbox}.{kind}" for kind in ("destroyed", "expired")}
    request = msgspec.json.encode({"argv": ["echo", "hi"]})
    await client.nc.publish(exec_subject(sandbox), request, reply=forged["destroyed"])
    sub, started = await raw_exec(client, sandbox, {"argv": ["cat"], "stdin": True})
    stdin = msgspec.json.decode(started.data)["stdin"]
    await client.nc.publish(stdin, b"x", headers={STDIN_HEADER: "data"}, reply=forged["expired"])
    await client.nc.request(stdin, b"", headers={STDIN_HEADER: "end"}, timeout=10)
    assert await next_exit(sub, 10) == {"exit_code": 0}
    await sub.unsubscribe()
    await asyncio.sleep(1)  # what the forged exec's worker would send has arrived by now
    for subject in forged.values():
        with pytest.raises(NotFoundError):
            await client.js.get_last_msg(EVENTS_STREAM, subject)


# -- files over the bus ---------------------------------------------------------------------


async def test_cp_round_trips_a_binary_file_and_a_nested_directory(
    service: Service, sandbox: str, tmp_path: Path
) -> None:
    client = service.client
    data = binary(2_000_000, 7)
    local = tmp_path / "local.bin"
    local.write_bytes(data)
    copied = await client.copy_in(sandbox, local, "in/deeper/file.bin")
    assert (copied.kind, copied.path) == ("file", "in/deeper/file.bin")
    code, text = await run_in(client, sandbox, "sha256sum in/deeper/file.bin")
    assert (code, text.split()[0]) == (0, hashlib.sha256(data).hexdigest())

    back = await client.copy_out(sandbox, "in/deeper/file.bin", tmp_path / "back.bin")
    assert back.kind == "file"
    assert (tmp_path / "back.bin").read_bytes() == data
    into = tmp_path / "existing"
    into.mkdir()
    await client.copy_out(sandbox, "./in/deeper/file.bin", into)  # into a directory, as cp
    assert (into / "file.bin").read_bytes() == data

    tree = nested_tree(tmp_path / "tree")
    copied = await client.copy_in(sandbox, tree, "project")
    assert copied.kind == "dir"
    code, text = await run_in(client, sandbox, "cd project && ./a/run.sh && cat a/link")
    assert (code, text) == (0, "ran\nmiddle\n")
    await client.copy_out(sandbox, "project", tmp_path / "fetched")
    assert listing(tmp_path / "fetched") == listing(tree)
    # A file written over an existing one replaces it; the workspace root is a directory.
    local.write_bytes(b"second")
    await client.copy_in(sandbox, local, "in/deeper/file.bin")
    await client.copy_out(sandbox, ".", tmp_path / "whole")
    assert (tmp_path / "whole" / "in" / "deeper" / "file.bin").read_bytes() == b"second"
    assert listing(tmp_path / "whole" / "project") == listing(tree)


async def test_a_copy_out_of_a_directory_nested_too_deep_is_refused_saying_so(
    service: Service, sandbox: str, tmp_path: Path
) -> None:
    """The sandbox nests a directory 1500 deep and a client copies it out. The worker
    unpacked the sandbox's tar into its staging, whose removal then raised RecursionError:
    no answer came (the client gave up 80 s later, told the worker was lost) and the staging
    stayed. The tar is refused before a byte is written, naming the limit."""
    nest = "import os\nos.mkdir('top'); os.chdir('top')\nfor _ in range(1500):\n    os.mkdir('d'); os.chdir('d')\n"
    code, text = await run_in(service.client, sandbox, f'python3 -c "{nest}"')
    assert (code, text) == (0, "")
    async with asyncio.timeout(40):
        with pytest.raises(WorkspaceRefused, match="more than the 256 a workspace path may"):
            await service.client.copy_out(sandbox, "top", tmp_path / "out")
    assert list((service.settings.staging_root / "files").iterdir()) == []
    assert not (tmp_path / "out").exists()
    code, text = await run_in(service.client, sandbox, "rm -rf top && echo gone")
    assert (code, text) == (0, "gone\n")


async def test_cp_on_the_command_line_both_ways(
    service: Service, sandbox: str, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    cli = Cli(cli_env)
    data = binary(300_000, 3)
    (tmp_path / "one.bin").write_bytes(data)
    tree = nested_tree(tmp_path / "tree")
    await cli("cp", str(tmp_path / "one.bin"), f"{sandbox}:one.bin")
    result = await cli("cp", str(tree), f"{sandbox}:dir", "--json")
    assert json.loads(result.stdout)["kind"] == "dir"
    await cli("cp", f"{sandbox}:one.bin", str(tmp_path / "one.back"))
    await cli("cp", f"{sandbox}:dir", str(tmp_path / "dir.back"))
    assert (tmp_path / "one.back").read_bytes() == data
    assert listing(tmp_path / "dir.back") == listing(tree)
    refused = await cli("cp", f"{sandbox}:../../etc/passwd", str(tmp_path / "x"), check=False)
    assert refused.returncode == 1
    assert "climbs with '..'" in refused.stderr
    assert not (tmp_path / "x").exists()
    both = await cli("cp", str(tmp_path / "one.bin"), str(tmp_path / "two"), check=False)
    assert both.returncode == 1
    assert "SANDBOX_ID:PATH" in both.stderr


async def raw_files(client: SandboxerClient, sandbox_id: str, request: dict[str, Any]) -> Any:
    """A files request straight on the bus, as a hostile client would send it (no checks)."""
    inbox = client.nc.new_inbox()
    sub = await client.nc.subscribe(inbox)
    await client.nc.publish(files_subject(sandbox_id), msgspec.json.encode(request), reply=inbox)
    try:
        while True:
            msg = await sub.next_msg(timeout=30)
            if (msg.headers or {}).get(HEADER) == "done":
                return msgspec.json.decode(msg.data)
    finally:
        await sub.unsubscribe()


async def test_traversal_is_refused_and_the_host_untouched(
    service: Service, sandbox: str, tmp_path: Path
) -> None:
    client = service.client
    secret = tmp_path / "host-secret.txt"
    secret.write_text("host only\n")
    victim = tmp_path / "host-victim"
    victim.mkdir()
    local = tmp_path / "payload"
    local.write_bytes(b"payload")
    # Symlinks planted in the sandbox: to the host's paths (which the sandbox does not see),
    # and to its own /etc (outside the workspace).
    code, _ = await run_in(
        client,
        sandbox,
        f"ln -s {secret} secret && ln -s {victim} victim && ln -s /etc etcdir && "
        "ln -s /etc/passwd pw && mkdir -p real && ln -s ../.. real/up",
    )
    assert code == 0
    bad_reads = {
        "../../etc/passwd": "climbs",
        "/etc/passwd": "absolute",
        "a\0b": "NUL",
        "pw": "leads out of the workspace",
        "etcdir/passwd": "leads out of the workspace",
        "real/up/etc/hostname": "leads out of the workspace",
        "secret": "symlink to nothing",
    }
    for path, reason in bad_reads.items():
        with pytest.raises(PathRefused, match=reason):
            await client.copy_out(sandbox, path, tmp_path / "out")
        answer = await raw_files(client, sandbox, {"op": "get", "path": path})
        assert (answer["ok"], answer["code"]) == (False, "path_refused"), (path, answer)
        assert reason in answer["error"], (path, answer)
    assert not (tmp_path / "out").exists()
    bad_writes = {
        "../escape": "climbs",
        "/tmp/escape": "absolute",
        "x\0y": "NUL",
        "etcdir/evil": "leads out of the workspace",
        "victim/evil": "symlink to nothing",
        "real/up/evil": "leads out of the workspace",
    }
    for path, reason in bad_writes.items():
        with pytest.raises(PathRefused, match=reason):
            await client.copy_in(sandbox, local, path)
    # Past the client's own checks: the worker refuses as well.
    uploaded = await client.upload_directory(nested_tree(tmp_path / "tree"))
    for path, reason in bad_writes.items():
        request = {"op": "put", "path": path, "kind": "dir", "ref": uploaded.ref}
        answer = await raw_files(client, sandbox, request)
        assert (answer["ok"], answer["code"]) == (False, "path_refused"), (path, answer)
        assert reason in answer["error"], (path, answer)
    # Writing a file where a symlink leading out stands replaces the link, never its target.
    await client.copy_in(sandbox, local, "pw")
    code, text = await run_in(client, sandbox, "test -L pw || cat pw; head -c 4 /etc/passwd")
    assert (code, text[:7]) == (0, "payload")
    assert secret.read_text() == "host only\n"
    assert list(victim.iterdir()) == []
    # A hostile archive (a name that climbs) is refused before anything enters the sandbox.
    hostile = io.BytesIO()
    with tarfile.open(fileobj=hostile, mode="w") as tar:
        info = tarfile.TarInfo("../../escaped")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    archive = tmp_path / "hostile.tar"
    archive.write_bytes(hostile.getvalue())
    with pytest.raises(WorkspaceRefused, match="unsafe name"):
        await client.put_archive(sandbox, archive, "dir", "dir")


async def test_an_oversized_upload_is_refused(
    nats_server: NatsServerProcess, home: Path, tmp_path: Path
) -> None:
    service = await start_service(home, nats_server.url, upload_max_mb=1)
    try:
        ready = await service.client.create("profile.local", {})
        sandbox_id = ready["sandbox_id"]
        big = tmp_path / "big.bin"
        big.write_bytes(binary(2 * 1024 * 1024))
        with pytest.raises(WorkspaceRefused, match="SANDBOXER_UPLOAD_MAX_MB"):
            await service.client.copy_in(sandbox_id, big, "big.bin", max_mb=1)
        # A client that allows itself more meets the worker's limit.
        with pytest.raises(WorkspaceRefused, match="SANDBOXER_UPLOAD_MAX_MB"):
            await service.client.copy_in(sandbox_id, big, "big.bin", max_mb=10)
        # And a download larger than the worker's limit is refused the same way.
        code, _ = await run_in(
            service.client, sandbox_id, "head -c 3000000 /dev/urandom > made.bin"
        )
        assert code == 0
        with pytest.raises(WorkspaceRefused, match="SANDBOXER_UPLOAD_MAX_MB"):
            await service.client.copy_out(sandbox_id, "made.bin", tmp_path / "made.bin")
        code, text = await run_in(service.client, sandbox_id, "ls")
        assert "big.bin" not in text.split()
    finally:
        await service.client.close()
        await service.shutdown()
        await reap_local(home)


# -- over HTTP ----------------------------------------------------------------------------------


@pytest.fixture
async def api(
    nats_server: NatsServerProcess,
    home: Path,
    monkeypatch: pytest.MonkeyPatch,
    exec_heartbeat: float,
) -> AsyncIterator[tuple[httpx.AsyncClient, Service]]:
    """The service and its gateway (an administrator's key), uploads limited to 2 MiB."""
    monkeypatch.setenv("SANDBOXER_UPLOAD_MAX_MB", "2")
    service = await start_service(
        home, nats_server.url, upload_max_mb=2, exec_heartbeat=exec_heartbeat
    )
    admin = SandboxerClient(service.client.nc, actor={"type": "adm", "id": "pytest-admin"})
    key, _ = await create_key(
        admin, project="default", key_type="adm", max_live=100, rate_per_second=1000
    )
    headers = {"Authorization": f"Bearer {key}"}
    try:
        async with (
            serve_gateway(service, home) as url,
            httpx.AsyncClient(base_url=url, timeout=120, headers=headers) as client,
        ):
            yield client, service
    finally:
        await service.client.close()
        await service.shutdown()
        await reap_local(home)


def error_of(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert body["code"] == code, body
    return str(body["message"])


async def test_a_copy_in_a_paused_sandbox_is_a_state_conflict(
    api: tuple[httpx.AsyncClient, Service], tmp_path: Path
) -> None:
    """A paused sandbox refuses copies and exec alike: a conflict with its state (409
    ``frozen``, a CommandFailed rejection on the bus), not a backend that failed (502,
    ExtensionError)."""
    http, service = api
    client = service.client
    sandbox_id = (await client.create("profile.local", {}))["sandbox_id"]
    await client.pause(sandbox_id)
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(CommandFailed, match="is paused") as refused:
        await client.copy_in(sandbox_id, tmp_path / "f", "f")
    assert (refused.value.event["type"], refused.value.event["code"]) == ("rejected", "frozen")
    with pytest.raises(CommandFailed, match="is paused") as refused:
        await client.copy_out(sandbox_id, "f", tmp_path / "g")
    assert (refused.value.event["type"], refused.value.event["code"]) == ("rejected", "frozen")
    base = f"/v1/sandboxes/{sandbox_id}"
    for answer in (
        await http.put(f"{base}/files", params={"path": "f"}, content=b"x"),
        await http.get(f"{base}/files", params={"path": "f"}),
    ):
        assert "is paused" in error_of(answer, 409, "frozen")
    with pytest.raises(CommandFailed, match="is paused") as refused:
        await client.exec(sandbox_id, ["true"], lambda _s, _d: None)
    assert (refused.value.event["type"], refused.value.event["code"]) == ("rejected", "frozen")
    answer = await http.post(f"{base}/exec", json={"argv": ["true"]})
    assert "is paused" in error_of(answer, 409, "frozen")


@pytest.mark.parametrize("exec_heartbeat", [1.0])  # 10 s in earnest
async def test_a_copy_whose_http_caller_hung_up_is_stopped_leaving_nothing(
    api: tuple[httpx.AsyncClient, Service], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway's bus client leaves the copy's inbox when its caller hangs up, as for an
    exec: the worker stops the copy, and nothing of it is left."""
    http, service = api
    arrived = stall_uploads(monkeypatch)
    sandbox_id = (await service.client.create("profile.local", {}))["sandbox_id"]
    workspace = service.settings.home / "local" / sandbox_id / "workspace"
    staging = service.settings.staging_root / "files"
    url = f"/v1/sandboxes/{sandbox_id}/files"
    putting = asyncio.create_task(http.put(url, params={"path": "f"}, content=binary(1_500_000)))
    async with asyncio.timeout(20):
        await arrived.wait()
        while not list(workspace.glob(".sandboxer-cp-*.tar")):
            await asyncio.sleep(0.1)
    putting.cancel()  # the caller hangs up
    await asyncio.gather(putting, return_exceptions=True)
    async with asyncio.timeout(10):
        while list(staging.iterdir()) or list(workspace.iterdir()):
            await asyncio.sleep(0.2)


async def test_exec_and_files_over_http(
    api: tuple[httpx.AsyncClient, Service], tmp_path: Path
) -> None:
    http, service = api
    sandbox_id = (await service.client.create("profile.local", {}))["sandbox_id"]
    base = f"/v1/sandboxes/{sandbox_id}"
    data = binary(200_000, 9)

    answer = await http.post(
        f"{base}/exec", json={"argv": ["cat"], "stdin": base64.b64encode(data).decode()}
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["exit_code"], body["timed_out"]) == (0, False)
    assert base64.b64decode(body["stdout"]) == data
    answer = await http.post(
        f"{base}/exec", json={"argv": ["sh", "-c", "echo x >&2; sleep 60"], "timeout": 1}
    )
    body = answer.json()
    assert (answer.status_code, body["timed_out"], body["exit_code"]) == (200, True, None)
    assert base64.b64decode(body["stderr"]) == b"x\n"
    error_of(await http.post(f"{base}/exec", json={"argv": []}), 422, "invalid_request")
    error_of(
        await http.post(f"{base}/exec", json={"argv": ["cat"], "stdin": "%%%"}),
        422,
        "invalid_request",
    )

    put = await http.put(f"{base}/files", params={"path": "up/file.bin"}, content=data)
    assert put.status_code == 200, put.text
    assert put.json()["kind"] == "file"
    got = await http.get(f"{base}/files", params={"path": "up/file.bin"})
    assert got.status_code == 200
    assert got.headers["x-sandboxer-kind"] == "file"
    assert got.content == data

    tree = nested_tree(tmp_path / "tree")
    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w") as tar:
        for path in sorted(tree.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(tree)), recursive=False)
    put = await http.put(
        f"{base}/files",
        params={"path": "project"},
        content=packed.getvalue(),
        headers={"Content-Type": "application/x-tar"},
    )
    assert put.status_code == 200, put.text
    got = await http.get(f"{base}/files", params={"path": "project"})
    assert got.status_code == 200
    assert got.headers["content-type"] == "application/x-tar"
    with tarfile.open(fileobj=io.BytesIO(got.content)) as tar:
        tar.extractall(tmp_path / "fetched", filter="data")
    assert listing(tmp_path / "fetched") == listing(tree)

    await http.post(f"{base}/exec", json={"argv": ["ln", "-s", "/etc", "out"]})
    for path in ("../../etc/passwd", "/etc/passwd", "out/passwd", "a\0b"):
        reason = error_of(
            await http.get(f"{base}/files", params={"path": path}), 400, "path_refused"
        )
        assert reason
        error_of(
            await http.put(f"{base}/files", params={"path": path}, content=b"x"),
            400,
            "path_refused",
        )
    too_big = binary(3 * 1024 * 1024)
    error_of(
        await http.put(f"{base}/files", params={"path": "big"}, content=too_big), 413, "too_large"
    )

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
        for start in range(0, len(too_big), 1 << 20):
            yield too_big[start : start + (1 << 20)]

    answer = await http.put(f"{base}/files", params={"path": "big"}, content=chunked())
    assert answer.status_code == 413, answer.text
    # an unknown sandbox is 404 at once (the fuzzer found a 5 s wait for a worker, then 503)
    unknown = await http.get("/v1/sandboxes/nosuchsandbox1/files", params={"path": "x"})
    error_of(unknown, 404, "unknown_sandbox")
