"""The steps on a host that make, find and remove a sandbox's directory and its marker.

Both SSH backends keep one directory per sandbox, ``<workspace_root>/sbx-<id>/``,
next to an ownership MARKER ``<workspace_root>/sbx-<id>.json``
(``{"extension": ..., ...}``, no secret). The marker is written before the
directory and removed after it, and it lives outside the directory so
syncing a repository (which mirrors deletions) never removes it. It tells
the two backends' sandboxes apart on a shared host: each lists and tears
down only what its marker names. Every step is one round trip, and a fresh
create's set-up (:func:`claim`) is one round trip for all of it: on a host
whose login shell reads a profile, each remote command costs that shell.

The marker also records ``made_by``, the ``[generation, attempt]`` of the provisioning
that made the sandbox, so that a teardown of one provisioning removes only its own sandbox
or an earlier one's (:meth:`~.ssh_backend.SshBackend.teardown_attempt`, by the rules of
:mod:`sandboxer.domain.attempt_order`): a worker frozen (SIGSTOP) or cut off from NATS past
``ack_wait`` goes on when it can, after a later attempt made the sandbox the log's
``ready`` names. The look at what is there and the record of the one that makes it
(:func:`claim`, or a create's long way), and a teardown's read of the record and its
removal, and the rest of a create's make after its record, hold the sandbox's lock on the host (:func:`sandbox_lock`, an ``flock`` on
``<workspace_root>/sbx-<id>.lock``), so the host orders them: a later attempt cannot make
the sandbox between an earlier one's read and its removal.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sandboxer.domain.attempt_order import recorded
from sandboxer.domain.found import MadeBy
from sandboxer.extensions.ssh_targets import DIR_PREFIX, SHORT_TIMEOUT, Target
from sandboxer.ids import is_valid_sandbox_id
from sandboxer.ssh import Connection, remote
from sandboxer.ssh.remote_lock import (
    LOCK_BUSY,
    LOCK_FUNCTION,
    NO_FLOCK,
    RemoteLock,
    first_token,
    lock_failed,
    remote_lock,
)

__all__ = [
    "ENV_FILE",
    "LOCK_WAIT",
    "Claim",
    "Probe",
    "Scan",
    "claim",
    "exists",
    "probe",
    "remove",
    "sandbox_lock",
    "scan",
    "write_marker",
]

ENV_FILE = ".sandboxer.env"
"""The secrets file inside a sandbox's directory: mode 0600, ``NAME='value'`` lines."""
LOCK_WAIT = 60.0
"""Seconds to wait for another worker's step on the same sandbox's lock on its host. A step
holds it while it looks and records (a create's claim, with its sweep of what a lost marker
left), while it makes the rest (the repo's copy, ``up``, setup: a create takes it again after
its claim, :meth:`~.ssh_backend.SshBackend._making`) or reads and removes (a teardown)."""

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
# directory, "E" when its secrets file ($3, beside the directory) is there, and
# "S <path>" for each staging copy of the marker or the secrets file that an upload
# cut off before its rename left (remote.put_file writes <path>.sbx-<random> first).
_PROBE_SCRIPT = r"""
if [ -f "$1" ] && [ ! -L "$1" ]; then printf 'M '; tr -d '\n' < "$1"; printf '\n'; fi
if [ -e "$2" ] || [ -L "$2" ]; then echo X; fi
if [ -d "$2" ] && [ ! -L "$2" ]; then echo D; fi
if [ -f "$3" ] && [ ! -L "$3" ]; then echo E; fi
for f in "$1".sbx-* "$3".sbx-*; do
  if [ -f "$f" ] && [ ! -L "$f" ]; then printf 'S %s\n' "$f"; fi
done
exit 0
"""


