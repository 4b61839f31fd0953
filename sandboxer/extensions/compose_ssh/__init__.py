"""``ext.compose-ssh``: compose stacks on SSH hosts (see docs/ext-compose-ssh.md).

:mod:`.backend` is the extension; :mod:`.compose_file` picks and checks the
compose file, :mod:`.containers` builds compose command lines and reads
container states, :mod:`sandboxer.extensions.ssh_host` holds what it shares with
``ext.vm-packer`` (hosts, markers, secrets file, streaming exec, telemetry).
"""

from sandboxer.extensions.compose_ssh.backend import ComposeSshExtension

__all__ = ["ComposeSshExtension"]
