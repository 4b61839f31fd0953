"""Directories travel through the Object Store: a client's own tree reaches any worker.

The service's workers accept no host path at all here (no input roots), so a
file reaching a sandbox can only have come through an upload. The client's
directory lies outside anything the worker could read by path, as it would
on another machine.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from sandboxer import subjects
from sandboxer.client import CommandFailed
from sandboxer.errors import WorkspaceRefused
from sandboxer.workspaces.bucket import open_or_create_bucket
from sandboxer.workspaces.limits import ArchiveLimits
from sandboxer.workspaces.materialize import DirectoryInputs
from sandboxer.workspaces.refs import object_name, object_ref
from tests.integration.conftest import Cli, Service, reap_local, start_service
from tests.integration.remote_fixtures import SshHosts, write_hosts_file

pytestmark = [pytest.mark.integration]


def client_tree(root: Path) -> Path:
    (root / "src").mkdir(parents=True)
    (root / "src" / "app.py").write_text("print('from the client')\n")
    (root / "build.sh").write_text("#!/bin/sh\necho built\n")
    (root / "build.sh").chmod(0o755)
    (root / "current").symlink_to("src/app.py")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    return root


@pytest.fixture
async def no_roots(nats_server: Any, home: Path) -> Any:
    service = await start_service(home, nats_server.url, input_roots=())
    try:
        yield service
    finally:
        await service.client.close()
        await service.shutdown()
        await reap_local(home)


async def run_in(service: Service, sandbox_id: str, script: str) -> tuple[int, str]:
    out: list[bytes] = []
    code = await service.client.exec(
        sandbox_id, ["sh", "-c", script], lambda _s, data: out.append(data)
    )
    return code, b"".join(out).decode()


async def test_a_client_directory_reaches_the_sandbox_through_the_bucket(
    no_roots: Service, tmp_path: Path
) -> None:
    tree = client_tree(tmp_path / "elsewhere" / "project")
    uploaded = await no_roots.client.upload_directory(tree, exclude=[".git"])
    assert uploaded.ref.startswith("object:sha256:")
    ready = await no_roots.client.create("profile.local", {"repo": uploaded.ref})
    code, out = await run_in(
        no_roots,
        ready["sandbox_id"],
        "cd /workspace && cat current && ./build.sh && readlink current && ls -A",
    )
    assert code == 0, out
    assert out.split("\n")[:3] == ["print('from the client')", "built", "src/app.py"]
    assert ".git" not in out.split()
    sandbox = await no_roots.client.get(ready["sandbox_id"])
    assert sandbox is not None
    assert sandbox["inputs"] == {"repo": uploaded.ref}  # the log holds the reference only
    assert not any(no_roots.settings.staging_root.iterdir())  # staging is gone once ready


async def test_the_same_tree_uploaded_twice_is_stored_once(
    no_roots: Service, tmp_path: Path
) -> None:
    client = no_roots.client
    tree = client_tree(tmp_path / "project")
    first = await client.upload_directory(tree)
    stream = f"OBJ_{subjects.WORKSPACES_BUCKET}"
    stored = (await client.js.stream_info(stream)).state
    (tree / "src" / "app.py").touch()  # a new mtime, the same content
    again = await client.upload_directory(tree)
    copy = client_tree(tmp_path / "copy")  # another checkout of the same tree
    third = await client.upload_directory(copy)
    assert first.stored
    assert not again.stored
    assert not third.stored
    assert first.ref == again.ref == third.ref
    after = (await client.js.stream_info(stream)).state
    # Nothing sent again: the same messages; only the metadata was written over (touched,
    # so the collection's grace starts over: docs/workspaces.md), a few bytes more each.
    assert after.messages == stored.messages
    assert after.bytes - stored.bytes < 200


async def test_a_tampered_object_is_refused(no_roots: Service, tmp_path: Path) -> None:
    client = no_roots.client
    honest = await client.upload_directory(client_tree(tmp_path / "project"))
    bucket = await open_or_create_bucket(client.js, 1)
    # Another archive stored under the honest one's name: its bytes do not hash to the name.
    other = await client.upload_directory(client_tree(tmp_path / "other") / "src")
    body = await bucket.get(object_name(other.sha256))
    await bucket.put(object_name(honest.sha256), body.data)
    with pytest.raises(CommandFailed, match="not the archive its name promises"):
        await client.create("profile.local", {"repo": honest.ref})
    with pytest.raises(CommandFailed, match="no uploaded workspace"):
        await client.create("profile.local", {"repo": object_ref("0" * 64)})
    with pytest.raises(CommandFailed, match="not a workspace reference"):
        await client.create("profile.local", {"repo": "object:sha256:../../etc"})


def evil_archive(tmp_path: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        link = tarfile.TarInfo("link")
        link.type, link.linkname = tarfile.SYMTYPE, str(tmp_path)
        tar.addfile(link)
        data = b"planted by a hostile archive"
        payload = tarfile.TarInfo("link/planted")
        payload.size = len(data)
        tar.addfile(payload, io.BytesIO(data))
    return buffer.getvalue()


async def test_a_hostile_archive_published_by_hand_is_refused(
    no_roots: Service, tmp_path: Path
) -> None:
    client = no_roots.client
    await client.upload_directory(client_tree(tmp_path / "project"))  # makes the bucket
    bucket = await open_or_create_bucket(client.js, 1)
    body = evil_archive(tmp_path)
    digest = hashlib.sha256(body).hexdigest()
    await bucket.put(object_name(digest), body)  # its name is honest; its content is not
    with pytest.raises(CommandFailed, match="leaves the workspace") as caught:
        await client.create("profile.local", {"repo": object_ref(digest)})
    assert caught.value.event["type"] == "failed"
    assert not (tmp_path / "planted").exists()


async def test_an_archive_nested_too_deep_is_refused_saying_so_and_leaves_nothing(
    no_roots: Service, tmp_path: Path
) -> None:
    """An archive whose directories nest 1500 deep (its names fit PATH_MAX, so it unpacks):
    ext.local's copy recursed per level and failed the sandbox with a bare "maximum
    recursion depth exceeded"; it is refused before a byte is written, naming the limit."""
    client = no_roots.client
    await client.upload_directory(client_tree(tmp_path / "project"))  # makes the bucket
    bucket = await open_or_create_bucket(client.js, 1)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for depth in range(1, 1501):
            entry = tarfile.TarInfo("/".join(["d"] * depth))
            entry.type = tarfile.DIRTYPE
            tar.addfile(entry)
    body = buffer.getvalue()
    digest = hashlib.sha256(body).hexdigest()
    await bucket.put(object_name(digest), body)
    with pytest.raises(CommandFailed, match="nests 257 names deep, more than the 256") as caught:
        await client.create("profile.local", {"repo": object_ref(digest)})
    assert caught.value.event["type"] == "failed"
    assert list(no_roots.settings.staging_root.glob("*-repo")) == []  # nothing staged stays


