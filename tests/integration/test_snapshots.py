"""Snapshots on ext.local, for real: a round trip with file contents checked, refusals, a
snapshot racing a destroy, delete of shared and unshared data, and replay equal to live."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import httpx
import msgspec
import pytest
from nats.js.errors import NotFoundError

from sandboxer import subjects
from sandboxer.bus.event_reader import read_events
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.cli.key_commands import create_key
from sandboxer.client import CommandFailed, SandboxerClient
from sandboxer.ids import new_command_id
from tests.integration.conftest import Cli, Service, reap_local, serve_gateway, start_service
from tests.integration.test_lifecycle import event_types

pytestmark = pytest.mark.integration

NOTE = "written inside the sandbox before the snapshot\n"


async def run_in(client: SandboxerClient, sandbox_id: str, script: str) -> str:
    out = bytearray()

    async def collect(_stream: str, data: bytes) -> None:
        out.extend(data)

    code = await client.exec(sandbox_id, ["sh", "-c", script], collect)
    assert code == 0, out.decode()
    return out.decode()


async def test_a_snapshot_restores_into_a_new_sandbox_with_its_files(service: Service) -> None:
    client = service.client
    source = (await client.create())["sandbox_id"]
    await run_in(
        client,
        source,
        f"mkdir -p /workspace/sub && printf '{NOTE}' > /workspace/sub/note.txt "
        "&& ln -s sub/note.txt /workspace/link",
    )
    snapshot = await client.snapshot(source, name="before-change")
    assert snapshot["status"] == "created"
    assert (snapshot["sandbox_id"], snapshot["name"], snapshot["extension"]) == (
        source,
        "before-change",
        "ext.local",
    )
    assert snapshot["object"] == f"sha256-{snapshot['sha256']}"
    assert snapshot["size"] > 0
    # The source keeps running and can change without touching the snapshot.
    await run_in(client, source, "echo changed > /workspace/sub/note.txt")

    ready = await client.restore(snapshot["snapshot_id"])
    restored = ready["sandbox_id"]
    assert restored != source
    assert await run_in(client, restored, "cat /workspace/sub/note.txt") == NOTE
    assert await run_in(client, restored, "whoami") == "sandbox\n"  # its own user, named
    assert await run_in(client, restored, "readlink /workspace/link") == "sub/note.txt\n"
    assert await run_in(client, restored, "test ! -e /workspace/.sandboxer/secrets.env; echo ok")
    got = await client.get(restored)
    assert got is not None
    assert (got["restored_from"], got["profile"]) == (snapshot["snapshot_id"], "profile.local")
    listed = await client.snapshots(sandbox_id=source)
    assert [s["snapshot_id"] for s in listed] == [snapshot["snapshot_id"]]
    types = await event_types(client, source)
    assert types[-2:] == ["snapshot_started", "snapshot_finished"]
    report = await client.replay(verify=True)
    assert report["verified"], report["differences"]


async def test_snapshot_refusals_say_why(service: Service) -> None:
    client = service.client
    with pytest.raises(CommandFailed, match="no sandbox"):
        await client.snapshot("nosuchsandbox1")
    sandbox_id = (await client.create())["sandbox_id"]
    await client.destroy(sandbox_id)
    with pytest.raises(CommandFailed, match="is destroyed; a snapshot applies to a ready"):
        await client.snapshot(sandbox_id)
    with pytest.raises(CommandFailed, match="no such snapshot"):
        await client.restore("snp00000000000000000")


async def test_a_snapshot_and_a_destroy_racing_end_in_one_order(service: Service) -> None:
    client = service.client
    for round_ in range(4):
        sandbox_id = (await client.create())["sandbox_id"]
        await run_in(client, sandbox_id, "head -c 2000000 /dev/urandom > /workspace/blob")
        # Which command is published first alternates; the log orders them either way.
        if round_ % 2:
            destroy = asyncio.create_task(client.destroy(sandbox_id))
            snapshot = asyncio.create_task(client.snapshot(sandbox_id))
        else:
            snapshot = asyncio.create_task(client.snapshot(sandbox_id))
            destroy = asyncio.create_task(client.destroy(sandbox_id))
        done = await asyncio.gather(snapshot, destroy, return_exceptions=True)
        assert not isinstance(done[1], BaseException), done[1]
        types = await event_types(client, sandbox_id)
        assert types[-1] == "destroyed"
        if "snapshot_started" in types:
            # Snapshot first: the teardown waited for the copy, which succeeded.
            assert types.index("snapshot_started") < types.index("snapshot_finished")
            assert types.index("snapshot_finished") < types.index("destroyed")
            assert not isinstance(done[0], BaseException), done[0]
            assert done[0]["status"] == "created"
        else:
            # Destroy first: the snapshot was refused, nothing half-made.
            assert isinstance(done[0], CommandFailed)
            assert done[0].event["code"] == "not_snapshottable"
            assert "snapshot_finished" not in types


async def test_delete_removes_unshared_data_and_keeps_history(service: Service) -> None:
    client = service.client
    sandbox_id = (await client.create())["sandbox_id"]
    await run_in(client, sandbox_id, "echo same > /workspace/f")
    first = await client.snapshot(sandbox_id)
    second = await client.snapshot(sandbox_id)
    assert first["object"] == second["object"]  # content addressed: stored once
    bucket = await client.js.object_store(subjects.WORKSPACES_BUCKET)

    deleted = await client.delete_snapshot(first["snapshot_id"])
    assert deleted["object_removed"] is False  # the second still holds it
    await bucket.get_info(first["object"])
    again = await client.restore(second["snapshot_id"])
    assert await run_in(client, again["sandbox_id"], "cat /workspace/f") == "same\n"
    # The restored sandbox's input is that object (a recreate fetches it again): only once it
    # is destroyed may the last snapshot's delete remove the data.
    await client.destroy(again["sandbox_id"])

    deleted = await client.delete_snapshot(second["snapshot_id"])
    assert deleted["object_removed"] is True
    # The object is removed in reaction to the event, so a moment after it.
    async with asyncio.timeout(5):
        while True:
            try:
                await bucket.get_info(second["object"])
            except NotFoundError:
                break
            await asyncio.sleep(0.05)
    kept = await client.snapshot_get(second["snapshot_id"])
    assert kept is not None
    assert (kept["status"], kept["sha256"]) == ("deleted", second["sha256"])
    assert await client.snapshots(sandbox_id=sandbox_id) == []
    assert len(await client.snapshots(sandbox_id=sandbox_id, include_deleted=True)) == 2
    with pytest.raises(CommandFailed, match="already deleted"):
        await client.delete_snapshot(second["snapshot_id"], command_id=new_command_id())
    with pytest.raises(CommandFailed, match="it was deleted"):
        await client.restore(second["snapshot_id"])


async def test_a_backend_without_the_capability_refuses_before_any_work(
    nats_server: NatsServerProcess, home: Path
) -> None:
    declaration = (Path(__file__).parents[2] / "extensions" / "ext.local.yaml").read_text()
    (home / "extensions").mkdir()
    (home / "extensions" / "ext.local.yaml").write_text(
        declaration.replace("snapshot: true", "snapshot: false")
    )
    service = await start_service(home, nats_server.url)
    try:
        client = service.client
        sandbox_id = (await client.create())["sandbox_id"]
        with pytest.raises(CommandFailed) as refused:
            await client.snapshot(sandbox_id)
        assert refused.value.event["code"] == "snapshot_unsupported"
        assert "capabilities.snapshot" in refused.value.event["reason"]
        assert "snapshot_started" not in await event_types(client, sandbox_id)
        assert await client.snapshots(include_deleted=True) == []
    finally:
        await service.client.close()
        await service.shutdown()
        await reap_local(home)


async def test_the_cli_snapshots_lists_restores_and_deletes(
    service: Service, cli_env: dict[str, str], tmp_path: Path
) -> None:
    cli = Cli(cli_env)
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "README").write_text("from the cli\n")
    sandbox_id = json.loads((await cli("create", "--input", f"repo={repo}", "--json")).stdout)[
        "sandbox_id"
    ]
    taken = json.loads((await cli("snapshot", sandbox_id, "--name", "cli", "--json")).stdout)
    snapshot_id = taken["snapshot_id"]
    assert (taken["status"], taken["name"]) == ("created", "cli")
    human = (await cli("snapshots", "list")).stdout
    assert snapshot_id in human
    assert "created" in human
    shown = json.loads((await cli("snapshots", "get", snapshot_id, "--json")).stdout)
    assert shown["sha256"] == taken["sha256"]
    restored = json.loads(
        (await cli("restore", snapshot_id, "--sandbox-id", "restoredcli1", "--json")).stdout
    )
    assert (restored["sandbox_id"], restored["restored_from"]) == ("restoredcli1", snapshot_id)
    assert "restored_from" in (await cli("get", "restoredcli1")).stdout
    assert await run_in(service.client, "restoredcli1", "cat /workspace/README") == "from the cli\n"
    deleted = (await cli("snapshots", "delete", snapshot_id)).stdout
    assert f"deleted {snapshot_id}" in deleted
    gone = await cli("restore", snapshot_id, check=False)
    assert gone.returncode != 0
    assert "it was deleted" in gone.stderr


async def test_a_workspace_that_cannot_be_stored_fails_the_snapshot_and_says_why(
    service: Service,
) -> None:
    client = service.client
    sandbox_id = (await client.create())["sandbox_id"]
    await run_in(client, sandbox_id, "ln -s /etc/passwd /workspace/escape")
    with pytest.raises(CommandFailed) as failed:
        await client.snapshot(sandbox_id)
    assert "escape is a symlink to '/etc/passwd'" in failed.value.message
    assert "staging" not in failed.value.message  # no worker path in the reason
    [snapshot] = await client.snapshots(sandbox_id=sandbox_id)
    assert snapshot["status"] == "failed"
    got = await client.get(sandbox_id)
    assert got is not None
    assert (got["status"], got["snapshotting"]) == ("active", None)  # the sandbox is released
    await client.destroy(sandbox_id)


async def test_hard_links_are_copied_and_fifos_and_sockets_left_out(
    service: Service, home: Path, cli_env: dict[str, str]
) -> None:
    """What a sandbox's own code can make in its workspace never fails its snapshot: each
    name of a hard link is stored as a file of its own, FIFOs and sockets stay behind, and
    the snapshot says so: in its event, its view, the CLI and the HTTP API."""
    client = service.client
    source = (await client.create())["sandbox_id"]
    await run_in(
        client,
        source,
        "cd /workspace && echo linked > one && ln one two && mkfifo pipe && mkdir run && "
        "mkfifo run/x.fifo && python3 -c "
        "'import socket; socket.socket(socket.AF_UNIX).bind(\"sock\")' && test -S sock",
    )
    snapshot = await client.snapshot(source)
    warnings = ["left out 2 FIFOs: pipe, run/x.fifo", "left out 1 socket: sock"]
    assert snapshot["warnings"] == warnings  # the view's answer
    snapshot_id = snapshot["snapshot_id"]
    [created] = [
        msgspec.json.decode(data)
        async for _seq, _subject, data, _pending in read_events(
            client.js, filter_subject=subjects.snapshot_events_filter(snapshot_id)
        )
        if msgspec.json.decode(data)["type"] == "snapshot_created"
    ]
    assert created["warnings"] == warnings
    shown = await Cli(cli_env)("snapshots", "get", snapshot_id)
    assert [line for line in shown.stdout.splitlines() if line.startswith("warning:")] == [
        f"warning: {line}" for line in warnings
    ]
    admin = SandboxerClient(client.nc, actor={"type": "adm", "id": "pytest-admin"})
    key, _ = await create_key(admin, project="default", key_type="adm")
    async with (
        serve_gateway(service, home) as url,
        httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}) as api,
    ):
        assert (await api.get(f"/v1/snapshots/{snapshot_id}")).json()["warnings"] == warnings
    restored = (await client.restore(snapshot_id))["sandbox_id"]
    listing = "cd /workspace && ls -A | grep -v '^.sandboxer$'; cat two; stat -c %h one two"
    assert await run_in(client, restored, listing) == "one\nrun\ntwo\nlinked\n1\n1\n"


def _bytes_on_disk(root: Path) -> int:
    """The blocks the files under ``root`` hold (a sparse file counts what it wrote)."""
    total = 0
    for directory, _dirs, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(directory, name)).st_blocks * 512
            except FileNotFoundError:
                continue  # removed while this walked
    return total


async def test_a_sparse_file_does_not_fill_the_worker_s_disk_with_its_snapshot(
    nats_server: NatsServerProcess, home: Path
) -> None:
    """A sandbox may make a file of any length that holds no block (``truncate -s``). Its
    snapshot's copy wrote it out whole on the worker's disk (beside the event log) and only
    the packing refused it; now the copy stops at the limit (review 2026-12-04)."""
    service = await start_service(home, nats_server.url, upload_max_mb=1)
    try:
        client = service.client
        sandbox_id = (await client.create())["sandbox_id"]
        await run_in(
            client, sandbox_id, "truncate -s 300M /workspace/hole && echo a > /workspace/a"
        )
        staging = service.settings.staging_root
        peak = 0
        stop = asyncio.Event()

        async def watch() -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, await asyncio.to_thread(_bytes_on_disk, staging))
                await asyncio.sleep(0.01)

        watcher = asyncio.create_task(watch())
        try:
            with pytest.raises(CommandFailed) as failed:
                await client.snapshot(sandbox_id)
        finally:
            stop.set()
            await watcher
        assert "more than 1 MiB" in failed.value.message
        assert "SANDBOXER_UPLOAD_MAX_MB" in failed.value.message
        assert peak <= 4 * 1024 * 1024, f"the snapshot's copy held {peak} bytes on the disk"
        assert _bytes_on_disk(staging) == 0  # and nothing of it stays
        got = await client.get(sandbox_id)
        assert got is not None
        assert got["snapshotting"] is None  # the sandbox is released
        await client.destroy(sandbox_id)
    finally:
        await service.client.close()
        await service.shutdown()
        await reap_local(home)


ROUTED_RESTORE = """\
id: profile.restore-routed
route:
  strategy: explicit
  candidates: [ext.saas-stub, ext.local]
