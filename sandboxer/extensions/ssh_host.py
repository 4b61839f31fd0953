"""What the two SSH backends (``ext.compose-ssh``, ``ext.vm-packer``) share.

Both keep one directory per sandbox on a host from the hosts file,
``<workspace_root>/sbx-<id>/``, next to an ownership MARKER
``<workspace_root>/sbx-<id>.json`` (``{"extension": ..., ...}``, no secret).
The marker is written before the directory and removed after it, and it
lives outside the directory so syncing a repository (which mirrors
deletions) never removes it. It tells the two backends' sandboxes apart on a
shared host: each lists and tears down only directories whose marker names
it.

Everything here validates before it connects, reaches hosts only through
:mod:`sandboxer.ssh`, and hands error text through
:func:`sandboxer.extensions.ssh_checks.scrubbed` so no
secret value escapes in a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import asyncssh

from sandboxer.config.hosts import HOST_NAME, HostConfig, hosts_path, load_hosts
from sandboxer.config.settings import Settings
from sandboxer.errors import (
    ExtensionError,
    HostKeyRejected,
    HostUnreachable,
    InvalidInput,
    SandboxNotFound,
)
from sandboxer.extensions import host_report, ssh_checks
from sandboxer.extensions.base import FoundSandbox, OutputSink
from sandboxer.ids import is_valid_sandbox_id
from sandboxer.ssh import connection, remote

__all__ = [
    "DIR_PREFIX",
    "ENV_FILE",
    "Probe",
    "Scan",
    "SshBackend",
    "Target",
    "exists",
    "host_telemetry",
    "marker_path",
    "probe",
    "reachable_targets",
    "remove",
    "scan",
    "session",
    "stream",
    "target",
    "targets",
    "workspace_path",
    "write_marker",
]

log = logging.getLogger(__name__)

DIR_PREFIX = "sbx-"
ENV_FILE = ".sandboxer.env"
"""The secrets file inside a sandbox's directory: mode 0600, ``NAME='value'`` lines."""

CONNECT_TIMEOUT = 10.0
LIST_CONNECT_TIMEOUT = 5.0
"""Listing and telemetry skip a host that does not answer within this many seconds."""
SHORT_TIMEOUT = 60.0
CHUNK = 64 * 1024
DRAIN_GRACE = 1.0
"""Seconds of output still read after a command exited (a background job may hold the channel)."""

T = TypeVar("T")


# Lists the sandbox directories and markers of a workspace root ($1) in one
# round trip: "D <name>" per directory, "M <name> <marker json>" per marker.
_SCAN_SCRIPT = r"""
[ -d "$1" ] || exit 0
cd -- "$1" || exit 1
for f in sbx-*; do
  if [ -d "$f" ] && [ ! -L "$f" ]; then
    printf 'D %s\n' "$f"
  elif [ -f "$f" ] && [ ! -L "$f" ]; then
    case "$f" in
      *.json) printf 'M %s ' "$f"; tr -d '\n' < "$f"; printf '\n' ;;
    esac
  fi
done
"""

# What is left of one sandbox, in one round trip: its marker ($1) as "M <json>",
# "X" when anything is at its directory path ($2), "D" when that is a real
# directory, "E" when it holds a secrets file.
_PROBE_SCRIPT = r"""
if [ -f "$1" ] && [ ! -L "$1" ]; then printf 'M '; tr -d '\n' < "$1"; printf '\n'; fi
if [ -e "$2" ] || [ -L "$2" ]; then echo X; fi
if [ -d "$2" ] && [ ! -L "$2" ]; then echo D; fi
if [ -f "$2/.sandboxer.env" ]; then echo E; fi
exit 0
"""

# /proc/loadavg, /proc/meminfo and df of the nearest existing ancestor of $1.
_TELEMETRY_SCRIPT = r"""
cat /proc/loadavg
echo @@sbx@@
cat /proc/meminfo
echo @@sbx@@
p="$1"
while [ ! -e "$p" ]; do p=$(dirname -- "$p"); done
df -Pk -- "$p"
"""


# -- hosts -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A host from the hosts file, by name."""

    name: str
    config: HostConfig

    def workspace(self, sandbox_id: str) -> str:
        return workspace_path(self.config, sandbox_id)

    def marker(self, sandbox_id: str) -> str:
        return marker_path(self.config, sandbox_id)

    def describe(self) -> dict[str, Any]:
        return {"host": self.name, "address": self.config.address, "port": self.config.port,
                "user": self.config.user}


