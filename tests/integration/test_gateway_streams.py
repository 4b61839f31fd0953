"""A key's event streams at the HTTP gateway, against the real service, the real gateway on
uvicorn and nats-server: how many one key may hold open at once, and that a stream gives
its slot back however it ends (docs/http-api.md#limits)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from sandboxer.bus.nats_server import NatsServerProcess
from tests.integration.gateway_front import Front, front_door

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CAP = 2


@pytest.fixture
async def front(nats_server: NatsServerProcess, home: Path) -> AsyncIterator[Front]:
    async with front_door(nats_server.url, home, gateway={"http_max_streams": CAP}) as front:
        yield front


async def _open(
    streams: contextlib.AsyncExitStack, api: httpx.AsyncClient, url: str
) -> httpx.Response:
    """A stream of ``url`` held open in ``streams`` (answered once its headers came)."""
    return await streams.enter_async_context(api.stream("GET", url))


async def _refused(api: httpx.AsyncClient, url: str, **params: str) -> str:
    """The 429 of a stream past the cap (a stream that opens instead fails the test, not hangs
    it: its headers are looked at, and it is closed)."""
    async with api.stream("GET", url, params=params) as answer:
        assert answer.status_code == 429, answer.status_code
        await answer.aread()
    error = answer.json()["error"]
    assert error["code"] == "stream_limit", error
    assert int(answer.headers["retry-after"]) >= 1
    return str(error["message"])


async def test_a_key_holds_at_most_its_cap_of_event_streams(front: Front) -> None:
    """An event stream never ends on its own and holds a reader of the log and its buffers:
    a key's rate bounds how fast it opens them, not how many it keeps. One past the cap is a
    429 naming the limit and the fix, another key's open meanwhile, and a stream that ends
    (its client gone, or the log's end reached without ``follow``) frees its slot."""
    busy, other = await front.key("alpha"), await front.key("alpha")
    async with front.http(busy) as api, front.http(other) as api2:
        created = await api.post("/v1/sandboxes?wait=60s", json={})
        assert created.status_code == 201, created.text
        sandbox_id = created.json()["sandbox_id"]
        own = f"/v1/sandboxes/{sandbox_id}/events"
        async with contextlib.AsyncExitStack() as held:
            first = await _open(held, api, "/v1/events")
            async with contextlib.AsyncExitStack() as second:
                assert (await _open(second, api, own)).status_code == 200
                assert first.status_code == 200
                message = await _refused(api, "/v1/events")
                assert f"{CAP} event streams" in message
                assert "SANDBOXER_HTTP_MAX_STREAMS" in message
                await _refused(api, own)
                await _refused(api, "/v1/events", follow="false")
                # Another key of the same project is not held by this one's cap.
                async with contextlib.AsyncExitStack() as free:
                    assert (await _open(free, api2, "/v1/events")).status_code == 200
                    assert (await _open(free, api2, own)).status_code == 200
            # The second stream's client is gone: its slot comes back.
            async with asyncio.timeout(10):
                while (
                    again := await api.get("/v1/events", params={"follow": "false"})
                ).status_code == 429:
                    await asyncio.sleep(0.1)
            assert again.status_code == 200, again.text
        # Streams that end on the gateway's side (the log's end, without follow; a revoked
        # key's ends the same way) give their slots back too: many more than the cap, one
        # after another.
        for _ in range(3 * CAP):
            ended = await api.get(own, params={"follow": "false"})
            assert ended.status_code == 200, ended.text
            assert "event: ready" in ended.text
        async with contextlib.AsyncExitStack() as held:
            for _ in range(CAP):
                assert (await _open(held, api, "/v1/events")).status_code == 200
            await _refused(api, "/v1/events")
        assert (await api.delete(f"/v1/sandboxes/{sandbox_id}?wait=60s")).is_success
