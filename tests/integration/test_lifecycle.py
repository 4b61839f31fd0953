"""The whole lifecycle through the bus, against real NATS and real bubblewrap."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from sandboxer import subjects
from sandboxer.client import CommandFailed, SandboxerClient
from sandboxer.extensions.local.backend import LocalExtension
from sandboxer.ids import derive_sandbox_id, new_command_id
from tests.integration.conftest import (
    Service,
    consumer_idle,
    reap_local,
    resend_provision_job,
    resend_recreate_job,
    start_service,
)

pytestmark = pytest.mark.integration


async def event_types(client: SandboxerClient, sandbox_id: str) -> list[str]:
    return [event["type"] async for _seq, event in client.events(sandbox_id=sandbox_id)]


async def wait_status(
    client: SandboxerClient, sandbox_id: str, wanted: set[str], timeout: float = 30
) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            sandbox = await client.get(sandbox_id)
            if sandbox and sandbox["status"] in wanted:
                return sandbox
            await asyncio.sleep(0.05)


async def test_create_exec_destroy(service: Service) -> None:
    client = service.client
    seen: list[str] = []
    ready = await client.create(on_event=lambda e: seen.append(e["type"]))
    sandbox_id = ready["sandbox_id"]
    assert seen == ["requested", "routed", "provisioning", "ready"]
    assert ready["reachability"]["kind"] == "local"
    sandbox = await client.get(sandbox_id)
    assert sandbox is not None
    assert sandbox["status"] == "ready"

    chunks: list[bytes] = []

    async def collect(_stream: str, data: bytes) -> None:
        chunks.append(data)

    code = await client.exec(sandbox_id, ["sh", "-c", "echo hello; exit 3"], collect)
    assert code == 3
    assert b"".join(chunks) == b"hello\n"
    await wait_status(client, sandbox_id, {"active"})  # an exec is activity (docs/ttl.md)

    await client.destroy(sandbox_id)
    assert await event_types(client, sandbox_id) == [
        "requested",
        "routed",
        "provisioning",
        "ready",
        "active",
        "destroying",
        "destroyed",
    ]
    assert (await client.get(sandbox_id))["status"] == "destroyed"  # type: ignore[index]
    assert await client.list_sandboxes() == []
    assert not (service.settings.local_root / sandbox_id).exists()


async def test_every_event_has_the_envelope(service: Service) -> None:
    ready = await service.client.create()
    await service.client.destroy(ready["sandbox_id"])
    async for _seq, event in service.client.events(sandbox_id=ready["sandbox_id"]):
        for field in ("type", "v", "event_id", "sandbox_id", "command_id", "actor", "at"):
            assert event[field], (field, event)


async def test_same_command_id_twice_gives_one_sandbox(service: Service) -> None:
    client = service.client
    command_id = new_command_id()
    first, second = await asyncio.gather(
        client.create(command_id=command_id), client.create(command_id=command_id)
    )
    assert first["sandbox_id"] == second["sandbox_id"]
    again = await client.create(command_id=command_id)  # long after: still the same one
    assert again["event_id"] == first["event_id"]
    assert await event_types(client, first["sandbox_id"]) == [
        "requested",
        "routed",
        "provisioning",
        "ready",
    ]
    assert len(await client.list_sandboxes()) == 1


async def test_chosen_sandbox_id_and_a_second_create_for_it(service: Service) -> None:
    await service.client.create(sandbox_id="chosen0001")
    with pytest.raises(CommandFailed, match="is taken"):
        await service.client.create(sandbox_id="chosen0001")


async def test_concurrent_destroy_and_recreate_lose_no_update(service: Service) -> None:
    client = service.client
    for _ in range(3):
        sandbox_id = (await client.create())["sandbox_id"]
        destroy_id, recreate_id = new_command_id(), new_command_id()
        await asyncio.gather(
            client.publish_command(
                "destroy",
                {"command_id": destroy_id, "sandbox_id": sandbox_id, "actor": client.actor},
            ),
            client.publish_command(
                "recreate",
                {"command_id": recreate_id, "sandbox_id": sandbox_id, "actor": client.actor},
            ),
        )
        final = await wait_status(client, sandbox_id, {"destroyed"})
        # Both commands were decided: each is either in the log or rejected, none lost.
        assert destroy_id in final["handled"]
        rejected = await client.query(
            "sandboxer.query.command.rejection", {"command_id": recreate_id}
        )
        assert recreate_id in final["handled"] or rejected["rejection"] is not None
        # An answer says how far the view had read: "no rejection" as of that position.
        assert isinstance(rejected["position"], int)
        assert not (service.settings.local_root / sandbox_id).exists()


async def test_recreate_gives_a_new_generation(service: Service) -> None:
    client = service.client
    sandbox_id = (await client.create())["sandbox_id"]
    ready = await client.recreate(sandbox_id)
    assert ready["generation"] == 2
    shown = await client.get(sandbox_id)
    assert shown is not None
    assert shown["recreated_by"] == ready["command_id"]  # lineage: which recreate made it
    assert await event_types(client, sandbox_id) == [
        "requested",
        "routed",
        "provisioning",
        "ready",
        "recreating",
        "provisioning",
        "ready",
    ]


async def test_a_recreate_job_sent_again_after_its_ready_leaves_the_sandbox_alone(
    service: Service,
) -> None:
    """A recreate job redelivered after the worker appended `ready` but before its ack (a
    kill -9, a lost ack), or published again, starts no provisioning: it must not tear the
    sandbox down either, or the log says ready while nothing runs."""
    client = service.client
    sandbox_id = (await client.create())["sandbox_id"]
    await client.recreate(sandbox_id)
    before = await event_types(client, sandbox_id)
    await resend_recreate_job(client, sandbox_id)
    await consumer_idle(client, subjects.JOBS_STREAM, "ext-local")
    assert await event_types(client, sandbox_id) == before
    found = await LocalExtension(service.settings.local_root).list_sandboxes()
    assert [(item.sandbox_id, item.alive) for item in found] == [(sandbox_id, True)]

    async def ignore(_stream: str, _data: bytes) -> None:
        pass

    assert await client.exec(sandbox_id, ["true"], ignore) == 0


async def test_replay_equals_live_after_a_mixed_workload(service: Service) -> None:
    client = service.client
    ids = [(await client.create())["sandbox_id"] for _ in range(4)]
    await client.destroy(ids[0])
    await client.recreate(ids[1])
    with pytest.raises(CommandFailed):
        await client.create("profile.missing")
    with pytest.raises(CommandFailed):
        await client.destroy("neverexisted1")
    await client.nc.publish("sandboxer.cmd.create", b"{garbage")  # core publish: still captured
    await client.nc.flush()
    await asyncio.sleep(0.3)

    report = await client.replay(verify=True)
    assert report["verified"], report["differences"]
    before = await client.list_sandboxes(include_destroyed=True)
    rebuilt = await client.replay(verify=False)
    assert rebuilt["events"] >= 20
    assert await client.list_sandboxes(include_destroyed=True) == before
    assert (await client.replay(verify=True))["verified"]


async def test_projection_resumes_after_restart(nats_server: Any, home: Path) -> None:
    svc = await start_service(home, nats_server.url)
    try:
        sandbox_id = (await svc.client.create())["sandbox_id"]
        assert (await svc.client.get(sandbox_id))["status"] == "ready"  # type: ignore[index]
        position = (await svc.client.health())["position"]
    finally:
        await svc.client.close()
        await svc.shutdown()
    svc = await start_service(home, nats_server.url)
    try:
        assert (await svc.client.health())["position"] == position
        assert (await svc.client.get(sandbox_id))["status"] == "ready"  # type: ignore[index]
        # The restarted extension worker adopted the running sandbox: exec still works.
        code = await svc.client.exec(sandbox_id, ["true"], lambda _s, _d: None)
        assert code == 0
        await svc.client.destroy(sandbox_id)
    finally:
        await svc.client.close()
        await svc.shutdown()
        await reap_local(home)


async def test_sandbox_has_no_network_and_a_read_only_system(service: Service) -> None:
    client = service.client
    sandbox_id = (await client.create())["sandbox_id"]
    listener = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    out: list[bytes] = []

    async def collect(_stream: str, data: bytes) -> None:
        out.append(data)

    script = (
        "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '; "
        f"python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}), 2)' "
        "2>/dev/null && echo HOST-REACHABLE; "
        "touch /usr/sbx-probe 2>/dev/null && echo USR-WRITABLE; "
        "touch /etc/sbx-probe 2>/dev/null && echo ETC-WRITABLE; "
        "touch /workspace/ok && echo WORKSPACE-OK"
    )
    try:
        assert await client.exec(sandbox_id, ["sh", "-c", script], collect) == 0
    finally:
        listener.close()
    text = b"".join(out).decode()
    assert text.split() == ["lo", "WORKSPACE-OK"], text
    assert not Path("/usr/sbx-probe").exists()


async def test_failed_provisioning_leaves_nothing(service: Service) -> None:
    with pytest.raises(CommandFailed, match="repo") as caught:
        await service.client.create(inputs={"repo": "/nonexistent/$(reboot);rm -rf /"})
    sandbox_id = caught.value.event["sandbox_id"]
    assert (await service.client.get(sandbox_id))["status"] == "failed"  # type: ignore[index]
    assert not (service.settings.local_root / sandbox_id).exists()


async def test_rejections_carry_reasons_and_workers_keep_serving(service: Service) -> None:
    client = service.client
    js = client.js
    rejected: list[dict[str, Any]] = []

    async def on_rejection(msg: Any) -> None:
        rejected.append(json.loads(msg.data))

    sub = await client.nc.subscribe("sandboxer.evt.command.*.rejected", cb=on_rejection)
    actor = {"type": "adm", "id": "t"}
    bad = [
        ("create", b"not json at all"),
        ("create", b'{"command_id": "c-nojson-fields"}'),
        (
            "create",
            json.dumps(
                {"command_id": "c-unknown-profile", "profile": "profile.zzz", "actor": actor}
            ).encode(),
        ),
        (
            "create",
            json.dumps(
                {
                    "command_id": "c-traversal",
                    "profile": "profile.local",
                    "actor": actor,
                    "sandbox_id": "../../etc/passwd",
                }
            ).encode(),
        ),
        (
            "create",
            json.dumps(
                {
                    "command_id": "c-meta",
                    "profile": "profile.local",
                    "actor": actor,
                    "inputs": {"x;rm -rf /": "1"},
                }
            ).encode(),
        ),
        (
            "create",
            json.dumps(
                {
                    "command_id": "c-huge",
                    "profile": "profile.local",
                    "actor": actor,
                    "inputs": {"repo": "a" * 200_000},
                }
            ).encode(),
        ),
        (
            "destroy",
            json.dumps(
                {"command_id": "c-unknown-sbx", "sandbox_id": "nosuchsandbox1", "actor": actor}
            ).encode(),
        ),
        ("launch", json.dumps({"command_id": "c-verb", "actor": actor}).encode()),
        # A create body under a longer subject is not a create (the verb is not the last token).
        (
            "nope.create",
            json.dumps(
                {"command_id": "c-subject-1", "profile": "profile.local", "actor": actor}
            ).encode(),
        ),
        (
            "x.y.create",
            json.dumps(
                {"command_id": "c-subject-2", "profile": "profile.local", "actor": actor}
            ).encode(),
        ),
        # Nested a few thousand levels deep: the decoder's recursion limit, not a crash.
        ("create", b'{"command_id": "c-deep", "inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
        (
            "create",
            json.dumps(
                {
                    "command_id": "c-actor-extra",
                    "profile": "profile.local",
                    "actor": {**actor, "root": True},
                }
            ).encode(),
        ),
    ]
    for verb, data in bad:
        await js.publish(f"sandboxer.cmd.{verb}", data)
    async with asyncio.timeout(10):
        while len(rejected) < len(bad):
            await asyncio.sleep(0.05)
    await sub.unsubscribe()
    codes = {r.get("command_id") or f"seq-{r['stream_seq']}": r["code"] for r in rejected}
    assert codes["c-unknown-profile"] == "unknown_profile"
    assert codes["c-traversal"] == "invalid_id"
    assert codes["c-meta"] == "invalid_input"
    assert codes["c-huge"] == "too_large"
    assert codes["c-unknown-sbx"] == "unknown_sandbox"
    assert codes["c-verb"] == "unknown_command"
    assert codes["c-nojson-fields"] == "invalid_field"
    assert codes["c-subject-1"] == codes["c-subject-2"] == "unknown_command"
    assert codes["c-actor-extra"] == "invalid_field"
    assert any(r["code"] == "malformed" and "nested too deeply" in r["reason"] for r in rejected)
    for sandbox_id in (derive_sandbox_id("c-subject-1"), derive_sandbox_id("c-subject-2")):
        assert await client.get(sandbox_id) is None
    assert "malformed" in codes.values()
    assert all(r["reason"] for r in rejected)
    assert not any(p.name.startswith(".") for p in service.settings.local_root.glob("*"))
    # ...and the service still serves.
    ready = await client.create()
    assert ready["type"] == "ready"


async def test_a_provision_job_carrying_a_stale_state_reloads_and_provisions_nothing(
    service: Service,
) -> None:
    """A provision job carries the state it was made from (workers/jobs.py). Sent again once
    the log has moved past that state, the worker's append conflicts, it reloads the log,
    finds the sandbox ready, and leaves it alone: no second provisioning."""
    client = service.client
    ready = await client.create()
    sandbox_id = ready["sandbox_id"]
    await resend_provision_job(client, sandbox_id)
    await consumer_idle(client, subjects.JOBS_STREAM, "ext-local")
    assert await event_types(client, sandbox_id) == ["requested", "routed", "provisioning", "ready"]
    assert (await client.get(sandbox_id))["status"] == "ready"  # type: ignore[index]

    async def ignore(_stream: str, _data: bytes) -> None:
        pass

    assert await client.exec(sandbox_id, ["true"], ignore) == 0