def workspace_path(host: HostConfig, sandbox_id: str) -> str:
    return f"{host.workspace_root}/{DIR_PREFIX}{sandbox_id}"


def marker_path(host: HostConfig, sandbox_id: str) -> str:
    return f"{host.workspace_root}/{DIR_PREFIX}{sandbox_id}.json"


def targets(settings: Settings) -> list[Target]:
    """Every host in the hosts file, read now so edits take effect without a restart."""
    return [Target(name, config) for name, config in sorted(load_hosts(settings).items())]


def target(settings: Settings, name: str | None, *, sandbox_id: str | None,
           extension: str, what: str = "placement host") -> Target:
    """The named host, or the only one in the file when no name is given."""
    hosts = load_hosts(settings)
    path = hosts_path(settings)
    if name is None:
        if len(hosts) == 1:
            only, config = next(iter(hosts.items()))
            return Target(only, config)
        known = ", ".join(sorted(hosts)) or "none"
        raise ExtensionError(
            f"no {what} was chosen and the hosts file {path} has {len(hosts)} hosts "
            f"({known}); give the profile a placement, or pass --host NAME",
            sandbox_id=sandbox_id, extension=extension,
        )
    if not re.fullmatch(HOST_NAME, name):
        raise InvalidInput(f"{what} {name!r} is not a host name (lowercase letters, digits, '-')",
                           sandbox_id=sandbox_id, extension=extension)
    if name not in hosts:
        known = ", ".join(sorted(hosts)) or "none"
        raise ExtensionError(
            f"{what} {name!r} is not in the hosts file {path} (known: {known}); add it there "
            "or choose another host", sandbox_id=sandbox_id, extension=extension,
        )
    return Target(name, hosts[name])


async def reachable_targets(
    settings: Settings, extension: str, use: Callable[[Target, asyncssh.SSHClientConnection],
                                                      Awaitable[T]],
    only: Iterable[Target] | None = None,
) -> list[tuple[Target, T]]:
    """``use(target, conn)`` on every host that answers, in parallel; the others are skipped
    with a warning (a host that is down holds nothing we can act on now)."""
    chosen = list(only) if only is not None else targets(settings)

    async def one(item: Target) -> tuple[Target, T] | None:
        try:
            async with connection.session(item.name, item.config,
                                          timeout=LIST_CONNECT_TIMEOUT) as conn:
                return item, await use(item, conn)
        except (HostUnreachable, HostKeyRejected) as exc:
            log.warning("%s: skipping host %s: %s", extension, item.name, exc.message)
            return None

    results = await asyncio.gather(*(one(item) for item in chosen))
    return [result for result in results if result is not None]


class SshBackend:
    """What both SSH backends do the same way: find and tear down their sandboxes on hosts.

    A subclass sets ``id`` and implements ``_found_on`` (what one host holds)
    and ``_teardown_on`` (remove one sandbox from one host, idempotently).
    """

    id: str
    host_local = False

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def _found_on(self, item: Target,
                        conn: asyncssh.SSHClientConnection) -> list[FoundSandbox]:
        raise NotImplementedError

    async def _teardown_on(self, conn: asyncssh.SSHClientConnection, item: Target,
                           sandbox_id: str, found: Probe) -> None:
        raise NotImplementedError

    async def _teardown_owned(self, conn: asyncssh.SSHClientConnection, item: Target,
                              sandbox_id: str) -> None:
        """Tear down ``sandbox_id`` on one host unless another backend's marker claims it."""
        found = await probe(conn, item, sandbox_id)
        if (owner := found.foreign(self.id)) is not None:
            log.warning("%s: sbx-%s on host %s belongs to %s; not touching it", self.id,
                        sandbox_id, item.name, owner)
            return
        await self._teardown_on(conn, item, sandbox_id, found)

    async def teardown(self, sandbox_id: str, *, host: str | None = None) -> None:
        ssh_checks.check_sandbox_id(sandbox_id, self.id)
        if host is not None:
            item = target(self.settings, host, sandbox_id=sandbox_id, extension=self.id)
            async with session(item) as conn:
                await self._teardown_owned(conn, item, sandbox_id)
            return
        # No host recorded: look on every host that answers (ids are unique).
        await reachable_targets(
            self.settings, self.id,
            lambda item, conn: self._teardown_owned(conn, item, sandbox_id))

    async def list_sandboxes(self) -> Sequence[FoundSandbox]:
        found = await reachable_targets(self.settings, self.id, self._found_on)
        return [sandbox for _, items in found for sandbox in items]

    async def _exec_target(self, sandbox_id: str, host: str | None) -> Target:
        """Where to run an exec; a subclass may search the hosts when none was recorded."""
        return target(self.settings, host, sandbox_id=sandbox_id, extension=self.id)

    async def exec(self, sandbox_id: str, argv: Sequence[str], output: OutputSink, *,
                   host: str | None = None) -> int:
        """Run ``argv`` on the host, in the sandbox's directory, streaming its output."""
        ssh_checks.check_sandbox_id(sandbox_id, self.id)
        ssh_checks.check_argv(argv, sandbox_id, self.id)
        item = await self._exec_target(sandbox_id, host)
        async with session(item) as conn:
            directory = item.workspace(sandbox_id)
            if not await exists(conn, directory, "d"):
                raise SandboxNotFound(
                    f"{self.id} sandbox {sandbox_id} has no directory {directory} on host "
                    f"{item.name}; create it again or tear it down",
                    sandbox_id=sandbox_id, extension=self.id)
            return await stream(conn, argv, output, env=item.config.env, cwd=directory)


