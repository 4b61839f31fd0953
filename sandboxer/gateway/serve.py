"""The gateway as a role: uvicorn serving the app on a socket bound before the roles start.

``sandboxer up`` binds ``SANDBOXER_HTTP_ADDR`` (default 127.0.0.1:8788) before it writes
``service.json``, so the record names the URL that really answers (port 0 picks a free
one); ``sandboxer worker gateway`` runs the gateway alone, as many as wanted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Generator

import uvicorn
from nats.aio.client import Client as Nats

from sandboxer.config.catalog import Catalog
from sandboxer.config.settings import DEFAULT_HTTP_ADDR, DEFAULT_HTTP_MAX_STREAMS, Settings
from sandboxer.errors import ConfigError
from sandboxer.gateway.app import create_app
from sandboxer.gateway.context import Gateway
from sandboxer.gateway.streams import KeyStreams

__all__ = ["bind_gateway", "http_url", "listen", "run_gateway", "run_gateway_role"]

log = logging.getLogger(__name__)

SHUTDOWN_GRACE = 3
"""Seconds open requests (event streams never end on their own) get to finish on stop."""


def listen(addr: tuple[str, int]) -> socket.socket:
    """A listening TCP socket on ``addr`` (raises OSError when the port is taken)."""
    host, port = addr
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def http_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


class _RoleServer(uvicorn.Server):
    """uvicorn without its own signal handlers: the service's stop event ends it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def run_gateway(
    nc: Nats,
    catalog: Catalog,
    stop: asyncio.Event,
    sock: socket.socket,
    *,
    max_streams: int = DEFAULT_HTTP_MAX_STREAMS,
) -> None:
    """Serve the HTTP API on ``sock`` until ``stop`` is set (``max_streams``: each key's
    event streams at once, ``SANDBOXER_HTTP_MAX_STREAMS``)."""
    streams = KeyStreams(limit=max_streams)
    config = uvicorn.Config(
        create_app(Gateway(nc=nc, catalog=catalog, streams=streams)),
        lifespan="off",
        log_config=None,  # the service's logging stays as it is
        log_level="warning",
        access_log=False,
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=SHUTDOWN_GRACE,
    )
    server = _RoleServer(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        server.should_exit = True
        stopping.cancel()
        await serving


def bind_gateway(settings: Settings, roles: list[str], *, required: bool) -> socket.socket | None:
    """Bind the gateway's socket when ``roles`` holds ``gateway`` (before any role starts).

    ``required`` (``sandboxer worker gateway``) makes every failure an error; ``up`` with
    the default address goes on without a gateway when that port is taken (another
    sandboxer of another home, say) and says so, and leaves it out when it is ``off``.
    """
    if "gateway" not in roles:
        return None
    if settings.http_addr is None:
        if required:
            raise ConfigError(
                "the gateway role needs an address: SANDBOXER_HTTP_ADDR is off; set it to "
                "HOST:PORT, e.g. 127.0.0.1:8788"
            )
        roles.remove("gateway")
        return None
    host, port = settings.http_addr
    try:
        return listen(settings.http_addr)
    except OSError as exc:
        if required or settings.http_addr != DEFAULT_HTTP_ADDR:
            raise ConfigError(
                f"the HTTP gateway cannot listen on {host}:{port} ({exc.strerror or exc}); "
                "set SANDBOXER_HTTP_ADDR to a free HOST:PORT, or off"
            ) from None
        log.warning(
            "gateway is not running: %s:%d is taken (%s); set SANDBOXER_HTTP_ADDR to a free "
            "HOST:PORT",
            host,
            port,
            exc.strerror or exc,
        )
        roles.remove("gateway")
        return None


async def run_gateway_role(
    nc: Nats,
    settings: Settings,
    catalog: Catalog,
    stop: asyncio.Event,
    sock: socket.socket | None,
) -> None:
    """The ``gateway`` role of run_roles: serve on ``sock`` (bound here when not given)."""
    if sock is None:
        sock = bind_gateway(settings, ["gateway"], required=True)
        assert sock is not None
    log.info("HTTP gateway on %s", http_url(sock))
    await run_gateway(nc, catalog, stop, sock, max_streams=settings.http_max_streams)
