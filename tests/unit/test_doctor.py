"""``sandboxer doctor``: the cgroup check on fake cgroup trees (v1 and v2 both pass), and the
egress checks on fake tool directories."""

from __future__ import annotations

from pathlib import Path

from sandboxer.cli.doctor import cgroups_check, egress_checks


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


def test_egress_without_its_tools_names_the_packages_to_install(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    checks = {
        c.name: c for c in egress_checks(euid=0, run_dir=tmp_path / "run", search_path=str(empty))
    }
    assert not checks["egress: nft"].ok
    assert checks["egress: nft"].fix == "apt-get install -y nftables"
    assert not checks["egress: ip"].ok
    assert checks["egress: ip"].fix == "apt-get install -y iproute2"
    assert "loopback only" in checks["egress: ip"].detail
    assert "egress: nftables" not in checks  # nothing to probe without nft
    assert checks["egress: run directory"].ok  # not there yet, its parent is writable


def test_egress_with_its_tools_as_root_is_ok(tmp_path: Path) -> None:
    tools = tmp_path / "bin"
    tools.mkdir()
    for name in ("nft", "ip"):
        (tools / name).write_text("#!/bin/sh\nexit 0\n")
        (tools / name).chmod(0o755)
    checks = egress_checks(euid=0, run_dir=tmp_path, search_path=str(tools))
    assert [(c.name, c.ok) for c in checks] == [
        ("egress: nft", True),
        ("egress: ip", True),
        ("egress: root", True),
        ("egress: nftables", True),
        ("egress: run directory", True),
    ]


def test_egress_not_as_root_says_how_to_run(tmp_path: Path) -> None:
    checks = {c.name: c for c in egress_checks(euid=1000, run_dir=tmp_path)}
    assert not checks["egress: root"].ok
    assert "uid 1000" in checks["egress: root"].detail
    assert "sudo sandboxer worker ext.local" in checks["egress: root"].fix


def test_egress_with_a_kernel_that_refuses_nftables_says_so(tmp_path: Path) -> None:
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "nft").write_text("#!/bin/sh\necho 'Error: Could not process rule' >&2\nexit 1\n")
    (tools / "nft").chmod(0o755)
    checks = {c.name: c for c in egress_checks(euid=0, run_dir=tmp_path, search_path=str(tools))}
    assert not checks["egress: nftables"].ok
    assert "Could not process rule" in checks["egress: nftables"].detail
    assert "modprobe nf_tables" in checks["egress: nftables"].fix


def test_an_unwritable_run_directory_is_named(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.write_text("a file, not a directory")
    checks = {c.name: c for c in egress_checks(euid=0, run_dir=run)}
    assert not checks["egress: run directory"].ok
    assert str(run) in checks["egress: run directory"].detail
