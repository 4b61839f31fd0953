"""On-disk layout of local sandboxes: ``<root>/<id>/{state.json,holder.log,workspace/}``.

Everything a sandbox owns on disk lives under its own directory so teardown is
one symlink-safe ``rmtree``. ``state.json`` is what lets a restarted worker
find (adopt) its sandboxes: it records the holder's pid together with its
start time, the cgroups and the warnings. Files written here never follow a
symlink that a copied repository could have planted (e.g. ``.sandboxer``
pointing to /etc).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shlex
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import msgspec

from sandboxer.errors import ExtensionError, InvalidInput
from sandboxer.extensions.local.file_swap import swap_into_place
from sandboxer.extensions.local.procs import ProcessRef
from sandboxer.tree_removal import remove_tree
from sandboxer.workspaces.tree_copy import copy_tree

__all__ = [
    "POOL_DIR",
    "Layout",
    "State",
    "chown_tree",
    "copy_repo",
    "read_state",
    "remove",
    "repo_source",
    "take_repo",
    "write_secrets",
    "write_state",
]

POOL_DIR = ".pool"
"""Under the root: warm pool members (docs/pools.md). Not a valid sandbox id, so the
inventory, stale detection and reaping never see them; the pool keeper owns them."""

_SECRET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SECRETS_FILE = Path(".sandboxer") / "secrets.env"


@dataclass(frozen=True)
class Layout:
    """Paths of one sandbox under the backend's root.

    Each path is made once per layout (``cached_property`` stores it beside the frozen
    fields): a create asks for them dozens of times, and joining paths was 3.6% of the
    service's CPU samples in a burst of 100 cold creates (py-spy, 2026-12-05)."""

    root: Path
    sandbox_id: str

    @cached_property
    def dir(self) -> Path:
        return self.root / self.sandbox_id

    @cached_property
    def workspace(self) -> Path:
        return self.dir / "workspace"

    @cached_property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    @cached_property
    def log_file(self) -> Path:
        return self.dir / "holder.log"

    def create(self) -> None:
        """Make the sandbox directory (private to root: secrets live below it) and workspace.

        The workspace is 0755 whatever the worker's umask: the holder, a root without
        capabilities, enters it once it is the sandbox user's, and made 0700 under a hardened
        unit's umask (077) no sandbox could start in it."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.dir.mkdir(mode=0o700)
        self.workspace.mkdir(mode=0o755)
        # mkdir's mode is cut by the umask. A look costs far less than a change of the inode
        # on the journalled disks here (docs/performance.md#file-system-costs-on-this-machine).
        if stat.S_IMODE(self.workspace.stat().st_mode) != 0o755:
            os.chmod(self.workspace, 0o755)


@dataclass(frozen=True, kw_only=True)
class State:
    """What ``state.json`` records about a sandbox."""

    sandbox_id: str
    created_at: str
    workspace: str
    holder_pid: int | None = None
    """The sandbox's init as seen from the host: nsenter target; killing it ends the sandbox."""
    holder_start_time: int | None = None
    monitor_pid: int | None = None
    """The outer bwrap process that waits for the holder."""
    monitor_start_time: int | None = None
    cgroups: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    egress: dict[str, Any] | None = None
    """The sandbox's own network when it may reach anything (``egress.EgressState``)."""
    pool_member: str | None = None
    """The warm pool member this sandbox was claimed from: its cgroups and network namespace
    keep the member's name (docs/pools.md)."""
    made_by: list[int] | None = None
    """``[generation, attempt]`` of the provisioning that made it (a first claim of a pool
    member records none): an earlier one, resumed after its job went to another worker,
    must not unmake it."""
    uid: int | None = None
    """The host uid (and gid, the same number) its commands run as and its workspace belongs
    to, its own (:mod:`.sandbox_uids`), recorded before anything runs as it; a claimed pool
    member keeps its member's. None: made by a worker without root, or before each sandbox
    had a uid of its own (it runs as 65534, ``nobody``)."""

    @property
    def holder(self) -> ProcessRef | None:
        if self.holder_pid is None or self.holder_start_time is None:
            return None
        return ProcessRef(self.holder_pid, self.holder_start_time)

    @property
    def monitor(self) -> ProcessRef | None:
        if self.monitor_pid is None or self.monitor_start_time is None:
            return None
        return ProcessRef(self.monitor_pid, self.monitor_start_time)

    def holder_alive(self) -> bool:
        holder = self.holder
        return holder is not None and holder.alive()


def write_state(layout: Layout, state: State) -> None:
    """Write ``state.json``; a record that exists is replaced atomically, so a reader or a
    crash never meets half of it.

    The first record is written in place: until its one write lands, a reader finds an
    empty file, which it takes as none (:func:`read_state`), as it took the missing file
    before; that saves a rename, a change of the directory that costs a tenth of a
    millisecond or more on the journalled disks here."""
    record = msgspec.json.format(msgspec.json.encode(state), indent=2)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    try:
        _write_all(os.open(layout.state_file, flags, 0o600), record)
        return
    except FileExistsError:
        pass
    tmp = layout.dir / "state.json.tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # a crash's leftover: half a new record, or a swapped-out old one
    _write_all(os.open(tmp, flags, 0o600), record)
    swap_into_place(tmp, layout.state_file)


