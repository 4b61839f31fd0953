"""A cluster of ``nats-server`` nodes on loopback, for tests and benchmarks."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Self

from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.errors import NatsServerError
from sandboxer.spare_ports import spare_ports

__all__ = ["NatsCluster"]

_HOST = "127.0.0.1"


class NatsCluster:
    """``size`` JetStream nodes on loopback, routed to each other.

    Node ``i`` keeps its data and log in ``<base_dir>/n<i>``. Route ports are
    chosen up front (every node lists all of them), and client ports too: a node
    killed and started again (``restart``) takes its old ports back, so none may
    come from the kernel's ephemeral range, where another process can take it
    meanwhile (:mod:`sandboxer.spare_ports`). A start that loses a port race is
    retried with new ports.
    """

    def __init__(
        self,
        base_dir: str | os.PathLike[str],
        *,
        size: int = 3,
        name: str = "sandboxer",
        binary: str | None = None,
        ready_timeout: float = 30.0,
    ) -> None:
        if size < 1:
            raise NatsServerError("a cluster needs at least one node")
        self.base_dir = Path(base_dir)
        self.size = size
        self.name = name
        self.binary = binary
        self.ready_timeout = ready_timeout
        self.servers: list[NatsServerProcess] = []

    @property
    def urls(self) -> list[str]:
        """Client URLs of every node (pass as a list to nats-py)."""
        return [s.url for s in self.servers]

    @property
    def url(self) -> str:
        """Comma list, the form ``SANDBOXER_NATS_URL`` takes."""
        return ",".join(self.urls)

    def _nodes(self, ports: list[int]) -> list[NatsServerProcess]:
        """Nodes on ``ports``: the first ``size`` for routes, the rest for clients."""
        route_ports, client_ports = ports[: self.size], ports[self.size :]
        routes = [f"nats://{_HOST}:{p}" for p in route_ports]
        return [
            NatsServerProcess(
                self.base_dir / f"n{i}",
                binary=self.binary,
                host=_HOST,
                port=client_port,
                monitor_port=0,
                server_name=f"{self.name}-n{i}",
                cluster_name=self.name,
                cluster_port=port,
                routes=routes,
                ready_timeout=self.ready_timeout,
            )
            for i, (port, client_port) in enumerate(
                zip(route_ports, client_ports, strict=True), start=1
            )
        ]

    async def start(self, attempts: int = 3) -> Self:
        """Start every node and wait until each reports ``/healthz`` ok."""
        for attempt in range(1, attempts + 1):
            self.servers = self._nodes(spare_ports(2 * self.size, _HOST))
            results = await asyncio.gather(
                *(s.start() for s in self.servers), return_exceptions=True
            )
            failures = [r for r in results if isinstance(r, BaseException)]
            if not failures:
                break
            await self.stop()
            port_race = all("address already in use" in str(f).lower() for f in failures)
            if attempt == attempts or not port_race:
                raise failures[0]
        try:
            await asyncio.gather(*(s.wait_healthy(self.ready_timeout) for s in self.servers))
        except BaseException:
            await self.stop()
            raise
        return self

    async def restart(self, index: int) -> NatsServerProcess:
        """Start node ``index`` (0-based) again on its store, client port and route port, as
        after a crash, and return it once it listens (``wait_healthy`` to wait for it to
        catch up with the meta leader)."""
        old = self.servers[index]
        node = NatsServerProcess(
            old.store_dir,
            binary=self.binary,
            host=old.host,
            port=old.port,
            monitor_port=0,
            server_name=old.server_name,
            cluster_name=self.name,
            cluster_port=old.route_port,
            routes=old.routes,
            ready_timeout=self.ready_timeout,
        )
        self.servers[index] = await node.start()
        return node

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.servers), return_exceptions=True)

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
