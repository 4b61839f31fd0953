"""A worker killed (SIGKILL) while a command of its make runs on an SSH host stops that command.

Closing an SSH channel stops nothing on the host, and the sandbox's lock on the host goes
with the killed worker's connection: its setup step (or compose's ``up``) ran on to its
deadline (30 minutes for a setup step), beside the next attempt that the lock now let in,
writing where that attempt worked. Now the host watches each such command's channel and
stops the command, with all it started, when the channel closes. Real sshd, ext.vm-packer
in a process of its own, killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from sandboxer.config.catalog import Catalog
from sandboxer.config.settings import Settings
from sandboxer.extensions.base import ProvisionRequest
from sandboxer.extensions.compose_ssh.backend import ComposeSshExtension
from sandboxer.extensions.vm_packer.backend import VmPackerExtension
from tests.integration.remote_fixtures import ENGINES, ComposeEngine, SshHosts, write_hosts_file
from tests.waiting import until

pytestmark = pytest.mark.integration

SANDBOX = "killedmk01"


async def vm_host(
    ssh_hosts: SshHosts, home: Path, monkeypatch: pytest.MonkeyPatch
) -> VmPackerExtension:
    """ext.vm-packer of ``home``, whose hosts file names one loopback sshd as host1."""
    monkeypatch.delenv("SANDBOXER_HOSTS", raising=False)
    [vm] = await ssh_hosts(1)
    write_hosts_file(home / "hosts.yaml", [vm])
    return VmPackerExtension.from_settings(
        Settings(home=home, nats_urls=(), nats_server=None, ack_wait=30.0)
    )


async def made_on_vm(extension: VmPackerExtension, sandbox_id: str, attempt: int = 1) -> None:
    request = ProvisionRequest(
        sandbox_id=sandbox_id,
        profile=Catalog.load().profile("profile.vm-haskell-build"),
        inputs={"vm": "host1"},
        host="host1",
        attempt=attempt,
    )
    async with asyncio.timeout(20):
        await extension.provision(request)


async def kill_once_started(
    script: str, args: list[str], started: Callable[[], Awaitable[bool]], doing: str
) -> None:
    """Run the worker ``script`` (``python -c``) with ``args`` until ``started()`` says what it
    runs on the host began, then SIGKILL it."""
    environment = {k: v for k, v in os.environ.items() if k != "SANDBOXER_HOSTS"}
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, *args, env=environment
    )
    try:
        async with asyncio.timeout(30):
            while not await started():
                assert worker.returncode is None, f"the worker ended before its {doing} ran"
                await asyncio.sleep(0.05)
    finally:
        worker.send_signal(signal.SIGKILL)
        await worker.wait()


async def until_none_names(path: Path, failure: str) -> None:
    """Until no process of this machine has ``path`` in its command line (20 s at most, then
    ``failure``): the killed worker's commands stopped, waited for, not raced with a sleep
    (a loaded machine took longer than a 3 s command to notice a start and kill)."""
    await until(
        lambda: not any(str(path).encode() in line for line in _command_lines()),
        every=0.2,
        failure=failure,
    )


def _command_lines() -> list[bytes]:
    lines = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                lines.append((entry / "cmdline").read_bytes())
    return lines


def exists(path: Path) -> Callable[[], Awaitable[bool]]:
    async def look() -> bool:
        return path.exists()

    return look


# The worker: provisions attempt 1 of SANDBOX on host1, whose one setup step says it started,
# then, 27 s later, writes the file the test looks for.
WORKER = """
import asyncio, sys
from pathlib import Path
from sandboxer.config.catalog import Catalog
from sandboxer.config.profile import Setup
from sandboxer.config.settings import Settings
from sandboxer.extensions.base import ProvisionRequest
from sandboxer.extensions.vm_packer.backend import VmPackerExtension

