"""``sandboxer doctor``'s cgroup check, on fake cgroup trees: v1 and v2 both pass."""

from __future__ import annotations

from pathlib import Path

from sandboxer.cli.doctor import cgroups_check


def test_cgroup_v2_with_the_controllers_is_ok(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    check = cgroups_check(tmp_path)
    assert check.ok, check
    assert "v2" in check.detail


def test_cgroup_v2_without_a_controller_names_it(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu io\n")
    check = cgroups_check(tmp_path)
    assert not check.ok
    assert "memory, pids" in check.detail
    assert "subtree_control" in check.fix


def test_cgroup_v1_with_writable_controllers_is_ok(tmp_path: Path) -> None:
    for name in ("memory", "pids", "cpu"):
        (tmp_path / name).mkdir()
    check = cgroups_check(tmp_path)
    assert check.ok, check
    assert "v1" in check.detail


def test_cgroup_v1_missing_controllers_are_named(tmp_path: Path) -> None:
    (tmp_path / "memory").mkdir()
    check = cgroups_check(tmp_path)
    assert not check.ok
    assert "pids, cpu" in check.detail
