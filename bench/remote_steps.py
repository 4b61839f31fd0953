"""Where the time of one ext.compose-ssh (or ext.vm-packer) create goes, step by step.

    python bench/remote_steps.py            # compose-ssh and vm-packer, 6 creates each
    python bench/remote_steps.py --runs 10

Not a ``make bench`` module (bench/bench_remote.py holds the judged figures):
a diagnostic. It starts the same loopback sshd and private dockerd as
bench_remote, then calls the placement probe, ``provision`` and ``wait_ready``
directly (no bus), with timing wrappers around every call that crosses the SSH
boundary: connecting, each remote command (named by its program or script),
SFTP writes, rsync, the tar stream. It prints, per step, how often it ran per create and its
median time, and the median create. Run alone: other load on the machine
shows up in every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _docker import start_docker_engine
from _harness import require_tool

from sandboxer.config.profile import Profile
from sandboxer.config.settings import Settings
from sandboxer.extensions.base import ProvisionRequest
from tests.integration.remote_fixtures import SshHosts, write_hosts_file

COMPOSE = """\
services:
  web:
    image: localhost/mini:latest
    command: ["sleep", "3600"]
    network_mode: none
    init: true
"""

STEPS: dict[str, list[float]] = defaultdict(list)
"""Step name -> durations in ms, for the create being measured."""


def _label(argv: Any) -> str:
    """A short name for a remote command: its program, or a script's first telling line."""
    words = list(argv)
    if words[:2] == ["sh", "-c"] and len(words) > 2:
        script = words[2]
        # Our scripts' set-ups: name them by the first command they run.
        lines = [line.strip() for line in script.strip().splitlines()]
        first = next((line for line in lines if line and not line.startswith("#")), script)
        if "set -a" in script and len(words) > 5:  # the secrets wrapper: the compose command
            return "compose " + " ".join(w for w in words[8:] if not w.startswith("/"))[:40]
        return "sh: " + first[:40]
    if words and words[0].endswith("compose"):
        tail = [w for w in words[1:] if not w.startswith("/") and w not in ("-p", "-f")]
        return "compose " + " ".join(tail[1:])[:40]
    return " ".join(words[:2])[:40]


def _file_label(path: str) -> str:
    name = Path(path).name
    return "marker" if name.startswith("sbx-") and name.endswith(".json") else name[:30]