home, started, late = sys.argv[1:4]
step = f"echo up > {started}; sleep 27; echo late > {late}"
profile = Catalog.load().profile("profile.vm-haskell-build")
profile = profile.model_copy(update={"setup": Setup(instructions=[step])})
settings = Settings(home=Path(home), nats_urls=(), nats_server=None, ack_wait=30.0)
request = ProvisionRequest(
    sandbox_id="killedmk01", profile=profile, inputs={"vm": "host1"}, host="host1"
)
asyncio.run(VmPackerExtension.from_settings(settings).provision(request))
"""


async def test_a_setup_step_stops_when_its_worker_is_killed(
    ssh_hosts: SshHosts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    extension = await vm_host(ssh_hosts, home, monkeypatch)
    started, late = tmp_path / "started", tmp_path / "late"
    await kill_once_started(
        WORKER, [str(home), str(started), str(late)], exists(started), "setup step"
    )
    await until_none_names(late, "the killed worker's setup step ran on after it")
    assert not late.exists(), "the killed worker's setup step ran on after it"

    # The lock went with the connection: the next attempt makes the sandbox at once.
    await made_on_vm(extension, SANDBOX, attempt=2)
    async with asyncio.timeout(20):
        await extension.teardown(SANDBOX, host="host1")


# The worker: runs an exec in SANDBOX (made by the test) on host1, which says it started, then,
# 27 s later, writes the file the test looks for.
EXEC_WORKER = """
import asyncio, sys
from pathlib import Path
from sandboxer.config.settings import Settings
from sandboxer.extensions.vm_packer.backend import VmPackerExtension

home, started, late = sys.argv[1:4]

async def ignore(_stream, _data):
    pass

settings = Settings(home=Path(home), nats_urls=(), nats_server=None, ack_wait=30.0)
# One job leaves the command's process group: only the exec's marker finds it.
line = (
    f"setsid sh -c 'sleep 27; echo late >> {late}' & "
    f"echo up > {started}; sleep 27; echo late >> {late}"
)
asyncio.run(
    VmPackerExtension.from_settings(settings).exec(
        "killedex01", ["sh", "-c", line], ignore, host="host1"
    )
)
"""


async def test_an_exec_stops_when_its_worker_is_killed(
    ssh_hosts: SshHosts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exec has no deadline and ssh_exec_stop needs a live worker: a killed worker's exec
    ran on for ever. The host now watches its channel like any command without input, and
    kills what carries the exec's marker too (here a job that left the group)."""
    home = tmp_path / "home"
    extension = await vm_host(ssh_hosts, home, monkeypatch)
    await made_on_vm(extension, "killedex01")
    started, late = tmp_path / "started", tmp_path / "late"
    await kill_once_started(
        EXEC_WORKER, [str(home), str(started), str(late)], exists(started), "exec"
    )
    await until_none_names(late, "the killed worker's exec ran on after it")
    assert not late.exists(), "the killed worker's exec ran on after it"
    async with asyncio.timeout(20):
        await extension.teardown("killedex01", host="host1")


# The worker: runs an exec with stdin in SANDBOX (made by the test) on host1, which reads its
# input (to its end, or its first line while the rest is still coming), says it started,
# then, 27 s later, writes the file the test looks for.
STDIN_EXEC_WORKER = """
import asyncio, sys
from pathlib import Path
from sandboxer.config.settings import Settings
from sandboxer.extensions.vm_packer.backend import VmPackerExtension

home, started, late, ended = sys.argv[1:5]

async def ignore(_stream, _data):
    pass

async def stdin():
    yield b"first line\\n"
    if ended == "no":
        await asyncio.sleep(3600)  # the input is still coming when the worker is killed

settings = Settings(home=Path(home), nats_urls=(), nats_server=None, ack_wait=30.0)
read = "cat > /dev/null" if ended == "yes" else "head -n 1 > /dev/null"
line = f"{read}; echo up > {started}; sleep 27; echo late >> {late}"
asyncio.run(
    VmPackerExtension.from_settings(settings).exec(
        "killedsx01", ["sh", "-c", line], ignore, host="host1", stdin=stdin()
    )
)
"""


