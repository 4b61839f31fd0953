"""Commands and files on a connected host.

sshd hands a command to the remote login shell as one string, so every
argument is quoted here, once, by :func:`command_line`; nothing else in
sandboxer builds remote shell text. Environment variables travel as an
``env K=V`` prefix because sshd drops client-sent variables unless its
``AcceptEnv`` allows them. Library errors become sandboxer errors here:
a non-zero exit or a timeout is :class:`RemoteCommandFailed`, a lost
connection is :class:`HostUnreachable`. Every command carries its deadline
to the host (:mod:`.deadline`), which stops it there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import posixpath
import re
import secrets
import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sandboxer.errors import HostUnreachable, InvalidInput, RemoteCommandFailed
from sandboxer.ssh import deadline
from sandboxer.ssh.connection import Connection

__all__ = [
    "RemoteResult",
    "command_line",
    "inside_root",
    "output_window",
    "put_file",
    "remove_tree",
    "run",
    "timed_out_error",
]

log = logging.getLogger(__name__)

PUT_TIMEOUT = 60.0
"""Seconds a file :func:`put_file` writes (a few KiB: a marker, secrets, an override) may
take over SFTP. sshd answers keepalives while the SFTP server under it hangs (a stalled
disk), so without a bound a worker waited for ever, holding the sandbox's lock."""
_CLEANUP_TIMEOUT = 5.0
"""Seconds a failed write's staging file is given to go: its host may be what failed."""
WINDOW_CHARS = 8 * 1024
"""The most output an error keeps of a command: room for a private key and the lines
around it, so that redaction sees a printed secret whole (see :func:`output_window`)."""
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NO_ENV: Mapping[str, str] = {}

# Deletes $3 only if its parent, with symlinks resolved, is still inside the
# resolved root $1: a symlink planted in a synced repository must not steer
# ``rm -rf`` outside the workspace root. Paths arrive as positional
# arguments, never spliced into the script.
_REMOVE_SCRIPT = r"""
[ -e "$3" ] || [ -L "$3" ] || exit 0
root=$(realpath -e -- "$1") || exit 0
parent=$(realpath -e -- "$2") || exit 0
case "$parent/" in
  "$root"/*) ;;
  *) echo "refusing to remove $3: it resolves outside $root" >&2; exit 3 ;;
esac
exec rm -rf -- "$3"
"""


@dataclass(frozen=True)
class RemoteResult:
    """What a finished remote command left behind."""

    exit_status: int
    stdout: str
    stderr: str


def command_line(
    argv: Sequence[str], *, env: Mapping[str, str] = _NO_ENV, cwd: str | None = None
) -> str:
    """One POSIX ``sh`` command line that runs ``argv`` exactly as given.

    Every word is quoted with :func:`shlex.quote`, so arguments such as
    ``$(rm -rf /)`` reach the program literally. Raises :class:`InvalidInput`
    for an empty ``argv`` or an environment name that is not a shell name.
    """
    if not argv:
        raise InvalidInput("a remote command needs at least a program name")
    words = [shlex.quote(arg) for arg in argv]
    if env:
        for name in env:
            if not _ENV_NAME.fullmatch(name):
                raise InvalidInput(
                    f"environment name {name!r} is not allowed: use letters, digits and '_', "
                    "not starting with a digit"
                )
        words = ["env", *(shlex.quote(f"{name}={value}") for name, value in env.items()), *words]
    line = " ".join(words)
    if cwd is not None:
        line = f"cd -- {shlex.quote(cwd)} && {line}"
    return line


def output_window(*texts: str) -> str:
    """The newest output of a command (``texts``: its stdout, its stderr), whole lines, at
    most :data:`WINDOW_CHARS` characters, for a :class:`RemoteCommandFailed`'s
    ``output_tail``.

    Not redacted: this module does not know the secrets. Whoever records it redacts it
    whole and only then cuts it to its last lines (``ssh_checks``), so a secret printed
    over many lines is matched whole, not as a fragment the cut left behind.
    """
    joined = "\n".join(text.rstrip("\n") for text in texts if text)
    if len(joined) <= WINDOW_CHARS:
        return joined
    # The first line kept is likely the end of a longer one, perhaps of a secret that
    # redaction could not recognise any more: it is left out.
    return joined[-WINDOW_CHARS:].partition("\n")[2]


