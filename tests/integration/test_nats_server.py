"""Real nats-server processes: finding, version check, start/stop, JetStream, a 3-node cluster."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import sys
from pathlib import Path

import nats
import pytest
import stamina
from nats.js.api import StreamConfig
from nats.js.errors import APIError

from sandboxer.bus.nats_binary import (
    MIN_VERSION,
    ensure_supported_server,
    find_nats_server,
    server_version,
)
from sandboxer.bus.nats_cluster import NatsCluster
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.bus.store_lock import StoreLock
from sandboxer.errors import NatsServerError
from tests.conftest import fail_on_logged_errors

pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _fake_binary(tmp_path: Path, version_line: str) -> str:
    script = tmp_path / "old-nats-server"
    script.write_text(f"#!/bin/sh\necho '{version_line}'\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


# ------------------------------------------------------------------ versions


async def test_packaged_server_version_is_supported() -> None:
    binary = find_nats_server(None)
    version = await server_version(binary)
    assert version >= MIN_VERSION
    assert await ensure_supported_server(binary) == version


async def test_old_binary_refuses_to_start(tmp_path: Path) -> None:
    old = _fake_binary(tmp_path, "nats-server: v2.9.10")
    server = NatsServerProcess(tmp_path / "store", binary=old)
    with pytest.raises(NatsServerError, match=r"2\.9\.10.*needs 2\.11\.0"):
        await server.start()
    assert not server.running


# ------------------------------------------------------------------ one server


async def test_fixture_server_is_running(nats_server: NatsServerProcess, nats_url: str) -> None:
    assert nats_url == f"nats://127.0.0.1:{nats_server.port}"
    assert nats_server.port > 0
    assert nats_server.running
    assert _alive(nats_server.pid)
    assert nats_server.version is not None
    assert nats_server.version >= MIN_VERSION
    assert nats_server.fatal_errors == []


async def test_jetstream_round_trip_with_subject_wildcard_guard(nats_url: str) -> None:
    nc = await nats.connect(servers=[nats_url], connect_timeout=2)
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="T", subjects=["t.>"]))
        guard = {
            "Nats-Expected-Last-Subject-Sequence": "0",
            "Nats-Expected-Last-Subject-Sequence-Subject": "t.a1.*",
        }
        ack = await js.publish("t.a1.created", b"one", headers=guard)
        assert ack.seq == 1
        # The reason for requiring 2.11: the guard covers every subject of the aggregate.
        with pytest.raises(APIError) as info:
            await js.publish("t.a1.renamed", b"two", headers=guard)
        assert info.value.err_code == 10071
        sub = await js.pull_subscribe("t.>", durable="reader")
        msgs = await sub.fetch(10, timeout=5)
        assert [(m.subject, m.data) for m in msgs] == [("t.a1.created", b"one")]
        for m in msgs:
            await m.ack()
    finally:
        await nc.close()


async def test_stop_leaves_no_process(tmp_path: Path) -> None:
    server = NatsServerProcess(tmp_path / "store", monitor_port=0)
    async with server:
        pid = server.pid
        assert _alive(pid)
        assert server.monitor_url is not None
        await server.wait_healthy(timeout=10)
    assert not server.running
    assert server.returncode == 0
    assert not _alive(pid)
    assert await server.stop() == 0  # a second stop is harmless


async def test_restart_keeps_port_and_data(tmp_path: Path) -> None:
    server = NatsServerProcess(tmp_path / "store")
    async with server:
        port = server.port
        nc = await nats.connect(servers=[server.url])
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="KEEP", subjects=["keep.>"]))
        await js.publish("keep.x", b"1")
        await nc.close()
    async with server:
        assert server.port == port
        nc = await nats.connect(servers=[server.url])
        info = await nc.jetstream().stream_info("KEEP")
        assert info.state.messages == 1
        await nc.close()


async def test_port_in_use_reports_fatal_line(
    nats_server: NatsServerProcess, tmp_path: Path
) -> None:
    clash = NatsServerProcess(tmp_path / "other", port=nats_server.port)
    with pytest.raises(NatsServerError, match="address already in use") as info:
        await clash.start()
    assert "[FTL]" in str(info.value)
    assert clash.fatal_errors
    assert not clash.running


async def test_store_dir_is_locked_while_in_use(nats_server: NatsServerProcess) -> None:
    second = NatsServerProcess(nats_server.store_dir)
    with pytest.raises(NatsServerError, match="in use"):
        await second.start()


async def test_bad_flag_is_reported(tmp_path: Path) -> None:
    server = NatsServerProcess(tmp_path / "store", extra_args=["--no-such-flag"])
    with pytest.raises(NatsServerError, match="flag provided but not defined"):
        await server.start()


async def test_kill_simulates_a_crash(tmp_path: Path) -> None:
    server = NatsServerProcess(tmp_path / "store")
    await server.start()
    pid = server.pid
    await server.kill()
    assert not _alive(pid)
    assert server.returncode == -9


# ------------------------------------------------------------------ cluster


async def test_three_node_cluster_accepts_r3_stream(tmp_path: Path) -> None:
    cluster = NatsCluster(tmp_path / "cluster", size=3)
    async with cluster:
        pids = [s.pid for s in cluster.servers]
        assert len(set(cluster.urls)) == 3
        assert cluster.url == ",".join(cluster.urls)
        nc = await nats.connect(servers=cluster.urls, connect_timeout=2)
        try:
            js = nc.jetstream(timeout=10)
            # Every node is healthy, but the meta leader may not have heard from each peer
            # yet: "no suitable peers for placement, peer offline" (10005) for a moment, seen
            # once in a full run. The service's ensure_streams waits that out; so does this.
            async for attempt in stamina.retry_context(
                on=lambda exc: isinstance(exc, APIError) and exc.err_code == 10005,
                attempts=None,
                timeout=30,
                wait_initial=0.1,
                wait_max=1.0,
            ):
                with attempt:
                    await js.add_stream(StreamConfig(name="R3", subjects=["r3.>"], num_replicas=3))
            # add_stream answers before the new stream has elected its leader; until then a
            # publish finds no responder (seen on a loaded machine). Wait for the leader.
            async with asyncio.timeout(30):
                while (await js.stream_info("R3")).cluster.leader is None:
                    await asyncio.sleep(0.1)
            ack = await js.publish("r3.hello", b"world")
            assert ack.seq == 1
            info = await js.stream_info("R3")
            assert info.cluster is not None
            assert info.cluster.leader is not None
            assert len(info.cluster.replicas or []) == 2
            assert info.state.messages == 1
        finally:
            await nc.close()
    assert not any(_alive(pid) for pid in pids)


# ------------------------------------------------------------------ mistakes and the log


async def test_wait_healthy_without_monitor_is_a_sandboxer_error(
    nats_server: NatsServerProcess,
) -> None:
    with pytest.raises(NatsServerError, match="monitor_port"):
        await nats_server.wait_healthy(timeout=1)


async def _break_the_protocol(server: NatsServerProcess) -> None:
    """Send a line that is not NATS protocol: the server logs an [ERR] line for it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    await reader.readline()  # the INFO line
    writer.write(b"GARBAGE\r\n")
    await writer.drain()
    await reader.read()  # the server closes the connection after its -ERR
    writer.close()