async def test_an_archive_whose_names_imply_more_directories_than_the_limit_is_refused(
    no_roots: Service, tmp_path: Path
) -> None:
    """1000 entries, each ``xN/d/d/.../f`` 250 deep, in an archive of 2 MiB: under the
    200,000 entries a worker accepts, they made 251,000 directories, copied into the
    sandbox's workspace, which became ready (at the limit, fifty million from 400 MiB)."""
    client = no_roots.client
    await client.upload_directory(client_tree(tmp_path / "project"))  # makes the bucket
    bucket = await open_or_create_bucket(client.js, 1)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for index in range(1000):
            tar.addfile(tarfile.TarInfo(f"x{index}/" + "d/" * 250 + "f"))
    body = buffer.getvalue()
    digest = hashlib.sha256(body).hexdigest()
    await bucket.put(object_name(digest), body)
    with pytest.raises(CommandFailed, match="makes more than 200000 entries") as caught:
        await client.create("profile.local", {"repo": object_ref(digest)})
    assert caught.value.event["type"] == "failed"
    assert list(no_roots.settings.staging_root.glob("*-repo")) == []


async def test_an_earlier_attempt_at_the_same_sandbox_leaves_the_later_ones_staging_whole(
    no_roots: Service, tmp_path: Path
) -> None:
    """Two attempts at one sandbox on one machine: a worker frozen past its job's ack wait
    resumes while the worker the job went to copies the staged tree into the sandbox. Both
    staged at ``<sandbox>-<input>``: the earlier one's start emptied the directory and
    unpacked into it again, and its end removed it, under the later one's copy, which then
    made a ready sandbox of whatever it had read by then."""
    client = no_roots.client
    uploaded = await client.upload_directory(client_tree(tmp_path / "project"))
    inputs = DirectoryInputs(
        client.js, roots=(), staging_root=no_roots.settings.staging_root, limits=ArchiveLimits()
    )
    wanted = {"repo": uploaded.ref}
    async with inputs.prepared("sbxtwoattempts1", wanted, {"repo"}) as later:
        tree = Path(later["repo"])
        made = sorted(str(path.relative_to(tree)) for path in tree.rglob("*"))
        assert "src/app.py" in made
        async with inputs.prepared("sbxtwoattempts1", wanted, {"repo"}) as earlier:
            pass
        assert sorted(str(path.relative_to(tree)) for path in tree.rglob("*")) == made
        assert earlier["repo"] != later["repo"]
    assert list(no_roots.settings.staging_root.glob("sbxtwoattempts1-*")) == []


