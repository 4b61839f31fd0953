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
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sandboxer.bus.event_reader import read_events
from sandboxer.client import CommandFailed
from sandboxer.workspaces import materialize
from tests.integration.conftest import Service, reap_local, serving, start_service
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
    async with serving(
        home, nats_server.url, input_roots=(paths["allowed"],), reap=True
    ) as service:
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
    async with serving(
        home, nats_server.url, input_roots=(root,), upload_max_mb=1, reap=True
    ) as service:
        with pytest.raises(CommandFailed, match="more than 1 MiB of files") as caught:
            await service.client.create("profile.local", {"repo": str(project)})
        assert caught.value.event["type"] == "failed"
        assert not any(service.settings.local_root.glob("*/workspace/hole.img"))
        (project / "hole.img").unlink()
        ready = await service.client.create("profile.local", {"repo": str(project)})
        workspace = service.settings.local_root / ready["sandbox_id"] / "workspace"
        assert (workspace / "ok.txt").read_text() == "allowed content\n"


async def test_a_symlinked_root_contains_only_what_lies_under_its_target(
    nats_server: Any, home: Path, tmp_path: Path
) -> None:
    plant(tmp_path)
    async with serving(
        home, nats_server.url, input_roots=(tmp_path / "linkroot",), reap=True
    ) as service:
        ready = await service.client.create("profile.local", {"repo": f"{tmp_path}/linkroot/proj"})
        assert ready["type"] == "ready"
        await assert_refused(service, "profile.local", {"repo": f"{tmp_path}/linkroot/../secret"})
        await assert_refused(service, "profile.local", {"repo": f"{tmp_path}/linkroot/linkout"})
        assert_secret_nowhere(service.settings.local_root)


async def test_no_roots_means_no_host_path(nats_server: Any, home: Path, tmp_path: Path) -> None:
    paths = plant(tmp_path)
    async with serving(home, nats_server.url, input_roots=(), reap=True) as service:
        await assert_refused(service, "profile.local", {"repo": str(paths["project"])})
        await assert_refused(service, "profile.local", {"repo": str(paths["secret"])})


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


# A root's writer is not trusted and may change the tree while the worker reads it: it
# checks the tree (names and sizes), then copies it. The writer's moves below are made at
# the worker's worst moment, right after its check (check_root_tree, wrapped), or by a
# thread racing every copy; afterwards the secret must be nowhere.


def plant_outside(tmp_path: Path) -> tuple[Path, Path, Path]:
    """root/w/proj (asked for) and, outside the root, tmp/outside/proj holding the secret:
    the writer's stand-in for /etc or $SANDBOXER_HOME, whose files the worker can read."""
    root = tmp_path / "allowed"
    project = root / "w" / "proj"
    (project / "sub").mkdir(parents=True)
    (project / "ok.txt").write_text("allowed content\n")
    (project / "sub" / "note.txt").write_text("note\n")
    outside = tmp_path / "outside"
    (outside / "proj" / "sub").mkdir(parents=True)
    for directory in (outside, outside / "proj", outside / "proj" / "sub"):
        (directory / "id_ed25519").write_bytes(SECRET)
    return root, project, outside


def after_the_check(monkeypatch: pytest.MonkeyPatch, move: Callable[[], None]) -> None:
    """Run the root's writer's ``move`` once, just after the worker's check passed."""
    check = materialize.check_root_tree

    def check_then_move(*args: Any) -> None:
        check(*args)
        move()

    monkeypatch.setattr(materialize, "check_root_tree", check_then_move)


def swap_for_link(directory: Path, target: Path) -> None:
    directory.rename(directory.with_name(directory.name + ".moved"))
    directory.symlink_to(target)


async def vm_service(
    nats_server: Any, home: Path, root: Path, ssh_hosts: SshHosts, **extra: Any
) -> tuple[Service, Path]:
    """A service with ext.vm-packer on a real sshd "VM" (this machine), and where that VM
    keeps its workspaces."""
    [host] = await ssh_hosts(1)
    (home / "profiles").mkdir()
    (home / "profiles" / "profile.test-vm.yaml").write_text(VM_PROFILE)
    write_hosts_file(home / "hosts.yaml", [host])
    service = await start_service(home, nats_server.url, input_roots=(root,), **extra)
    assert host.host.workspace_root is not None
    return service, Path(host.host.workspace_root)


