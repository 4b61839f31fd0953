"""The names a local sandbox's commands see for their users: its own ``/etc/passwd`` and
``/etc/group`` (pure: the text only; :func:`.holder.spawn_holder` hands it to bwrap).

The sandbox sees the host's ``/etc`` read-only, whose ``passwd`` has no line for a
sandbox's uid (:mod:`.sandbox_uids`), so ``whoami``, ``id -un``, ``ssh`` or Python's
``getpass.getuser()`` would find no name there, and nothing its home. The holder binds these
two files over the host's, read-only; they name only the users a sandbox meets:

* ``root`` (0): what owns the system the sandbox sees;
* ``nobody`` (65534): what the kernel shows for an id its user namespace does not map
  (without root, the host's root-owned system);
* ``sandbox``: the uid (and gid) its commands run as, with the home its commands get as
  ``$HOME`` (``/workspace``). Without root the commands run as the user namespace's 0:
  then ``root`` is the sandbox's user, and has that home.

Not a copy of the host's files: docs/ext-local.md#users-and-keyrings says why.
"""

from __future__ import annotations

from sandboxer.extensions.local.bwrap_command import WORKSPACE_MOUNT
from sandboxer.extensions.local.sandbox_uids import NOBODY

__all__ = ["HOME", "ROOT", "SANDBOX_USER", "SHELL", "files_for", "group_text", "passwd_text"]

SANDBOX_USER = "sandbox"
HOME = WORKSPACE_MOUNT
"""The sandbox user's home: the ``HOME`` its commands are given (:func:`.enter_argv`)."""
SHELL = "/bin/sh"
ROOT = 0


def files_for(uid: int | None) -> tuple[str, str]:
    """``passwd`` and ``group`` of a sandbox whose commands run as ``uid`` (and the gid of that
    number: :mod:`.sandbox_uids`); None, a worker without root: as its user namespace's 0."""
    user = ROOT if uid is None else uid
    return passwd_text(user, user), group_text(user)


def passwd_text(uid: int, gid: int) -> str:
    """``/etc/passwd`` of a sandbox whose commands run as ``uid``:``gid``."""
    lines = [f"root:x:0:0:root:{HOME if uid == ROOT else '/root'}:{SHELL}"]
    if uid not in (ROOT, NOBODY):
        lines.append(f"{SANDBOX_USER}:x:{uid}:{gid}:sandboxer sandbox:{HOME}:{SHELL}")
    lines.append(f"nobody:x:{NOBODY}:{NOBODY}:nobody:/nonexistent:/usr/sbin/nologin")
    return "".join(f"{line}\n" for line in lines)


def group_text(gid: int) -> str:
    """``/etc/group`` of a sandbox whose commands run with ``gid`` (and no other group)."""
    lines = ["root:x:0:"]
    if gid not in (ROOT, NOBODY):
        lines.append(f"{SANDBOX_USER}:x:{gid}:")
    lines.append(f"nogroup:x:{NOBODY}:")
    return "".join(f"{line}\n" for line in lines)
