"""nats-py without aiohttp until a WebSocket server address needs it.

nats-py imports aiohttp (and multidict) when its transports' module loads, for its
WebSocket transport alone, whenever aiohttp is installed; the modal SDK installs it. That
cost every process that touches the bus about 10 MB of memory and, on the 2-core
development machine, 0.1 to 0.25 s of start-up: each CLI command that connects, each
worker, ``sandboxer up`` (docs/performance.md, memory and CLI start-up).

So :func:`install` (run when the ``sandboxer`` package is imported) makes the first import
of that module run with aiohttp hidden: nats-py then records it as missing, as it does in
a venv without it. :func:`allow_for` gives the module aiohttp and multidict back, as its
own import would have, when ``sandboxer.bus.connect`` is given a ``ws://`` or ``wss://``
server. A process that imported aiohttp before nats-py keeps nats-py as it is.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec, PathFinder
from types import ModuleType
from typing import Any

__all__ = ["TRANSPORTS", "allow_for", "install"]

TRANSPORTS = "nats.aio.transport"
"""The nats-py module that imports aiohttp at its top."""

HIDDEN = "aiohttp"


class _WithoutAiohttp:
    """The loader of nats-py's transports, running the module with aiohttp hidden."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def __getattr__(self, name: str) -> Any:  # create_module, get_source ...: the real loader's
        return getattr(self._loader, name)

    def exec_module(self, module: ModuleType) -> None:
        if HIDDEN in sys.modules:  # already imported by the process: nothing to save
            self._loader.exec_module(module)
            return
        sys.modules[HIDDEN] = None  # type: ignore[assignment]  # `import aiohttp` raises ImportError
        try:
            self._loader.exec_module(module)
        finally:
            if sys.modules.get(HIDDEN, ...) is None:
                del sys.modules[HIDDEN]


class _Finder:
    """Finds nats-py's transports the usual way, with the loader above around their own."""

    @staticmethod
    def find_spec(
        name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name != TRANSPORTS:
            return None
        spec = PathFinder.find_spec(name, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = _WithoutAiohttp(spec.loader)  # type: ignore[assignment]
        return spec


def install() -> None:
    """Hide aiohttp from nats-py's transports when they are first imported (once)."""
    if _Finder not in sys.meta_path and TRANSPORTS not in sys.modules:
        sys.meta_path.insert(0, _Finder)


def allow_for(urls: Sequence[str]) -> None:
    """Before a connection to ``urls``: when one is a WebSocket address, give nats-py's
    transports aiohttp and multidict, if installed (without them nats-py raises its own
    error naming the package to install)."""
    if not any(url.lower().startswith(("ws://", "wss://")) for url in urls):
        return
    transports = importlib.import_module(TRANSPORTS)
    if getattr(transports, "aiohttp", None) is not None:
        return
    try:
        aiohttp = importlib.import_module("aiohttp")
        multidict = importlib.import_module("multidict")
    except ImportError:
        return
    setattr(transports, "aiohttp", aiohttp)  # noqa: B010 (names mypy does not know are there)
    setattr(transports, "multidict", multidict)  # noqa: B010