network: {default: allow}
inputs:
  repo: {type: directory, required: false}
"""
STUB_WITH_REPO = """\
id: profile.stub-repo
extension: ext.saas-stub
network: {default: allow}
inputs:
  repo: {type: directory, required: false}
"""


async def test_a_restore_never_lands_on_a_backend_that_drops_its_workspace(
    nats_server: NatsServerProcess, home: Path
) -> None:
    """ext.saas-stub (like the hosted backends) copies no directory input in: a restore routed
    there was made ready without the snapshot's files, and said nothing (review 2026-12-04).
    Now routing passes such a backend over for a restore, and a profile with no other
    candidate is not restorable."""
    from tests.integration.test_ext_saas_stub import write_override

    (home / "profiles").mkdir(parents=True, exist_ok=True)
    (home / "profiles" / "profile.restore-routed.yaml").write_text(ROUTED_RESTORE)
    (home / "profiles" / "profile.stub-repo.yaml").write_text(STUB_WITH_REPO)
    write_override(home, latency_ms=1, per_second=0, per_create=0)  # free: no credits
    roles = ["control", "projector", "ext.saas-stub", "ext.local"]
    service = await start_service(home, nats_server.url, roles)
    try:
        client = service.client
        source = (await client.create())["sandbox_id"]
        await run_in(client, source, f"printf '{NOTE}' > /workspace/note.txt")
        snapshot_id = (await client.snapshot(source))["snapshot_id"]

        # The stub comes first in the route, and is passed over: the files arrive.
        restored = (await client.restore(snapshot_id, profile="profile.restore-routed"))[
            "sandbox_id"
        ]
        got = await client.get(restored)
        assert got is not None
        assert (got["extension"], got["restored_from"]) == ("ext.local", snapshot_id)
        assert await run_in(client, restored, "cat /workspace/note.txt") == NOTE

        with pytest.raises(CommandFailed) as refused:
            await client.restore(snapshot_id, profile="profile.stub-repo")
        assert refused.value.event["code"] == "not_restorable"
        assert "ext.saas-stub, which does not copy its input 'repo'" in refused.value.message
        assert not list((home / "saas-stub").rglob("*.json"))  # nothing made at the stub
        await client.destroy(restored)
        await client.destroy(source)
    finally:
        await service.client.close()
        await service.shutdown()
        await reap_local(home)
