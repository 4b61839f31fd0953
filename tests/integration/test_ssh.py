"""The SSH boundary against real sshd processes on loopback, and a real Docker engine.

The "remote" hosts are this machine, so what a command did remotely is
checked on the local filesystem.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import subprocess
import time
from pathlib import Path
from typing import Literal

import pytest

from sandboxer.config.hosts import HostConfig, HostsFile
from sandboxer.errors import HostKeyRejected, HostUnreachable, InvalidInput, RemoteCommandFailed
from sandboxer.ssh import connect, deadline, put_file, remove_tree, run, session, stream, sync_dir
from tests.integration.remote_fixtures import MINI_IMAGE, DockerEngine, SshHosts, write_hosts_file

pytestmark = pytest.mark.integration


async def test_run_returns_output_and_exit_status(ssh_hosts: SshHosts) -> None:
    [info] = await ssh_hosts(1)
    async with session(info.name, info.host) as conn:
        result = await run(conn, ["sh", "-c", "echo out; echo err >&2; exit 3"], check=False)
        assert (result.exit_status, result.stdout, result.stderr) == (3, "out\n", "err\n")

        with pytest.raises(RemoteCommandFailed) as failed:
            await run(conn, ["sh", "-c", "seq 1 100; echo boom >&2; exit 7"])
        assert failed.value.exit_status == 7
        assert "'sh'" in failed.value.message
        assert "status 7" in failed.value.message
        # All of it (within WINDOW_CHARS): it is cut to lines only once redacted (ssh_checks).
        tail = failed.value.output_tail.splitlines()
        assert tail == [*(str(i) for i in range(1, 101)), "boom"]

        hostile = "$(touch /tmp/sbx-should-not-exist); `id` 'q'\nnext"
        echoed = await run(conn, ["printf", "%s", hostile], env={"X": hostile}, cwd="/tmp")
        assert echoed.stdout == hostile
        seen = await run(
            conn, ["sh", "-c", 'printf "%s|" "$X"; pwd'], env={"X": hostile}, cwd="/tmp"
        )
        assert seen.stdout == f"{hostile}|/tmp\n"

        piped = await run(conn, ["cat"], input="from stdin\n")
        assert piped.stdout == "from stdin\n"

        signalled = await run(conn, ["sh", "-c", "kill -TERM $$"], check=False)
        assert signalled.exit_status == 128 + 15


async def test_local_ssh_setup_is_ignored(
    ssh_hosts: SshHosts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    [info] = await ssh_hosts(1)
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text("Host *\n  Port 1\n  User nobody\n  HostName 192.0.2.1\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("SSH_AUTH_SOCK", str(tmp_path / "no-agent.sock"))
    local = tmp_path / "tree"
    make_tree(local)
    async with session(info.name, info.host) as conn:
        assert (await run(conn, ["id", "-un"])).stdout.strip() == info.host.user
        assert await sync_dir(info.name, info.host, conn, local, str(tmp_path / "out")) == "rsync"


async def test_a_command_past_its_timeout_fails_fast(ssh_hosts: SshHosts) -> None:
    [info] = await ssh_hosts(1)
    async with session(info.name, info.host) as conn:
        began = time.monotonic()
        with pytest.raises(RemoteCommandFailed) as failed:
            await run(conn, ["sh", "-c", "echo started; sleep 3"], timeout=0.5)
        assert time.monotonic() - began < 2.5
        assert failed.value.exit_status == -1
        assert "did not finish within 0.5s" in failed.value.message
        assert "started" in failed.value.output_tail
        # the connection stays usable
        assert (await run(conn, ["true"])).exit_status == 0


async def test_a_timed_out_command_leaves_nothing_running(
    ssh_hosts: SshHosts, tmp_path: Path
) -> None:
    """OpenSSH refuses to signal root sessions, so the host itself must stop the command."""
    [info] = await ssh_hosts(1)
    pids = tmp_path / "pids"
    # A command that ignores SIGTERM and leaves a child that ignores it too.
    script = f"trap '' TERM; sleep 300.123 & echo $! >> {pids}; echo $$ >> {pids}; sleep 301.123"
    streamed: list[bytes] = []

    async def keep(_name: str, data: bytes) -> None:
        streamed.append(data)

    async with session(info.name, info.host) as conn:
        began = time.monotonic()
        with pytest.raises(RemoteCommandFailed) as failed:
            await run(conn, ["sh", "-c", script], timeout=1)
        assert failed.value.exit_status == -1
        assert "did not finish within 1s; the host stopped it" in failed.value.message
        assert time.monotonic() - began < 1 + deadline.KILL_GRACE + 2
        with pytest.raises(RemoteCommandFailed):  # the streaming path is stopped the same way
            await stream(conn, ["sh", "-c", f"echo streamed; {script}"], keep, timeout=1)
        assert b"".join(streamed) == b"streamed\n"
    started = pids.read_text().split()
    assert len(started) == 4
    # Looked at over a new session, as an operator would; a zombie is dead already.
    alive = (
        'for p in "$@"; do [ -e /proc/$p ] && ! grep -q "^[0-9]* ([^)]*) Z" /proc/$p/stat'
        ' && echo "$p"; done; pgrep -f "sleep 30[01][.]123" || true'
    )
    async with session(info.name, info.host) as conn:
        for _ in range(40):
            left = (await run(conn, ["sh", "-c", alive, "sh", *started])).stdout.split()
            if not left:
                break
            await asyncio.sleep(0.05)
    assert left == [], f"still running after their deadline: {left}"


async def test_a_host_key_that_does_not_match_is_rejected(
    ssh_hosts: SshHosts, tmp_path: Path
) -> None:
    first, second = await ssh_hosts(2)
    # the first host's address and port, the second host's key
    wrong = tmp_path / "wrong_known_hosts"
    wrong.write_text(f"[127.0.0.1]:{first.port} {second.host_public_key}\n")
    host = first.host.model_copy(update={"known_hosts": str(wrong)})
    with pytest.raises(HostKeyRejected) as rejected:
        await connect(first.name, host)
    message = rejected.value.message
    assert f"host {first.name} (127.0.0.1:{first.port})" in message
    assert "does not match" in message
    assert str(wrong) in message
    assert "reinstalled" in message

    unlisted = tmp_path / "empty_known_hosts"
    unlisted.write_text("")
    with pytest.raises(HostKeyRejected):
        await connect(first.name, host.model_copy(update={"known_hosts": str(unlisted)}))

    missing = host.model_copy(update={"known_hosts": str(tmp_path / "absent")})
    with pytest.raises(HostKeyRejected, match="cannot read its known_hosts file"):
        await connect(first.name, missing)


async def test_host_key_string_mode(ssh_hosts: SshHosts) -> None:
    first, second = await ssh_hosts(2)
    good = HostConfig(
        address="127.0.0.1",
        port=first.port,
        user=first.host.user,
        key_file=str(first.key_file),
        host_key=first.host_public_key,
    )
    async with session(first.name, good) as conn:
        assert (await run(conn, ["echo", "ok"])).stdout == "ok\n"
    bad = good.model_copy(update={"host_key": second.host_public_key})
    with pytest.raises(HostKeyRejected, match="host_key in the hosts file"):
        await connect(first.name, bad)
    garbage = good.model_copy(update={"host_key": "ssh-ed25519 not-base64!"})
    with pytest.raises(HostKeyRejected, match="not a valid public key"):
        await connect(first.name, garbage)


async def test_insecure_mode_connects_and_warns(
    ssh_hosts: SshHosts, caplog: pytest.LogCaptureFixture
) -> None:
    [info] = await ssh_hosts(1)
    host = HostConfig(
        address="127.0.0.1",
        port=info.port,
        user=info.host.user,
        key_file=str(info.key_file),
        insecure_accept_any_host_key=True,
    )
    with caplog.at_level(logging.WARNING, logger="sandboxer.ssh"):
        async with session(info.name, host) as conn:
            assert (await run(conn, ["true"])).exit_status == 0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert info.name in warnings[0].getMessage()
    assert "NOT checked" in warnings[0].getMessage()


async def test_a_stopped_host_is_unreachable_until_restarted(ssh_hosts: SshHosts) -> None:
    [info] = await ssh_hosts(1)
    await info.server.stop()
    with pytest.raises(HostUnreachable) as unreachable:
        await connect(info.name, info.host)
    message = unreachable.value.message
    assert f"host {info.name} (127.0.0.1:{info.port})" in message
    assert "connection refused" in message
    assert f"port {info.port}" in message

    await info.server.start()
    async with session(info.name, info.host) as conn:
        assert (await run(conn, ["true"])).exit_status == 0


async def test_a_host_dying_mid_command_is_unreachable(ssh_hosts: SshHosts) -> None:
    [info] = await ssh_hosts(1)
    async with session(info.name, info.host) as conn:
        command = asyncio.create_task(run(conn, ["sleep", "30"]))
        await asyncio.sleep(0.3)
        await info.server.stop()
        with pytest.raises(HostUnreachable):
            await asyncio.wait_for(command, 10)


async def test_a_refused_client_key_is_unreachable(ssh_hosts: SshHosts, tmp_path: Path) -> None:
    [info] = await ssh_hosts(1)
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    with pytest.raises(HostUnreachable) as refused:
        await connect(info.name, info.host.model_copy(update={"key_file": str(stranger)}))
    assert f"refused key {stranger}" in refused.value.message
    assert "authorized_keys" in refused.value.message

    with pytest.raises(HostUnreachable, match="no key_file"):
        await connect(info.name, info.host.model_copy(update={"key_file": None}))
    with pytest.raises(HostUnreachable, match="cannot load the private key"):
        await connect(
            info.name, info.host.model_copy(update={"key_file": str(tmp_path / "absent")})
        )


async def test_an_address_that_does_not_resolve_is_unreachable(ssh_hosts: SshHosts) -> None:
    [info] = await ssh_hosts(1)
    host = info.host.model_copy(update={"address": "no-such-host.invalid"})
    with pytest.raises(HostUnreachable, match="cannot resolve"):
        await connect(info.name, host)


async def test_put_file_is_private_from_the_start(ssh_hosts: SshHosts, tmp_path: Path) -> None:
    [info] = await ssh_hosts(1)
    target = tmp_path / "remote" / "secret.env"
    target.parent.mkdir()
    target.write_text("old")
    target.chmod(0o644)
    async with session(info.name, info.host) as conn:
        await put_file(conn, str(target), b"TOKEN=s3cret\n")
        assert target.read_bytes() == b"TOKEN=s3cret\n"
        assert stat.S_IMODE(target.stat().st_mode) == 0o600
        assert sorted(p.name for p in target.parent.iterdir()) == ["secret.env"]

        script = tmp_path / "remote" / "run.sh"
        await put_file(conn, str(script), b"#!/bin/sh\n", mode=0o750)
        assert stat.S_IMODE(script.stat().st_mode) == 0o750

        with pytest.raises(RemoteCommandFailed, match="over SFTP failed"):
            await put_file(conn, str(tmp_path / "no" / "dir" / "f"), b"x")
        with pytest.raises(InvalidInput):
            await put_file(conn, "relative/path", b"x")


async def test_remove_tree_stays_inside_its_root(ssh_hosts: SshHosts, tmp_path: Path) -> None:
    [info] = await ssh_hosts(1)
    root = tmp_path / "root"
    (root / "sbx1" / "deep").mkdir(parents=True)
    (root / "sbx1" / "deep" / "f").write_text("x")
    outside = tmp_path / "outside"
    (outside / "victim").mkdir(parents=True)
    (root / "sbx2").mkdir()
    (root / "sbx2" / "link").symlink_to(outside)
    async with session(info.name, info.host) as conn:
        await remove_tree(conn, str(root / "sbx1"), root=str(root))
        assert not (root / "sbx1").exists()
        await remove_tree(conn, str(root / "sbx1"), root=str(root))  # already gone: fine

        with pytest.raises(InvalidInput):
            await remove_tree(conn, str(root / ".." / "outside"), root=str(root))
        with pytest.raises(InvalidInput):
            await remove_tree(conn, str(root), root=str(root))
        with pytest.raises(RemoteCommandFailed) as refused:
            await remove_tree(conn, str(root / "sbx2" / "link" / "victim"), root=str(root))
        assert refused.value.exit_status == 3
        assert (outside / "victim").is_dir()

        await remove_tree(conn, str(root / "sbx2"), root=str(root))
        assert not (root / "sbx2").exists()
        assert (outside / "victim").is_dir()  # the link went, not its target


def make_tree(local: Path) -> None:
    (local / "sub" / "deeper").mkdir(parents=True)
    (local / "file.txt").write_text("hello\n")
    (local / "sub" / "deeper" / "data.bin").write_bytes(bytes(range(256)) * 64)
    (local / "run.sh").write_text("#!/bin/sh\necho run\n")
    (local / "run.sh").chmod(0o755)
    (local / "link").symlink_to("sub/deeper/data.bin")


def trees_to_mirror(tmp_path: Path) -> tuple[Path, Path]:
    """A local tree, and a remote directory holding a file the mirror must delete."""
    local, remote = tmp_path / "local", tmp_path / "remote" / "ws" / "repo"
    make_tree(local)
    remote.mkdir(parents=True)
    (remote / "stale.txt").write_text("old")
    return local, remote


def assert_mirrored(local: Path, remote: Path) -> None:
    assert (remote / "file.txt").read_text() == "hello\n"
    assert (remote / "sub" / "deeper" / "data.bin").read_bytes() == bytes(range(256)) * 64
    assert stat.S_IMODE((remote / "run.sh").stat().st_mode) == 0o755
    assert (remote / "link").is_symlink()
    assert os.readlink(remote / "link") == "sub/deeper/data.bin"
    assert not (remote / "stale.txt").exists()
    assert sorted(p.name for p in remote.iterdir()) == sorted(p.name for p in local.iterdir())


@pytest.mark.parametrize("prefer", ["auto", "sftp"])
async def test_sync_dir_mirrors_files_and_symlinks(
    ssh_hosts: SshHosts, tmp_path: Path, prefer: Literal["auto", "sftp"]
) -> None:
    [info] = await ssh_hosts(1)
    local, remote = trees_to_mirror(tmp_path)
    async with session(info.name, info.host) as conn:
        used = await sync_dir(info.name, info.host, conn, local, str(remote), prefer=prefer)
        assert used == ("rsync" if prefer == "auto" else "sftp")
        assert_mirrored(local, remote)
        # a second sync picks up changes and deletions
        (local / "file.txt").write_text("changed\n")
        (local / "run.sh").unlink()
        assert await sync_dir(info.name, info.host, conn, local, str(remote), prefer=prefer) == used
        assert (remote / "file.txt").read_text() == "changed\n"
        assert not (remote / "run.sh").exists()
        assert sorted(p.name for p in (tmp_path / "remote" / "ws").iterdir()) == ["repo"]


async def test_a_host_without_rsync_gets_the_tree_over_sftp(
    ssh_hosts: SshHosts, tmp_path: Path
) -> None:
    # A caller that already asked the host (ssh_workspace.claim) says it has no rsync:
    # the tree must still arrive, over SFTP, even though this machine has rsync.
    [info] = await ssh_hosts(1)
    local, remote = trees_to_mirror(tmp_path)
    async with session(info.name, info.host) as conn:
        used = await sync_dir(info.name, info.host, conn, local, str(remote), host_has_rsync=False)
    assert used == "sftp"
    assert_mirrored(local, remote)


@pytest.mark.parametrize("method", ["tar", "rsync", "sftp"])
async def test_a_synced_tree_keeps_no_set_user_or_group_id_bit(
    ssh_hosts: SshHosts, tmp_path: Path, method: str
) -> None:
    """A repo named by a path under SANDBOXER_INPUT_ROOTS is copied as it is on this machine:
    a set-user-id (or set-group-id) file there, anyone's own, became one in the sandbox's
    workspace on the host, owned there by whoever the copy made it (root over SFTP as root),
    for the sandbox and the host's users to run. The bits are stripped, as an uploaded
    archive's are when it is unpacked; the rest of the mode is kept."""
    [info] = await ssh_hosts(1)
    local, remote = tmp_path / "local", tmp_path / "remote" / "repo"
    (local / "bin").mkdir(parents=True)
    (local / "bin").chmod(0o2755)
    tool = local / "bin" / "tool"
    tool.write_text("#!/bin/sh\nid -u\n")
    tool.chmod(0o6755)
    (local / "group-only").write_text("g")
    (local / "group-only").chmod(0o2750)
    remote.mkdir(parents=True)
    async with session(info.name, info.host) as conn:
        used = await sync_dir(
            info.name,
            info.host,
            conn,
            local,
            str(remote),
            empty=method == "tar",
            host_has_rsync=method != "sftp",
        )
    assert used == method
    assert stat.S_IMODE((remote / "bin" / "tool").stat().st_mode) == 0o755
    assert stat.S_IMODE((remote / "group-only").stat().st_mode) == 0o750
    assert stat.S_IMODE((remote / "bin").stat().st_mode) == 0o755
    assert (remote / "bin" / "tool").read_text() == "#!/bin/sh\nid -u\n"


