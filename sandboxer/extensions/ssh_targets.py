"""Hosts the SSH backends act on: entries of the hosts file, resolved by name and reached.

A :class:`Target` is one host of the hosts file under its name, and knows
where a sandbox lives on it: the directory ``<workspace_root>/sbx-<id>/``
and, beside it, the ownership marker ``<workspace_root>/sbx-<id>.json``.
The hosts file is read at every call, so an edit takes effect without a
restart. Errors that name a missing host say which file to edit and point
to docs/hosts.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from sandboxer.config.hosts import HostConfig, hosts_path, load_hosts
from sandboxer.config.settings import Settings
from sandboxer.errors import ExtensionError, HostKeyRejected, HostUnreachable, InvalidInput
from sandboxer.extensions import host_report
from sandboxer.ids import HOST_NAME
from sandboxer.ssh import Connection, connection, remote

__all__ = [
    "CONNECT_TIMEOUT",
    "DIR_PREFIX",
    "LIST_CONNECT_TIMEOUT",
    "SHORT_TIMEOUT",
    "Target",
    "host_telemetry",
    "reachable_targets",
    "session",
    "target",
    "targets",
]

log = logging.getLogger(__name__)

DIR_PREFIX = "sbx-"
CONNECT_TIMEOUT = 10.0
LIST_CONNECT_TIMEOUT = 5.0
"""Listing and telemetry skip a host that does not answer within this many seconds."""
SHORT_TIMEOUT = 60.0
"""Seconds for a quick step on a host (a probe, a scan, a mkdir)."""
HOSTS_DOC = "docs/hosts.md"

T = TypeVar("T")

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


@dataclass(frozen=True)
class Target:
    """A host from the hosts file, by name."""

    name: str
    config: HostConfig

    def workspace(self, sandbox_id: str) -> str:
        """The sandbox's directory on this host."""
        return f"{self.config.workspace_root}/{DIR_PREFIX}{sandbox_id}"

    def marker(self, sandbox_id: str) -> str:
        """The sandbox's ownership marker, beside (not inside) its directory."""
        return f"{self.config.workspace_root}/{DIR_PREFIX}{sandbox_id}.json"

    def secrets(self, sandbox_id: str) -> str:
        """The file of a stack's secrets, beside its directory: a service that mounts the
        directory could write a file inside it, and this one is sourced by the shell that
        runs every compose command on the host."""
        return f"{self.config.workspace_root}/{DIR_PREFIX}{sandbox_id}.env"

    def lock(self, sandbox_id: str) -> str:
        """The sandbox's lock file, beside its marker (:func:`..ssh_workspace.sandbox_lock`):
        a workspace root two backends share gives one sandbox one lock."""
        return f"{self.config.workspace_root}/{DIR_PREFIX}{sandbox_id}.lock"

    def describe(self) -> dict[str, Any]:
        return {
            "host": self.name,
            "address": self.config.address,
            "port": self.config.port,
            "user": self.config.user,
        }


def targets(settings: Settings) -> list[Target]:
    """Every host in the hosts file, read now so edits take effect without a restart."""
    return [Target(name, config) for name, config in sorted(load_hosts(settings).items())]


def target(
    settings: Settings,
    name: str | None,
    *,
    sandbox_id: str | None,
    extension: str,
    what: str = "placement host",
) -> Target:
    """The named host, or the only one in the file when no name is given."""
    hosts = load_hosts(settings)
    path = hosts_path(settings)
    known = ", ".join(sorted(hosts)) or "none"
    if name is None:
        if len(hosts) == 1:
            only, config = next(iter(hosts.items()))
            return Target(only, config)
        how = (
            "give the profile a placement, or pass --host NAME"
            if hosts
            else f"add a host to it (see {HOSTS_DOC})"
        )
        raise ExtensionError(
            f"no {what} was chosen and the hosts file {path} has {len(hosts)} hosts "
            f"({known}); {how}",
            sandbox_id=sandbox_id,
            extension=extension,
        )
    if not re.fullmatch(HOST_NAME, name):
        raise InvalidInput(
            f"{what} {name!r} is not a host name (lowercase letters, digits, '-')",
            sandbox_id=sandbox_id,
            extension=extension,
        )
    if name not in hosts:
        raise ExtensionError(
            f"{what} {name!r} is not in the hosts file {path} (known: {known}); add it there "
            f"(see {HOSTS_DOC}) or choose another host",
            sandbox_id=sandbox_id,
            extension=extension,
        )
    return Target(name, hosts[name])


@contextlib.asynccontextmanager
async def session(item: Target, *, timeout: float = CONNECT_TIMEOUT) -> AsyncIterator[Connection]:
    """A verified connection to the host for the length of an ``async with`` block."""
    async with connection.session(item.name, item.config, timeout=timeout) as conn:
        yield conn


async def reachable_targets(
    settings: Settings,
    extension: str,
    use: Callable[[Target, Connection], Awaitable[T]],
    only: Iterable[Target] | None = None,
) -> list[tuple[Target, T]]:
    """``use(target, conn)`` on every host that answers, in parallel; the others are skipped
    with a warning (a host that is down holds nothing we can act on now)."""
    chosen = list(only) if only is not None else targets(settings)

    async def one(item: Target) -> tuple[Target, T] | None:
        try:
            async with session(item, timeout=LIST_CONNECT_TIMEOUT) as conn:
                return item, await use(item, conn)
        except (HostUnreachable, HostKeyRejected) as exc:
            log.warning("%s: skipping host %s: %s", extension, item.name, exc.message)
            return None

    results = await asyncio.gather(*(one(item) for item in chosen))
    return [result for result in results if result is not None]


async def host_telemetry(conn: Connection, item: Target) -> dict[str, Any]:
    """Load, memory and the disk holding the workspace root (the fields ext.local reports)."""
    result = await remote.run(
        conn,
        ["sh", "-c", _TELEMETRY_SCRIPT, "sh", item.config.workspace_root],
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
