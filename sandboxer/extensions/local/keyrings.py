"""Kernel keyrings and root-run local sandboxes (docs/ext-local.md#users-and-keyrings).

The kernel's keyrings are not namespaced, and two kinds would carry data from one
sandbox to another:

* A uid's **user keyrings** (``@u``, and ``@us`` which links it) belong to the uid for as
  long as the machine runs, whether or not a process of it is left. Each sandbox has a
  uid of its own (:mod:`.sandbox_uids`), so each has its own; before the uid may go to
  another sandbox, :func:`clear` invalidates them and the uid's persistent keyring.
* A **session keyring** (``@s``) is inherited across fork and exec, and a change of uid
  keeps it. A worker holding one (systemd gives every service one, and so does a login
  through ``pam_keyinit``, which also links the user's, here root's, user keyring into it)
  would hand it to every command of every sandbox, and so would a worker that merely
  looked its own up once (the kernel then installs root's user-session keyring as its
  session keyring). So :func:`join_new_session`, called just before a sandbox's command
  is started, gives the command an empty one of its own, whatever the worker holds. (It
  links nothing: a command that wants its user keyring's keys runs ``keyctl link @u @s``
  first, as in a systemd service.)

Standard library only: this file also runs as a script, ``python -I -S keyrings.py UID``,
the helper that clears a uid's keyrings as that uid (only a key's owner may invalidate it,
and the worker must not change its own uid). The ``keyctl`` system call is made directly
(glibc has no wrapper); its number depends on the machine (:data:`AVAILABLE` is False on one
not listed here).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

__all__ = ["AVAILABLE", "SCRIPT", "clear", "held", "join_new_session", "keyctl"]

SCRIPT = Path(__file__)
KEY_USERS = Path("/proc/key-users")

KEYCTL_GET_KEYRING_ID = 0
KEYCTL_JOIN_SESSION_KEYRING = 1
KEYCTL_INVALIDATE = 21
KEYCTL_GET_PERSISTENT = 22
KEY_SPEC_THREAD_KEYRING = -1
KEY_SPEC_USER_KEYRING = -4
KEY_SPEC_USER_SESSION_KEYRING = -5


def _keyctl_number() -> int | None:
    """The ``keyctl`` system call's number for this process's ABI (None: not known here)."""
    machine = platform.machine()
    wide = struct.calcsize("P") == 8
    if machine in {"x86_64", "amd64", "i386", "i486", "i586", "i686"}:
        return 250 if wide else 288
    if machine in {"aarch64", "arm64"} or machine.startswith("arm"):
        return 219 if wide else 311
    numbers = {"riscv64": 219, "loongarch64": 219, "ppc64le": 271, "ppc64": 271, "s390x": 280}
    if machine == "mips64" and wide:
        return 5241
    return numbers.get(machine)


_NUMBER = _keyctl_number()
AVAILABLE = _NUMBER is not None
"""Whether this machine's ``keyctl`` number is known (else a sandbox's commands share the
worker's session keyring, and a sandbox's readiness warns of it)."""
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def keyctl(operation: int, *args: int) -> int:
    """``keyctl(operation, args...)``; OSError with the errno when it fails."""
    if _NUMBER is None:
        raise OSError(errno.ENOSYS, f"no keyctl system call number known for {platform.machine()}")
    result: int = _libc.syscall(
        ctypes.c_long(_NUMBER), ctypes.c_long(operation), *(ctypes.c_long(arg) for arg in args)
    )
    if result == -1:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result


def join_new_session() -> None:
    """Give the calling thread, and what it starts from now on, a new empty session keyring.

    The keyring is anonymous: nothing else can join it, so a command started next holds a
    session keyring no other command holds. Where keyrings are unavailable (a kernel without
    them, or a seccomp filter refusing the call, which the commands inherit) nothing is done.
    """
    try:
        keyctl(KEYCTL_JOIN_SESSION_KEYRING, 0)
    except OSError as exc:
        if exc.errno not in {errno.ENOSYS, errno.EPERM}:
            raise


def held(uid: int, key_users: Path = KEY_USERS) -> bool:
    """Whether ``uid`` owns any key: ``/proc/key-users`` lists each uid that does (a uid that
    never touched a keyring is not there, and its sandbox's teardown starts no helper)."""
    try:
        text = key_users.read_text()
    except OSError:  # a kernel without keys
        return False
    prefix = f"{uid}:"
    return any(line.lstrip().startswith(prefix) for line in text.splitlines())


def clear(uid: int, *, patience: float = 2.0) -> None:
    """Become ``uid`` (this whole process: only the helper calls this) and invalidate its
    persistent keyring and its user keyrings, with everything only they link to; the kernel
    makes new empty ones for the uid's next user.

    Looking them up may make one, and linking one in takes a few bytes, within the uid's key
    quota, which the sandbox may have filled with keys of its session keyrings that the
    kernel frees shortly after its processes are gone: a full quota is waited out for up to
    ``patience`` seconds.
    """
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    deadline = time.monotonic() + patience
    try:
        # Linked into this thread's own keyring, so that this process holds it (its owner
        # alone may not search it, and invalidating takes that).
        persistent = _within_quota(
            partial(keyctl, KEYCTL_GET_PERSISTENT, uid, KEY_SPEC_THREAD_KEYRING), deadline
        )
    except OSError as exc:
        if exc.errno != errno.EOPNOTSUPP:  # a kernel without persistent keyrings
            raise
    else:
        keyctl(KEYCTL_INVALIDATE, persistent)
    # Both looked up before either is invalidated: a lookup of one makes the other anew
    # when it is missing, and an empty keyring left would list the uid in /proc/key-users.
    user_keyrings = [
        _within_quota(partial(keyctl, KEYCTL_GET_KEYRING_ID, spec, 0), deadline)
        for spec in (KEY_SPEC_USER_KEYRING, KEY_SPEC_USER_SESSION_KEYRING)
    ]
    for keyring in user_keyrings:
        keyctl(KEYCTL_INVALIDATE, keyring)


def _within_quota(call: Callable[[], int], deadline: float) -> int:
    """``call()``, again every 50 ms while it fails for a full key quota, until ``deadline``."""
    while True:
        try:
            return call()
        except OSError as exc:
            if exc.errno != errno.EDQUOT or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


if __name__ == "__main__":
    try:
        clear(int(sys.argv[1]))
    except (OSError, ValueError, IndexError) as exc:
        print(f"clearing the keyrings of uid {' '.join(sys.argv[1:])}: {exc}", file=sys.stderr)
        sys.exit(1)