async def test_a_cancelled_sftp_sync_leaves_no_partial_copy(
    ssh_hosts: SshHosts, tmp_path: Path
) -> None:
    """Cancelled mid-upload (the worker stopping), the SFTP sync's staging copy stayed beside
    the sandboxes for good: nothing looks for it."""
    [info] = await ssh_hosts(1)
    local = tmp_path / "big"
    local.mkdir()
    for n in range(300):
        (local / f"f{n:03d}").write_bytes(b"x" * 200_000)
    remote = tmp_path / "root" / "sbx-cancelled1"
    async with session(info.name, info.host) as conn:
        syncing = asyncio.ensure_future(
            sync_dir(info.name, info.host, conn, local, str(remote), host_has_rsync=False)
        )
        async with asyncio.timeout(30):
            while not list(remote.parent.glob("*.sbx-sync-*")) and not syncing.done():
                await asyncio.sleep(0.01)
        syncing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await syncing
    assert list(remote.parent.glob("*.sbx-sync-*")) == []


@pytest.mark.parametrize("mode", ["host_key", "insecure"])
async def test_rsync_trusts_the_host_like_the_connection(
    ssh_hosts: SshHosts, tmp_path: Path, mode: str
) -> None:
    first, second = await ssh_hosts(2)
    fields = (
        {"host_key": first.host_public_key}
        if mode == "host_key"
        else {"insecure_accept_any_host_key": True}
    )
    host = HostConfig(
        address="127.0.0.1",
        port=first.port,
        user=first.host.user,
        key_file=str(first.key_file),
        **fields,
    )
    local, remote = tmp_path / "local", tmp_path / "remote"
    make_tree(local)
    async with session(first.name, host) as conn:
        assert await sync_dir(first.name, host, conn, local, str(remote)) == "rsync"
        assert_mirrored(local, remote)
        if mode == "host_key":
            # rsync's ssh checks the key on its own: a wrong one is refused there too
            wrong = host.model_copy(update={"host_key": second.host_public_key})
            with pytest.raises(HostKeyRejected):
                await sync_dir(first.name, wrong, conn, local, str(remote))


