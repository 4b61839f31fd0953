"""A client reads its own writes even when the view answering is behind them.

The projector waits a while for the asker's ``min_seq``, then answers from where its view
is (``Projector.caught_up``): on a loaded machine, or from another projector of a scaled-out
service, that answer lacks what the client just saw finish. The client asks again while the
answer's ``position`` is short of what it asked for (``SandboxerClient.view_patience``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest
from nats.aio.msg import Msg

from sandboxer import subjects
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.client import SandboxerClient
from sandboxer.projections import projector
from tests.integration.conftest import Service

pytestmark = pytest.mark.integration


async def test_a_get_right_after_ready_shows_ready_when_the_view_never_waits(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The projector answers at once from where it is (no wait for the asker's writes), so a
    get sent as ``ready`` arrives is answered, at first, by a view that has not folded it:
    every get still shows the sandbox ready."""
    monkeypatch.setattr(projector, "OWN_WRITES_WAIT", 0.0)
    client = service.client
    for _ in range(8):
        sandbox_id = (await client.create())["sandbox_id"]
        row = await client.get(sandbox_id)
        assert (row or {}).get("status") == "ready", row
        await client.destroy(sandbox_id)
        assert (await client.get(sandbox_id) or {}).get("status") == "destroyed"


async def test_a_view_that_never_catches_up_is_answered_from_after_the_patience(
    nats_server: NatsServerProcess,
) -> None:
    """A responder whose view stays behind: the client asks again for ``view_patience``, then
    returns the answer as the view has it; a query asking for no position is asked once."""
    asked: list[dict[str, Any]] = []

    async def behind(msg: Msg) -> None:
        asked.append(msgspec.json.decode(msg.data))
        await msg.respond(msgspec.json.encode({"ok": True, "position": 3, "sandbox": None}))

    client = await SandboxerClient.connect([nats_server.url])
    view = await client.nc.subscribe(subjects.QUERY_GET, cb=behind)
    try:
        client.view_patience = 0.3
        loop = asyncio.get_running_loop()
        began = loop.time()
        assert await client.get("sbx" + "a" * 17, min_seq=7) is None
        assert loop.time() - began >= 0.3
        assert len(asked) > 1
        assert {a["min_seq"] for a in asked} == {7}
        asked.clear()
        assert await client.get("sbx" + "a" * 17) is None  # min_seq 0: nothing to wait for
        assert len(asked) == 1
    finally:
        await view.unsubscribe()
        await client.close()