def _peer(conn: Connection) -> str:
    peer = conn.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return "the host"


def _lost(conn: Connection, what: str, exc: BaseException) -> HostUnreachable:
    return HostUnreachable(
        f"{_peer(conn)}: the SSH connection failed during {what} ({exc}); check that the "
        "host is up and sshd is running, then retry"
    )


async def run(
    conn: Connection,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] = _NO_ENV,
    cwd: str | None = None,
    timeout: float = 600,
    check: bool = True,
    input: str | None = None,
) -> RemoteResult:
    """Run ``argv`` on the host and collect its output.

    With ``check`` a non-zero exit raises :class:`RemoteCommandFailed`
    carrying the exit status and the newest output (:func:`output_window`,
    not redacted). The host itself stops a command still running after
    ``timeout`` seconds, with every process it started (:mod:`.deadline`);
    that is reported as :class:`RemoteCommandFailed` with ``exit_status=-1``. Without
    ``input`` the command reads ``/dev/null``, and the host stops it too when the channel
    closes first (this worker gave it up, or was killed: :func:`.deadline.with_deadline`).
    """
    import asyncssh

    # Without input the channel's stays open until the exit comes: its end stops the command.
    line = deadline.with_deadline(
        command_line(argv, env=env, cwd=cwd), timeout, watch=input is None
    )
    program = argv[0]
    began = time.monotonic()
    try:
        process = await conn.create_process(line, encoding="utf-8", errors="replace")
    except (asyncssh.Error, OSError) as exc:
        raise _lost(conn, f"starting {program!r}", exc) from exc
    if input is not None:
        # A command may end without reading its input (a claim that finds its place
        # taken), and its channel's close may arrive with the host's answer to the start:
        # the write then meets a closed channel. Its exit status says how it went.
        with contextlib.suppress(BrokenPipeError):
            process.stdin.write(input)
            process.stdin.write_eof()
    try:
        completed = await process.wait(timeout=deadline.client_wait(timeout))
    except asyncssh.TimeoutError as exc:
        # The host did not report its own kill in time: it is likely unwell.
        process.terminate()
        raise timed_out_error(
            conn, program, timeout, str(exc.stdout or ""), str(exc.stderr or ""), confirmed=False
        ) from exc
    except (asyncssh.Error, OSError) as exc:
        raise _lost(conn, f"running {program!r}", exc) from exc
    finally:
        process.close()
    stdout = str(completed.stdout or "")
    stderr = str(completed.stderr or "")
    code = completed.returncode
    if code is None:
        # The channel closed without an exit status: the connection dropped or
        # the host's sshd died under the command.
        raise _lost(conn, f"running {program!r}", ConnectionError("no exit status received"))
    # returncode is minus the signal number for a killed command; report it
    # the way a shell does (128 + n).
    status = 128 - code if code < 0 else code
    if deadline.timed_out(status, time.monotonic() - began, timeout):
        raise timed_out_error(conn, program, timeout, stdout, stderr, confirmed=True)
    if status == deadline.WRAPPER_MISSING and deadline.wrapper_missing(stderr):
        raise RemoteCommandFailed(
            f"{_peer(conn)} has no 'timeout' command, which sandboxer needs to stop commands "
            "that run out of time; install coreutils there (see docs/hosts.md)",
            exit_status=status,
            output_tail=output_window(stdout, stderr),
        )
    log.debug("remote %r on %s exited %d", program, _peer(conn), status)
    if check and status != 0:
        raise RemoteCommandFailed(
            f"{program!r} on {_peer(conn)} exited with status {status}",
            exit_status=status,
            output_tail=output_window(stdout, stderr),
        )
    return RemoteResult(status, stdout, stderr)


def timed_out_error(
    conn: Connection,
    program: str,
    timeout: float,
    stdout: str = "",
    stderr: str = "",
    *,
    confirmed: bool,
) -> RemoteCommandFailed:
    """A command stopped at its deadline (``confirmed``: the host reported stopping it)."""
    stopped = (
        "the host stopped it and everything it started"
        if confirmed
        else "the host did not confirm that it stopped it; check the host's load and sshd"
    )
    return RemoteCommandFailed(
        f"{program!r} on {_peer(conn)} did not finish within {timeout:g}s; {stopped}. Raise "
        "the timeout if the command legitimately takes longer",
        exit_status=-1,
        output_tail=output_window(stdout, stderr),
    )


