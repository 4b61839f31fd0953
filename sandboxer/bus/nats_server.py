"""Running one ``nats-server`` process: the embedded single node, or one node of a cluster.

Port ``0`` means "any free port": nats-server is started with ``-1`` (its
"random port") and the real port is read from its log. The server logs to
``log_file`` (default ``<store_dir>/nats-server.log``, appended to), read
by :mod:`sandboxer.bus.nats_log`; the store directory is locked by
:mod:`sandboxer.bus.store_lock`; health is probed by :mod:`sandboxer.bus.http_probe`.
Finding and version-checking the binary lives in :mod:`sandboxer.bus.nats_binary`,
clusters in :mod:`sandboxer.bus.nats_cluster`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Self

from sandboxer.bus import nats_log
from sandboxer.bus.http_probe import http_status
from sandboxer.bus.nats_binary import (
    BINARY_NAME,
    Version,
    ensure_supported_server,
    find_nats_server,
)
from sandboxer.bus.store_lock import StoreLock
from sandboxer.errors import NatsServerError

__all__ = ["NatsServerProcess"]

_POLL = 0.01


def _port_arg(port: int) -> str:
    if not 0 <= port <= 65535:
        raise NatsServerError(f"port {port} is out of range (0 means any free port)")
    return "-1" if port == 0 else str(port)


def _connect_host(host: str) -> str:
    """The address a local client dials to reach a server bound to ``host``."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A pre-exec hook asking the kernel to SIGTERM the child if we die first (Linux only)."""
    prctl = getattr(ctypes.CDLL(None), "prctl", None)
    if prctl is None:
        return None
    pr_set_pdeathsig = 1
    return lambda: prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)


