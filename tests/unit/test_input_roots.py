"""SANDBOXER_INPUT_ROOTS: parsing, and the containment check after symlinks and '..'."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandboxer.errors import InputOutsideRoots, SettingError, WorkspaceRefused
from sandboxer.workspaces.limits import ArchiveLimits
from sandboxer.workspaces.roots import (
    check_root_tree,
    hard_link_refusal,
    parse_input_roots,
    resolve_under_roots,
    stage_root_tree,
)


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


def planted(tmp_path: Path) -> tuple[Path, Path, Path]:
    """root/w/proj (a file, a link out) and, outside the root, a directory of secrets."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "w" / "proj").mkdir(parents=True)
    (root / "w" / "proj" / "ok.txt").write_text("ok\n")
    (root / "w" / "proj" / "out").symlink_to(outside / "proj" / "secret")
    (outside / "proj").mkdir(parents=True)
    (outside / "proj" / "secret").write_text("worker's secret\n")
    return root, root / "w" / "proj", outside


def test_the_copy_opens_the_tree_from_its_root_and_copies_links_as_links(tmp_path: Path) -> None:
    root, project, _outside = planted(tmp_path)
    real = resolve_under_roots("repo", str(project), (root,))
    check_root_tree("repo", real, (root,), ArchiveLimits())
    stage_root_tree(
        "repo", real, (root,), tmp_path / "tree", ArchiveLimits(), staging_root=tmp_path / "s"
    )
    assert (tmp_path / "tree" / "ok.txt").read_text() == "ok\n"
    assert (tmp_path / "tree" / "out").is_symlink()


def test_a_directory_above_the_tree_swapped_for_a_link_is_neither_walked_nor_copied(
    tmp_path: Path,
) -> None:
    """root/w swapped for a link to a directory of the worker's after the path was
    resolved: the walk and the copy open each name below the root without following it."""
    root, project, outside = planted(tmp_path)
    real = resolve_under_roots("repo", str(project), (root,))
    (root / "w").rename(root / "w.moved")
    (root / "w").symlink_to(outside)
    with pytest.raises(InputOutsideRoots, match="SANDBOXER_INPUT_ROOTS"):
        check_root_tree("repo", real, (root,), ArchiveLimits())
    with pytest.raises(InputOutsideRoots, match="SANDBOXER_INPUT_ROOTS"):
        stage_root_tree(
            "repo", real, (root,), tmp_path / "tree", ArchiveLimits(), staging_root=tmp_path
        )
    assert not (tmp_path / "tree").exists()


def test_the_copy_stops_at_the_limits_however_the_tree_grew_since_the_check(
    tmp_path: Path,
) -> None:
    root, project, _outside = planted(tmp_path)
    limits = ArchiveLimits(max_bytes=1024 * 1024)
    check_root_tree("repo", project, (root,), limits)
    with (project / "hole.img").open("wb") as hole:
        hole.truncate(64 * 1024 * 1024)  # no block of the root's disk; every byte in a copy
    with pytest.raises(WorkspaceRefused, match=r"input repo: .* more than 1 MiB") as caught:
        stage_root_tree("repo", project, (root,), tmp_path / "tree", limits, staging_root=tmp_path)
    assert "snapshot" not in str(caught.value)
    written = sum(path.stat().st_size for path in (tmp_path / "tree").rglob("*"))
    assert written <= 1024 * 1024


def test_a_tree_holding_the_workers_staging_is_refused(tmp_path: Path) -> None:
    """The worker's home under a root: the copy would copy the worker's files, and itself."""
    root, project, _outside = planted(tmp_path)
    with pytest.raises(InputOutsideRoots):
        stage_root_tree(
            "repo",
            root,
            (root,),
            project / "staging" / "tree",
            ArchiveLimits(),
            staging_root=project / "staging",
        )


def test_no_root_tree_is_copied_on_a_kernel_that_lets_anyone_hard_link_any_file(
    tmp_path: Path,
) -> None:
    """With fs.protected_hardlinks = 0 a root's writer could link /etc/shadow into the tree:
    the refusal names the setting and the command that mends it."""
    setting = tmp_path / "protected_hardlinks"
    setting.write_text("0\n")
    refusal = hard_link_refusal("repo", setting)
    assert refusal is not None
    assert "fs.protected_hardlinks = 0" in refusal
    assert "sysctl -w fs.protected_hardlinks=1" in refusal
    setting.write_text("1\n")
    assert hard_link_refusal("repo", setting) is None
    assert hard_link_refusal("repo", tmp_path / "absent") is None  # the kernel's default, 1