@pytest.mark.parametrize("input_ended", [True, False], ids=["input_ended", "input_coming"])
async def test_an_exec_with_stdin_stops_when_its_worker_is_killed(
    ssh_hosts: SshHosts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, input_ended: bool
) -> None:
    """An exec with stdin was not watched: the end of its channel's input was the end of its
    input, so a killed worker's exec ran on for ever. Its input now travels in frames and the
    host watches the channel as for any other command."""
    home = tmp_path / "home"
    extension = await vm_host(ssh_hosts, home, monkeypatch)
    await made_on_vm(extension, "killedsx01")
    started, late = tmp_path / "started", tmp_path / "late"
    ended = "yes" if input_ended else "no"
    await kill_once_started(
        STDIN_EXEC_WORKER, [str(home), str(started), str(late), ended], exists(started), "exec"
    )
    await until_none_names(late, "the killed worker's exec with stdin ran on after it")
    assert not late.exists(), "the killed worker's exec with stdin ran on after it"
    async with asyncio.timeout(20):
        await extension.teardown("killedsx01", host="host1")


# The worker: runs an exec in SANDBOX (made by the test) on host1 whose command never reads its
# input, says it started, then, 27 s later, writes the file the test looks for. Its input, 1 MiB
# (more than the host's pipe and FIFO hold, less than the channel's window), is sent whole,
# then ended or left coming; then the worker says it sent it.
UNREAD_STDIN_EXEC_WORKER = """
import asyncio, sys
from pathlib import Path
from sandboxer.config.settings import Settings
from sandboxer.extensions.vm_packer.backend import VmPackerExtension

home, started, late, fed, ended = sys.argv[1:6]

async def ignore(_stream, _data):
    pass

async def stdin():
    for _ in range(16):
        yield b"x" * 65536
    Path(fed).write_text("fed")
    if ended == "no":
        await asyncio.sleep(3600)

settings = Settings(home=Path(home), nats_urls=(), nats_server=None, ack_wait=30.0)
line = f"echo up > {started}; sleep 27; echo late >> {late}"
asyncio.run(
    VmPackerExtension.from_settings(settings).exec(
        "killedux01", ["sh", "-c", line], ignore, host="host1", stdin=stdin()
    )
)
"""


def session_processes(home: Path) -> list[str]:
    """The command lines of the live processes that a session of the sshd whose sessions'
    ``HOME`` is ``home`` started (the fixture's SetEnv), wherever they were reparented."""
    marker = b"HOME=" + str(home).encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (OSError, ValueError):
            continue
    return found


def fifo_dirs() -> set[Path]:
    """The host's FIFO directories of framed commands (``mktemp -d`` holding ``in``)."""
    return {fifo.parent for fifo in Path("/tmp").glob("tmp.*/in") if fifo.is_fifo()}


@pytest.mark.parametrize("input_ended", [True, False], ids=["input_ended", "input_coming"])
async def test_an_exec_that_does_not_read_its_stdin_stops_when_its_worker_is_killed(
    ssh_hosts: SshHosts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, input_ended: bool
) -> None:
    """The host's watcher saw a killed worker only by reading the channel's input to its end,
    and with stdin that input is the command's: the copy into the command's FIFO waited for
    a command that never read it (more than the FIFO holds), so nothing read on, the end was
    never seen and the exec ran on for ever. Now the channel's output going away stops it too,
    and nothing of it is left on the host."""
    home = tmp_path / "home"
    extension = await vm_host(ssh_hosts, home, monkeypatch)
    session_home = ssh_hosts.servers[0].session_home
    await made_on_vm(extension, "killedux01")
    started, late, fed = tmp_path / "started", tmp_path / "late", tmp_path / "fed"
    fifos_before = fifo_dirs()

    async def input_sent() -> bool:
        if not (started.exists() and fed.exists()):
            return False
        await asyncio.sleep(0.5)  # sshd hands it on: the host's copy is held back by now
        return True

    ended = "yes" if input_ended else "no"
    await kill_once_started(
        UNREAD_STDIN_EXEC_WORKER,
        [str(home), str(started), str(late), str(fed), ended],
        input_sent,
        "exec",
    )
    await until_none_names(late, "the killed worker's exec that did not read its stdin ran on")
    assert not late.exists(), "the killed worker's exec that did not read its stdin ran on"
    # The host's watchers of the exec end after the command they watch: waited for too.
    await until(
        lambda: session_processes(session_home) == [],
        every=0.2,
        failure="the killed worker's exec left processes",
    )
    left = fifo_dirs() - fifos_before
    await asyncio.sleep(1)  # another test's copy would be gone by now
    assert not left & fifo_dirs(), "the killed worker's exec left its FIFO directory"
    async with asyncio.timeout(20):
        await extension.teardown("killedux01", host="host1")