# -- steps -----------------------------------------------------------------------------------


async def write_marker(conn: asyncssh.SSHClientConnection, item: Target, sandbox_id: str,
                       fields: Mapping[str, Any]) -> None:
    await remote.run(conn, ["mkdir", "-p", "--", item.config.workspace_root],
                     timeout=SHORT_TIMEOUT)
    body = json.dumps({"sandbox_id": sandbox_id, **fields}, separators=(",", ":"),
                      sort_keys=True)
    await remote.put_file(conn, item.marker(sandbox_id), body.encode() + b"\n", mode=0o600)


def _parse_marker(text: str) -> dict[str, Any] | None:
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


@dataclass(frozen=True)
class Probe:
    """What :func:`probe` found of one sandbox on a host."""

    marker: dict[str, Any] | None
    marker_exists: bool
    path_exists: bool
    directory: bool
    secrets_file: bool

    def foreign(self, extension: str) -> str | None:
        """The other extension that owns this sandbox's directory, if another does."""
        owner = (self.marker or {}).get("extension")
        return str(owner) if owner not in (None, extension) else None


async def probe(conn: asyncssh.SSHClientConnection, item: Target, sandbox_id: str) -> Probe:
    result = await remote.run(
        conn, ["sh", "-c", _PROBE_SCRIPT, "sh", item.marker(sandbox_id),
               item.workspace(sandbox_id)], timeout=SHORT_TIMEOUT)
    lines = result.stdout.splitlines()
    marker_lines = [line[2:] for line in lines if line.startswith("M ")]
    return Probe(
        marker=_parse_marker(marker_lines[0]) if marker_lines else None,
        marker_exists=bool(marker_lines),
        path_exists="X" in lines,
        directory="D" in lines,
        secrets_file="E" in lines,
    )


async def remove(conn: asyncssh.SSHClientConnection, item: Target, sandbox_id: str,
                 found: Probe) -> None:
    """Delete the sandbox's directory, then its marker (whichever :func:`probe` found)."""
    root = item.config.workspace_root
    if found.path_exists:
        await remote.remove_tree(conn, item.workspace(sandbox_id), root=root)
    if found.marker_exists:
        await remote.remove_tree(conn, item.marker(sandbox_id), root=root)


async def exists(conn: asyncssh.SSHClientConnection, path: str, kind: Literal["d", "f"]) -> bool:
    result = await remote.run(conn, ["test", f"-{kind}", path], check=False,
                              timeout=SHORT_TIMEOUT)
    return result.exit_status == 0


@dataclass(frozen=True)
class Scan:
    """What a workspace root holds: sandbox directories and ownership markers, by sandbox id."""

    directories: frozenset[str]
    markers: dict[str, dict[str, Any]]

    def owned_by(self, extension: str) -> list[str]:
        """Ids whose marker names ``extension`` (with or without their directory)."""
        return sorted(sid for sid, marker in self.markers.items()
                      if marker.get("extension") == extension)


