"""A snapshot's id comes from its command's id, and command ids are one namespace across
projects: a snapshot command under the id of another project's snapshot does not touch it
(domain/snapshot_decide.snapshot_taken). Real nats-server, control worker and ext.local."""

from __future__ import annotations

import msgspec
import pytest

from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.client import SandboxerClient
from sandboxer.domain.snapshot_decide import RequestSnapshot
from sandboxer.errors import CommandFailed
from sandboxer.events.types import Actor
from sandboxer.ids import derive_snapshot_id, new_command_id
from sandboxer.workers.deciding import apply_snapshot
from tests.integration.conftest import Service

pytestmark = pytest.mark.integration

ALPHA = Actor(type="agt", id="alpha-agent", project="alpha")
BETA = {"type": "agt", "id": "beta-agent", "project": "beta"}


async def test_a_snapshot_under_another_projects_snapshot_id_is_refused(service: Service) -> None:
    """Alpha's snapshot is under way (requested; its job not run yet). Beta (as the gateway
    forwards a key's command, or its key publishes it) snapshots its own sandbox under
    alpha's snapshot command's id. It is refused ``snapshot_exists``, and alpha's snapshot
    and beta's sandbox are as they were. Before, it was taken for alpha's command sent
    again: beta's sandbox started a snapshot under alpha's snapshot id, and its job stored
    beta's workspace as alpha's snapshot (beta's wait even answered with alpha's snapshot)."""
    store = JetStreamEventStore(service.client.nc, service.client.js)
    alphas = SandboxerClient(service.client.nc, actor=msgspec.to_builtins(ALPHA))
    betas = SandboxerClient(service.client.nc, actor=BETA)
    alpha_box = (await alphas.create("profile.local", timeout=120))["sandbox_id"]
    beta_box = (await betas.create("profile.local", timeout=120))["sandbox_id"]
    command_id = new_command_id()
    snapshot_id = derive_snapshot_id(command_id)
    # What the control worker records for alpha's snapshot before it sends the job.
    await apply_snapshot(
        store,
        snapshot_id,
        RequestSnapshot(
            command_id=command_id,
            actor=ALPHA,
            sandbox_id=alpha_box,
            extension="ext.local",
            profile="profile.local",
            project="alpha",
        ),
    )

    with pytest.raises(CommandFailed) as refused:
        await betas.snapshot(beta_box, command_id=command_id, timeout=60)
    assert refused.value.event["code"] == "snapshot_exists"
    assert alpha_box not in refused.value.event["reason"]
    alphas_snapshot = (await store.load_snapshot(snapshot_id)).state
    assert alphas_snapshot.status == "requested"
    assert alphas_snapshot.sandbox_id == alpha_box
    beta_sandbox = (await store.load(beta_box)).state
    assert beta_sandbox.snapshotting is None
    assert command_id not in beta_sandbox.handled
    # Beta's own snapshot, under a command id of its own, is taken as ever.
    own = await betas.snapshot(beta_box, timeout=120)
    assert own["status"] == "created"
    assert own["sandbox_id"] == beta_box