async def test_sync_dir_refuses_bad_paths(ssh_hosts: SshHosts, tmp_path: Path) -> None:
    [info] = await ssh_hosts(1)
    (tmp_path / "file").write_text("x")
    async with session(info.name, info.host) as conn:
        for local, remote in [
            (tmp_path / "absent", "/tmp/x"),
            (tmp_path / "file", "/tmp/x"),
            (tmp_path, "relative"),
            (tmp_path, "/tmp/../etc"),
            (tmp_path, "/"),
        ]:
            with pytest.raises(InvalidInput):
                await sync_dir(info.name, info.host, conn, local, remote)


async def test_hosts_file_written_for_the_service_loads(
    ssh_hosts: SshHosts, tmp_path: Path
) -> None:
    import yaml

    infos = await ssh_hosts(2)
    path = write_hosts_file(
        tmp_path / "home" / "hosts.yaml",
        infos,
        env={"DOCKER_HOST": "unix:///x.sock"},
        labels={"region": "eu"},
    )
    loaded = HostsFile.model_validate(yaml.safe_load(path.read_text())).hosts
    assert sorted(loaded) == ["host1", "host2"]
    assert loaded["host2"].port == infos[1].port
    assert loaded["host1"].env == {"DOCKER_HOST": "unix:///x.sock"}
    keyed = write_hosts_file(
        tmp_path / "keyed.yaml", infos[:1], known_hosts=None, host_key=infos[0].host_public_key
    )
    host = HostsFile.model_validate(yaml.safe_load(keyed.read_text())).hosts["host1"]
    assert host.known_hosts is None
    assert host.host_key == infos[0].host_public_key


