"""The input roots hold: no bus client makes a worker copy a file outside them into a sandbox.

A secret is planted outside the allowed root, then asked for as a directory
input in every way we could think of, through the bus, for ext.local and for
an SSH backend (ext.vm-packer on a real sshd "VM"). Every attempt must end in
a recorded event whose reason names SANDBOXER_INPUT_ROOTS (or, for values the
command parser refuses, a rejection), and the secret's bytes must appear in
no sandbox, no workspace on disk and no staging directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from sandboxer.bus.event_reader import read_events
from sandboxer.client import CommandFailed
from tests.integration.conftest import Service, reap_local, start_service
from tests.integration.remote_fixtures import SshHosts, write_hosts_file

pytestmark = [pytest.mark.integration]

SECRET = b"-----BEGIN OPENSSH PRIVATE KEY----- planted-secret-7f3a9c"


def plant(tmp_path: Path) -> dict[str, Path]:
    """tmp/secret/id_ed25519 outside the root; tmp/allowed (the root) with escape hatches."""
    secret_dir = tmp_path / "secret"
    secret_dir.mkdir()
    (secret_dir / "id_ed25519").write_bytes(SECRET)
    allowed = tmp_path / "allowed"
    project = allowed / "proj"
    project.mkdir(parents=True)
    (project / "ok.txt").write_text("allowed content\n")
    (project / "escape").symlink_to(secret_dir)  # a link inside the tree pointing out
    (project / "keylink").symlink_to(secret_dir / "id_ed25519")
    (allowed / "linkout").symlink_to(secret_dir)  # a link at the root's top pointing out
    (tmp_path / "linkroot").symlink_to(allowed)  # a symlinked root component
    return {"secret": secret_dir, "allowed": allowed, "project": project, "tmp": tmp_path}


def hostile_values(paths: dict[str, Path]) -> list[str]:
    secret, allowed, tmp = str(paths["secret"]), str(paths["allowed"]), str(paths["tmp"])
    return [
        secret,
        f"{secret}/id_ed25519",
        f"{allowed}/../secret",
        f"{allowed}/proj/../../secret",
        f"{allowed}/linkout",
        f"{allowed}/proj/escape",
        f"{tmp}/linkroot/../secret",
        f"/proc/self/root{secret}",
        f"/proc/{os.getpid()}/root{secret}",
        "/proc/self/cwd",
        "//" + secret.lstrip("/").replace("/", "//"),
        f"{allowed}//..//secret",
        f"{allowed}/proj/" + "x/" * 600 + "../" * 602 + "secret",
        "secret",
        "../secret",
        "./",
        "",
        "~",
        "~/.ssh",
        "/etc/ssh",
        "/",
    ]


async def assert_refused(service: Service, profile: str, inputs: dict[str, str]) -> None:
    with pytest.raises(CommandFailed) as caught:
        await service.client.create(profile, inputs)
    event: dict[str, Any] = caught.value.event
    reason = event.get("reason") or ""
    assert "SANDBOXER_INPUT_ROOTS" in reason, (inputs, event)
    assert event["type"] == "failed", event
    assert event["stage"] == "provision", event


async def assert_rejected(service: Service, profile: str, inputs: dict[str, str]) -> None:
    """Values the command parser refuses never reach a worker at all."""
    with pytest.raises(CommandFailed) as caught:
        await service.client.create(profile, inputs)
    assert caught.value.event["type"] == "rejected", caught.value.event
    assert caught.value.event["code"] == "invalid_input", caught.value.event


def assert_secret_nowhere(*trees: Path) -> None:
    for tree in trees:
        for directory, _dirs, files in os.walk(tree, followlinks=False):
            for name in files:
                path = Path(directory, name)
                if path.is_symlink():
                    continue  # a link is a path, not the bytes; only real files can hold it
                assert SECRET not in path.read_bytes(), path


async def assert_log_clean(service: Service) -> None:
    async for _seq, _subject, data, _pending in read_events(service.client.js):
        assert SECRET not in data


async def test_ext_local_refuses_every_path_outside_the_roots(
    nats_server: Any, home: Path, tmp_path: Path
) -> None:
    paths = plant(tmp_path)
    service = await start_service(home, nats_server.url, input_roots=(paths["allowed"],))
    try:
        for value in hostile_values(paths):
            await assert_refused(service, "profile.local", {"repo": value})
        await assert_rejected(service, "profile.local", {"repo": f"{paths['secret']}\0"})
        await assert_rejected(service, "profile.local", {"repo": "/" + "a/" * 2100})

        # Inside the root: accepted, and its links come along as links, never as bytes.
        ready = await service.client.create("profile.local", {"repo": str(paths["project"])})
        sandbox_id = ready["sandbox_id"]
        out: list[bytes] = []
        script = (
            "cat /workspace/ok.txt; cat /workspace/keylink /workspace/escape/id_ed25519; "
            "find / -name id_ed25519 2>/dev/null; ls -l /workspace; true"
        )
        code = await service.client.exec(
            sandbox_id, ["sh", "-c", script], lambda _s, data: out.append(data)
        )
        assert code == 0
        text = b"".join(out)
        assert b"allowed content" in text
        assert SECRET not in text
        assert b"id_ed25519" not in text.split(b"keylink")[0]  # find found nothing
        workspace = service.settings.local_root / sandbox_id / "workspace"
        assert (workspace / "keylink").is_symlink()
        assert_secret_nowhere(service.settings.local_root, service.settings.staging_root)
        await assert_log_clean(service)
    finally:
        await service.client.close()
        await service.shutdown()
        await reap_local(home)


async def test_a_tree_under_a_root_is_held_to_an_uploads_limits(
    nats_server: Any, home: Path, tmp_path: Path
) -> None:
    """What a root holds is not trusted: a sparse file of 64 MiB there takes no block, and
    ext.local copied all of it into the workspace of every sandbox asking for it, past the
    1 MiB an upload of the same tree may have (the same with 1 TiB, onto the worker's disk)."""
    root = tmp_path / "allowed"
    project = root / "proj"
    project.mkdir(parents=True)
    (project / "ok.txt").write_text("allowed content\n")
    with (project / "hole.img").open("wb") as hole:
        hole.truncate(64 * 1024 * 1024)
    service = await start_service(home, nats_server.url, input_roots=(root,), upload_max_mb=1)
    try:
        with pytest.raises(CommandFailed, match="more than 1 MiB of files") as caught:
            await service.client.create("profile.local", {"repo": str(project)})
        assert caught.value.event["type"] == "failed"
        assert not any(service.settings.local_root.glob("*/workspace/hole.img"))
        (project / "hole.img").unlink()
        ready = await service.client.create("profile.local", {"repo": str(project)})
        workspace = service.settings.local_root / ready["sandbox_id"] / "workspace"
        assert (workspace / "ok.txt").read_text() == "allowed content\n"
    finally:
        await service.client.close()
        await service.shutdown()
        await reap_local(home)


async def test_a_symlinked_root_contains_only_what_lies_under_its_target(
    nats_server: Any, home: Path, tmp_path: Path
) -> None:
    plant(tmp_path)
    service = await start_service(home, nats_server.url, input_roots=(tmp_path / "linkroot",))
    try:
        ready = await service.client.create("profile.local", {"repo": f"{tmp_path}/linkroot/proj"})
        assert ready["type"] == "ready"
        await assert_refused(service, "profile.local", {"repo": f"{tmp_path}/linkroot/../secret"})
        await assert_refused(service, "profile.local", {"repo": f"{tmp_path}/linkroot/linkout"})
        assert_secret_nowhere(service.settings.local_root)
    finally:
        await service.client.close()
        await service.shutdown()
        await reap_local(home)


async def test_no_roots_means_no_host_path(nats_server: Any, home: Path, tmp_path: Path) -> None:
    paths = plant(tmp_path)
    service = await start_service(home, nats_server.url, input_roots=())
    try:
        await assert_refused(service, "profile.local", {"repo": str(paths["project"])})
        await assert_refused(service, "profile.local", {"repo": str(paths["secret"])})
    finally:
        await service.client.close()
        await service.shutdown()
        await reap_local(home)


VM_PROFILE = """\
id: profile.test-vm
extension: ext.vm-packer
isolation: {level: policy}
network: {default: allow}
placement: {host_input: vm}
inputs:
  vm: {required: true}
  repo: {required: false}
"""


async def test_ssh_backend_refuses_every_path_outside_the_roots(
    nats_server: Any, home: Path, tmp_path: Path, ssh_hosts: SshHosts
) -> None:
    paths = plant(tmp_path)
    [host] = await ssh_hosts(1)
    (home / "profiles").mkdir()
    (home / "profiles" / "profile.test-vm.yaml").write_text(VM_PROFILE)
    write_hosts_file(home / "hosts.yaml", [host])
    service = await start_service(home, nats_server.url, input_roots=(paths["allowed"],))
    try:
        for value in hostile_values(paths):
            await assert_refused(service, "profile.test-vm", {"vm": "host1", "repo": value})
        ready = await service.client.create(
            "profile.test-vm", {"vm": "host1", "repo": str(paths["project"])}
        )
        workspace = Path(ready["reachability"]["workspace"])  # the "VM" is this machine
        assert (workspace / "ok.txt").read_text() == "allowed content\n"
        assert (workspace / "keylink").is_symlink()
        assert_secret_nowhere(workspace.parent, service.settings.staging_root)
        await assert_log_clean(service)
    finally:
        await service.client.close()
        await service.shutdown()