def _timed(name: Callable[..., str], func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return await func(*args, **kwargs)
        finally:
            STEPS[name(*args, **kwargs)].append((time.perf_counter() - began) * 1000)

    return wrapper


@contextlib.contextmanager
def hooks() -> Iterator[None]:
    """Timing wrappers around the SSH boundary, wherever a module imported it by name."""
    from sandboxer.ssh import connection, remote, sync

    patched: list[tuple[Any, str, Any]] = []

    def wrap(owner: Any, attribute: str, name: Callable[..., str]) -> None:
        original = getattr(owner, attribute)
        patched.append((owner, attribute, original))
        setattr(owner, attribute, _timed(name, original))

    wrap(connection, "connect", lambda *a, **k: "ssh connect")
    wrap(remote, "run", lambda conn, argv, **k: "run " + _label(argv))
    wrap(sync, "run", lambda conn, argv, **k: "run " + _label(argv))
    wrap(remote, "put_file", lambda conn, path, data, **k: "sftp put " + _file_label(path))
    wrap(sync, "_run_rsync", lambda *a, **k: "rsync (own ssh connection)")
    wrap(sync, "stream", lambda conn, argv, output, **k: "stream " + _label(argv))
    try:
        yield
    finally:
        for owner, attribute, original in reversed(patched):
            setattr(owner, attribute, original)


def _profile(extension: str) -> Profile:
    text = (
        "id: profile.steps\nextension: ext.compose-ssh\nisolation: {level: container}\n"
        "inputs:\n  repo: {required: true}\n"
        if extension == "ext.compose-ssh"
        else "id: profile.steps\nextension: ext.vm-packer\nisolation: {level: policy}\n"
        "network: {default: allow}\ninputs:\n  repo: {required: true}\n"
    )
    import yaml

    return Profile.model_validate(yaml.safe_load(text))


async def measure(extension_id: str, home: Path, repo: Path, runs: int) -> None:
    from sandboxer.extensions.compose_ssh.backend import ComposeSshExtension
    from sandboxer.extensions.vm_packer.backend import VmPackerExtension
    from sandboxer.workers.host_choice import ssh_probe

    settings = Settings(home=home, nats_urls=(), nats_server=None, ack_wait=30.0)
    cls = ComposeSshExtension if extension_id == "ext.compose-ssh" else VmPackerExtension
    extension = cls.from_settings(settings)
    from sandboxer.extensions.ssh_targets import target

    host = target(settings, None, sandbox_id=None, extension=extension_id)
    profile = _profile(extension_id)
    per_run: list[dict[str, list[float]]] = []
    totals: dict[str, list[float]] = defaultdict(list)
    for i in range(runs + 1):  # the first is a warm-up
        sandbox_id = f"steps{extension_id[4:8].replace('-', '')}{i:03d}"
        request = ProvisionRequest(
            sandbox_id=sandbox_id,
            profile=profile,
            inputs={"repo": str(repo)},
            secrets={},
            host=host.name,
        )
        STEPS.clear()
        with hooks():
            began = time.perf_counter()
            await _timed(lambda *a: "placement probe (control)", ssh_probe)(host.name, host.config)
            probed = time.perf_counter()
            await extension.provision(request)
            provisioned = time.perf_counter()
            await extension.wait_ready(request)
            ready = time.perf_counter()
        await extension.teardown(sandbox_id, host=host.name)
        if i == 0:
            continue
        per_run.append(dict(STEPS))
        totals["placement probe"].append((probed - began) * 1000)
        totals["provision"].append((provisioned - probed) * 1000)
        totals["wait_ready"].append((ready - provisioned) * 1000)
        totals["create (all three)"].append((ready - began) * 1000)
    names = sorted({name for run in per_run for name in run})
    print(f"\n{extension_id}: {runs} creates, medians")
    print(f"  {'step':58} {'per create':>10} {'ms each':>9} {'ms/create':>10}")
    for name in names:
        counts = [len(run.get(name, [])) for run in per_run]
        each = [d for run in per_run for d in run.get(name, [])]
        sums = [sum(run.get(name, [])) for run in per_run]
        print(
            f"  {name:58} {statistics.median(counts):>10g} {statistics.median(each):>9.1f} "
            f"{statistics.median(sums):>10.1f}"
        )
    for name, values in totals.items():
        print(f"  = {name:56} {'':>10} {'':>9} {statistics.median(values):>10.1f}")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--only", choices=["compose", "vm"])
    args = parser.parse_args()
    require_tool("sshd", "openssh-server")
    require_tool("rsync", "rsync")
    tmp = Path(tempfile.mkdtemp(prefix="sandboxer-remote-steps-"))
    engine = await start_docker_engine()
    hosts = SshHosts(tmp / "ssh", shutil.which("sshd") or "/usr/sbin/sshd")
    try:
        [host] = await hosts(1, env=engine.env)
        repo = tmp / "repo"
        repo.mkdir()
        (repo / "docker-compose.yml").write_text(COMPOSE)
        for i in range(20):
            (repo / f"file{i}.txt").write_text("x" * 1000)
        home = tmp / "home"
        home.mkdir()
        write_hosts_file(home / "hosts.yaml", [host])
        if args.only != "vm":
            await measure("ext.compose-ssh", home, repo, args.runs)
        if args.only != "compose":
            await measure("ext.vm-packer", home, repo, args.runs)
    finally:
        await hosts.close()
        await asyncio.to_thread(engine.stop)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
