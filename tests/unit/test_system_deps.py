"""``scripts/install-system-deps.sh``: the demo gets only what it needs, the tests everything."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "install-system-deps.sh"
BASH = shutil.which("bash") or "/bin/bash"


def _packages(profile: str) -> list[str]:
    result = subprocess.run(
        [BASH, str(SCRIPT), profile, "--list"], capture_output=True, text=True, check=True
    )
    return result.stdout.split()


def test_demo_installs_only_what_local_sandboxes_need() -> None:
    assert _packages("demo") == ["bubblewrap", "util-linux", "procps", "iproute2"]


def test_tests_install_everything_including_both_compose_engines() -> None:
    packages = _packages("test")
    assert packages[:4] == _packages("demo")
    for package in (
        "openssh-server",
        "rsync",
        "docker.io",
        "docker-compose",
        "busybox-static",
        "podman",
        "runc",
        "catatonit",
        "nftables",
        "keyutils",
    ):
        assert package in packages


def test_unknown_profile_is_a_usage_error() -> None:
    result = subprocess.run(
        [BASH, str(SCRIPT), "everything"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert "usage:" in result.stderr


def test_not_root_prints_the_exact_install_command(tmp_path: Path) -> None:
    as_nobody: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
        as_nobody = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    # An empty PATH: every checked command outside the sbin directories is missing.
    result = subprocess.run(
        [*as_nobody, BASH, str(SCRIPT), "demo"],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": str(tmp_path / "empty")},
    )
    assert result.returncode == 1, result.stderr
    assert "sudo apt-get install -y --no-install-recommends bubblewrap" in result.stderr
    assert "docker" not in result.stderr
