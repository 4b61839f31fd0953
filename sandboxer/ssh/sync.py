"""Copying a local directory tree to a host.

rsync is preferred because it sends only what changed and mirrors deletions
(``-a --delete``); it runs as a subprocess over the ``ssh`` client, given
the same key and the same host-key trust as the asyncssh connection, with
``-F /dev/null`` and ``BatchMode`` so it never reads ``~/.ssh/config`` or
stops to ask a question. Hosts without rsync (or callers that ask for it)
get an SFTP upload over the existing connection: the tree is uploaded next
to the target and swapped in, so the result mirrors the local tree too.
Into a directory the caller has just made, the tree goes as one tar stream
over the existing connection instead: one remote command, no second SSH
connection, and into an empty directory the same mirror.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import posixpath
import secrets
import shlex
import shutil
import stat
import tarfile
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from sandboxer.config.hosts import HostConfig
from sandboxer.errors import HostKeyRejected, HostUnreachable, InvalidInput, RemoteCommandFailed
from sandboxer.ssh.connection import Connection, known_hosts_text
from sandboxer.ssh.remote import run
from sandboxer.ssh.streaming import stream

if TYPE_CHECKING:
    import asyncssh  # imported where used: see connection.py

__all__ = ["rsync_argv", "sync_dir"]

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10
TAIL_LINES = 40
UPLOAD_CONCURRENCY = 8
ARCHIVE_CHUNK = 1 << 20
"""Bytes of the archive per read: each is one frame on the host (streaming.stream), one
``head`` process there, so big ones keep a large tree's stream cheap."""
# The tree may be a path under SANDBOXER_INPUT_ROOTS, as this machine's users left it: a
# set-user-id (or set-group-id) file there became one in the sandbox's workspace on the host,
# owned by whoever the copy made its owner there (root, for SFTP as root), for the sandbox
# and the host's users to run. Every way of copying drops both bits (an uploaded archive's
# are dropped when it is unpacked: tarfile's "data" filter); the rest of the mode is kept.
_ID_BITS = stat.S_ISUID | stat.S_ISGID
_RSYNC_CHMOD = "--chmod=ug-s"

# Moves the old tree aside, the uploaded one ($2) into place ($1), then drops
# the old one ($3); paths arrive as arguments, never spliced into the script.
_SWAP_SCRIPT = r"""
set -e
if [ -e "$1" ] || [ -L "$1" ]; then mv -- "$1" "$3"; fi
mv -- "$2" "$1"
rm -rf -- "$3"
"""


def rsync_argv(
    host: HostConfig, local: Path, remote: str, known_hosts_file: str | None
) -> list[str]:
    """The rsync command mirroring ``local`` into ``remote`` on ``host``.

    ``known_hosts_file`` is ``None`` only for insecure hosts: then the host's
    key is accepted without a check, as the hosts file asked.
    """
    key = host.key_path()
    if key is None:
        raise HostUnreachable(
            f"host {host.address}:{host.port} has no key_file in the hosts file; rsync uses "
            "only that key (no agent, no default keys): add e.g. key_file: ~/.ssh/id_ed25519"
        )
    ssh = [
        "ssh",
        "-F",
        "/dev/null",
        "-p",
        str(host.port),
        "-l",
        host.user,
        "-i",
        str(key),
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "IdentityAgent=none",
        "-o",
        f"ConnectTimeout={CONNECT_TIMEOUT}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "CheckHostIP=no",
        "-o",
        "LogLevel=ERROR",
    ]
    if known_hosts_file is None:
        ssh += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
    else:
        ssh += ["-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts_file}"]
    address = f"[{host.address}]" if ":" in host.address else host.address
    # rsync splits -e itself and honours quotes, so each word is shell-quoted.
    return [
        "rsync",
        "-a",
        "--delete",
        "--protect-args",
        _RSYNC_CHMOD,
        "-e",
        " ".join(shlex.quote(word) for word in ssh),
        f"{local}/",
        f"{address}:{remote}/",
    ]


