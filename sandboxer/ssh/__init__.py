"""The SSH boundary: every connection to, command on and file copied to a remote host.

Remote backends (compose stacks, VM workspaces) reach their hosts only
through this package, so host-key checking, quoting and error mapping are
decided once: :mod:`.connection` opens verified connections,
:mod:`.remote` runs quoted commands and writes files, :mod:`.sync` mirrors
a local directory onto a host.
"""

from sandboxer.ssh.connection import connect, session
from sandboxer.ssh.remote import RemoteResult, command_line, inside_root, put_file, remove_tree, run
from sandboxer.ssh.sync import sync_dir

__all__ = [
    "RemoteResult",
    "command_line",
    "connect",
    "inside_root",
    "put_file",
    "remove_tree",
    "run",
    "session",
    "sync_dir",
]
