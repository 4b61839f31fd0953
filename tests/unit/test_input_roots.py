"""SANDBOXER_INPUT_ROOTS: parsing, and the containment check after symlinks and '..'."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandboxer.errors import InputOutsideRoots, SettingError
from sandboxer.workspaces.roots import parse_input_roots, resolve_under_roots


def test_roots_are_absolute_existing_directories_resolved(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    assert parse_input_roots(f"{tmp_path}/link::{real}") == (real, real)
    assert parse_input_roots("") == ()
    for bad in ("relative/dir", f"{tmp_path}/missing", "/", "/tmp/../"):
        with pytest.raises(SettingError, match="SANDBOXER_INPUT_ROOTS"):
            parse_input_roots(bad)


def test_containment_is_checked_after_resolution(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "repo").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (root / "out").symlink_to(tmp_path / "outside")
    (tmp_path / "rootlink").symlink_to(root)
    assert resolve_under_roots("repo", f"{root}/repo", (root,)) == root / "repo"
    assert resolve_under_roots("repo", str(root), (root,)) == root
    assert resolve_under_roots("repo", f"{root}/repo", (tmp_path / "rootlink",)) == root / "repo"
    for value in (
        f"{root}/out",
        f"{root}/../outside",
        f"{tmp_path}/rootlink/../outside",
        f"{root}/missing",
        f"{root}x/repo",  # a sibling whose name starts like the root
        "repo",
        "",
        f"{root}/repo\0",
        "/" + "a" * 5000,
    ):
        with pytest.raises(InputOutsideRoots, match="SANDBOXER_INPUT_ROOTS"):
            resolve_under_roots("repo", value, (root,))
    with pytest.raises(InputOutsideRoots, match="not set"):
        resolve_under_roots("repo", f"{root}/repo", ())