COMPOSE = f"""\
services:
  app:
    image: {MINI_IMAGE}
    command: sleep 3600
    network_mode: none
    init: true
"""


def test_docker_engine_runs_compose(docker_engine: DockerEngine, tmp_path: Path) -> None:
    (tmp_path / "docker-compose.yml").write_text(COMPOSE)
    env = {**os.environ, **docker_engine.env}
    compose = ["docker-compose", "-p", "sbxlocal"]
    subprocess.run([*compose, "up", "-d"], cwd=tmp_path, env=env, check=True, capture_output=True)
    try:
        names = docker_engine.docker("ps", "--format", "{{.Names}}").stdout.split()
        assert names == ["sbxlocal_app_1"]
    finally:
        subprocess.run([*compose, "down"], cwd=tmp_path, env=env, check=True, capture_output=True)
    assert docker_engine.docker("ps", "-aq").stdout.split() == []


async def test_compose_up_and_down_over_ssh(
    docker_engine: DockerEngine, ssh_hosts: SshHosts, tmp_path: Path
) -> None:
    [info] = await ssh_hosts(1, env=docker_engine.env)
    project = tmp_path / "project"
    project.mkdir()
    (project / "docker-compose.yml").write_text(COMPOSE)
    remote = f"{info.host.workspace_root}/sbxcompose/repo"
    compose = ["docker-compose", "-p", "sbxcompose"]
    async with session(info.name, info.host) as conn:
        await sync_dir(info.name, info.host, conn, project, remote)
        await run(conn, [*compose, "up", "-d"], env=info.host.env, cwd=remote, timeout=120)
        try:
            listed = await run(conn, [*compose, "ps", "-q"], env=info.host.env, cwd=remote)
            assert len(listed.stdout.split()) == 1
            names = docker_engine.docker("ps", "--format", "{{.Names}}").stdout.split()
            assert names == ["sbxcompose_app_1"]
        finally:
            await run(conn, [*compose, "down"], env=info.host.env, cwd=remote, timeout=120)
        assert docker_engine.docker("ps", "-aq").stdout.split() == []
        await remove_tree(
            conn, f"{info.host.workspace_root}/sbxcompose", root=info.host.workspace_root
        )


async def test_input_to_a_command_that_exits_without_reading_it(ssh_hosts: SshHosts) -> None:
    """A command may end, and its channel close, before its input is sent, as a claim that
    finds its sandbox's place taken does: that is its exit, not a lost connection.

    The loop is held for a moment now and then, as a busy worker's is, so that the host's
    answer to the start and the command's end arrive together."""
    [info] = await ssh_hosts(1)

    async def hog() -> None:
        while True:
            time.sleep(0.02)
            await asyncio.sleep(0.001)

    async with session(info.name, info.host) as conn:
        busy = asyncio.create_task(hog())
        try:
            for _ in range(30):
                result = await run(conn, ["sh", "-c", "echo BUSY"], input="x\n", check=False)
                assert (result.exit_status, result.stdout) == (0, "BUSY\n")
        finally:
            busy.cancel()
