"""A key identity's first request is answered as soon as its key is in the log: the view that
answers keys may not have folded a key made a moment ago (CI found a key refused as unknown
when it asked ``whoami`` straight after ``keys create`` returned)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sandboxer.bus.connect import connect
from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.bus.key_request_rate import KeyRequestRates
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.bus.streams import ensure_streams
from sandboxer.clock import utc_now
from sandboxer.domain.key_state import hash_key, key_id_for, new_key
from sandboxer.errors import RequestError
from sandboxer.events.types import Actor, KeyCreated
from sandboxer.projections.key_queries import KeyQueries
from sandboxer.projections.projector import Projector

pytestmark = pytest.mark.integration


async def test_a_key_the_view_has_not_folded_yet_is_waited_for_not_refused(
    nats_server: NatsServerProcess, tmp_path: Path
) -> None:
    nc = await connect([nats_server.url], name="test-key-queries")
    js = nc.jetstream()
    await ensure_streams(js, 1)
    store = JetStreamEventStore(nc, js)
    key_hash = hash_key(new_key())
    key_id = key_id_for(key_hash)
    made = KeyCreated(
        key_id=key_id,
        command_id="c-key",
        actor=Actor(type="adm", id="ops"),
        at=utc_now(),
        key_hash=key_hash,
        project="acme",
        key_type="agt",
        max_live=1,
        rate_per_second=50,
    )
    projector = Projector(nc, js, tmp_path / "view.sqlite3")
    await projector.open()  # then behind the log: it folds nothing until it runs
    await store.append_key(await store.load_key(key_id), [made])
    queries = KeyQueries(nc, projector, {}, KeyRequestRates())
    stop = asyncio.Event()
    running: asyncio.Task[None] | None = None
    try:
        with pytest.raises(RequestError, match="revoked or unknown"):
            await queries.resolve(key_id_for(hash_key(new_key())))  # never made: at once
        asking = asyncio.create_task(queries.resolve(key_id))
        await asyncio.sleep(0.1)  # of the 2 s the answer waits for the view
        assert not asking.done()  # waiting for the view, not refused
        running = asyncio.create_task(projector.run(stop))
        actor = await asyncio.wait_for(asking, 10)
        assert (actor["type"], actor["id"], actor["project"]) == ("agt", key_id, "acme")
    finally:
        stop.set()
        if running is not None:
            await asyncio.wait_for(running, 10)
        await projector.close()
        await nc.close()