def _check_paths(local: Path, remote: str) -> str:
    if not local.is_dir():
        raise InvalidInput(f"cannot sync {local}: it is not an existing directory")
    if not posixpath.isabs(remote) or ".." in remote.split("/") or remote.rstrip("/") == "":
        raise InvalidInput(
            f"remote directory {remote!r} must be an absolute path without '..', not '/'"
        )
    return "/" + posixpath.normpath(remote).lstrip("/")


# Unpacks a tar stream from stdin into the directory $1 (just made, empty), with the
# archive's modes and times: umask 0 because tar (GNU or busybox) masks modes with it
# when not root, and -p is not universal. Exit 3: the host has no tar.
_UNPACK_SCRIPT = r"""
command -v tar >/dev/null 2>&1 || exit 3
umask 0
exec tar -x -f - -C "$1"
"""
NO_TAR = 3
UNPACK_OUTPUT_BYTES = 8 * 1024


def _pack(local: Path, archive: Path) -> None:
    """``local`` as a tar file, its root as ``.``: directories, files and symlinks (as
    links) with their modes and times; other kinds are left out, as the SFTP copy does."""

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        if not (info.isdir() or info.isreg() or info.issym() or info.islnk()):
            return None
        info.mode &= ~_ID_BITS
        return info

    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        # Resolved: a root given as a symlink is the directory it names (as rsync's
        # ``local/`` and the SFTP walk read it), not a link to unpack over the target.
        tar.add(local.resolve(), arcname=".", recursive=True, filter=keep)


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as handle:
        while chunk := await asyncio.to_thread(handle.read, ARCHIVE_CHUNK):
            yield chunk


async def _unpack_into_empty(conn: Connection, local: Path, target: str, timeout: float) -> bool:
    """Copy ``local`` into the empty directory ``target`` as one tar stream over ``conn``:
    one remote command and no second connection. False when the host has no tar."""
    with tempfile.TemporaryDirectory(prefix="sbx-pack-") as tmp:
        archive = Path(tmp) / "tree.tar"
        await asyncio.to_thread(_pack, local, archive)
        said = bytearray()

        async def keep(_stream: str, data: bytes) -> None:
            said.extend(data)
            del said[:-UNPACK_OUTPUT_BYTES]

        code = await stream(
            conn,
            ["sh", "-c", _UNPACK_SCRIPT, "sh", target],
            keep,
            timeout=timeout,
            stdin=_file_chunks(archive),
        )
    if code == NO_TAR:
        return False
    if code != 0:
        raise RemoteCommandFailed(
            f"unpacking {local} into {target} on the host (tar) exited with status {code}; "
            "check the disk and that the SSH user can write there",
            exit_status=code,
            output_tail="\n".join(said.decode(errors="replace").splitlines()[-TAIL_LINES:]),
        )
    return True


# Makes the target directory ($1) and says whether the host has rsync, in one round
# trip: exit 0 with it, 3 without it (any other status: mkdir failed).
_PREPARE_SCRIPT = r"""
mkdir -p -- "$1" || exit 1
command -v rsync >/dev/null 2>&1 || exit 3
"""


async def _prepare_for_rsync(conn: Connection, target: str) -> bool:
    """Make ``target`` and say whether the host has rsync (one remote command)."""
    result = await run(conn, ["sh", "-c", _PREPARE_SCRIPT, "sh", target], check=False, timeout=30)
    if result.exit_status in (0, 3):
        return result.exit_status == 0
    raise RemoteCommandFailed(
        f"cannot make {target} on the host (mkdir exited {result.exit_status}); check that "
        "the SSH user can write there",
        exit_status=result.exit_status,
        output_tail="\n".join((result.stdout + result.stderr).splitlines()[-TAIL_LINES:]),
    )


