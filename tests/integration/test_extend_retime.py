"""An extension whose control worker was cut off between its append and its ``retime`` job
still moves the provider's own timeout (workers/provider_expiry.py, docs/ttl.md).

The redelivered ``extend_ttl`` decides nothing (its id is handled) and sends the job the
sandbox waits for. The ``retime`` was that job only at the extension's own version: a touch
recorded meanwhile (an exec's, decided by another control worker) moved the version, and
the provider, never told, would end the sandbox at its old expiry.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sandboxer.bus.connect import connect
from sandboxer.bus.event_store import Loaded
from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.commands.types import TouchSandbox
from sandboxer.config.catalog import Catalog
from sandboxer.events.types import Actor
from sandboxer.extensions.saas_stub.rules import deadline_for
from sandboxer.workers.control import ControlWorker
from sandboxer.workers.deciding import apply
from tests.integration.conftest import Service, start_service
from tests.integration.test_ext_saas_stub import write_override

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MARGIN = 60.0  # the stub's timeout_margin_s


class CutOffAfterExtending(ControlWorker):
    """A control worker that dies once between an extension's append and its job, while
    another control worker records a touch on the sandbox."""

    cut = False

    async def _dispatch(self, loaded: Loaded | None, **kwargs: bool) -> None:
        state = loaded.state if loaded is not None else None
        if state is not None and not self.cut and state.expiry_moved_at == state.version:
            self.cut = True
            touch = TouchSandbox(
                command_id="exec-touch-1",
                actor=Actor(type="atm", id="sandboxer-exec"),
                sandbox_id=state.sandbox_id,
            )
            await apply(self._store, state.sandbox_id, touch)
            raise RuntimeError("cut off before the retime job was sent")
        await super()._dispatch(loaded, **kwargs)


@pytest.fixture
async def service(nats_server: NatsServerProcess, home: Path) -> AsyncIterator[Service]:
    write_override(home, latency_ms=1)
    svc = await start_service(home, nats_server.url, ["projector", "ext.saas-stub"])
    nc = await connect([nats_server.url], name="test-control", long_lived=False)
    js = nc.jetstream()
    control = CutOffAfterExtending(
        js, JetStreamEventStore(nc, js), Catalog.load(home), svc.settings, nc=nc
    )
    stop = asyncio.Event()
    task = asyncio.create_task(control.run(stop))
    try:
        await svc.fund()
        yield svc
    finally:
        stop.set()
        await asyncio.wait([task], timeout=30)
        await nc.close()
        await svc.client.close()
        await svc.shutdown()


def stub_deadline(home: Path, sandbox_id: str) -> str | None:
    for path in (home / "saas-stub").rglob("*.json"):
        record = json.loads(path.read_text())
        if sandbox_id in json.dumps(record):
            deadline = record.get("deadline")
            return deadline if isinstance(deadline, str) else None
    return None


async def test_an_extension_cut_off_before_its_retime_still_moves_the_providers_timeout(
    service: Service, home: Path
) -> None:
    client = service.client
    sandbox_id = (await client.create("profile.saas-stub", ttl="10m"))["sandbox_id"]
    extended = await client.extend_ttl(sandbox_id, "20m")
    wanted = deadline_for(extended["expires_at"], MARGIN)
    async with asyncio.timeout(30):
        while stub_deadline(home, sandbox_id) != wanted:
            await asyncio.sleep(0.1)
    await client.destroy(sandbox_id)
