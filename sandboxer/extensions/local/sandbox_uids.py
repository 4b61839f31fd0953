"""A host uid (and gid, the same number) per local sandbox, when the worker runs as root.

A sandbox's commands run as its own uid, so what the kernel keeps per uid is not
shared with any other sandbox: the user keyrings (:mod:`.keyrings`), and the per-user
limits (``RLIMIT_NPROC``, inotify instances and watches, pipe buffer pages, POSIX
message queue bytes, key quotas). Its workspace and secrets file belong to it.

The uids are :data:`UIDS`, 2000000000-2000065535 (docs/ext-local.md#users-and-keyrings
says why there): taken host-wide like link slots, by a file
``/run/sandboxer/uids/<uid>`` created with ``O_EXCL`` and holding the owner's resource
name (:class:`.host_slots.SlotFiles`). The number is recorded in ``state.json`` before
anything runs as it. At teardown, once the sandbox's processes are gone, the uid's
keyrings are cleared (by a helper running as the uid, and only when the kernel lists
keys of it) and its file is removed; a teardown that lost ``state.json`` finds the file
by the name.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from sandboxer.cleanup_waits import communicate_within
from sandboxer.errors import ExtensionError
from sandboxer.extensions.local import keyrings
from sandboxer.extensions.local.holder import HOST_ENV
from sandboxer.extensions.local.host_slots import RUN_DIR, SlotFiles

__all__ = ["NOBODY", "UIDS", "UIDS_DIR", "UID_BASE", "UID_COUNT", "clear_keys", "uid_slots"]

UID_BASE = 2_000_000_000
UID_COUNT = 65_536
UIDS = range(UID_BASE, UID_BASE + UID_COUNT)
"""Inside the range systemd leaves unassigned (1879048192-2147352575: above the container
ranges of ``systemd-nspawn``, below its foreign-uid range and 2^31, which some programs
read as negative), far above the ``/etc/subuid`` ranges ``useradd`` gives out (between
``SUB_UID_MIN`` and ``SUB_UID_MAX`` of ``/etc/login.defs``, 100000-600100000 by default)
and LXD's or Incus's default map (1000000-1000999999)."""
UIDS_DIR = RUN_DIR / "uids"
NOBODY = 65534
"""The uid (and gid) of a sandbox made before each had its own: its ``state.json``
records no ``uid``, and its commands still run as ``nobody``."""
CLEAR_TIMEOUT = 10.0


def uid_slots(directory: Path = UIDS_DIR) -> SlotFiles:
    """The sandbox uids, taken in ``directory``."""
    return SlotFiles(directory, UIDS, "a uid", "local sandboxes")


async def clear_keys(uid: int, *, sandbox_id: str) -> None:
    """Invalidate ``uid``'s keyrings before another sandbox gets it: nothing to do (and no
    process started) unless the kernel lists keys of it. ExtensionError when that fails:
    the uid is then kept, and the teardown fails so that it is tried again."""
    if not keyrings.held(uid):
        return
    helper = await asyncio.create_subprocess_exec(
        sys.executable, "-I", "-S", str(keyrings.SCRIPT), str(uid),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=HOST_ENV,
    )  # fmt: skip
    # Not asyncio.timeout: a teardown runs this while its provision may be being cancelled.
    answered = await communicate_within(helper, CLEAR_TIMEOUT)
    err = f"it did not finish in {CLEAR_TIMEOUT:.0f}s".encode() if answered is None else answered[1]
    if helper.returncode != 0:
        raise ExtensionError(
            f"local sandbox {sandbox_id}: its uid {uid} holds kernel keys that could not be "
            f"removed ({err.decode(errors='replace').strip()[-500:]}); the uid stays taken "
            "until a teardown removes them (destroy again, or sandboxer reap-stale --apply)",
            sandbox_id=sandbox_id,
            extension="ext.local",
        )
