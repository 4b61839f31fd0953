"""ext.local puts the worker's staged copy of a directory input in place by a rename (the
same inodes, nothing left in the staging), and copies it when the staging lies on another
filesystem (the rename fails with EXDEV), on the real file system."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from sandboxer.errors import ExtensionError
from sandboxer.extensions.local import workspace
from sandboxer.extensions.local.workspace import Layout


def _staged(tmp_path: Path) -> Path:
    tree = tmp_path / "staging" / "sbx-repo-1" / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "a.txt").write_text("a\n")
    (tree / "link").symlink_to("../../elsewhere")
    tree.chmod(0o700)
    return tree


def _inodes(top: Path) -> dict[Path, int]:
    return {p.relative_to(top): p.lstat().st_ino for p in top.rglob("*")}


def test_the_staged_tree_is_renamed_into_the_new_workspace(tmp_path: Path) -> None:
    staged = _staged(tmp_path)
    before = _inodes(staged)
    layout = Layout(tmp_path / "local", "sbxtake00001")
    layout.create()
    mode = layout.workspace.stat().st_mode
    workspace.take_repo(staged, layout.workspace)
    assert _inodes(layout.workspace) == before
    assert not staged.exists()
    assert layout.workspace.stat().st_mode == mode  # not the staging's 0700
    assert os.readlink(layout.workspace / "link") == "../../elsewhere"


def test_a_staging_on_another_filesystem_is_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    staged = _staged(tmp_path)
    layout = Layout(tmp_path / "local", "sbxtake00002")
    layout.create()

    def across(_src: object, _dst: object) -> None:
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    monkeypatch.setattr(workspace.os, "rename", across)
    workspace.take_repo(staged, layout.workspace)
    assert (layout.workspace / "sub" / "a.txt").read_text() == "a\n"
    assert (layout.workspace / "link").is_symlink()
    assert (staged / "sub" / "a.txt").exists()  # copied; the staging goes with its owner


def test_a_failing_rename_names_the_paths(tmp_path: Path) -> None:
    staged = _staged(tmp_path)
    layout = Layout(tmp_path / "local", "sbxtake00003")
    layout.create()
    (layout.workspace / "left").write_text("not empty\n")
    with pytest.raises(ExtensionError, match="moving the staged repo"):
        workspace.take_repo(staged, layout.workspace)