# A fresh create's set-up in one round trip (every remote command costs the host a
# login shell). Makes the root $3 and takes the sandbox's lock $4 (waiting $5 seconds at
# most; LOCK-BUSY or NO-FLOCK when it cannot), then, only when nothing of the sandbox is
# there (no marker $1, nothing at its directory path $2): run the command given after the
# first five arguments, if any (a backend's sweep of what could outlive a marker; without
# the lock's descriptor), write the marker from stdin (mode 0600, renamed into place), then
# make the directory: marker first, as write_marker does. Prints BUSY and changes nothing
# when something is there, or FIRST-FAILED when that command failed (either way the caller
# takes the long way: sandbox_lock, probe, teardown, write_marker), else CLAIMED, and RSYNC
# when the host has rsync. The lock is let go when the shell exits.
_CLAIM_SCRIPT = (
    LOCK_FUNCTION
    + r"""
marker=$1 dir=$2 root=$3 lock=$4 wait=$5
shift 5
mkdir -p -- "$root" || exit 1
take_lock "$lock" "$wait"
if [ -e "$marker" ] || [ -L "$marker" ] || [ -e "$dir" ] || [ -L "$dir" ]; then
  echo BUSY; exit 0
fi
if [ "$#" -gt 0 ]; then "$@" 9>&- || { echo FIRST-FAILED; exit 0; }; fi
staging="$marker.sbx-$$"
(umask 077 && cat > "$staging") && mv -f -- "$staging" "$marker" || {
  rm -f -- "$staging"; exit 1
}
mkdir -- "$dir" || exit 1
if command -v rsync >/dev/null 2>&1; then echo RSYNC; fi
echo CLAIMED
"""
)


@dataclass(frozen=True)
class Claim:
    """What :func:`claim` did: ``claimed`` False means nothing was made (something of the
    sandbox was there, or the ``first`` command failed)."""

    claimed: bool
    host_has_rsync: bool = False


async def claim(
    conn: Connection,
    item: Target,
    sandbox_id: str,
    fields: Mapping[str, Any],
    *,
    made_by: MadeBy,
    first: Sequence[str] = (),
) -> Claim:
    """Write the marker (recording ``made_by``, the provisioning that makes the sandbox) and
    make the (empty) directory of a sandbox the host holds nothing of, running ``first``
    before (with the host's env), all in one remote command under the sandbox's lock."""
    body = _marker_text(sandbox_id, fields, made_by)
    result = await remote.run(
        conn,
        [
            "sh",
            "-c",
            _CLAIM_SCRIPT,
            "sh",
            item.marker(sandbox_id),
            item.workspace(sandbox_id),
            item.config.workspace_root,
            item.lock(sandbox_id),
            f"{LOCK_WAIT:g}",
            *first,
        ],
        env=item.config.env,
        input=body + "\n",
        timeout=SHORT_TIMEOUT + LOCK_WAIT,
    )
    return _claim_answer(result.stdout, item, sandbox_id)


_CLAIM_TOKENS = frozenset({LOCK_BUSY, NO_FLOCK, "BUSY", "FIRST-FAILED", "RSYNC", "CLAIMED"})
"""The lines :data:`_CLAIM_SCRIPT` prints; the first of them says whether it took the lock."""


def _claim_answer(stdout: str, item: Target, sandbox_id: str) -> Claim:
    """What the claim's output says, skipping what the host's shell startup printed before
    it (as :func:`probe` and :func:`scan` read their lines among others)."""
    lines = [line.strip() for line in stdout.splitlines()]
    answer = first_token(lines, _CLAIM_TOKENS)
    if answer is not None:
        failed = lock_failed(answer, item.lock(sandbox_id), item.name, LOCK_WAIT)
        if failed is not None:
            raise failed
    return Claim(claimed="CLAIMED" in lines, host_has_rsync="RSYNC" in lines)


async def write_marker(
    conn: Connection, item: Target, sandbox_id: str, fields: Mapping[str, Any], *, made_by: MadeBy
) -> None:
    """Claim the sandbox's place on the host before anything else is made there, for
    provisioning ``made_by`` (the caller holds the sandbox's lock: :func:`sandbox_lock`)."""
    await remote.run(conn, ["mkdir", "-p", "--", item.config.workspace_root], timeout=SHORT_TIMEOUT)
    body = _marker_text(sandbox_id, fields, made_by)
    await remote.put_file(conn, item.marker(sandbox_id), body.encode() + b"\n", mode=0o600)