@pytest.mark.parametrize("backend", ["local", "vm"])
async def test_a_directory_above_the_input_swapped_for_a_link_after_the_check_is_not_followed(
    nats_server: Any,
    home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    backend: str,
    ssh_hosts: SshHosts,
) -> None:
    """The path asked for was resolved and checked, then its writer swapped root/w for a
    link to a directory of the worker's: every backend's copy opened root/w/proj by its
    path, following the link, and copied the worker's files into the sandbox (ext.local:
    its descriptor walk opened only the top by path; the SSH backends' tar read the whole
    tree by path). Fails on the code before 2026-12-04's fix (ready, the secret inside)."""
    root, project, outside = plant_outside(tmp_path)
    after_the_check(monkeypatch, lambda: swap_for_link(root / "w", outside))
    host_workspaces = tmp_path / "none"
    if backend == "local":
        service = await start_service(home, nats_server.url, input_roots=(root,))
        profile, inputs = "profile.local", {"repo": str(project)}
    else:
        service, host_workspaces = await vm_service(nats_server, home, root, ssh_hosts)
        profile, inputs = "profile.test-vm", {"vm": "host1", "repo": str(project)}
    try:
        await assert_refused(service, profile, inputs)
        assert_secret_nowhere(
            service.settings.local_root, service.settings.staging_root, host_workspaces
        )
        await assert_log_clean(service)
    finally:
        await service.client.close()
        await service.shutdown()
        await reap_local(home)