async def _run_rsync(name: str, host: HostConfig, argv: list[str], timeout: float) -> None:
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"},
    )
    try:
        async with asyncio.timeout(timeout):
            stdout, stderr = await process.communicate()
    except TimeoutError as exc:
        raise RemoteCommandFailed(
            f"rsync to host {name} did not finish within {timeout:g}s and was stopped",
            exit_status=-1,
        ) from exc
    finally:
        if process.returncode is None:
            # Timed out, or the sync cancelled (the worker stopping): an rsync left running
            # would go on writing the sandbox's directory after a later teardown removed it.
            process.kill()
            await process.wait()
    if process.returncode == 0:
        return
    status = process.returncode if process.returncode is not None else -1
    output = (stdout + stderr).decode("utf-8", "replace")
    tail = "\n".join(output.splitlines()[-TAIL_LINES:])
    where = f"host {name} ({host.address}:{host.port})"
    if "Host key verification failed" in output:
        raise HostKeyRejected(
            f"{where}: ssh (used by rsync) rejected the host key; it does not match "
            f"{host.known_hosts or 'the host_key in the hosts file'}. If the host was "
            "reinstalled, verify its new key out of band and update it"
        )
    if status == 255:
        raise HostUnreachable(f"{where}: ssh (used by rsync) could not connect: {tail}")
    raise RemoteCommandFailed(
        f"rsync to {where} exited with status {status}", exit_status=status, output_tail=tail
    )


async def _rsync(name: str, host: HostConfig, local: Path, remote: str, timeout: float) -> None:
    text = await known_hosts_text(name, host)
    if text is None:
        await _run_rsync(name, host, rsync_argv(host, local, remote, None), timeout)
        return
    path = host.known_hosts_path()
    if path is not None and host.host_key is None:
        await _run_rsync(name, host, rsync_argv(host, local, remote, str(path)), timeout)
        return
    with tempfile.TemporaryDirectory(prefix="sbx-known-hosts-") as tmp:
        file = Path(tmp) / "known_hosts"
        file.write_text(text, encoding="utf-8")
        await _run_rsync(name, host, rsync_argv(host, local, remote, str(file)), timeout)


@dataclass(frozen=True)
class _Entry:
    kind: Literal["dir", "file", "link"]
    relative: str
    target: str = ""


def _walk(local: Path) -> list[_Entry]:
    """Directories (parents first), files and symlinks below ``local``; other
    kinds (sockets, fifos, devices) are skipped, as a workspace has no use for them."""
    entries: list[_Entry] = []
    pending = [""]
    while pending:
        relative = pending.pop()
        with os.scandir(local / relative if relative else local) as listing:
            for item in sorted(listing, key=lambda found: found.name):
                path = posixpath.join(relative, item.name)
                if item.is_symlink():
                    entries.append(_Entry("link", path, os.readlink(item.path)))
                elif item.is_dir(follow_symlinks=False):
                    entries.append(_Entry("dir", path))
                    pending.append(path)
                elif item.is_file(follow_symlinks=False):
                    entries.append(_Entry("file", path))
    return entries


def _attrs(path: Path) -> asyncssh.SFTPAttrs:
    import asyncssh

    found = path.lstat()
    return asyncssh.SFTPAttrs(
        permissions=stat.S_IMODE(found.st_mode) & ~_ID_BITS,
        atime=int(found.st_atime),
        mtime=int(found.st_mtime),
    )


async def _upload(sftp: asyncssh.SFTPClient, local: Path, staging: str) -> None:
    # asyncssh's recursive put(preserve=True) tries to chmod symlinks, which
    # OpenSSH answers with a failure on Linux; walking the tree here copies
    # links as links and gives every file and directory its mode and times.
    entries = await asyncio.to_thread(_walk, local)
    await sftp.mkdir(staging)
    for entry in entries:
        remote = posixpath.join(staging, entry.relative)
        if entry.kind == "dir":
            await sftp.mkdir(remote)
        elif entry.kind == "link":
            await sftp.symlink(entry.target, remote)
    files = [entry for entry in entries if entry.kind == "file"]
    limit = asyncio.Semaphore(UPLOAD_CONCURRENCY)

    async def put(entry: _Entry) -> None:
        async with limit:
            remote = posixpath.join(staging, entry.relative)
            # Its mode and times set here, as put(preserve=True) would, less the id bits.
            await sftp.put(str(local / entry.relative), remote)
            await sftp.setstat(remote, _attrs(local / entry.relative))

    async with asyncio.TaskGroup() as group:
        for entry in files:
            group.create_task(put(entry))
    # Directories last and deepest first, so a read-only one is filled before it is locked.
    for entry in reversed([entry for entry in entries if entry.kind == "dir"]):
        await sftp.setstat(posixpath.join(staging, entry.relative), _attrs(local / entry.relative))
    await sftp.setstat(staging, _attrs(local))


