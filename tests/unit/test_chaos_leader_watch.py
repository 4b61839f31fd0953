"""The cluster scenarios' leader watch stops even when its poll loses a cancel."""

from __future__ import annotations

import asyncio
import types
from typing import Any

from chaos.cluster import LeaderWatch


class AnswersThroughOneCancel:
    """A ``stream_info`` that, like a nats-py request on Python 3.11 whose answer arrives as
    the task is cancelled, returns its answer and drops that cancel."""

    def __init__(self) -> None:
        self.calls = 0
        self.cancels_dropped = 0

    async def stream_info(self, stream: str) -> Any:
        self.calls += 1
        try:
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            if self.cancels_dropped == 0:
                self.cancels_dropped += 1
                current = asyncio.current_task()
                assert current is not None
                current.uncancel()  # as asyncio.wait_for's lost cancel leaves the task
            else:
                raise
        cluster = types.SimpleNamespace(leader="n1", replicas=[])
        return types.SimpleNamespace(cluster=cluster)


async def test_stop_ends_the_poll_though_a_cancel_was_lost() -> None:
    js = AnswersThroughOneCancel()
    watch = LeaderWatch(js, "SANDBOXER_EVENTS", interval=0.0)  # type: ignore[arg-type]
    watch.start()
    while js.calls == 0:
        await asyncio.sleep(0)
    async with asyncio.timeout(10):  # on old code: for ever
        await watch.stop()
    assert js.cancels_dropped == 1
    assert watch.leaders == ["n1"]
