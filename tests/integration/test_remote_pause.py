"""Pause and resume of a compose sandbox through the bus: a real sshd host, dockerd with
docker-compose, nats-server. The stack's containers are paused and unpaused on the host,
an exec is refused while paused, and a paused sandbox is destroyed cleanly."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sandboxer.client import CommandFailed
from tests.integration.conftest import Service
from tests.integration.remote_fixtures import ComposeEngine, make_repo
from tests.integration.test_remote_lifecycle import (
    compose_service_fixture,  # noqa: F401
    containers,
)

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