def _marker_text(sandbox_id: str, fields: Mapping[str, Any], made_by: MadeBy) -> str:
    document = {"sandbox_id": sandbox_id, **fields, "made_by": list(made_by)}
    return json.dumps(document, separators=(",", ":"), sort_keys=True)


@contextlib.asynccontextmanager
async def sandbox_lock(
    conn: Connection, item: Target, sandbox_id: str, *, make: bool = False
) -> AsyncIterator[RemoteLock | None]:
    """Hold the sandbox's lock on the host (:mod:`sandboxer.ssh.remote_lock`) for the block.

    None when the host has no workspace root and ``make`` is False: nothing of the sandbox
    can be there (a teardown looking on every host makes nothing on those without it).
    ``remove()`` on the lock removes its file as it is let go: for the step that removed
    the sandbox."""
    async with remote_lock(
        conn,
        item.config.workspace_root,
        item.lock(sandbox_id),
        wait=LOCK_WAIT,
        host=item.name,
        make=make,
    ) as held:
        yield held


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
    staging: tuple[str, ...] = ()
    """Staging copies of the marker or the secrets file an upload cut off left beside them."""

    @property
    def made_by(self) -> MadeBy | None:
        """The provisioning its marker records (None: no marker, or one written before the
        record, which counts as earlier than every provisioning)."""
        return recorded((self.marker or {}).get("made_by"))

    def foreign(self, extension: str) -> str | None:
        """The other extension that owns this sandbox's directory, if another does."""
        owner = (self.marker or {}).get("extension")
        return str(owner) if owner not in (None, extension) else None


async def probe(conn: Connection, item: Target, sandbox_id: str) -> Probe:
    result = await remote.run(
        conn,
        [
            "sh",
            "-c",
            _PROBE_SCRIPT,
            "sh",
            item.marker(sandbox_id),
            item.workspace(sandbox_id),
            item.secrets(sandbox_id),
        ],
        timeout=SHORT_TIMEOUT,
    )
    lines = result.stdout.splitlines()
    marker_lines = [line[2:] for line in lines if line.startswith("M ")]
    # Only a copy of this sandbox's own files: what a host's shell startup printed is not one.
    own = tuple(f"{path}.sbx-" for path in (item.marker(sandbox_id), item.secrets(sandbox_id)))
    return Probe(
        marker=_parse_marker(marker_lines[0]) if marker_lines else None,
        marker_exists=bool(marker_lines),
        path_exists="X" in lines,
        directory="D" in lines,
        secrets_file="E" in lines,
        staging=tuple(
            line[2:] for line in lines if line.startswith("S ") and line[2:].startswith(own)
        ),
    )


async def remove(conn: Connection, item: Target, sandbox_id: str, found: Probe) -> None:
    """Delete the sandbox's directory, its secrets file and the staging copies an upload cut
    off left (a secrets file's holds the secrets), then its marker (whichever :func:`probe`
    found)."""
    root = item.config.workspace_root
    if found.path_exists:
        await remote.remove_tree(conn, item.workspace(sandbox_id), root=root)
    if found.secrets_file:
        await remote.remove_tree(conn, item.secrets(sandbox_id), root=root)
    for staging in found.staging:
        await remote.remove_tree(conn, staging, root=root)
    if found.marker_exists:
        await remote.remove_tree(conn, item.marker(sandbox_id), root=root)


async def exists(conn: Connection, path: str, kind: Literal["d", "f"]) -> bool:
    result = await remote.run(conn, ["test", f"-{kind}", path], check=False, timeout=SHORT_TIMEOUT)
    return result.exit_status == 0


@dataclass(frozen=True)
class Scan:
    """What a workspace root holds: sandbox directories and ownership markers, by sandbox id."""

    directories: frozenset[str]
    markers: dict[str, dict[str, Any]]

    def owned_by(self, extension: str) -> list[str]:
        """Ids whose marker names ``extension`` (with or without their directory)."""
        return sorted(
            sid for sid, marker in self.markers.items() if marker.get("extension") == extension
        )


async def scan(conn: Connection, item: Target) -> Scan:
    result = await remote.run(
        conn, ["sh", "-c", _SCAN_SCRIPT, "sh", item.config.workspace_root], timeout=SHORT_TIMEOUT
    )
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