async def test_the_cli_uploads_a_directory_input(
    no_roots: Service, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    cli = Cli(cli_env)
    tree = client_tree(tmp_path / "client-machine" / "project")
    result = await cli("create", "--input", f"repo={tree}", "--exclude", ".git", "--json")
    sandbox = json.loads(result.stdout)
    assert sandbox["inputs"]["repo"].startswith("object:sha256:")
    code, out = await run_in(no_roots, sandbox["sandbox_id"], "cat /workspace/src/app.py")
    assert (code, out) == (0, "print('from the client')\n")
    refused = await cli("create", "--no-upload", "--input", f"repo={tree}", check=False)
    assert refused.returncode == 2
    assert "SANDBOXER_INPUT_ROOTS" in refused.stderr


VM_PROFILE = """\
id: profile.test-vm
extension: ext.vm-packer
isolation: {level: policy}
network: {default: allow}
placement: {host_input: vm}
inputs:
  vm: {required: true}
  repo: {type: directory, required: false}
"""


async def test_an_ssh_backend_syncs_an_uploaded_directory(
    nats_server: Any, home: Path, tmp_path: Path, ssh_hosts: SshHosts
) -> None:
    [host] = await ssh_hosts(1)
    (home / "profiles").mkdir()
    (home / "profiles" / "profile.test-vm.yaml").write_text(VM_PROFILE)
    write_hosts_file(home / "hosts.yaml", [host])
    service = await start_service(home, nats_server.url, input_roots=())
    try:
        uploaded = await service.client.upload_directory(client_tree(tmp_path / "project"))
        ready = await service.client.create(
            "profile.test-vm", {"vm": "host1", "repo": uploaded.ref}
        )
        workspace = Path(ready["reachability"]["workspace"])
        assert (workspace / "src" / "app.py").read_text() == "print('from the client')\n"
        assert (workspace / "current").is_symlink()
        await service.client.destroy(ready["sandbox_id"])
    finally:
        await service.client.close()
        await service.shutdown()


async def test_a_recreate_fetches_the_upload_again(no_roots: Service, tmp_path: Path) -> None:
    client = no_roots.client
    uploaded = await client.upload_directory(client_tree(tmp_path / "project"))
    ready = await client.create("profile.local", {"repo": uploaded.ref})
    await run_in(no_roots, ready["sandbox_id"], "echo scratch > /workspace/src/app.py")
    again = await client.recreate(ready["sandbox_id"])
    code, out = await run_in(no_roots, again["sandbox_id"], "cat /workspace/src/app.py")
    assert (code, out) == (0, "print('from the client')\n")


async def test_a_worker_refuses_an_upload_over_its_limit(
    nats_server: Any, home: Path, tmp_path: Path
) -> None:
    service = await start_service(home, nats_server.url, input_roots=(), upload_max_mb=1)
    try:
        tree = tmp_path / "big"
        tree.mkdir()
        (tree / "blob").write_bytes(b"z" * (2 * 1024 * 1024))
        uploaded = await service.client.upload_directory(tree, max_mb=10)  # the client allows it
        with pytest.raises(CommandFailed, match="SANDBOXER_UPLOAD_MAX_MB"):
            await service.client.create("profile.local", {"repo": uploaded.ref})
        with pytest.raises(WorkspaceRefused, match="SANDBOXER_UPLOAD_MAX_MB"):
            await service.client.upload_directory(tree, max_mb=1)
    finally:
        await service.client.close()
        await service.shutdown()
        await reap_local(home)
