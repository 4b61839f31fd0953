"""copy_tree: what a sandbox swaps in while its workspace is copied is never followed."""

from __future__ import annotations

import os
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sandboxer.errors import WorkspaceRefused
from sandboxer.workspaces.limits import ArchiveLimits
from sandboxer.workspaces.tree_copy import copy_tree

SECRET = b"host-secret-bytes-9f2c"


def test_copies_files_directories_and_links_as_they_are(tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "run.sh").write_text("echo hi\n")
    (source / "sub" / "run.sh").chmod(0o750)
    (source / "notes").write_text("n")
    (source / "link").symlink_to("/etc/hostname")
    (source / "relative").symlink_to("sub/run.sh")
    os.mkfifo(source / "fifo")
    (source / ".sandboxer").mkdir()
    (source / ".sandboxer" / "secrets.env").write_text("TOKEN=x\n")
    destination = tmp_path / "destination"

    left_out = copy_tree(source, destination, leave_out={".sandboxer/secrets.env"})

    assert left_out.warnings() == ("left out 1 FIFO: fifo",)  # told, for a snapshot's user
    assert (destination / "sub" / "run.sh").read_text() == "echo hi\n"
    assert stat.S_IMODE((destination / "sub" / "run.sh").stat().st_mode) == 0o750
    assert os.readlink(destination / "link") == "/etc/hostname"
    assert os.readlink(destination / "relative") == "sub/run.sh"
    assert not (destination / "fifo").exists()  # reading a FIFO would block forever
    assert sorted(os.listdir(destination / ".sandboxer")) == []


def test_special_files_left_out_are_reported_by_kind_and_path(tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "run").mkdir(parents=True)
    os.mkfifo(source / "run" / "x.fifo")
    with socket.socket(socket.AF_UNIX) as bound:
        bound.bind(str(source / "sock"))
        left_out = copy_tree(source, tmp_path / "out")
    assert left_out.warnings() == ("left out 1 FIFO: run/x.fifo", "left out 1 socket: sock")
    assert sorted(os.listdir(tmp_path / "out")) == ["run"]


def test_a_copy_stops_at_its_limits_before_it_writes_past_them(tmp_path: Path) -> None:
    """A sparse file holds no block in the sandbox and every byte in the copy; a hard link's
    each name is a copy: the copy counts what it writes and stops at the limit."""
    source = tmp_path / "source"
    source.mkdir()
    with (source / "hole").open("wb") as hole:
        hole.truncate(64 * 1024 * 1024)
    destination = tmp_path / "out"
    with pytest.raises(WorkspaceRefused, match="more than 1 MiB of files"):
        copy_tree(source, destination, limits=ArchiveLimits(max_bytes=1024 * 1024))
    assert (destination / "hole").stat().st_size <= 1024 * 1024
    (source / "hole").unlink()
    (source / "one").write_text("x")
    for index in range(5):
        os.link(source / "one", source / f"link{index}")
    with pytest.raises(WorkspaceRefused, match="more than 4 entries"):
        copy_tree(source, tmp_path / "out2", limits=ArchiveLimits(max_entries=4))
    assert len(os.listdir(tmp_path / "out2")) == 4
    copy_tree(source, tmp_path / "out3")  # unbounded without limits (a provision's copy)
    assert len(os.listdir(tmp_path / "out3")) == 6


def test_a_snapshots_copy_of_a_workspace_nested_too_deep_is_refused_saying_so(
    tmp_path: Path,
) -> None:
    """A sandbox nests its workspace 600 deep: the copy, recursing twice per level, raised
    RecursionError and the snapshot failed with "maximum recursion depth exceeded". It stops
    at the depth a workspace archive may have, naming it."""
    source = tmp_path / "source"
    (source / "/".join(["d"] * 600)).mkdir(parents=True)
    with pytest.raises(WorkspaceRefused, match="nests 257 names deep, more than the 256"):
        copy_tree(source, tmp_path / "out", limits=ArchiveLimits())


def test_a_source_that_is_a_link_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    with pytest.raises(OSError, match=r"Too many levels of symbolic links|Not a directory"):
        copy_tree(tmp_path / "alias", tmp_path / "out")


def _swapping(workspace: Path, outside: Path) -> Callable[[], Iterator[None]]:
    """A thread that keeps renaming a link to ``outside`` over a file and a directory of
    ``workspace``, and back, as a sandbox's process could while its workspace is copied."""
    stop = threading.Event()

    def swap() -> None:
        link = workspace / ".link"
        while not stop.is_set():
            # The file: a link renamed over it, then a file renamed over the link.
            link.symlink_to(outside / "secret")
            os.replace(link, workspace / "file")
            (workspace / ".file").write_bytes(b"mine")
            os.replace(workspace / ".file", workspace / "file")
            # The directory: moved aside and a link put in its place, then back.
            os.rename(workspace / "dir", workspace / ".dir")
            link.symlink_to(outside)
            os.replace(link, workspace / "dir")
            (workspace / "dir").unlink()
            os.rename(workspace / ".dir", workspace / "dir")

    def running() -> Iterator[None]:
        thread = threading.Thread(target=swap, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    return running


def _regular_files(top: Path) -> Iterator[Path]:
    for directory, _dirs, files in os.walk(top):
        for name in files:
            path = Path(directory) / name
            if not path.is_symlink():
                yield path


def test_a_link_swapped_in_during_the_copy_is_never_followed(tmp_path: Path) -> None:
    """The swap lands between the listing and the open at some point in 300 copies; a
    copier that decides from the listing and then opens the path copies the host's file."""
    outside = tmp_path / "host"
    outside.mkdir()
    (outside / "secret").write_bytes(SECRET)
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / "file").write_bytes(b"mine")
    (workspace / "dir").mkdir()
    (workspace / "dir" / "secret").write_bytes(b"mine")
    leaked = []
    swaps = _swapping(workspace, outside)
    for _ in swaps():
        for round_no in range(300):
            destination = tmp_path / "copies" / str(round_no)
            copy_tree(workspace, destination)
            leaked += [p for p in _regular_files(destination) if p.read_bytes() == SECRET]
    assert leaked == []
