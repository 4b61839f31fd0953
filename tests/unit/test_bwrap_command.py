"""ext.local's pure parts: the bwrap/nsenter/launcher command lines and the cgroup limit plans."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from sandboxer.config.profile import Resources
from sandboxer.extensions.local import cgroups
from sandboxer.extensions.local.bwrap_command import (
    enter_argv,
    holder_argv,
    hostname_for,
    launcher_argv,
)

SID = "sbxabcdefghijklmnop"


def _holder(**overrides: object) -> list[str]:
    options: dict[str, object] = {
        "sandbox_id": SID,
        "workspace": Path("/srv/local/x/workspace"),
        "read_only": False,
        "info_fd": 7,
        "as_root": True,
    }
    options.update(overrides)
    return holder_argv(**options)  # type: ignore[arg-type]


def _pairs(argv: list[str], flag: str) -> list[tuple[str, str]]:
    return [(argv[i + 1], argv[i + 2]) for i, item in enumerate(argv) if item == flag]


def test_holder_is_detached_isolated_and_idle() -> None:
    argv = _holder()
    command = argv[argv.index("--") + 1 :]
    assert command == ["sleep", "infinity"]
    options = argv[: argv.index("--")]
    assert "--die-with-parent" not in options  # must outlive the worker for adoption
    for flag in ("--unshare-net", "--unshare-pid", "--new-session", "--clearenv"):
        assert flag in options
    assert options[options.index("--cap-drop") + 1] == "ALL"
    assert options[options.index("--info-fd") + 1] == "7"
    assert ("/usr", "/usr") in _pairs(options, "--ro-bind")
    assert ("/etc", "/etc") in _pairs(options, "--ro-bind")
    assert ("/srv/local/x/workspace", "/workspace") in _pairs(options, "--bind")
    assert options[options.index("--hostname") + 1] == hostname_for(SID) == "sbx-sbxabcdefghi"
    assert ("PATH", "/usr/bin:/bin") in _pairs(options, "--setenv")
    assert ("HOME", "/workspace") in _pairs(options, "--setenv")


def test_the_sandboxs_passwd_and_group_are_bound_read_only_over_the_hosts_etc() -> None:
    argv = _holder(user_fds=(11, 12))
    assert _pairs(argv, "--ro-bind-data") == [("11", "/etc/passwd"), ("12", "/etc/group")]
    # Each readable by the sandbox's user, whatever the worker's umask.
    for fd in ("11", "12"):
        at = argv.index(fd)
        assert argv[at - 3 : at - 1] == ["--perms", "0644"]
    # After /etc, which they cover (bwrap mounts in order); nothing else of /etc replaced.
    assert argv.index("/etc") < argv.index("--ro-bind-data")
    assert not [dest for _, dest in _pairs(argv, "--ro-bind") if dest.startswith("/etc/")]
    assert "--ro-bind-data" not in _holder()


def test_root_holder_has_no_user_namespace_but_unprivileged_one_does() -> None:
    # As root, a user namespace would map only uid 0, leaving no unprivileged uid to drop to.
    assert "--unshare-all" not in _holder(as_root=True)
    assert "--unshare-all" in _holder(as_root=False)


def test_read_only_workspace_is_bound_read_only() -> None:
    argv = _holder(read_only=True)
    assert ("/srv/local/x/workspace", "/workspace") in _pairs(argv, "--ro-bind")
    assert _pairs(argv, "--bind") == []


def test_enter_passes_argv_as_separate_words_after_the_shell_script() -> None:
    hostile = ["echo", "$(id); rm -rf /", "a b", "FOO=bar"]
    argv = enter_argv(child_pid=1234, argv=hostile, uid=2000000007)
    assert argv[:4] == ["/usr/bin/nsenter", "-t", "1234", "-a"]
    assert argv[-len(hostile) :] == hostile
    assert argv[-len(hostile) - 1] == "sandboxer-exec"  # $0 of `sh -c`, so "$@" is exactly argv
    # The sandbox's own uid, the gid of that number, and no supplementary group of the worker.
    assert {"--reuid=2000000007", "--regid=2000000007", "--clear-groups"} <= set(argv)
    assert "--no-new-privs" in argv
    assert "--bounding-set=-all" in argv
    assert "-i" in argv  # env -i: nothing from the worker's environment leaks in


def test_unprivileged_enter_uses_the_owning_user_namespace_and_keeps_its_uid() -> None:
    argv = enter_argv(child_pid=1, argv=["true"], user_ns="/proc/self/fd/9")
    assert "--user=/proc/self/fd/9" in argv
    assert "-a" not in argv  # -a would enter the holder's nested, powerless user namespace
    assert "--preserve-credentials" in argv
    assert not any(item.startswith("--reuid") for item in argv)


def test_empty_argv_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        enter_argv(child_pid=1, argv=[])


def test_enter_needs_either_a_uid_or_a_user_namespace() -> None:
    for identity in ({}, {"uid": 2000000007, "user_ns": "/proc/self/fd/9"}):
        with pytest.raises(ValueError, match="uid"):
            enter_argv(child_pid=1, argv=["true"], **identity)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        launcher_argv([], [])


def test_launcher_joins_every_group_then_execs(tmp_path: Path) -> None:
    procs = [tmp_path / "a.procs", tmp_path / "b.procs"]
    argv = launcher_argv(procs, ["sh", "-c", 'echo "$$"; printf %s "$1"', "x", "$HOME;"])
    result = subprocess.run(argv, capture_output=True, text=True, check=True)
    _, echoed = result.stdout.split("\n", 1)
    assert echoed == "$HOME;"
    for path in procs:  # "0" names the writer; exec keeps it, so the command is in the groups
        assert path.read_text().strip() == "0"


def test_launcher_in_background_prints_the_pid_and_returns(tmp_path: Path) -> None:
    marker = tmp_path / "done"
    argv = launcher_argv([], ["sh", "-c", f"sleep 0.2; echo ok > {marker}"], background=True)
    result = subprocess.run(
        argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, check=True, timeout=5
    )
    pid = int(result.stdout)
    assert pid > 0
    assert not marker.exists()  # returned before the background command finished


def test_launcher_fails_with_125_when_a_group_cannot_be_joined(tmp_path: Path) -> None:
    argv = launcher_argv([tmp_path / "missing" / "cgroup.procs"], ["true"])
    assert subprocess.run(argv, capture_output=True, check=False).returncode == 125


# -- cgroup limit plans -------------------------------------------------------------------


def _files(limits: list[cgroups.Limit]) -> dict[str, str]:
    return {name: value for limit in limits for name, value in limit.files}


def test_v1_plan_translates_the_profile_resources() -> None:
    files = _files(cgroups.plan(Resources(cpu=1.5, memory_mb=64, pids=20), "v1"))
    assert files == {
        "memory.limit_in_bytes": str(64 << 20),
        "memory.memsw.limit_in_bytes": str(64 << 20),
        "pids.max": "20",
        "cpu.cfs_period_us": "100000",
        "cpu.cfs_quota_us": "150000",
    }


def test_v2_plan_translates_the_profile_resources() -> None:
    files = _files(cgroups.plan(Resources(cpu=0.25, memory_mb=1, pids=5), "v2"))
    assert files == {
        "memory.max": str(1 << 20),
        "memory.swap.max": "0",
        "pids.max": "5",
        "cpu.max": "25000 100000",
    }


def test_default_plan_only_caps_pids() -> None:
    limits = cgroups.plan(Resources(), "v1")
    assert [limit.controller for limit in limits] == ["pids"]
    assert _files(limits) == {"pids.max": str(cgroups.DEFAULT_PIDS)}


def test_missing_hierarchy_gives_warnings_not_errors(tmp_path: Path) -> None:
    result = cgroups.setup("sbx12345678-tag", Resources(memory_mb=64, cpu=1), tmp_path)
    assert result.dirs == []
    assert [warning.split(":")[0] for warning in result.warnings] == [
        "memory limit not enforced",
        "pids limit not enforced",
        "cpu limit not enforced",
    ]
    assert all("cgroup v1 or v2" in warning for warning in result.warnings)


def test_v2_setup_enables_controllers_and_writes_limits(tmp_path: Path) -> None:
    # A stand-in for a unified hierarchy: the kernel would create the interface files.
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    (tmp_path / "cgroup.procs").write_text("")
    group = tmp_path / "sandboxer" / "g"
    group.mkdir(parents=True)
    for parent in (tmp_path, tmp_path / "sandboxer"):
        (parent / "cgroup.subtree_control").write_text("")
    for name in ("memory.max", "pids.max", "cpu.max"):
        (group / name).write_text("")
    result = cgroups.setup("g", Resources(memory_mb=2, pids=9, cpu=2), tmp_path)
    assert result.warnings == []
    assert result.dirs == [group]
    assert (group / "memory.max").read_text() == str(2 << 20)
    assert (group / "pids.max").read_text() == "9"
    assert (group / "cpu.max").read_text() == "200000 100000"
    assert not (group / "memory.swap.max").exists()  # optional: skipped when the kernel lacks it


def test_join_files_prefer_v1_tasks_and_skip_missing_groups(tmp_path: Path) -> None:
    v1, v2, gone = tmp_path / "v1", tmp_path / "v2", tmp_path / "gone"
    for directory, names in ((v1, ("tasks", "cgroup.procs")), (v2, ("cgroup.procs",))):
        directory.mkdir()
        for name in names:
            (directory / name).touch()
    assert cgroups.join_files([v1, str(v2), gone]) == [v1 / "tasks", v2 / "cgroup.procs"]
