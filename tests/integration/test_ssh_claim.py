"""A fresh create's one-command claim (ssh_workspace.claim) and the tar stream that fills
the directory it made (sync_dir(empty=True)), against a real sshd on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path

import pytest

from sandboxer.extensions.ssh_targets import Target
from sandboxer.extensions.ssh_workspace import claim, probe, sandbox_lock
from sandboxer.ssh import session, sync_dir
from tests.integration.remote_fixtures import SshHosts

pytestmark = pytest.mark.integration


async def test_a_fresh_claim_writes_the_marker_then_the_directory(ssh_hosts: SshHosts) -> None:
    [info] = await ssh_hosts(1)
    item = Target(info.name, info.host)
    swept = Path(info.host.workspace_root).parent / "swept"
    async with session(info.name, info.host) as conn:
        done = await claim(
            conn,
            item,
            "claimfresh01",
            {"extension": "ext.x"},
            made_by=(2, 3),
            first=["touch", str(swept)],
        )
    assert done.claimed
    assert done.host_has_rsync  # rsync is installed here
    assert swept.exists()  # the command given first ran
    marker = Path(item.marker("claimfresh01"))
    assert json.loads(marker.read_text()) == {
        "extension": "ext.x",
        "made_by": [2, 3],  # the provisioning that made it, for teardown_attempt
        "sandbox_id": "claimfresh01",
    }
    assert stat.S_IMODE(marker.stat().st_mode) == 0o600
    assert Path(item.workspace("claimfresh01")).is_dir()
    assert not list(marker.parent.glob("*.sbx-*"))  # no staging file left


@pytest.mark.parametrize("leftover", ["marker", "directory"])
async def test_a_claim_changes_nothing_where_something_is_left(
    ssh_hosts: SshHosts, leftover: str
) -> None:
    [info] = await ssh_hosts(1)
    item = Target(info.name, info.host)
    root = Path(info.host.workspace_root)
    root.mkdir(parents=True, exist_ok=True)
    if leftover == "marker":
        Path(item.marker("claimbusy01")).write_text('{"extension": "ext.other"}\n')
    else:
        Path(item.workspace("claimbusy01")).mkdir()
    swept = root.parent / "swept"
    async with session(info.name, info.host) as conn:
        done = await claim(
            conn,
            item,
            "claimbusy01",
            {"extension": "ext.x"},
            made_by=(1, 1),
            first=["touch", str(swept)],
        )
        found = await probe(conn, item, "claimbusy01")
    assert not done.claimed
    assert not swept.exists()  # nothing ran: the caller takes the long way
    if leftover == "marker":
        assert found.marker == {"extension": "ext.other"}
        assert not found.path_exists
    else:
        assert not found.marker_exists
        assert found.directory


async def test_a_failing_first_command_claims_nothing(ssh_hosts: SshHosts) -> None:
    [info] = await ssh_hosts(1)
    item = Target(info.name, info.host)
    async with session(info.name, info.host) as conn:
        done = await claim(
            conn, item, "claimfail01", {"extension": "ext.x"}, made_by=(1, 1), first=["false"]
        )
        found = await probe(conn, item, "claimfail01")
    assert not done.claimed
    assert not found.marker_exists
    assert not found.path_exists


async def test_a_claim_waits_for_the_sandbox_s_lock_on_the_host(ssh_hosts: SshHosts) -> None:
    """While another step holds the sandbox's lock (a teardown reading the marker, on another
    connection: another worker), a claim looks at nothing and makes nothing; once it is let
    go (its file removed with it, as a teardown does), the claim goes on, on a new file."""
    [info] = await ssh_hosts(1)
    item = Target(info.name, info.host)
    async with session(info.name, info.host) as holder, session(info.name, info.host) as conn:
        async with sandbox_lock(holder, item, "claimlock01", make=True) as lock:
            assert lock is not None
            waiting = asyncio.create_task(
                claim(conn, item, "claimlock01", {"extension": "ext.x"}, made_by=(1, 2))
            )
            await asyncio.sleep(1.0)
            assert not waiting.done()
            assert not Path(item.marker("claimlock01")).exists()
            lock.remove()
        async with asyncio.timeout(30):
            done = await waiting
    assert done.claimed
    assert json.loads(Path(item.marker("claimlock01")).read_text())["made_by"] == [1, 2]
    assert Path(item.lock("claimlock01")).exists()  # the claim's own, kept with the sandbox


async def test_an_empty_directory_is_filled_by_one_tar_stream(
    ssh_hosts: SshHosts, tmp_path: Path
) -> None:
    [info] = await ssh_hosts(1)
    local, remote = tmp_path / "local", tmp_path / "remote" / "sbx-x"
    (local / "sub" / "deeper").mkdir(parents=True)
    (local / "file.txt").write_text("hello\n")
    (local / "sub" / "deeper" / "data.bin").write_bytes(bytes(range(256)) * 64)
    (local / "run.sh").write_text("#!/bin/sh\necho run\n")
    (local / "run.sh").chmod(0o755)
    (local / "private").write_text("mine\n")
    (local / "private").chmod(0o600)
    os.utime(local / "file.txt", (1_600_000_000, 1_600_000_000))
    (local / "link").symlink_to("sub/deeper/data.bin")
    os.mkfifo(local / "fifo")  # left out, as the SFTP copy leaves it out
    remote.mkdir(parents=True)
    async with session(info.name, info.host) as conn:
        used = await sync_dir(info.name, info.host, conn, local, str(remote), empty=True)
    assert used == "tar"
    assert (remote / "file.txt").read_text() == "hello\n"
    assert (remote / "file.txt").stat().st_mtime == 1_600_000_000
    assert (remote / "sub" / "deeper" / "data.bin").read_bytes() == bytes(range(256)) * 64
    assert stat.S_IMODE((remote / "run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((remote / "private").stat().st_mode) == 0o600
    assert os.readlink(remote / "link") == "sub/deeper/data.bin"
    assert not (remote / "fifo").exists()
    assert stat.S_IMODE(remote.stat().st_mode) == stat.S_IMODE(local.stat().st_mode)
    assert sorted(p.name for p in (tmp_path / "remote").iterdir()) == ["sbx-x"]


async def test_a_local_root_given_as_a_symlink_is_the_directory_it_names(
    ssh_hosts: SshHosts, tmp_path: Path
) -> None:
    [info] = await ssh_hosts(1)
    local, remote = tmp_path / "local", tmp_path / "remote" / "sbx-y"
    local.mkdir()
    (local / "file.txt").write_text("hello\n")
    alias = tmp_path / "alias"
    alias.symlink_to(local)
    remote.mkdir(parents=True)
    async with session(info.name, info.host) as conn:
        used = await sync_dir(info.name, info.host, conn, alias, str(remote), empty=True)
    assert used == "tar"
    assert not remote.is_symlink()
    assert (remote / "file.txt").read_text() == "hello\n"
