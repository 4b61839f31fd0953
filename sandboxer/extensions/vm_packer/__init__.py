"""``ext.vm-packer`` in attach mode: workspaces on pre-built VMs over SSH (see docs/ext-vm-packer.md).

What it shares with ``ext.compose-ssh`` lives in
:mod:`sandboxer.extensions.ssh_targets` (hosts, telemetry),
:mod:`sandboxer.extensions.ssh_workspace` (markers, directories, secrets file)
and :mod:`sandboxer.extensions.ssh_backend` (the base class, exec).
"""

from sandboxer.extensions.vm_packer.backend import VmPackerExtension

__all__ = ["VmPackerExtension"]
