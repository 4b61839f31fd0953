"""A held-up pause job undone on a hosted backend whose provider keeps a timeout of its own:
the undoing resume leaves the provider's timeout at the sandbox's expiry (real NATS, the
service's E2B worker against the E2B double)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.config.catalog import Catalog
from sandboxer.extensions.loading import build_extension
from sandboxer.workers.jobs import Job
from sandboxer.workers.pause_job import PauseJob
from tests.doubles.e2b_double import ServedE2b
from tests.integration.test_hosted_service import served_e2b
from tests.waiting import logged

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def test_a_pause_undone_by_a_resume_leaves_e2b_s_timeout_at_the_expiry(
    nats_server: Any, home: Path, e2b_double: ServedE2b, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker held a pause job past the ack wait while another paused the sandbox, and a
    resume thawed it since. The held job's pause lands at E2B now, and the worker resumes
    the sandbox again (the log says it runs). E2B's resume sets its own timeout
    (resume_timeout, an hour): on the old code it stayed there, so E2B would end the
    sandbox, whose TTL runs for 3 h, after one."""
    provider, service = await served_e2b(nats_server, home, e2b_double, monkeypatch)
    try:
        client = service.client
        sandbox_id = (await client.create(provider.profile, ttl="3h"))["sandbox_id"]
        await client.pause(sandbox_id)
        store = JetStreamEventStore(client.nc, client.js)
        as_held = (await store.load(sandbox_id)).state  # paused; the held job saw it pausing
        await client.resume(sandbox_id)
        # The late job reads the log: still `resuming` there, its undo would leave E2B's
        # timeout at the hour E2B's resume sets.
        await logged(lambda: store.load(sandbox_id), lambda got: got.state.status != "resuming")
        held = Job(job_id="held-pause", sandbox_id=sandbox_id, action="pause", version=1)
        worker_side = build_extension(provider.extension, Catalog.load(home), service.settings)
        try:
            late = PauseJob(store, worker_side, explain=str)
            await late.run(held, msgspec.structs.replace(as_held, status="pausing"))
        finally:
            await worker_side.aclose()  # type: ignore[attr-defined]
        state = (await store.load(sandbox_id)).state
        assert state.status in {"ready", "active"}
        assert state.expires_at is not None
        [record] = [
            r for r in e2b_double.double.live() if r.metadata.get("sandboxer_id") == sandbox_id
        ]
        assert record.state == "running"  # undone
        assert record.end_at >= datetime.fromisoformat(state.expires_at)
        await client.destroy(sandbox_id)
    finally:
        await service.client.close()
        await service.shutdown()