async def test_a_tree_grown_past_the_limits_after_the_check_is_not_copied_past_them(
    nats_server: Any, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check saw 16 bytes; then the writer made a sparse file of 64 MiB (no block of
    the root's disk): ext.local copied it whole into the workspace, past the 1 MiB limit
    the check held the tree to (with 1 TiB, onto the worker's disk). Now the copy itself
    stops at the limit. Fails on the code before 2026-12-04's fix (ready, 64 MiB inside)."""
    root, project, _outside = plant_outside(tmp_path)

    def grow() -> None:
        with (project / "hole.img").open("wb") as hole:
            hole.truncate(64 * 1024 * 1024)

    after_the_check(monkeypatch, grow)
    async with serving(
        home, nats_server.url, input_roots=(root,), upload_max_mb=1, reap=True
    ) as service:
        with pytest.raises(CommandFailed, match="more than 1 MiB of files") as caught:
            await service.client.create("profile.local", {"repo": str(project)})
        assert caught.value.event["type"] == "failed"
        assert not any(service.settings.local_root.glob("*/workspace/hole.img"))
        assert not any(service.settings.staging_root.rglob("hole.img"))  # removed at once


class Swapper(threading.Thread):
    """The root's writer, racing every copy: swaps root/w, proj/sub and proj/ok.txt for
    links to the secret's directory (or file) and back, as fast as it can."""

    def __init__(self, root: Path, project: Path, outside: Path) -> None:
        super().__init__(daemon=True)
        self.root, self.project, self.outside = root, project, outside
        self.done = threading.Event()
        self.swaps = 0

    def run(self) -> None:
        top, sub, file = self.root / "w", self.project / "sub", self.project / "ok.txt"
        (self.root / "w.link").symlink_to(self.outside)
        (self.project / "sub.link").symlink_to(self.outside / "proj" / "sub")
        (self.project / "ok.link").symlink_to(self.outside / "proj" / "id_ed25519")
        while not self.done.is_set():
            self._swap(sub, self.project / "sub.link", self.project / "sub.real")
            self._swap(top, self.root / "w.link", self.root / "w.real")
            os.replace(self.project / "ok.link", file)
            (self.project / "ok.new").write_text("allowed content\n")
            os.replace(self.project / "ok.new", file)
            (self.project / "ok.link").symlink_to(self.outside / "proj" / "id_ed25519")
            self.swaps += 1

    @staticmethod
    def _swap(directory: Path, link: Path, aside: Path) -> None:
        directory.rename(aside)
        link.rename(directory)
        directory.rename(link)
        aside.rename(directory)


@pytest.mark.parametrize("backend", ["local", "vm"])
async def test_a_tree_swapped_about_while_it_is_copied_carries_no_file_of_the_worker(
    nats_server: Any,
    home: Path,
    tmp_path: Path,
    backend: str,
    ssh_hosts: SshHosts,
) -> None:
    """Links swapped in and out of the tree (a directory above the input, one inside it, a
    file) while creates copy it, racing every step: each create is refused or made, and no
    byte of the secret reaches a sandbox, a workspace, the staging or the log. This proves
    what holds (the copy opens every name by its directory's descriptor, never following a
    link, into the worker's own staging); it need not fail on the old code, where a race
    is needed to lose."""
    root, project, outside = plant_outside(tmp_path)
    host_workspaces = tmp_path / "none"
    if backend == "local":
        service = await start_service(home, nats_server.url, input_roots=(root,))
        profile, inputs = "profile.local", {"repo": str(project)}
    else:
        service, host_workspaces = await vm_service(nats_server, home, root, ssh_hosts)
        profile, inputs = "profile.test-vm", {"vm": "host1", "repo": str(project)}
    swapper = Swapper(root, project, outside)
    outcomes: list[str] = []
    try:
        swapper.start()
        # At least 8 creates, and on until the swapper has swapped 100 times: how many swaps
        # fit in 8 creates depends on the machine's speed, and the race must run all along.
        while len(outcomes) < 8 or (swapper.swaps < 100 and len(outcomes) < 64):
            try:
                ready = await service.client.create(profile, inputs)
            except CommandFailed as failed:
                outcomes.append(failed.event["type"])
            else:
                outcomes.append(ready["type"])
        swapper.done.set()
        swapper.join()
        assert swapper.swaps >= 100, (swapper.swaps, len(outcomes))  # the race ran all along
        assert set(outcomes) <= {"ready", "failed"}, outcomes
        assert_secret_nowhere(
            service.settings.local_root, service.settings.staging_root, host_workspaces
        )
        await assert_log_clean(service)
    finally:
        swapper.done.set()
        await service.client.close()
        await service.shutdown()
        await reap_local(home)


async def test_ext_local_moves_its_staged_copy_into_the_workspace(
    nats_server: Any, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tree is copied once, by descriptors, into the worker's staging, and that copy is
    renamed into the workspace: the workspace's entries are the staged inodes, and nothing
    of the tree stays in the staging. Before, ext.local copied the staged tree a second
    time (other inodes). What the copy gave still holds after a move: links stay links,
    every entry is the sandbox's user's, a set-id bit is gone, the workspace keeps the
    mode it is made with."""
    root, project, _outside = plant_outside(tmp_path)
    (project / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (project / "run.sh").chmod(0o6755)
    (project / "keylink").symlink_to("../../outside/proj/id_ed25519")
    staged: dict[Path, int] = {}
    stage = materialize.stage_root_tree

    def stage_and_note(*args: Any, **kwargs: Any) -> None:
        stage(*args, **kwargs)
        destination = args[3]
        staged.update(
            {p.relative_to(destination): p.lstat().st_ino for p in destination.rglob("*")}
        )

    monkeypatch.setattr(materialize, "stage_root_tree", stage_and_note)
    async with serving(home, nats_server.url, input_roots=(root,), reap=True) as service:
        ready = await service.client.create("profile.local", {"repo": str(project)})
        plain = await service.client.create("profile.local")  # no input: nothing moved
        workspace = service.settings.local_root / ready["sandbox_id"] / "workspace"
        placed = {
            p.relative_to(workspace): p.lstat().st_ino
            for p in workspace.rglob("*")
            if p.relative_to(workspace).parts[0] != ".sandboxer"
        }
        assert {Path("ok.txt"), Path("sub/note.txt"), Path("run.sh"), Path("keylink")} <= set(
            staged
        )
        assert placed == staged  # the same inodes: moved, not copied again
        assert not list(service.settings.staging_root.rglob("ok.txt"))
        assert (workspace / "keylink").is_symlink()
        made = (service.settings.local_root / plain["sandbox_id"] / "workspace").stat()
        assert workspace.stat().st_mode == made.st_mode
        owner = workspace.stat().st_uid
        assert owner != 0
        assert {p.lstat().st_uid for p in workspace.rglob("*")} == {owner}
        assert (workspace / "run.sh").stat().st_mode & 0o7777 == 0o755
        out: list[bytes] = []
        code = await service.client.exec(
            ready["sandbox_id"],
            ["sh", "-c", "cat /workspace/ok.txt /workspace/sub/note.txt; id -u"],
            lambda _s, data: out.append(data),
        )
        assert code == 0
        assert b"".join(out) == f"allowed content\nnote\n{owner}\n".encode()
