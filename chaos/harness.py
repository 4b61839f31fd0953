"""A whole service made of separate processes, for faults: a private nats-server (or a 3-node
cluster), each role in its own ``sandboxer worker <role>`` process, and the means to hurt them
(kill -9, SIGSTOP, SIGCONT, restart).

Use as ``async with ChaosService(workdir) as svc:``. Everything it started is stopped on the
way out, whatever happened: SIGCONT first (a frozen process cannot exit), SIGTERM, SIGKILL after
a grace period, then every ext.local sandbox under its ``$SANDBOXER_HOME`` is torn down and any
bubblewrap process still naming that home is killed, so a failed scenario leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from chaos.result import ScenarioResult
from sandboxer.bus.nats_auth import AUTH_DIR_NAME, read_credentials
from sandboxer.bus.nats_cluster import NatsCluster
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.bus.permissions import CLIENT, SERVICE
from sandboxer.client import SandboxerClient
from sandboxer.errors import SandboxerError
from sandboxer.extensions.local.backend import LocalExtension
from sandboxer.spare_ports import spare_port

__all__ = [
    "ADMIN",
    "DEFAULT_ROLES",
    "EMBEDDED_ROLE",
    "ChaosService",
    "HarnessError",
    "RoleProcess",
    "Stopwatch",
    "bwrap_pids_under",
    "child_pids",
    "finish",
    "nats_server_child",
    "run_seed",
]

DEFAULT_ROLES: tuple[str, ...] = ("control", "projector", "meter", "ext.local", "gateway")
"""Every role ``sandboxer up`` runs here (statehub needs a State Hub; not run)."""

ADMIN: dict[str, Any] = {"type": "adm", "id": "chaos", "project": None}
"""The actor of the harness's own client: an administrator may do every verb."""

ROLE_START_TIMEOUT = 60.0
"""Seconds a role gets to log that it runs (a few hundred ms is usual; the box may be busy)."""

STOP_GRACE = 15.0
"""Seconds between SIGTERM and SIGKILL when the harness stops a role."""

EMBEDDED_ROLE = "up"
"""The one role of an ``embedded`` service: ``sandboxer up``, every role and its own NATS."""

RUNNING_MARK = b"running roles:"
"""What sandboxer/service.py logs once a role's consumers and responders are set up."""


class HarnessError(Exception):
    """The harness could not set the service up (not a finding about the service)."""


def _die_with_parent() -> Callable[[], None] | None:
    """A pre-exec hook: the kernel SIGKILLs the role if the harness dies first (Linux)."""
    prctl = getattr(ctypes.CDLL(None), "prctl", None)
    if prctl is None:
        return None
    pr_set_pdeathsig = 1
    return lambda: prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)


def _log_has(path: Path, mark: bytes) -> bool:
    try:
        return mark in path.read_bytes()
    except OSError:
        return False


