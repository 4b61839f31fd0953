"""Pause and resume of a compose sandbox through the bus: a real sshd host, dockerd with
docker-compose, nats-server. The stack's containers are paused and unpaused on the host,
an exec is refused while paused, and a paused sandbox is destroyed cleanly."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.client import CommandFailed
from sandboxer.config.catalog import Catalog
from sandboxer.extensions.compose_ssh.backend import ComposeSshExtension
from sandboxer.workers.extension_worker import ExtensionWorker
from tests.integration.conftest import Service
from tests.integration.remote_fixtures import ComposeEngine, make_repo
from tests.integration.test_remote_lifecycle import (
    compose_service_fixture,  # noqa: F401
    containers,
)
from tests.waiting import logged

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def states(engine: ComposeEngine, project: str) -> set[str]:
    """Each container's status as the engine reports it (docker and podman alike)."""
    out = engine.cli("inspect", "--format", "{{.State.Status}}", *containers(engine, project))
    return set(out.stdout.split())


async def test_a_compose_sandbox_pauses_and_resumes_through_the_bus(
    tmp_path: Path, compose_engine: ComposeEngine, compose_service: Service
) -> None:
    client = compose_service.client
    ready = await client.create("profile.test-compose", {"repo": str(make_repo(tmp_path / "repo"))})
    sandbox_id, project = ready["sandbox_id"], ready["reachability"]["compose_project"]
    began = time.monotonic()
    await client.pause(sandbox_id)
    paused = time.monotonic()
    assert states(compose_engine, project) == {"paused"}
    shown = await client.get(sandbox_id)
    assert shown is not None
    assert shown["status"] == "paused"
    with pytest.raises(CommandFailed, match="resume it first"):
        await client.exec(sandbox_id, ["true"], lambda _s, _d: None)
    resumed_event = await client.resume(sandbox_id)
    resumed = time.monotonic()
    assert resumed_event["paused_seconds"] > 0
    assert states(compose_engine, project) == {"running"}
    assert await client.exec(sandbox_id, ["true"], lambda _s, _d: None) == 0
    print(
        f"\ncompose through the bus: pause {(paused - began) * 1000:.0f} ms, "
        f"resume {(resumed - paused) * 1000:.0f} ms"
    )

    await client.pause(sandbox_id)
    await client.destroy(sandbox_id, timeout=60)
    assert containers(compose_engine, project) == []
    report = await client.replay(verify=True)
    assert report["verified"], report["differences"]


async def test_a_stack_paused_in_part_is_set_as_its_log_says_by_the_leak_sweep(
    tmp_path: Path, compose_engine: ComposeEngine, compose_service: Service
) -> None:
    """One container unpaused by hand while the log says ``paused`` (or paused by hand while
    it says ``ready``): a worker's leak sweep pauses (or unpauses) the rest of the stack to
    match, recording nothing. On the old code the sweep left it as it was."""
    client = compose_service.client
    ready = await client.create("profile.test-compose", {"repo": str(make_repo(tmp_path / "repo"))})
    sandbox_id, project = ready["sandbox_id"], ready["reachability"]["compose_project"]
    first = containers(compose_engine, project)[0]
    store = JetStreamEventStore(client.nc, client.js)
    extension = ComposeSshExtension.from_settings(compose_service.settings)
    worker = ExtensionWorker(
        client.js, store, Catalog.load(compose_service.settings.home), extension
    )

    await client.pause(sandbox_id)
    compose_engine.cli("unpause", first)
    assert states(compose_engine, project) == {"paused", "running"}
    # Its `paused` in the log, which the sweep reads (the client may hear it before).
    paused = await logged(lambda: store.load(sandbox_id), lambda got: got.state.status == "paused")
    version = paused.state.version
    assert await worker.sweep_leaks() == []
    assert states(compose_engine, project) == {"paused"}

    await client.resume(sandbox_id)
    await logged(lambda: store.load(sandbox_id), lambda got: got.state.status != "resuming")
    compose_engine.cli("pause", first)
    assert await worker.sweep_leaks() == []
    assert states(compose_engine, project) == {"running"}
    assert (await store.load(sandbox_id)).state.version == version + 2  # its resume alone
    await client.destroy(sandbox_id, timeout=60)
