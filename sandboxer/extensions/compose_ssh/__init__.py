"""``ext.compose-ssh``: compose stacks on SSH hosts (see docs/ext-compose-ssh.md).

:mod:`.backend` is the extension; :mod:`.compose_file` picks and checks the
compose file, :mod:`.stack` runs compose for one sandbox, :mod:`.containers`
builds compose command lines and reads container states, :mod:`.engine` asks
the host's docker or podman about our containers, :mod:`.listing` decides
which stacks are alive, :mod:`.service_exec` runs ``sandboxer exec`` in a
service's container, :mod:`.volumes` copies the named volumes into a snapshot
and back into a new stack before it starts. What it shares with ``ext.vm-packer`` lives in
:mod:`sandboxer.extensions.ssh_targets` (hosts), :mod:`~sandboxer.extensions.ssh_workspace`
(markers, directories) and :mod:`~sandboxer.extensions.ssh_backend` (the base class).
"""

from sandboxer.extensions.compose_ssh.backend import ComposeSshExtension

__all__ = ["ComposeSshExtension"]
