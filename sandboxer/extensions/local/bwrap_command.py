"""Pure argv builders for the processes ext.local starts: no I/O, so they are unit-tested.

Three command lines make a local sandbox:

* the HOLDER: ``bwrap ... -- sleep infinity``, the long-lived process whose
  namespaces *are* the sandbox;
* the ENTER command: ``nsenter -t CHILD -a -- setpriv ... -- env -i ... sh -c
  'cd /workspace && exec "$@"' ARGV``, which runs one command inside those
  namespaces as the sandbox's own unprivileged user with no capabilities;
* the CGROUP LAUNCHER: a two-line ``/bin/sh`` wrapper that writes ``0`` (itself)
  into the sandbox's cgroup join files and then runs the real command,
  so the command and everything it forks are charged to the sandbox from its
  first instruction (no ``preexec_fn``, which is unsafe once threads exist).

User strings never pass through a shell: ``argv`` elements reach ``exec "$@"``
as separate positional parameters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = [
    "SANDBOX_PATH",
    "WORKSPACE_MOUNT",
    "enter_argv",
    "holder_argv",
    "hostname_for",
    "launcher_argv",
]

WORKSPACE_MOUNT = "/workspace"
SANDBOX_PATH = "/usr/bin:/bin"

# Namespaces a root-run holder unshares. ``--unshare-all`` would also create a
# user namespace that maps only uid 0 (to host root); inside it no other uid
# exists, so exec'd commands could not drop to an unprivileged user and would
# read root-only host files such as /etc/shadow through the read-only /etc.
_ROOT_UNSHARE = (
    "--unshare-ipc",
    "--unshare-pid",
    "--unshare-net",
    "--unshare-uts",
    "--unshare-cgroup-try",
)

_UNPRIVILEGED_ENTER = ("--mount", "--uts", "--ipc", "--net", "--pid", "--cgroup")

_SYSTEM_MOUNTS = (
    "--ro-bind", "/usr", "/usr",
    "--symlink", "usr/bin", "/bin",
    "--symlink", "usr/lib", "/lib",
    "--symlink", "usr/lib64", "/lib64",
    "--symlink", "usr/sbin", "/sbin",
    "--ro-bind", "/etc", "/etc",
    "--proc", "/proc",
    "--dev", "/dev",
    "--perms", "1777", "--tmpfs", "/dev/shm",
    "--perms", "1777", "--tmpfs", "/tmp",
)  # fmt: skip

_LAUNCHER_SCRIPT = (
    "mode=$1; shift\n"
    'while [ "$1" != -- ]; do echo 0 > "$1" || exit 125; shift; done; shift\n'
    'if [ "$mode" = spawn ]; then "$@" >&2 & echo $!; else exec "$@"; fi'
)


def hostname_for(sandbox_id: str) -> str:
    """``sbx-`` and the first 12 characters of the id: short, recognisable, a valid hostname."""
    return f"sbx-{sandbox_id[:12]}"


def holder_argv(
    *,
    sandbox_id: str,
    workspace: Path,
    read_only: bool,
    info_fd: int,
    as_root: bool,
    bwrap: str = "bwrap",
    share_net: bool = False,
    bind_workspace: bool = True,
    user_fds: tuple[int, int] | None = None,
) -> list[str]:
    """The bwrap command line of a sandbox's holder.

    ``user_fds``: descriptors bwrap reads the sandbox's own ``passwd`` and ``group`` from
    (:mod:`.sandbox_users`), to bind them read-only over the host's, inside the host's
    read-only ``/etc`` (which the rest of the system needs: ``ld.so.cache``,
    ``alternatives``, certificates). bwrap copies them into the sandbox's own root, so no
    file of them is written on the host's disk (two file creations of a create, 0.2 to
    0.4 ms each on this ext4).

    ``share_net`` keeps the network namespace bwrap is started in (one that
    :mod:`.egress` built, with a link and nftables rules) instead of a new
    one with loopback only; only a root-run holder can be given one.

    ``bind_workspace`` False (a profile's ``workspace.access: none``) gives the sandbox
    an empty scratch ``/workspace`` (a tmpfs) instead of the workspace directory.

    No ``--die-with-parent``: the holder must outlive the worker that started
    it so that a restarted worker can adopt it. ``--info-fd`` reports the pid
    (in the host pid namespace) of the sandbox's init, the target of nsenter.
    When not root, ``--unshare-all`` is required: the user namespace is what
    lets an unprivileged user create the others.
    """
    unshare: tuple[str, ...] = _ROOT_UNSHARE if as_root else ("--unshare-all",)
    if share_net:
        if not as_root:
            raise ValueError("only a root-run holder can share a prepared network namespace")
        unshare = tuple(flag for flag in unshare if flag != "--unshare-net")
    return [
        bwrap,
        *unshare,
        "--new-session",
        "--cap-drop", "ALL",
        *_SYSTEM_MOUNTS,
        *(
            (
                "--perms", "0644", "--ro-bind-data", str(user_fds[0]), "/etc/passwd",
                "--perms", "0644", "--ro-bind-data", str(user_fds[1]), "/etc/group",
            )
            if user_fds
            else ()
        ),
        *(
            ("--ro-bind" if read_only else "--bind", str(workspace), WORKSPACE_MOUNT)
            if bind_workspace
            else ("--perms", "1777", "--tmpfs", WORKSPACE_MOUNT)
        ),
        "--chdir", WORKSPACE_MOUNT,
        "--hostname", hostname_for(sandbox_id),
        "--clearenv",
        "--setenv", "PATH", SANDBOX_PATH,
        "--setenv", "HOME", WORKSPACE_MOUNT,
        "--info-fd", str(info_fd),
        "--",
        "sleep", "infinity",
    ]  # fmt: skip


def enter_argv(
    *,
    child_pid: int,
    argv: Sequence[str],
    uid: int | None = None,
    user_ns: str | None = None,
    nsenter: str = "/usr/bin/nsenter",
    env: Mapping[str, str] | None = None,
) -> list[str]:
    """Run ``argv`` inside the namespaces of ``child_pid`` with a clean environment in /workspace.

    Exactly one of ``uid`` and ``user_ns`` is given. ``uid`` when the backend runs
    as root: the holder has no user namespace, and ``setpriv`` switches to the
    sandbox's own uid (and the gid of that number, with no supplementary groups;
    :mod:`.sandbox_uids`), empties the capability bounding set and sets
    no_new_privs, so setuid binaries cannot win back privileges.

    Without root, ``user_ns`` names the user namespace that OWNS the sandbox's
    other namespaces. Unprivileged bwrap nests the sandbox in a second user
    namespace that owns nothing (so the sandbox cannot undo its read-only
    mounts); entering that one, as ``-a`` would, leaves no right to enter the
    rest. The caller's own uid is kept (``--preserve-credentials``) and all
    capabilities are dropped.

    ``env`` adds variables to the clean environment (the egress proxy's address).
    """
    if not argv:
        raise ValueError("argv must not be empty")
    if (uid is None) == (user_ns is None):
        raise ValueError("give a uid (a root-run holder) or a user namespace (one without root)")
    if uid is not None:
        namespaces = ["-a"]
        identity = [f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    else:
        namespaces = [f"--user={user_ns}", "--preserve-credentials", *_UNPRIVILEGED_ENTER]
        identity = []
    return [
        nsenter,
        "-t", str(child_pid),
        *namespaces,
        "--",
        "/usr/bin/setpriv",
        *identity,
        "--bounding-set=-all",
        "--inh-caps=-all",
        "--ambient-caps=-all",
        "--no-new-privs",
        "--",
        "/usr/bin/env", "-i", f"PATH={SANDBOX_PATH}", f"HOME={WORKSPACE_MOUNT}",
        *(f"{name}={value}" for name, value in sorted((env or {}).items())),
        "/bin/sh", "-c", f'cd {WORKSPACE_MOUNT} || exit 126; exec "$@"', "sandboxer-exec",
        *argv,
    ]  # fmt: skip


def launcher_argv(
    join_files: Sequence[Path], argv: Sequence[str], *, background: bool = False
) -> list[str]:
    """Wrap ``argv`` so it starts inside the cgroups whose join files are given.

    The wrapper writes ``0``, which names the writer itself, to each file: a
    v1 ``tasks`` file or a ``cgroup.procs`` (see :func:`.cgroups.join_files`).

    With ``background`` the wrapper instead starts ``argv`` in the background
    (stdout sent to the wrapper's stderr), prints its pid and exits: the
    command is orphaned at once and reparented to init, so the caller never
    has to wait for it. That is how the holder is detached from the worker.
    """
    if not argv:
        raise ValueError("argv must not be empty")
    for path in join_files:
        if str(path) == "--":
            raise ValueError("a cgroup join file cannot be '--'")
    mode = "spawn" if background else "exec"
    files = [str(path) for path in join_files]
    return ["/bin/sh", "-c", _LAUNCHER_SCRIPT, "sandboxer-launch", mode, *files, "--", *argv]