async def put_file(conn: Connection, remote_path: str, data: bytes, *, mode: int = 0o600) -> None:
    """Write ``data`` to ``remote_path`` over SFTP, replacing it atomically.

    The bytes go to a fresh sibling created exclusively with ``mode`` (the
    remote umask can only narrow it), which is then renamed over the target:
    an existing file's looser permissions are never inherited, and the
    content is never readable by others, not even while it is written.
    """
    import asyncssh

    if not posixpath.isabs(remote_path):
        raise InvalidInput(f"remote path {remote_path!r} must be absolute")
    staging = f"{remote_path}.sbx-{secrets.token_hex(6)}"
    try:
        async with asyncio.timeout(PUT_TIMEOUT), conn.start_sftp_client() as sftp:
            try:
                async with sftp.open(staging, "xb", asyncssh.SFTPAttrs(permissions=mode)) as handle:
                    await handle.write(data)
                    await handle.chmod(mode)
                try:
                    await sftp.posix_rename(staging, remote_path)
                except asyncssh.SFTPOpUnsupported:
                    # Not OpenSSH: plain SFTP rename refuses to replace a file.
                    with contextlib.suppress(asyncssh.SFTPNoSuchFile):
                        await sftp.remove(remote_path)
                    await sftp.rename(staging, remote_path)
            except BaseException:
                with contextlib.suppress(
                    asyncssh.SFTPError, asyncssh.DisconnectError, OSError, TimeoutError
                ):
                    async with asyncio.timeout(_CLEANUP_TIMEOUT):
                        await sftp.remove(staging)
                raise
    except TimeoutError as exc:
        raise RemoteCommandFailed(
            f"writing {remote_path} on {_peer(conn)} over SFTP did not finish within "
            f"{PUT_TIMEOUT:g}s; the host's SFTP server does not answer (check its disk and "
            "sshd's log there), then retry",
            exit_status=-1,
        ) from exc
    except asyncssh.SFTPError as exc:
        raise RemoteCommandFailed(
            f"writing {remote_path} on {_peer(conn)} over SFTP failed: {exc.reason}; check "
            "that its directory exists and is writable by the SSH user",
            exit_status=-1,
        ) from exc
    except (asyncssh.Error, OSError) as exc:
        raise _lost(conn, f"writing {remote_path}", exc) from exc


def inside_root(path: str, root: str) -> str:
    """``path`` normalised, if it lies strictly inside ``root``; else :class:`InvalidInput`.

    Both must be absolute; ``path`` may not contain ``..`` at all, and may be
    neither ``root`` itself nor anything outside it.
    """
    if not posixpath.isabs(root) or posixpath.normpath(root) == "/":
        raise InvalidInput(f"root {root!r} must be an absolute path other than '/'")
    if not posixpath.isabs(path):
        raise InvalidInput(f"{path!r} must be an absolute path inside {root}")
    if ".." in path.split("/"):
        raise InvalidInput(f"{path!r} must not contain '..'")
    normal_root = posixpath.normpath(root)
    normal = posixpath.normpath(path)
    # normpath keeps a leading '//' (POSIX allows it a special meaning); treat it as '/'.
    normal_root = "/" + normal_root.lstrip("/")
    normal = "/" + normal.lstrip("/")
    if not normal.startswith(normal_root + "/"):
        raise InvalidInput(f"refusing to touch {path!r}: it is not strictly inside {root}")
    return normal


async def remove_tree(conn: Connection, path: str, *, root: str) -> None:
    """``rm -rf`` ``path`` on the host, only if it is strictly inside ``root``.

    Checked twice: lexically here (:func:`inside_root`), and on the host with
    symlinks resolved, so a link inside the tree cannot redirect the removal.
    A path that does not exist is already removed.
    """
    target = inside_root(path, root)
    root_dir = "/" + posixpath.normpath(root).lstrip("/")
    await run(conn, ["sh", "-c", _REMOVE_SCRIPT, "sh", root_dir, posixpath.dirname(target), target])