COMPOSE = """\
services:
  web:
    image: localhost/mini:latest
    command: ["sleep", "3600"]
    network_mode: none
    init: true
"""

# The worker: runs an exec in the web container of SANDBOX (made by the test) on host1.
COMPOSE_EXEC_WORKER = """
import asyncio, sys
from pathlib import Path
from sandboxer.config.settings import Settings
from sandboxer.extensions.compose_ssh.backend import ComposeSshExtension

home = sys.argv[1]

async def ignore(_stream, _data):
    pass

settings = Settings(home=Path(home), nats_urls=(), nats_server=None, ack_wait=30.0)
line = "echo up > /tmp/started; sleep 27; echo late > /tmp/late"
asyncio.run(
    ComposeSshExtension.from_settings(settings).exec(
        "killedcx01", ["sh", "-c", line], ignore, host="host1"
    )
)
"""


@pytest.mark.parametrize("compose_engine", ENGINES, indirect=True)
async def test_a_compose_exec_stops_in_its_container_when_its_worker_is_killed(
    ssh_hosts: SshHosts,
    compose_engine: ComposeEngine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The engine leaves an exec's process running when its client dies: killing the host's
    compose client is not enough. The host's watcher stops it in the container too."""
    monkeypatch.delenv("SANDBOXER_HOSTS", raising=False)
    [host] = await ssh_hosts(1, env=compose_engine.env, compose_cmd=compose_engine.compose_cmd)
    home = tmp_path / "home"
    write_hosts_file(home / "hosts.yaml", [host])
    repo = tmp_path / "repo"
    (repo / "e2e").mkdir(parents=True)
    (repo / "e2e" / "compose.yml").write_text(COMPOSE)
    extension = ComposeSshExtension.from_settings(
        Settings(home=home, nats_urls=(), nats_server=None, ack_wait=30.0)
    )
    request = ProvisionRequest(
        sandbox_id="killedcx01",
        profile=Catalog.load().profile("profile.compose-e2e"),
        inputs={"repo": str(repo)},
        host="host1",
    )

    def container() -> str:
        return compose_engine.cli(
            "ps", "-q", "--filter", "label=com.docker.compose.project=sbx-killedcx01"
        ).stdout.split()[0]

    def in_web(*argv: str) -> bool:
        return compose_engine.cli("exec", container(), *argv, check=False).returncode == 0

    def exec_running() -> bool:  # the engine's own list of the container's processes
        return "sleep 27" in compose_engine.cli("top", container()).stdout

    try:
        async with asyncio.timeout(120):
            await extension.provision(request)

        async def started() -> bool:  # and seen running, so that its end below means one
            return await asyncio.to_thread(
                lambda: in_web("test", "-e", "/tmp/started") and exec_running()
            )

        await kill_once_started(COMPOSE_EXEC_WORKER, [str(home)], started, "exec")
        # Until its process is gone, not a fixed wait: noticing the start takes an engine
        # call or more, and a loaded machine's engine calls took seconds (a 3 s exec raced
        # them). One the watcher missed runs for 27 s, past the 20 s allowed here.
        await until(
            lambda: not exec_running(),
            every=0.2,
            failure="the killed worker's exec ran on in its container",
        )
        assert not await asyncio.to_thread(in_web, "test", "-e", "/tmp/late")
    finally:
        async with asyncio.timeout(60):
            await extension.teardown("killedcx01", host="host1")
