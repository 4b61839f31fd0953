"""``ext.vm-packer`` in attach mode: workspaces on pre-built VMs over SSH (see docs/ext-vm-packer.md).

The host-side helpers (hosts, markers, secrets file, streaming exec,
telemetry) are shared with ``ext.compose-ssh``, in
:mod:`sandboxer.extensions.ssh_host`.
"""

from sandboxer.extensions.vm_packer.backend import VmPackerExtension

__all__ = ["VmPackerExtension"]
