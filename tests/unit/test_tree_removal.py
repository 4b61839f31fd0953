"""Removing trees shaped by a sandbox or a client, on the real file system: at any depth,
never through a link, and never out of the tree when a directory moves under the walk."""

from __future__ import annotations

import errno
import os
import subprocess
import threading
from pathlib import Path

import pytest

from sandboxer.incarnation import incarnation
from sandboxer.scratch import sweep_dead
from sandboxer.tree_removal import remove_tree


def nest(top: Path, depth: int, *, link_to: Path | None = None) -> None:
    """``top/d/d/...`` ``depth`` deep, as a sandbox makes it (``mkdir d; cd d``), with a file
    and (``link_to``) a link out every 500 levels."""
    top.mkdir(parents=True)
    directory = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for level in range(depth):
            os.mkdir("d", dir_fd=directory)
            below = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=directory)
            os.close(directory)
            directory = below
            if level % 500 == 0:
                fd = os.open("f", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=directory)
                os.close(fd)
                if link_to is not None:
                    os.symlink(link_to, "out", dir_fd=directory)
    finally:
        os.close(directory)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    kept = tmp_path / "outside"
    (kept / "sub").mkdir(parents=True)
    (kept / "sub" / "keep").write_text("host file")
    return kept


def test_a_tree_thousands_deep_is_removed_and_no_link_followed(
    tmp_path: Path, outside: Path
) -> None:
    top = tmp_path / "tree"
    nest(top, 5000, link_to=outside)
    remove_tree(top)
    assert not top.exists()
    assert (outside / "sub" / "keep").read_text() == "host file"


def test_a_link_or_a_file_at_the_top_is_unlinked_and_nothing_there_is_nothing_to_do(
    tmp_path: Path, outside: Path
) -> None:
    link = tmp_path / "link"
    link.symlink_to(outside)
    remove_tree(link)
    assert not link.is_symlink()
    assert (outside / "sub" / "keep").exists()
    remove_tree(tmp_path / "never-made")
    plain = tmp_path / "file"
    plain.write_text("x")
    remove_tree(plain)
    assert not plain.exists()


def test_wide_directories_and_every_kind_of_entry_go(tmp_path: Path, outside: Path) -> None:
    top = tmp_path / "tree"
    for branch in range(50):
        leaf = top / f"b{branch}" / "c" / "d"
        leaf.mkdir(parents=True)
        (leaf / "f").write_text("x")
        (leaf.parent / "to-outside").symlink_to(outside / "sub")
    os.mkfifo(top / "fifo")
    (top / "dangling").symlink_to(top / "nothing")
    remove_tree(top)
    assert not top.exists()
    assert (outside / "sub" / "keep").exists()


def test_threads_removing_one_deep_tree_at_once_all_succeed(tmp_path: Path) -> None:
    top = tmp_path / "tree"
    nest(top, 1500)
    for branch in range(20):
        (top / f"b{branch}" / "c").mkdir(parents=True)
    errors: list[BaseException] = []

    def remove() -> None:
        try:
            remove_tree(top)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=remove) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert not top.exists()


def test_a_directory_moved_out_from_under_the_walk_is_not_walked_out_of(
    tmp_path: Path, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory the walk is in, moved elsewhere meanwhile (by whoever else writes there):
    going back up through ``..`` would lead into wherever it went. The walk stops instead,
    and leaves that place alone."""
    top = tmp_path / "tree"
    (top / "a" / "b").mkdir(parents=True)
    inner = (top / "a" / "b").stat().st_ino
    real_scandir = os.scandir

    def moving_scandir(fd: int) -> object:
        if os.fstat(fd).st_ino == inner and (top / "a").exists():
            os.rename(top / "a", outside / "a")  # as the walk lists a/b
        return real_scandir(fd)

    monkeypatch.setattr(os, "scandir", moving_scandir)
    with pytest.raises(OSError, match="was moved while the tree was removed") as raised:
        remove_tree(top)
    monkeypatch.undo()
    assert raised.value.errno == errno.ESTALE
    assert (outside / "sub" / "keep").read_text() == "host file"
    assert sorted(path.name for path in outside.iterdir()) == ["a", "sub"]
    remove_tree(top)
    assert not top.exists()


def test_a_dead_workers_scratch_nested_two_thousand_deep_is_swept(tmp_path: Path) -> None:
    """What a copy of a deep directory left (a tar's tree, unpacked as deep as PATH_MAX lets
    it) made shutil.rmtree raise RecursionError through ignore_errors: the sweep at a
    worker's start raised, and the worker did not start."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    left = tmp_path / f"NuidOfACopy-{gone.pid}-{incarnation(os.getpid())}"
    nest(left / "tree", 2000)
    live = tmp_path / f"NuidOfALiveCopy-{os.getpid()}-{incarnation(os.getpid())}"
    live.mkdir()
    sweep_dead(tmp_path)
    assert not left.exists()
    assert live.exists()