async def scan(conn: asyncssh.SSHClientConnection, item: Target) -> Scan:
    result = await remote.run(conn, ["sh", "-c", _SCAN_SCRIPT, "sh", item.config.workspace_root],
                              timeout=SHORT_TIMEOUT)
    directories: set[str] = set()
    markers: dict[str, dict[str, Any]] = {}
    for line in result.stdout.splitlines():
        kind, _, rest = line.partition(" ")
        name, _, body = rest.partition(" ")
        if kind == "D" and name.startswith(DIR_PREFIX):
            sandbox_id = name.removeprefix(DIR_PREFIX)
            if is_valid_sandbox_id(sandbox_id):
                directories.add(sandbox_id)
        elif kind == "M" and name.startswith(DIR_PREFIX) and name.endswith(".json"):
            sandbox_id = name.removeprefix(DIR_PREFIX).removesuffix(".json")
            marker = _parse_marker(body)
            if is_valid_sandbox_id(sandbox_id) and marker is not None:
                markers[sandbox_id] = marker
    return Scan(frozenset(directories), markers)


async def host_telemetry(conn: asyncssh.SSHClientConnection, item: Target) -> dict[str, Any]:
    """Load, memory and the disk holding the workspace root (the fields ext.local reports)."""
    result = await remote.run(
        conn, ["sh", "-c", _TELEMETRY_SCRIPT, "sh", item.config.workspace_root],
        timeout=SHORT_TIMEOUT,
    )
    load, meminfo, df = ([*result.stdout.split("@@sbx@@\n"), "", ""])[:3]
    report: dict[str, Any] = {"reachable": True, "workspace_root": item.config.workspace_root}
    with contextlib.suppress(ValueError, IndexError):
        report.update(host_report.parse_loadavg(load))
    with contextlib.suppress(ValueError, IndexError):
        report.update(host_report.parse_meminfo(meminfo))
    with contextlib.suppress(ValueError, IndexError):
        report.update(host_report.parse_df(df))
    return report


async def stream(conn: asyncssh.SSHClientConnection, argv: Sequence[str], output: OutputSink,
                 *, env: Mapping[str, str], cwd: str) -> int:
    """Run ``argv`` on the host in ``cwd``, stream its output in chunks, return its exit code.

    The exit code follows the shell: 128 + N for a command killed by signal N.
    A background job still holding the output after the command exited gets
    :data:`DRAIN_GRACE` seconds, then the channel is closed.
    """
    line = remote.command_line(argv, env=env, cwd=cwd)
    try:
        process = await conn.create_process(line, encoding=None)
    except (asyncssh.ChannelOpenError, asyncssh.DisconnectError, OSError) as exc:
        raise HostUnreachable(
            f"the SSH connection failed while starting {argv[0]!r} ({exc}); check that the "
            "host is up and retry") from exc

    async def pump(reader: asyncssh.SSHReader[bytes], name: Literal["stdout", "stderr"]) -> None:
        while True:
            chunk = await reader.read(CHUNK)
            if not chunk:
                return
            await output(name, chunk)

    pumps = [asyncio.ensure_future(pump(process.stdout, "stdout")),
             asyncio.ensure_future(pump(process.stderr, "stderr"))]
    waiter = asyncio.ensure_future(process.wait())
    try:
        process.stdin.write_eof()
        pending: set[asyncio.Future[Any]] = {waiter, *pumps}
        while not waiter.done() and process.returncode is None:
            done, pending = await asyncio.wait(pending, timeout=0.2,
                                               return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # a failing output sink stops the command
        await asyncio.wait(pumps, timeout=DRAIN_GRACE)
        for task in pumps:
            if task.done():
                task.result()
        code = process.returncode
    except (asyncssh.DisconnectError, asyncssh.ConnectionLost, OSError) as exc:
        raise HostUnreachable(
            f"the SSH connection was lost while running {argv[0]!r} ({exc}); the command may "
            "still be running on the host") from exc
    finally:
        for task in (*pumps, waiter):
            task.cancel()
        await asyncio.gather(*pumps, waiter, return_exceptions=True)
        process.close()
    if code is None:
        return 255
    return 128 - code if code < 0 else code


@contextlib.asynccontextmanager
async def session(item: Target) -> AsyncIterator[asyncssh.SSHClientConnection]:
    async with connection.session(item.name, item.config, timeout=CONNECT_TIMEOUT) as conn:
        yield conn