async def test_logged_errors_fail_the_fixture_check(tmp_path: Path) -> None:
    server = NatsServerProcess(tmp_path / "store")
    async with server:
        fail_on_logged_errors(server)  # a clean start logs no error
        await _break_the_protocol(server)
    assert any("[ERR]" in line and "parser ERROR" in line for line in server.logged_errors())
    with pytest.raises(pytest.fail.Exception, match="logged 1 error line"):
        fail_on_logged_errors(server)


@pytest.mark.nats_errors_expected
async def test_fixture_accepts_errors_a_test_expects(nats_server: NatsServerProcess) -> None:
    await _break_the_protocol(nats_server)


HOLD_A_SERVER = """
import asyncio, sys
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.bus.store_lock import StoreLock
async def main():
    server = await NatsServerProcess(sys.argv[1]).start()
    print(server.pid, flush=True)
    await asyncio.sleep(600)
asyncio.run(main())
"""


async def test_the_store_stays_locked_while_its_server_outlives_its_parent(
    tmp_path: Path,
) -> None:
    """The parent killed with -9 while its server is still shutting down (here: stopped):
    the lock went with the parent, and a second server could open the same store."""
    store = tmp_path / "store"
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLD_A_SERVER, str(store), stdout=asyncio.subprocess.PIPE
    )
    assert parent.stdout is not None
    server_pid = int((await asyncio.wait_for(parent.stdout.readline(), 60)).decode())
    try:
        os.kill(server_pid, signal.SIGSTOP)
        parent.kill()
        await parent.wait()
        with pytest.raises(NatsServerError, match="in use"):
            StoreLock(store).acquire()
    finally:
        os.kill(server_pid, signal.SIGKILL)
        os.kill(server_pid, signal.SIGCONT)
    for _ in range(100):
        if not _alive(server_pid):
            break
        await asyncio.sleep(0.05)
    lock = StoreLock(store)
    lock.acquire()  # free once the server is gone
    lock.release()