class NatsServerProcess:
    """One ``nats-server`` child process.

    ``port``/``monitor_port``/``cluster_port`` of ``0`` pick a free port; the
    real ones are read from the log and, after a successful start, kept, so a
    stopped server restarts on the same addresses (cluster routes stay valid).
    ``monitor_port=None`` disables the HTTP monitor, ``cluster_port=None``
    clustering. ``config_file`` is a nats-server configuration read too (the embedded
    server's users and permissions, :mod:`sandboxer.bus.nats_auth`). Use as
    ``async with NatsServerProcess(dir) as server:``.
    """

    def __init__(
        self,
        store_dir: str | os.PathLike[str],
        *,
        binary: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        monitor_port: int | None = None,
        server_name: str = "sandboxer",
        cluster_name: str | None = None,
        cluster_port: int | None = None,
        routes: Sequence[str] = (),
        log_file: str | os.PathLike[str] | None = None,
        config_file: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        ready_timeout: float = 15.0,
        stop_timeout: float = 10.0,
    ) -> None:
        if cluster_port is None and (routes or cluster_name):
            raise NatsServerError(
                "routes and cluster_name need a cluster_port (0 picks a free one)"
            )
        for p in (port, monitor_port, cluster_port):
            _port_arg(p or 0)
        self.store_dir = Path(store_dir)
        self.log_file = Path(log_file) if log_file else self.store_dir / "nats-server.log"
        self.host = host
        self.server_name = server_name
        self.cluster_name = cluster_name
        self.routes = tuple(routes)
        self.config_file = Path(config_file) if config_file else None
        self.extra_args = tuple(extra_args)
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self._binary_explicit = binary
        # Wanted ports (0 = any) become the real ones after a successful start.
        self._want = {"port": port, "monitor": monitor_port, "cluster": cluster_port}
        self._found: dict[str, int] = {}
        self._proc: asyncio.subprocess.Process | None = None
        self._pid: int | None = None
        self._store_lock = StoreLock(self.store_dir)
        self._log_offset = 0
        self.binary: str | None = None
        self.version: Version | None = None
        self.fatal_errors: list[str] = []

    # ---------------------------------------------------------------- addresses

    @property
    def port(self) -> int:
        if "port" not in self._found:
            raise NatsServerError(f"nats-server {self.server_name!r} has not started")
        return self._found["port"]

    @property
    def url(self) -> str:
        return f"nats://{_connect_host(self.host)}:{self.port}"

    @property
    def pid(self) -> int:
        """The process id (of the last process once stopped)."""
        if self._pid is None:
            raise NatsServerError(f"nats-server {self.server_name!r} has not started")
        return self._pid

    @property
    def route_port(self) -> int:
        """The port other nodes route to (after a start; ``cluster_port=0`` picks it)."""
        if "cluster" not in self._found:
            raise NatsServerError(f"nats-server {self.server_name!r} has no route port yet")
        return self._found["cluster"]

    @property
    def monitor_port(self) -> int | None:
        return self._found.get("monitor")

    @property
    def monitor_url(self) -> str | None:
        port = self.monitor_port
        return None if port is None else f"http://{_connect_host(self.host)}:{port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.returncode

    def command(self, binary: str | None = None) -> list[str]:
        """The command line :meth:`start` runs."""
        want = self._want
        args = [
            binary or self.binary or BINARY_NAME,
            "-a",
            self.host,
            "-p",
            _port_arg(want["port"] or 0),
            "--server_name",
            self.server_name,
        ]
        args += ["-js", "-sd", str(self.store_dir)]
        if self.config_file is not None:
            args += ["-c", str(self.config_file)]  # flags above win over the file's settings
        if want["monitor"] is not None:
            args += ["-m", _port_arg(want["monitor"])]
        if want["cluster"] is not None:
            args += ["--cluster", f"nats://{self.host}:{_port_arg(want['cluster'])}"]
            if self.cluster_name:
                args += ["--cluster_name", self.cluster_name]
            if self.routes:
                args += ["--routes", ",".join(self.routes)]
        return args + list(self.extra_args)

    def __repr__(self) -> str:
        state = f"pid={self._pid} url={self.url}" if self.running else "stopped"
        return f"<NatsServerProcess {self.server_name} {state}>"

    # ---------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> Self:
        """Start the server and wait until it accepts clients ("Server is ready")."""
        if self.running:
            raise NatsServerError(f"nats-server {self.server_name!r} is already running")
        binary = find_nats_server(self._binary_explicit)
        self.version = await ensure_supported_server(binary)
        self.binary = binary
        self._store_lock.acquire()
        try:
            await self._spawn(binary)
        except BaseException:
            await self.kill()
            raise
        # Keep the addresses the server chose, for a restart.
        self._want.update(self._found)
        return self

    async def _spawn(self, binary: str) -> None:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.fatal_errors = []
        self._found = {}
        deadline = time.monotonic() + self.ready_timeout
        with self.log_file.open("ab") as log:
            self._log_offset = log.tell()
            try:
                self._proc = await asyncio.create_subprocess_exec(
                    *self.command(binary),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,  # Ctrl-C reaches us, we stop the server in order
                    preexec_fn=_die_with_parent_hook(),
                    # The store's lock goes with the server: it holds the locked file too.
                    pass_fds=() if self._store_lock.fd is None else (self._store_lock.fd,),
                )
            except OSError as exc:
                raise NatsServerError(f"cannot start {binary}: {exc}") from exc
        self._pid = self._proc.pid
        while True:
            exited = self._proc.returncode is not None  # before reading, so the log is complete
            if self._scan_log():
                return
            if self.fatal_errors:
                raise self._failure("failed to start")
            if exited:
                raise self._failure(f"exited with code {self._proc.returncode} before it was ready")
            if time.monotonic() >= deadline:
                raise self._failure(
                    f"did not report {nats_log.READY_MARK!r} within {self.ready_timeout}s"
                )
            await asyncio.sleep(_POLL)

    async def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM, wait up to ``timeout`` (default ``stop_timeout``), then SIGKILL.

        Returns the exit code (``None`` when never started). Safe to call twice.
        """
        proc = self._proc
        if proc is None:
            return None
        try:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                grace = self.stop_timeout if timeout is None else timeout
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(grace):
                        await proc.wait()
        finally:
            await self.kill()  # when still alive after the timeout, or when we were cancelled
        return proc.returncode

    def terminate(self) -> None:
        """SIGTERM the running server and return: whoever awaits :meth:`exited` sees it go
        (the embedded server's keeper then starts it again, bus/embedded_restart.py)."""
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)

    async def exited(self) -> int:
        """Wait until the running server exits, by a stop or not; its exit code."""
        if self._proc is None:
            raise NatsServerError(f"nats-server {self.server_name!r} has not started")
        return await self._proc.wait()

    async def kill(self) -> int | None:
        """SIGKILL the server (simulating a crash), reap it and release the store."""
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await asyncio.shield(proc.wait())
        self._store_lock.release()
        return self.returncode

    async def wait_healthy(self, timeout: float = 30.0) -> None:
        """Poll the monitor's ``/healthz`` until it answers 200 (JetStream current).

        Needs ``monitor_port``. For a cluster node this means the node has
        found the meta leader and caught up.
        """
        port = self.monitor_port
        if port is None:
            raise NatsServerError(
                "wait_healthy needs the HTTP monitor: pass monitor_port (0 = any)"
            )
        host = _connect_host(self.host).strip("[]")
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            if not self.running:
                raise self._failure("exited while waiting to become healthy")
            try:
                async with asyncio.timeout(2.0):
                    status, body = await http_status(host, port, "/healthz")
            except (OSError, TimeoutError, NatsServerError) as exc:
                last = repr(exc)
            else:
                if status == 200:
                    return
                last = f"HTTP {status} {body[:300]!r}"
            if time.monotonic() >= deadline:
                raise self._failure(f"was not healthy within {timeout}s (last /healthz: {last})")
            await asyncio.sleep(0.05)

    # ---------------------------------------------------------------- the log

    def _log_lines(self) -> list[str]:
        """The complete lines logged since the last start (a half-written last line waits)."""
        return nats_log.read_lines(self.log_file, self._log_offset, complete_only=self.running)

    def logged_errors(self) -> list[str]:
        """The ``[FTL]`` and ``[ERR]`` lines logged since the last start (tests fail on them)."""
        return nats_log.error_lines(self._log_lines())

    def _scan_log(self) -> bool:
        """Read the addresses and fatal errors logged so far; whether the server is ready."""
        found = nats_log.scan(self._log_lines())
        self.fatal_errors = found.fatal
        self._found.update(found.ports)
        return found.ready and nats_log.wanted_ports_found(self._found, self._want)

    def _failure(self, what: str) -> NatsServerError:
        detail = nats_log.describe(self._log_lines(), self.fatal_errors)
        return NatsServerError(
            f"nats-server {self.server_name!r} {what}; {detail}. "
            f"Command: {' '.join(self.command())}. Full log: {self.log_file}"
        )