def _write_all(fd: int, data: bytes) -> None:
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)  # one write


def read_state(layout: Layout) -> State | None:
    """The recorded state, or None when missing or unreadable (a partial provision)."""
    if layout.dir.is_symlink():  # never trust pids or paths reached through a planted link
        return None
    try:
        raw: Any = json.loads(layout.state_file.read_bytes())  # UTF-8, as written
        return State(**raw)
    except (OSError, ValueError, TypeError):
        return None


def repo_source(value: str, sandbox_id: str) -> Path:
    """Check the ``repo`` input before anything is created: an existing host directory."""
    source = Path(value).expanduser()
    if not source.exists():
        raise InvalidInput(
            f"input repo={value!r}: no such path on this host; pass an existing directory",
            sandbox_id=sandbox_id,
            extension="ext.local",
        )
    if not source.is_dir():
        raise InvalidInput(
            f"input repo={value!r} is not a directory; pass the repository's top directory",
            sandbox_id=sandbox_id,
            extension="ext.local",
        )
    return source.resolve()


def copy_repo(source: Path, workspace: Path) -> None:
    """Copy ``source``'s contents into ``workspace``; symlinks are copied as links, never followed."""
    if workspace.resolve().is_relative_to(source):
        raise InvalidInput(
            f"input repo={str(source)!r} contains the sandbox root {workspace}; "
            "choose a directory outside it",
            extension="ext.local",
        )
    try:
        copy_tree(source, workspace)  # opened by descriptor: a link swapped in is never followed
    except OSError as exc:
        raise ExtensionError(
            f"copying repo {source} into {workspace} failed: {exc}; check that the files are "
            "readable by the sandboxer worker",
            extension="ext.local",
        ) from exc


def take_repo(staged: Path, workspace: Path) -> None:
    """Put the worker's own staged copy ``staged`` in place as the new, empty ``workspace``:
    renamed when both lie on one filesystem, copied (:func:`copy_repo`) otherwise.

    Only for a tree the worker staged for this provisioning alone (``ProvisionRequest.staged``,
    :mod:`sandboxer.workspaces.materialize`): the staging copy already opened every name by
    descriptor without following a link and held the tree to the limits, into a directory
    (0700) no one else writes, so its entries are exactly what a second copy would make,
    and a rename follows no link. The workspace keeps the mode it was made with (the copy
    never changed it); the caller hands the tree to the sandbox's user afterwards as it does
    a copy (:func:`chown_tree`, which also clears set-id bits). A copy of a 200 MiB tree
    cost some 0.5 s, the rename nothing (docs/workspaces.md)."""
    mode = os.lstat(workspace).st_mode & 0o7777
    try:
        os.rename(staged, workspace)  # replaces the empty directory layout.create() made
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise ExtensionError(
                f"moving the staged repo {staged} into {workspace} failed: {exc}; check the "
                "worker's home (staging and the local root) is writable",
                extension="ext.local",
            ) from exc
        copy_repo(staged, workspace)  # the staging lies on another filesystem
        return
    os.chmod(workspace, mode)


def chown_tree(top: Path, uid: int, gid: int) -> None:
    """Hand the workspace to the sandbox's user; symlinks themselves, never their targets."""
    os.lchown(top, uid, gid)
    for directory, dirnames, filenames in os.walk(top, followlinks=False):
        for name in (*dirnames, *filenames):
            os.lchown(os.path.join(directory, name), uid, gid)


def check_secret_names(secrets: Mapping[str, str], sandbox_id: str) -> None:
    for name in secrets:
        if not _SECRET_NAME.fullmatch(name):
            raise InvalidInput(
                f"secret name {name!r} is not a valid variable name (letters, digits, '_')",
                sandbox_id=sandbox_id,
                extension="ext.local",
            )


def write_secrets(
    workspace: Path, secrets: Mapping[str, str], owner: tuple[int, int] | None
) -> Path:
    """Write ``.sandboxer/secrets.env`` (mode 0600, ``NAME='value'`` lines) without following links."""
    directory = workspace / SECRETS_FILE.parent
    if directory.is_symlink() or (directory.exists() and not directory.is_dir()):
        directory.unlink()
    directory.mkdir(mode=0o700, exist_ok=True)
    target = workspace / SECRETS_FILE
    if target.is_symlink() or target.exists():
        target.unlink()
    body = "".join(f"{name}={shlex.quote(value)}\n" for name, value in secrets.items())
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        if owner is not None:
            os.fchown(fd, *owner)
        os.write(fd, body.encode())
    finally:
        os.close(fd)
    if owner is not None:
        os.lchown(directory, *owner)
    return target


def remove(layout: Layout) -> None:
    """Delete the sandbox directory; a symlink in its place is unlinked, never followed.

    Another worker may be removing it at the same moment (a restarted worker's reconcile
    and a destroy's job): what it removed first is not a failure, what is left is removed.
    The workspace is nested as deep as the sandbox chose: removed at any depth
    (:mod:`sandboxer.tree_removal`).
    """
    remove_tree(layout.dir)
