"""A local TCP port with nothing listening on it, for tests that need one.

A test may listen on it itself (a server it starts later) or use it as an address
that refuses every connection. The port is drawn from outside the kernel's ephemeral
range (:mod:`sandboxer.spare_ports`), so no outgoing connection or port-0 server takes
it meanwhile.
"""

from __future__ import annotations

from sandboxer.spare_ports import spare_port

__all__ = ["closed_port"]


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on, as of now."""
    return spare_port()
