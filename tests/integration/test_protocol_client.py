"""A client that knows only docs/protocol.md: plain nats-py, nothing imported from sandboxer.

The service under test is started by the ``service`` fixture; this module's
own code speaks the wire contract and nothing else.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import uuid
from typing import Any

import nats
import pytest
from nats.js.errors import NotFoundError

from tests.waiting import logged

pytestmark = pytest.mark.integration

ACTOR = {"type": "agt", "id": "protocol-test", "project": "docs"}


async def publish(js: Any, verb: str, command: dict[str, Any]) -> Any:
    return await js.publish(
        f"sandboxer.cmd.{verb}",
        json.dumps(command).encode(),
        headers={"Nats-Msg-Id": command["command_id"]},
    )


async def next_event(queue: asyncio.Queue[dict[str, Any]], wanted: str) -> dict[str, Any]:
    async with asyncio.timeout(30):
        while True:
            event = await queue.get()
            if event["type"] == wanted:
                return event
            assert event["type"] not in {"failed", "rejected"}, event


async def test_create_watch_exec_destroy_by_the_book(service: Any, nats_server: Any) -> None:
    del service  # running; we only talk to NATS
    nc = await nats.connect(servers=[nats_server.url])
    js = nc.jetstream()
    sandbox_id = "proto" + uuid.uuid4().hex[:12]
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def on_event(msg: Any) -> None:
        await events.put(json.loads(msg.data))

    await nc.subscribe(f"sandboxer.evt.sandbox.{sandbox_id}.>", cb=on_event)

    health = json.loads((await nc.request("sandboxer.query.health", b"{}", timeout=5)).data)
    assert health["ok"] is True

    create = {
        "command_id": uuid.uuid4().hex,
        "profile": "profile.local",
        "inputs": {},
        "actor": ACTOR,
        "sandbox_id": sandbox_id,
    }
    ack = await publish(js, "create", create)
    assert ack.stream == "SANDBOXER_COMMANDS"
    for kind in ("requested", "routed", "provisioning"):
        event = await next_event(events, kind)
        assert event["command_id"] == create["command_id"]
        assert event["actor"] == ACTOR
    ready = await next_event(events, "ready")
    assert ready["reachability"]

    # The view is eventually consistent: to read what it saw, a client passes the event's
    # sequence as min_seq (docs/protocol.md#queries), here read from the log itself, once
    # the stream has stored the `ready` the subscription brought (docs/protocol.md#exec).
    async def stored_ready() -> Any:
        try:
            return await js.get_last_msg(
                "SANDBOXER_EVENTS", f"sandboxer.evt.sandbox.{sandbox_id}.ready"
            )
        except NotFoundError:
            return None

    ready_seq = (await logged(stored_ready, lambda msg: msg is not None)).seq
    reply = json.loads(
        (
            await nc.request(
                "sandboxer.query.sandbox.get",
                json.dumps({"sandbox_id": sandbox_id, "min_seq": ready_seq}).encode(),
                timeout=5,
            )
        ).data
    )
    assert reply["ok"]
    assert reply["position"] >= ready_seq
    assert reply["sandbox"]["status"] == "ready"

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish(
        f"sandboxer.exec.{sandbox_id}",
        json.dumps({"argv": ["sh", "-c", "echo out; echo err >&2; exit 4"]}).encode(),
        reply=inbox,
    )
    streams: dict[str, bytes] = {"stdout": b"", "stderr": b""}
    while True:
        msg = await sub.next_msg(timeout=10)
        kind = msg.headers["Sandboxer-Exec"]
        if kind in streams:
            streams[kind] += msg.data
        elif kind == "exit":
            assert json.loads(msg.data) == {"exit_code": 4}
            break
    assert streams == {"stdout": b"out\n", "stderr": b"err\n"}

    destroy = {"command_id": uuid.uuid4().hex, "sandbox_id": sandbox_id, "actor": ACTOR}
    await publish(js, "destroy", destroy)
    await next_event(events, "destroying")
    destroyed = await next_event(events, "destroyed")
    assert destroyed["command_id"] == destroy["command_id"]

    bad = {
        "command_id": "proto-bad",
        "profile": "profile.local",
        "actor": ACTOR,
        "sandbox_id": "Not/Valid",
    }
    rejection_sub = await nc.subscribe("sandboxer.evt.command.proto-bad.rejected")
    await publish(js, "create", bad)
    rejection = json.loads((await rejection_sub.next_msg(timeout=10)).data)
    assert rejection["code"] == "invalid_id"
    assert rejection["reason"]
    await nc.drain()


async def test_documented_id_derivation(service: Any, nats_server: Any) -> None:
    del service
    nc = await nats.connect(servers=[nats_server.url])
    js = nc.jetstream()
    command_id = "c-" + uuid.uuid4().hex
    digest = base64.b32encode(hashlib.sha256(command_id.encode()).digest()).decode()
    sandbox_id = "sbx" + digest.lower()[:17]
    sub = await nc.subscribe(f"sandboxer.evt.sandbox.{sandbox_id}.ready")
    await publish(
        js, "create", {"command_id": command_id, "profile": "profile.local", "actor": ACTOR}
    )
    ready = json.loads((await sub.next_msg(timeout=30)).data)
    assert ready["sandbox_id"] == sandbox_id
    await publish(
        js, "destroy", {"command_id": uuid.uuid4().hex, "sandbox_id": sandbox_id, "actor": ACTOR}
    )
    await nc.drain()