def bwrap_pids_under(root: Path) -> dict[int, int]:
    """``{pid: parent}`` of every bwrap process whose command line names a path under ``root``."""
    needle = str(root).encode()
    found: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # it exited while we looked
        if argv and argv[0].endswith(b"bwrap") and any(needle in arg for arg in argv):
            found[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return found


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (a worker's setup or nsenter runs, say)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def nats_server_child(pid: int) -> int | None:
    """The pid of the nats-server process ``pid`` started and runs now (``sandboxer up``'s
    own), or None while it runs none."""
    for child in child_pids(pid):
        try:
            argv0 = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue  # it exited while we looked
        if argv0.endswith(b"nats-server"):
            return child
    return None


@dataclass
class RoleProcess:
    """One ``sandboxer worker <role>`` process (one incarnation of a role)."""

    role: str
    process: asyncio.subprocess.Process
    log: Path
    incarnation: int
    expected_exit: bool = False
    """Set when the harness killed or stopped it: its exit is not a crash."""
    frozen: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.returncode is None


@dataclass
class Stopwatch:
    """Seconds since a scenario began (``time.monotonic``)."""

    started: float = field(default_factory=time.monotonic)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started


class ChaosService:
    """The service as separate processes under ``workdir`` (its home is ``workdir/home``,
    created at once so a scenario can write profiles there before :meth:`start`).

    ``cluster_size`` 1 runs one nats-server; 3 runs :class:`NatsCluster` (``cluster``).
    ``nats_store`` puts the (single) server's store elsewhere (a small filesystem, say).
    ``env`` is added to every role's environment (``SANDBOXER_*`` settings).
    A role named ``ext.local#2`` is a second process of ``ext.local`` (scale-out: both pull
    from the same consumer), handled by that name everywhere here.
    ``embedded`` runs ``sandboxer up`` instead, as users do by default: every role in one
    process (the role ``up``) with a nats-server of its own and generated users: the checks
    connect as its service identity, clients as its client identity (:attr:`client_urls`),
    and :meth:`kill_embedded_nats` hurts that server.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        roles: Sequence[str] = DEFAULT_ROLES,
        ack_wait: float = 5.0,
        cluster_size: int = 1,
        nats_store: Path | None = None,
        env: Mapping[str, str] | None = None,
        embedded: bool = False,
    ) -> None:
        self.workdir = workdir
        self.embedded = embedded
        self._embedded_url: str | None = None
        self._embedded_client_url: str | None = None
        self.home = workdir / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.logs = workdir / "logs"
        self.logs.mkdir(exist_ok=True)
        self.roles = [EMBEDDED_ROLE] if embedded else list(roles)
        self.ack_wait = ack_wait
        self.cluster_size = cluster_size
        self.nats_store = nats_store or workdir / "nats"
        self.extra_env = dict(env or {})
        self.http_port = spare_port()
        self.nats: NatsServerProcess | None = None
        self.cluster: NatsCluster | None = None
        self.processes: dict[str, RoleProcess] = {}
        self.exited: list[RoleProcess] = []
        """Earlier incarnations, kept to tell crashes from the harness's own kills."""
        self._client: SandboxerClient | None = None
        self._incarnations: dict[str, int] = {}

    # -- addresses -------------------------------------------------------------------------------

    @property
    def nats_urls(self) -> list[str]:
        if self._embedded_url is not None:
            return [self._embedded_url]
        if self.cluster is not None:
            return self.cluster.urls
        if self.nats is not None:
            return [self.nats.url]
        raise HarnessError("the service has not started")

    @property
    def client_urls(self) -> list[str]:
        """What a client connects to: :attr:`nats_urls`, but for an embedded service, whose
        clients connect as its client identity."""
        if self._embedded_client_url is not None:
            return [self._embedded_client_url]
        return self.nats_urls

    @property
    def nats_url(self) -> str:
        """Comma list, the form ``SANDBOXER_NATS_URL`` takes."""
        return ",".join(self.nats_urls)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def client(self) -> SandboxerClient:
        """The harness's client (an ``adm`` actor), connected by :meth:`start`."""
        if self._client is None:
            raise HarnessError("the service has not started")
        return self._client

    async def connect(self, actor: Mapping[str, Any] | None = None) -> SandboxerClient:
        """Another client of this service (the caller closes it)."""
        return await SandboxerClient.connect(self.client_urls, actor=dict(actor or ADMIN))

    def role_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOXER_")}
        env |= {
            "SANDBOXER_HOME": str(self.home),
            "SANDBOXER_ACK_WAIT": str(self.ack_wait),
            "SANDBOXER_HTTP_ADDR": f"127.0.0.1:{self.http_port}",
        }
        if not self.embedded:
            env["SANDBOXER_NATS_URL"] = self.nats_url
        return env | self.extra_env

    # -- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        try:
            return await self.start()
        except BaseException:
            await self.stop()
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> Self:
        """NATS, then every role (each waited for), then the client, then one health answer."""
        if self.embedded:
            await self.start_role(EMBEDDED_ROLE)
            self._embedded_url = self._identity_url(SERVICE)
            self._embedded_client_url = self._identity_url(CLIENT)
            self._client = await self.connect()
            await self.wait_healthy()
            return self
        if self.cluster_size > 1:
            self.cluster = NatsCluster(self.workdir / "cluster", size=self.cluster_size)
            await self.cluster.start()
        else:
            # A spare port, not the kernel's pick: a scenario may start it again on this port.
            self.nats = NatsServerProcess(
                self.nats_store, port=spare_port(), log_file=self.logs / "nats-server.log"
            )
            await self.nats.start()
        # Roles one at a time: the first creates the streams; two at once would race for it.
        for role in self.roles:
            await self.start_role(role)
        self._client = await self.connect()
        await self.wait_healthy()
        return self

    def _identity_url(self, identity: str) -> str:
        """The embedded server's URL (from ``service.json``) with ``identity``'s user and
        password in it (generated passwords are URL-safe): the checks connect as the service
        identity, clients as the client one (which may publish commands)."""
        record = json.loads((self.home / "service.json").read_text())
        credentials = read_credentials(self.home / AUTH_DIR_NAME, identity)
        if credentials is None:
            raise HarnessError(f"sandboxer up wrote no {identity} identity under {self.home}")
        scheme, _, address = str(record["nats_url"]).partition("://")
        return f"{scheme}://{credentials.user}:{credentials.password}@{address}"

    def embedded_nats_pid(self) -> int | None:
        """The pid of the nats-server ``sandboxer up`` runs now (None while it has none)."""
        return nats_server_child(self._current(EMBEDDED_ROLE).pid)

    async def kill_embedded_nats(self, timeout: float = 30.0) -> float:
        """kill -9 ``sandboxer up``'s nats-server; the seconds until the service ran another
        (it starts it again itself: sandboxer/bus/embedded_restart.py)."""
        killed = self.embedded_nats_pid()
        if killed is None:
            raise HarnessError("sandboxer up runs no nats-server to kill")
        began = time.monotonic()
        os.kill(killed, signal.SIGKILL)
        while True:
            now = self.embedded_nats_pid()
            if now is not None and now != killed:
                return time.monotonic() - began
            if time.monotonic() - began > timeout or not self.alive(EMBEDDED_ROLE):
                raise HarnessError(f"no nats-server ran again within {timeout:g} s")
            await asyncio.sleep(0.01)

    async def wait_healthy(self, timeout: float = 60.0) -> None:
        """Until the projector answers a health query, its view caught up with the log."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                health = await self.client.health()
            except SandboxerError as exc:
                if time.monotonic() > deadline:
                    raise HarnessError(f"no health answer within {timeout:g} s: {exc}") from exc
            else:
                if health.get("caught_up", True):
                    return
                if time.monotonic() > deadline:
                    raise HarnessError(f"the view did not catch up within {timeout:g} s")
            await asyncio.sleep(0.1)

    async def start_role(self, role: str) -> RoleProcess:
        """Start one incarnation of ``role`` and wait until it logs that it runs."""
        current = self.processes.get(role)
        if current is not None and current.alive:
            raise HarnessError(f"{role} is already running (pid {current.pid})")
        incarnation = self._incarnations.get(role, 0) + 1
        self._incarnations[role] = incarnation
        log = self.logs / f"{role}.{incarnation}.log"
        log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            command = ["up"] if role == EMBEDDED_ROLE else ["worker", role.partition("#")[0]]
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "sandboxer.cli.app",
                *command,
                env=self.role_env(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
                start_new_session=True,  # a Ctrl-C of the runner reaches the harness alone
                preexec_fn=_die_with_parent(),
            )
        finally:
            os.close(log_fd)
        started = RoleProcess(role, process, log, incarnation)
        self.processes[role] = started
        deadline = time.monotonic() + ROLE_START_TIMEOUT
        while not _log_has(log, RUNNING_MARK):
            if not started.alive:
                raise HarnessError(
                    f"{role} exited with {process.returncode} before it ran; see {log}"
                )
            if time.monotonic() > deadline:
                raise HarnessError(f"{role} did not run within {ROLE_START_TIMEOUT:g} s; see {log}")
            await asyncio.sleep(0.05)
        return started

    def _current(self, role: str) -> RoleProcess:
        found = self.processes.get(role)
        if found is None:
            raise HarnessError(f"{role} was never started")
        return found

    async def kill(self, role: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """Send ``sig`` to the role's process; for SIGKILL/SIGTERM, wait until it is gone."""
        target = self._current(role)
        if not target.alive:
            return
        target.expected_exit = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(target.pid, sig)
        if target.frozen and sig != signal.SIGKILL:
            self.thaw(role)  # a stopped process handles no SIGTERM
        await target.process.wait()

    def freeze(self, role: str) -> None:
        """SIGSTOP the role's process: it holds its messages and heartbeats none."""
        target = self._current(role)
        os.kill(target.pid, signal.SIGSTOP)
        target.frozen = True

    def thaw(self, role: str) -> None:
        """SIGCONT after :meth:`freeze`."""
        target = self._current(role)
        with contextlib.suppress(ProcessLookupError):
            os.kill(target.pid, signal.SIGCONT)
        target.frozen = False

    async def restart(self, role: str, sig: signal.Signals = signal.SIGKILL) -> RoleProcess:
        """Kill the role (kill -9 by default) and start a new incarnation."""
        await self.kill(role, sig)
        self.exited.append(self._current(role))
        return await self.start_role(role)

    def alive(self, role: str) -> bool:
        return self._current(role).alive

    def crashed(self) -> list[str]:
        """Every role incarnation that exited without the harness asking it to, with its code
        and the end of its log: a worker crash is a finding."""
        found = []
        for p in [*self.exited, *self.processes.values()]:
            if not p.alive and not p.expected_exit:
                tail = p.log.read_text(errors="replace").strip().splitlines()[-3:]
                found.append(
                    f"{p.role} (incarnation {p.incarnation}, pid {p.pid}) exited with "
                    f"{p.process.returncode}: {' | '.join(tail)}"
                )
        return found

    async def stop(self) -> None:
        """Stop everything started (idempotent; never raises; survives a cancellation)."""
        await asyncio.shield(self._stop())

    async def _stop(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await self._client.close()
            self._client = None
        await asyncio.gather(*(self._stop_role(p) for p in self.processes.values()))
        await self._reap_sandboxes()
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                await self.cluster.stop()
        if self.nats is not None:
            with contextlib.suppress(Exception):
                await self.nats.stop()

    async def _stop_role(self, target: RoleProcess) -> None:
        if not target.alive:
            return
        target.expected_exit = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(target.pid, signal.SIGCONT)
            os.kill(target.pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(STOP_GRACE):
                await target.process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(target.pid, signal.SIGKILL)
            await target.process.wait()

    async def _reap_sandboxes(self) -> None:
        """Tear down every ext.local sandbox and warm pool member of this home (the keeper
        drains its members when stopped, not when killed) and free what lost directories
        left, then kill any holder still left (after a teardown that failed)."""
        with contextlib.suppress(Exception):
            await LocalExtension(self.home / "local").tear_down_everything()
        for pid in bwrap_pids_under(self.home):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def run_seed() -> int:
    """The seed of a scenario's random schedule: ``CHAOS_SEED`` (to replay a run's, printed in
    its figures), or a fresh one."""
    return int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(10**6))


def finish(
    name: str,
    watch: Stopwatch,
    figures: dict[str, object],
    problems: list[str],
) -> ScenarioResult:
    """The scenario's result: passed when there is no problem."""
    return ScenarioResult(
        name=name,
        passed=not problems,
        seconds=round(watch.seconds, 1),
        figures=figures,
        problems=problems,
    )
