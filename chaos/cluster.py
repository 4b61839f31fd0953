"""What the cluster scenarios do to a 3-node NATS cluster: find a stream's leader, kill -9 its
node, start it again on the same store and ports, and count the elections seen meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from nats.js import JetStreamContext

from chaos.harness import HarnessError
from sandboxer.bus.nats_cluster import NatsCluster
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.cleanup_waits import cancel_until_done

__all__ = ["LeaderWatch", "restart_node", "stream_leader"]


async def stream_leader(
    js: JetStreamContext, cluster: NatsCluster, stream: str, *, timeout: float = 60.0
) -> int:
    """Index (in ``cluster.servers``) of the node leading ``stream`` once both of its replicas
    are current: killing that node then leaves a quorum that holds every acknowledged message."""
    names = [s.server_name for s in cluster.servers]
    deadline = time.monotonic() + timeout
    seen = "no answer"
    while time.monotonic() < deadline:
        try:  # mid-election the API may not answer
            info = (await js.stream_info(stream)).cluster
        except Exception as exc:
            seen = repr(exc)
        else:
            replicas = (info.replicas or []) if info is not None else []
            seen = f"leader {info.leader if info else None}, replicas " + ", ".join(
                f"{r.name} current={r.current} offline={r.offline}" for r in replicas
            )
            if (
                info is not None
                and info.leader in names
                and len(replicas) == len(names) - 1
                and all(r.current and not r.offline for r in replicas)
            ):
                return names.index(info.leader)
        await asyncio.sleep(0.2)
    raise HarnessError(f"{stream}: no leader with every replica current in {timeout:g} s ({seen})")


async def restart_node(cluster: NatsCluster, index: int) -> NatsServerProcess:
    """Start node ``index`` again, as after a crash, and wait until it reports healthy
    (caught up with the meta leader)."""
    node = await cluster.restart(index)
    await node.wait_healthy(cluster.ready_timeout)
    return node


@dataclass
class LeaderWatch:
    """Polls a stream's leader while a scenario runs: every change of leader is an election
    (a stream that answers no leader for a while counts once, when one is known again)."""

    js: JetStreamContext
    stream: str
    interval: float = 0.2
    leaders: list[str] = field(default_factory=list)
    longest_leaderless: float = 0.0
    _task: asyncio.Task[None] | None = None

    @property
    def elections(self) -> int:
        return max(0, len(self.leaders) - 1)

    async def _poll(self) -> None:
        lost_at: float | None = None
        while True:
            leader = None
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    info = (await self.js.stream_info(self.stream)).cluster
                leader = info.leader if info is not None else None
            now = time.monotonic()
            if leader is None:
                lost_at = lost_at or now
            else:
                if lost_at is not None:
                    self.longest_leaderless = max(self.longest_leaderless, now - lost_at)
                    lost_at = None
                if not self.leaders or self.leaders[-1] != leader:
                    self.leaders.append(leader)
            await asyncio.sleep(self.interval)

    async def elected(self, instead_of: str, timeout: float) -> bool:
        """Wait until the stream names a leader other than ``instead_of`` (the node just
        killed), and count it: the poll alone missed the election in some runs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leader = None
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    info = (await self.js.stream_info(self.stream)).cluster
                leader = info.leader if info is not None else None
            if leader is not None and leader != instead_of:
                if self.leaders[-1:] != [leader]:
                    self.leaders.append(leader)
                return True
            await asyncio.sleep(self.interval)
        return False

    def start(self) -> None:
        self._task = asyncio.create_task(self._poll(), name=f"leader-watch-{self.stream}")

    async def stop(self) -> None:
        """End the poll. One cancel is not enough: landing as a ``stream_info`` answer
        arrives, it is lost inside nats-py (``cleanup_waits.py``), and the poll went on for
        ever while ``leader-kill`` waited here for it (its rare stall, docs/reliability.md)."""
        if self._task is not None:
            await cancel_until_done(self._task)
