"""Running one ``nats-server`` process: the embedded single node, or one node of a cluster.

Port ``0`` means "any free port": nats-server is started with ``-1`` (its
"random port") and the real port is read from its log. The server logs to
``log_file`` (default ``<store_dir>/nats-server.log``, appended to); the log is
read only while starting, so a busy event loop can never stall the server on a
full pipe. Finding and version-checking the binary lives in
:mod:`sandboxer.bus.nats_binary`, clusters in :mod:`sandboxer.bus.nats_cluster`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import os
import re
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Self

from sandboxer.bus.nats_binary import (
    BINARY_NAME,
    Version,
    ensure_supported_server,
    find_nats_server,
)
from sandboxer.errors import NatsServerError

__all__ = ["NatsServerProcess"]

_ADDRESS_RES = {  # where the log says which port the server got
    "port": re.compile(r"Listening for client connections on \S+:(\d+)"),
    "monitor": re.compile(r"Starting http monitor on \S+:(\d+)"),
    "cluster": re.compile(r"Listening for route connections on \S+:(\d+)"),
}
_READY_MARK = "Server is ready"
_FATAL_MARK = "[FTL]"
_LOG_PREFIX_RE = re.compile(r"^\[\d+\] \S+ \S+ (.*)$")
_LOCK_NAME = ".nats-server.lock"
_POLL = 0.01


def _port_arg(port: int) -> str:
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range (0 means any free port)")
    return "-1" if port == 0 else str(port)


def _connect_host(host: str) -> str:
    """The address a local client dials to reach a server bound to ``host``."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _strip_prefix(line: str) -> str:
    """Drop nats-server's ``[pid] date time`` prefix from a log line."""
    match = _LOG_PREFIX_RE.match(line)
    return match.group(1) if match else line


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A pre-exec hook asking the kernel to SIGTERM the child if we die first (Linux only)."""
    prctl = getattr(ctypes.CDLL(None), "prctl", None)
    if prctl is None:
        return None
    pr_set_pdeathsig = 1
    return lambda: prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)


def _lock_store(store_dir: Path) -> int:
    """Lock ``store_dir`` while our server uses it; the lock goes with the returned fd.

    nats-server itself does not lock its store directory: a second server on
    the same directory starts happily and the two corrupt each other's streams.
    """
    store_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(store_dir / _LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise NatsServerError(
            f"the JetStream store {store_dir} is in use by another nats-server; stop that "
            "server (or 'sandboxer down') first, or use another SANDBOXER_HOME"
        ) from None
    return fd


async def _http_status(host: str, port: int, path: str) -> tuple[int, bytes]:
    """Status code and body of ``GET path`` (the monitor speaks plain HTTP/1.0)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\n\r\n".encode())
        await writer.drain()
        data = await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if len(status) < 2 or not status[1].isdigit():
        raise ValueError(f"not an HTTP answer: {head[:100]!r}")
    return int(status[1]), body


class NatsServerProcess:
    """One ``nats-server`` child process.

    ``port``/``monitor_port``/``cluster_port`` of ``0`` pick a free port; the
    real ones are read from the log and, after a successful start, kept, so a
    stopped server restarts on the same addresses (cluster routes stay valid).
    ``monitor_port=None`` disables the HTTP monitor, ``cluster_port=None``
    clustering. Use as ``async with NatsServerProcess(dir) as server:``.
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
        extra_args: Sequence[str] = (),
        ready_timeout: float = 15.0,
        stop_timeout: float = 10.0,
    ) -> None:
        if cluster_port is None and (routes or cluster_name):
            raise ValueError("routes and cluster_name need a cluster_port (0 picks a free one)")
        for p in (port, monitor_port, cluster_port):
            _port_arg(p or 0)
        self.store_dir = Path(store_dir)
        self.log_file = Path(log_file) if log_file else self.store_dir / "nats-server.log"
        self.host = host
        self.server_name = server_name
        self.cluster_name = cluster_name
        self.routes = tuple(routes)
        self.extra_args = tuple(extra_args)
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self._binary_explicit = binary
        # Wanted ports (0 = any) become the real ones after a successful start.
        self._want = {"port": port, "monitor": monitor_port, "cluster": cluster_port}
        self._found: dict[str, int] = {}
        self._proc: asyncio.subprocess.Process | None = None
        self._pid: int | None = None
        self._lock: int | None = None
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
        args = [binary or self.binary or BINARY_NAME, "-a", self.host,
                "-p", _port_arg(want["port"] or 0), "--server_name", self.server_name]
        args += ["-js", "-sd", str(self.store_dir)]
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
        self._lock = _lock_store(self.store_dir)
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
                raise self._failure(f"did not report {_READY_MARK!r} within {self.ready_timeout}s")
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
                    await asyncio.wait_for(proc.wait(), grace)
        finally:
            await self.kill()  # when still alive after the timeout, or when we were cancelled
        return proc.returncode

    async def kill(self) -> int | None:
        """SIGKILL the server (simulating a crash), reap it and release the store."""
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await asyncio.shield(proc.wait())
        if self._lock is not None:
            os.close(self._lock)  # closing releases the flock
            self._lock = None
        return self.returncode

    async def wait_healthy(self, timeout: float = 30.0) -> None:
        """Poll the monitor's ``/healthz`` until it answers 200 (JetStream current).

        Needs ``monitor_port``. For a cluster node this means the node has
        found the meta leader and caught up.
        """
        port = self.monitor_port
        if port is None:
            raise ValueError("wait_healthy needs the HTTP monitor: pass monitor_port (0 = any)")
        host = _connect_host(self.host).strip("[]")
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            if not self.running:
                raise self._failure("exited while waiting to become healthy")
            try:
                status, body = await asyncio.wait_for(_http_status(host, port, "/healthz"), 2.0)
            except (OSError, TimeoutError, ValueError) as exc:
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
        try:
            with self.log_file.open("rb") as handle:
                handle.seek(self._log_offset)
                data = handle.read()
        except OSError:
            return []
        if self.running:
            data = data[: data.rfind(b"\n") + 1]
        return data.decode(errors="replace").splitlines()

    def _scan_log(self) -> bool:
        """Read the addresses and fatal errors logged so far; whether the server is ready."""
        lines = self._log_lines()
        self.fatal_errors = [line for line in lines if _FATAL_MARK in line]
        for key, pattern in _ADDRESS_RES.items():
            for line in lines:
                if match := pattern.search(line):
                    self._found[key] = int(match.group(1))
        wanted = {key for key, port in self._want.items() if port is not None}
        return any(_READY_MARK in line for line in lines) and wanted <= self._found.keys()

    def _failure(self, what: str) -> NatsServerError:
        lines = self._log_lines()
        # A line without the log prefix is a flag error or a Go panic.
        said = [line for line in lines if line.strip() and not _LOG_PREFIX_RE.match(line)]
        if self.fatal_errors:
            detail = "fatal: " + " | ".join(_strip_prefix(line) for line in self.fatal_errors)
        elif said:
            detail = f"it said: {said[0].strip()}"
        else:
            detail = "last log lines: " + (
                " | ".join(_strip_prefix(line) for line in lines[-10:]) or "(none)"
            )
        return NatsServerError(
            f"nats-server {self.server_name!r} {what}; {detail}. "
            f"Command: {' '.join(self.command())}. Full log: {self.log_file}"
        )
