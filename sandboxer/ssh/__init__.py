"""The SSH boundary: every connection to, command on and file copied to a remote host.

This package is the only part of sandboxer that imports asyncssh (a unit
test holds that line). Remote backends (compose stacks, VM workspaces)
reach their hosts only through it, so host-key checking, quoting, deadlines
and error mapping are decided once: :mod:`.connection` opens verified
connections, :mod:`.remote` runs quoted commands and writes files,
:mod:`.streaming` runs a command whose output is watched as it comes,
:mod:`.deadline` makes the host stop a command that runs out of time,
:mod:`.sync` mirrors a local directory onto a host, and :mod:`.fetch_tree`
copies a host's directory back as a tar archive. Every asyncssh error is
mapped here to :class:`~sandboxer.errors.HostUnreachable`,
:class:`~sandboxer.errors.HostKeyRejected` or
:class:`~sandboxer.errors.RemoteCommandFailed`; callers never see one.
"""

import warnings

from sandboxer.ssh.connection import Connection, connect, session
from sandboxer.ssh.fetch_tree import fetch_tree
from sandboxer.ssh.remote import RemoteResult, command_line, inside_root, put_file, remove_tree, run
from sandboxer.ssh.streaming import ChunkSink, stream
from sandboxer.ssh.sync import sync_dir

# cryptography 51 deprecates DSA, and asyncssh (2.24) names cryptography's DSA classes when
# it is imported: a warning at each process's first SSH connection that no user can act on
# (sandboxer makes no keys; the keys it uses are the user's and the hosts'). Only that
# warning, only asyncssh's. Each module here imports asyncssh in the function that uses it,
# so this has run before.
warnings.filterwarnings(
    "ignore", message="DSA is deprecated", category=UserWarning, module=r"asyncssh(\.|$)"
)

__all__ = [
    "ChunkSink",
    "Connection",
    "RemoteResult",
    "command_line",
    "connect",
    "fetch_tree",
    "inside_root",
    "put_file",
    "remove_tree",
    "run",
    "session",
    "stream",
    "sync_dir",
]