async def _sftp(conn: Connection, local: Path, remote: str, timeout: float) -> None:
    import asyncssh

    token = secrets.token_hex(6)
    staging, old = f"{remote}.sbx-sync-{token}", f"{remote}.sbx-old-{token}"
    await run(conn, ["mkdir", "-p", "--", posixpath.dirname(remote)])
    try:
        async with asyncio.timeout(timeout), conn.start_sftp_client() as sftp:
            await _upload(sftp, local, staging)
    except asyncio.CancelledError:
        # Cancelled (the worker stopping): the partial copy goes too, shielded from the
        # cancellation, or it stays beside the sandboxes where nothing looks for it.
        with contextlib.suppress(Exception):
            await asyncio.shield(run(conn, ["rm", "-rf", "--", staging], check=False, timeout=60))
        raise
    except Exception as exc:
        with contextlib.suppress(RemoteCommandFailed, HostUnreachable):
            await run(conn, ["rm", "-rf", "--", staging], check=False, timeout=60)
        if isinstance(exc, TimeoutError):
            raise RemoteCommandFailed(
                f"uploading {local} to {remote} over SFTP did not finish within {timeout:g}s",
                exit_status=-1,
            ) from exc
        failure = _first(exc, asyncssh.SFTPError)
        if isinstance(failure, asyncssh.SFTPError):
            raise RemoteCommandFailed(
                f"uploading {local} to {remote} over SFTP failed: {failure.reason}; check "
                "that the SSH user can write there",
                exit_status=-1,
            ) from exc
        lost = _first(exc, (asyncssh.Error, OSError))
        if lost is not None:
            raise HostUnreachable(
                f"the SSH connection failed while uploading {local}: {lost}"
            ) from exc
        raise
    await run(conn, ["sh", "-c", _SWAP_SCRIPT, "sh", remote, staging, old])


def _first(
    exc: BaseException, kinds: type[BaseException] | tuple[type[BaseException], ...]
) -> BaseException | None:
    """``exc`` if it is one of ``kinds``, or the first such error a TaskGroup wrapped."""
    if isinstance(exc, kinds):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _first(inner, kinds)
            if found is not None:
                return found
    return None


async def sync_dir(
    name: str,
    host: HostConfig,
    conn: Connection,
    local: Path,
    remote: str,
    *,
    prefer: Literal["auto", "sftp"] = "auto",
    timeout: float = 600,
    host_has_rsync: bool | None = None,
    empty: bool = False,
) -> Literal["rsync", "sftp", "tar"]:
    """Make ``remote`` on the host a copy of the local directory ``local``.

    Files, permissions, times and symlinks (as links) are copied; files
    that exist only remotely are deleted. Uses rsync when both ends have it
    and ``prefer`` is ``"auto"``, else SFTP over ``conn``; returns which.

    ``host_has_rsync`` is for a caller that has already made ``remote`` and
    asked the host about rsync in a round trip of its own (every remote
    command costs a login shell on the host); left ``None``, one command here
    makes the directory and asks. ``empty`` says the caller has just made
    ``remote`` and nothing is in it: then the tree goes as one tar stream over
    ``conn`` (one remote command, where rsync opens a connection of its own
    and runs a login shell there too); into an empty directory that is the
    same mirror. A host without tar gets rsync or SFTP as above.
    """
    target = _check_paths(local, remote)
    if empty and await _unpack_into_empty(conn, local, target, timeout):
        log.debug("unpacked %s into %s:%s as a tar stream", local, name, target)
        return "tar"
    if prefer == "auto" and shutil.which("rsync"):
        if host_has_rsync is None:
            host_has_rsync = await _prepare_for_rsync(conn, target)
        if host_has_rsync:
            await _rsync(name, host, local, target, timeout)
            log.debug("synced %s to %s:%s with rsync", local, name, target)
            return "rsync"
    await _sftp(conn, local, target, timeout)
    log.debug("synced %s to %s:%s over SFTP", local, name, target)
    return "sftp"
