"""The ``ssh`` access shape (docs/protocol.md#reachability) of a sandbox on a hosts-file host.

Built while the backend still holds its verified connection, so the fingerprint
is that of the key the host actually presented (and the hosts file vouched for),
not one read back from a file that may list several.
"""

from __future__ import annotations

from typing import Any

from sandboxer.events.reachability import ACCESS_KEY, SshAccess, fingerprint_of_public_key
from sandboxer.extensions.ssh_targets import Target
from sandboxer.ssh import Connection
from sandboxer.ssh.connection import presented_host_key

__all__ = ["ssh_access"]


def ssh_access(
    item: Target, conn: Connection, *, workdir: str, enter: str | None = None
) -> dict[str, Any]:
    """``{"access": {...}}`` to merge into a ready descriptor: how to log in to ``item``."""
    config = item.config
    access = SshAccess(
        host=config.address,
        port=config.port,
        user=config.user,
        host_key_fingerprint=_fingerprint(conn),
        host_key_verified=not config.insecure_accept_any_host_key,
        host_name=item.name,
        workdir=workdir,
        enter=enter,
        tunnel_ref=config.tunnel_ref,
        ssh_principal=config.ssh_principal,
    )
    return {ACCESS_KEY: access.as_dict()}


def _fingerprint(conn: Connection) -> str | None:
    """The presented key's fingerprint; None (documented: "could not be read") rather than a
    failed ready when asyncssh has no key or exports one that does not parse."""
    presented = presented_host_key(conn)
    if presented is None:
        return None
    try:
        return fingerprint_of_public_key(presented)
    except ValueError:
        return None
