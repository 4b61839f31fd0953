"""A local TCP port with nothing listening on it, for tests that need one.

The kernel hands out a free port for a socket bound to port 0; once that socket closes,
nothing listens there. A test may then listen on it itself (a server it starts later) or
use it as an address that refuses every connection. Another process could take the port
between the close and its use; on a test machine that is rare enough to accept.
"""

from __future__ import annotations

import socket

__all__ = ["closed_port"]


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on, as of now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
