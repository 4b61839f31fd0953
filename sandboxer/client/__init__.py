"""The Python client of sandboxer (docs/python-client.md).

- :class:`Sandboxer` (``api.py``) is the public API: async, typed results
  (``results.py``), the same calls over the bus (``bus_transport.py``) or the HTTP
  gateway (``http.py``, with ``http_errors.py`` and ``sse.py``), errors of the one
  tree in :mod:`sandboxer.errors`; lists answer a :class:`Page` at a time, and
  :func:`pages` (``pages.py``) walks them.
- :class:`SandboxerClient` (``bus.py``) is the low-level bus client the CLI, the
  gateway and :class:`Sandboxer` over the bus are built on: commands and queries of
  docs/protocol.md, answering with the service's JSON as ``dict``.
"""

from sandboxer.client.api import Sandboxer
from sandboxer.client.bus import (
    CommandFailed,
    Copied,
    EventCallback,
    OutputCallback,
    SandboxerClient,
    Uploaded,
    UploadProgress,
)
from sandboxer.client.pages import pages
from sandboxer.client.results import (
    Accepted,
    Account,
    Event,
    ExecResult,
    RouteExplanation,
    Sandbox,
    Snapshot,
    Usage,
    UsageRow,
)
from sandboxer.pagination import Page

__all__ = [
    "Accepted",
    "Account",
    "CommandFailed",
    "Copied",
    "Event",
    "EventCallback",
    "ExecResult",
    "OutputCallback",
    "Page",
    "RouteExplanation",
    "Sandbox",
    "Sandboxer",
    "SandboxerClient",
    "Snapshot",
    "UploadProgress",
    "Uploaded",
    "Usage",
    "UsageRow",
    "pages",
]
