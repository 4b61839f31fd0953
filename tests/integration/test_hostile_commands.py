"""A flood of malformed and hostile commands: every one ends in a rejection, none in a sandbox."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import pytest

from tests.integration.conftest import Service

pytestmark = pytest.mark.integration

ACTOR = {"type": "agt", "id": "fuzz", "project": "p"}
COUNT = 400


def hostile(rng: random.Random, i: int) -> tuple[str, bytes]:
    """One command that must be rejected: its subject, and its bytes."""
    command_id = f"hostile-{i}"
    good = {"command_id": command_id, "profile": "profile.local", "actor": ACTOR}
    kind = i % 10
    if kind == 0:
        return "sandboxer.cmd.create", rng.randbytes(rng.randint(0, 300))
    if kind == 1:  # a create under a longer subject is not a create
        return rng.choice(
            ["sandboxer.cmd.nope.create", "sandboxer.cmd.x.y.create", "sandboxer.cmd.create.now"]
        ), json.dumps(good).encode()
    if kind == 2:  # nested far beyond any command
        depth = rng.randint(2000, 6000)
        return (
            "sandboxer.cmd.create",
            b'{"command_id": "'
            + command_id.encode()
            + b'", "inputs": '
            + b"[" * depth
            + b"]" * depth
            + b"}",
        )
    if kind == 3:
        return "sandboxer.cmd.create", json.dumps(
            {
                **good,
                "sandbox_id": rng.choice(
                    ["../../etc", "UPPER123", "a", "x" * 40, "ab;rm -rf /", "sbx\x00zero"]
                ),
            }
        ).encode()
    if kind == 4:
        return "sandboxer.cmd.create", json.dumps(
            {**good, "inputs": {rng.choice(["$(reboot)", "a b", "", "../x"]): "1"}}
        ).encode()
    if kind == 5:
        return "sandboxer.cmd.create", json.dumps(
            {
                **good,
                "actor": rng.choice(
                    [None, "root", {"type": "god", "id": "x"}, {**ACTOR, "admin": True}, []]
                ),
            }
        ).encode()
    if kind == 6:
        return "sandboxer.cmd.create", json.dumps(
            {**good, rng.choice(["profil", "ttl", "extension", "__proto__"]): "x"}
        ).encode()
    if kind == 7:  # commands about a sandbox that does not exist
        verb = rng.choice(["destroy", "recreate", "extend_ttl", "touch", "expire"])
        about = {"command_id": command_id, "actor": ACTOR, "sandbox_id": f"nosuch{i:06d}"}
        if verb == "extend_ttl":
            about["duration"] = rng.choice(["1h", "0s", "forever", "99999999d"])
        return f"sandboxer.cmd.{verb}", json.dumps(about).encode()
    if kind == 8:
        return "sandboxer.cmd.create", json.dumps(
            {**good, "profile": rng.choice(["profile.nope", "", "../../etc/passwd", "p" * 300])}
        ).encode()
    return f"sandboxer.cmd.{rng.choice(['launch', 'rm', 'create_', 'DESTROY'])}", json.dumps(
        good
    ).encode()


async def test_every_hostile_command_is_rejected_and_nothing_is_made(service: Service) -> None:
    client = service.client
    rejected: list[dict[str, Any]] = []

    async def on_rejection(msg: Any) -> None:
        rejected.append(json.loads(msg.data))

    sub = await client.nc.subscribe("sandboxer.evt.command.*.rejected", cb=on_rejection)
    rng = random.Random(20261202)
    try:
        for i in range(COUNT):
            subject, data = hostile(rng, i)
            await client.js.publish(subject, data, headers={"Nats-Msg-Id": f"hostile-msg-{i}"})
        async with asyncio.timeout(120):
            while len(rejected) < COUNT:
                await asyncio.sleep(0.1)
    finally:
        await sub.unsubscribe()
    assert len(rejected) == COUNT
    assert all(r["reason"] for r in rejected)
    assert "internal_error" not in {r["code"] for r in rejected}
    assert await client.list_sandboxes(include_destroyed=True) == []
    assert (await client.create())["type"] == "ready"  # and the service still serves


async def test_an_oversized_command_with_a_huge_actor_is_rejected(service: Service) -> None:
    """Just under the stream's 1 MiB, most of it the actor's id: rejected once, not handed
    back for ever because its rejection was too large to append."""
    client = service.client
    rejected: list[dict[str, Any]] = []

    async def on_rejection(msg: Any) -> None:
        rejected.append(json.loads(msg.data))

    sub = await client.nc.subscribe("sandboxer.evt.command.*.rejected", cb=on_rejection)
    actor = {"type": "agt", "id": "x" * 1_000_000, "project": "p"}
    huge = {"command_id": "hugeactor1", "profile": "profile.local", "actor": actor}
    try:
        await client.js.publish("sandboxer.cmd.create", json.dumps(huge).encode())
        async with asyncio.timeout(30):
            while not rejected:
                await asyncio.sleep(0.1)
    finally:
        await sub.unsubscribe()
    assert [(r["command_id"], r["code"]) for r in rejected] == [("hugeactor1", "too_large")]
    assert rejected[0].get("actor") is None


async def test_a_deeply_nested_query_is_a_bad_request(service: Service) -> None:
    """Queries read free-form JSON: nesting past the decoder's limit is a bad request, answered.
    (Exec requests are decoded into their type, which stops at the first wrong element.)"""
    deep = b"[" * 5000 + b"]" * 5000
    reply = await service.client.nc.request("sandboxer.query.sandbox.list", deep, 5)
    assert json.loads(reply.data) == {"ok": False, "error": "request is nested too deeply"}
    assert (await service.client.health())["ok"]
