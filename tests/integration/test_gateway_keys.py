"""API keys and actors at the HTTP gateway, against the real service, the real gateway on
uvicorn, nats-server and ext.local sandboxes; httpx is the plain HTTP client.

Keys are made as an operator makes them (the real CLI, or the same bus helper), and every
request bears one: no key is 401, a revoked key is 401 from the next request on, a key of
one project cannot see or touch another's sandboxes, and a key's limits answer 429."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nats
import pytest
from nats.js import JetStreamContext

from sandboxer import subjects
from sandboxer.bus.direct_get import read_subject
from sandboxer.bus.event_store import Loaded, LoadedAccount, LoadedSnapshot
from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.bus.key_users import key_inbox_prefix
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.cli.key_commands import create_key, list_keys, revoke_key
from sandboxer.client import SandboxerClient
from sandboxer.clock import utc_now
from sandboxer.domain.account_state import AccountBook
from sandboxer.domain.key_state import hash_key, key_id_for
from sandboxer.domain.sandbox_state import SandboxState
from sandboxer.domain.snapshot_state import SnapshotState
from sandboxer.events.account_events import CreditsAdded
from sandboxer.events.actor import Actor
from sandboxer.events.sandbox_events import SandboxEvent, SandboxFailed, SandboxRequested
from sandboxer.events.snapshot_events import SnapshotRequested
from sandboxer.gateway import context
from sandboxer.ids import derive_sandbox_id, derive_snapshot_id, new_command_id
from sandboxer.projections.sandbox_view import SandboxView
from tests.integration.conftest import Cli
from tests.integration.gateway_front import Front, front_door

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
async def front(
    nats_server: NatsServerProcess, home: Path, exec_heartbeat: float
) -> AsyncIterator[Front]:
    service = {"exec_heartbeat": exec_heartbeat}
    async with front_door(nats_server.url, home, service=service) as front:
        yield front


async def shorten_duplicate_window(js: JetStreamContext, stream: str) -> None:
    """Shorten ``stream``'s duplicate window to about a second, for good.

    nats-server (2.15) answers a window change by firing its purge of old ids at once, but
    sets the new window only later in the same update: a purge that runs in between reads
    the old two minutes and sleeps as long, keeping every id (a loaded machine saw it in
    about 1 of 300 updates, and in two full runs of this suite). A second change starts one
    more purge, which can read only a short window."""
    config = (await js.stream_info(stream)).config
    for seconds in (1.0, 1.1):
        await js.update_stream(dataclasses.replace(config, duplicate_window=seconds))


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"]
    if code is not None:
        assert error["code"] == code, error
    return dict(error)


async def test_keys_create_prints_the_key_once_and_only_its_hash_is_kept(
    front: Front, cli_env: dict[str, str], home: Path
) -> None:
    cli = Cli(cli_env)
    created = await cli("keys", "create", "--project", "alpha", "--type", "agt", "--json")
    shown = json.loads(created.stdout)
    key = shown["key"]
    assert key.startswith("sbx_")
    assert shown["key_id"] == key_id_for(hash_key(key))
    assert (shown["type"], shown["project"]) == ("agt", "alpha")
    plain = await cli("keys", "create", "--project", "beta", "--type", "atm", "--name", "ci")
    assert plain.stdout.strip().startswith("sbx_")  # the key alone on stdout; the rest on stderr
    assert "shown only now" in plain.stderr

    listed = await cli("keys", "list", "--json")
    keys = json.loads(listed.stdout)
    assert {k["key_id"] for k in keys} == {
        shown["key_id"],
        key_id_for(hash_key(plain.stdout.strip())),
    }
    assert key not in listed.stdout
    assert hash_key(key) not in listed.stdout  # no hash in answers either
    table = await cli("keys", "list")
    assert shown["key_id"] in table.stdout

    async with front.http(key) as api:  # the key works
        assert (await api.get("/v1/sandboxes")).status_code == 200

    # The log holds the key's hash and never the key; the view neither.
    log = [event async for _seq, event in front.admin.events()]
    dumped = json.dumps(log)
    assert key not in dumped
    assert hash_key(key) in dumped
    await front.service.client.health()
    view = b"".join(p.read_bytes() for p in home.glob("projections.sqlite3*"))
    assert key.encode() not in view
    assert plain.stdout.strip().encode() not in view

    revoked = await cli("keys", "revoke", shown["key_id"], "--reason", "rotated")
    assert "revoked" in revoked.stdout
    again = await cli("keys", "revoke", shown["key_id"], check=False)
    assert again.returncode == 2
    assert "revoked already" in again.stderr
    after = json.loads((await cli("keys", "list", "--revoked", "--json")).stdout)
    assert {k["key_id"]: k["status"] for k in after}[shown["key_id"]] == "revoked"
    report = await front.admin.replay(verify=True)  # the keys table rebuilds the same
    assert report["verified"], report["differences"]

    # Only an administrator makes keys.
    agent = SandboxerClient(front.admin.nc, actor={"type": "agt", "id": "x", "project": "alpha"})
    with pytest.raises(Exception, match="only an administrator"):
        await create_key(agent, project="alpha", key_type="adm")


async def test_no_key_is_401_and_health_needs_none(front: Front) -> None:
    async with front.http() as anonymous:
        assert (await anonymous.get("/v1/health")).status_code == 200
        for method, path in (
            ("GET", "/v1/sandboxes"),
            ("POST", "/v1/sandboxes"),
            ("GET", "/v1/sandboxes/abcdefgh12"),
            ("DELETE", "/v1/sandboxes/abcdefgh12"),
            ("GET", "/v1/events?follow=false"),
            ("GET", "/v1/credits"),
            ("GET", "/v1/usage"),
            ("GET", "/v1/profiles"),
            ("GET", "/v1/extensions"),
            ("GET", "/v1/snapshots"),
        ):
            response = await anonymous.request(method, path, json={} if method == "POST" else None)
            assert_error(response, 401, "unauthorized")
            assert response.headers["www-authenticate"].startswith("Bearer")


async def test_a_large_body_needs_a_key_before_it_is_read(front: Front) -> None:
    """An exec or an upload may carry megabytes: without a valid key it is refused before
    any of its body is read (the headers promise 8 MB, and none of it ever comes)."""
    good = await front.key("alpha")
    host, port = front.url.removeprefix("http://").rsplit(":", 1)
    for method, path in (
        (b"POST", b"/v1/sandboxes/abcdefgh12/exec"),
        (b"PUT", b"/v1/sandboxes/abcdefgh12/files?path=x"),
    ):
        for authorization in (b"", b"Authorization: Bearer sbx_" + b"A" * 43 + b"\r\n"):
            reader, writer = await asyncio.open_connection(host, int(port))
            try:
                writer.write(
                    method
                    + b" "
                    + path
                    + b" HTTP/1.1\r\nHost: test\r\n"
                    + authorization
                    + b"Content-Type: application/json\r\nContent-Length: 8000000\r\n\r\n{"
                )
                await writer.drain()
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            finally:
                writer.close()
            assert head.split(b" ", 2)[1] == b"401", (method, path, head)
    async with front.http(good) as api:  # with the key the route itself answers
        answer = await api.post("/v1/sandboxes/abcdefgh12/exec", json={"argv": ["true"]})
        assert_error(answer, 404, "unknown_sandbox")


async def raw_get(url: str, path: str, header: bytes) -> tuple[int, bytes]:
    """A GET with one header line sent as raw bytes (HTTP clients refuse to send some of
    them): the status and the body."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            b"GET "
            + path.encode()
            + b" HTTP/1.1\r\nHost: test\r\nConnection: close\r\n"
            + header
            + b"\r\n\r\n"
        )
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def test_hostile_authorization_headers_are_401_never_500(front: Front) -> None:
    good = await front.key("alpha")
    hostile: list[bytes] = [
        b"",
        b"Bearer",
        b"Bearer ",
        b"Basic dXNlcjpwYXNz",
        b"bearer sbx_" + b"A" * 43,  # the right form, no such key
        b"Bearer " + good.encode() + b" extra",
        b"Bearer " + good.encode()[:-1],
        b"Bearer " + good.encode() + b"x",
        b"Token " + good.encode(),
        b"Bearer \xff\xfe\x80binary",
        b"Bearer sbx_\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3",
        b"Bearer " + b"z" * 10_000,
        b"Bearer ../../../etc/passwd",
        b"Bearer sbx_%00%00%00%00%00%00%00%00%00%00%00",
    ]
    for value in hostile:
        status, body = await raw_get(front.url, "/v1/sandboxes", b"Authorization: " + value)
        assert status == 401, (value[:40], status, body[:300])
        error = json.loads(body)["error"]
        assert (error["code"], bool(error["message"])) == ("unauthorized", True)
    async with httpx.AsyncClient(base_url=front.url, timeout=30) as api:
        huge = await api.get("/v1/sandboxes", headers={"Authorization": "Bearer " + "y" * 20_000})
        assert 400 <= huge.status_code < 500
        twice = await api.get(
            "/v1/sandboxes",
            headers=[(b"Authorization", b"Bearer nope"), (b"Authorization", good.encode())],
        )
        assert 400 <= twice.status_code < 500
        ok = await api.get("/v1/sandboxes", headers={"Authorization": f"Bearer {good}"})
        assert ok.status_code == 200


async def test_an_agent_key_cannot_see_or_touch_another_projects_sandbox(front: Front) -> None:
    alpha, beta = await front.key("alpha"), await front.key("beta")
    admin = await front.key("ops", "adm")
    async with front.http(alpha) as a, front.http(beta) as b, front.http(admin) as adm:
        created = await a.post("/v1/sandboxes?wait=60s", json={})
        assert created.status_code == 201, created.text
        sandbox = created.json()
        sandbox_id = sandbox["sandbox_id"]
        actor = sandbox["actor"]
        assert (actor["type"], actor["id"], actor["project"]) == (
            "agt",
            key_id_for(hash_key(alpha)),
            "alpha",
        )  # stamped from the key
        snap = await a.post(f"/v1/sandboxes/{sandbox_id}/snapshot?wait=60s", json={})
        assert snap.status_code == 201, snap.text
        snapshot_id = snap.json()["snapshot_id"]

        # beta: as if none of it existed
        assert_error(await b.get(f"/v1/sandboxes/{sandbox_id}"), 404, "unknown_sandbox")
        assert (await b.get("/v1/sandboxes")).json() == {"sandboxes": [], "next": None}
        assert_error(await b.delete(f"/v1/sandboxes/{sandbox_id}?wait=5s"), 404, "unknown_sandbox")
        assert_error(await b.post(f"/v1/sandboxes/{sandbox_id}/recreate"), 404)
        assert_error(
            await b.post(f"/v1/sandboxes/{sandbox_id}/extend-ttl", json={"duration": "1h"}), 404
        )
        assert_error(await b.post(f"/v1/sandboxes/{sandbox_id}/pause"), 404)
        assert_error(await b.post(f"/v1/sandboxes/{sandbox_id}/snapshot", json={}), 404)
        assert_error(await b.get(f"/v1/sandboxes/{sandbox_id}/events?follow=false"), 404)
        assert_error(await b.get(f"/v1/snapshots/{snapshot_id}"), 404, "unknown_snapshot")
        assert (await b.get("/v1/snapshots")).json() == {"snapshots": [], "next": None}
        assert_error(await b.delete(f"/v1/snapshots/{snapshot_id}"), 404)
        assert_error(await b.post(f"/v1/snapshots/{snapshot_id}/restore", json={}), 404)
        assert_error(await b.get("/v1/credits/alpha"), 404)
        assert_error(await b.get("/v1/usage", params={"project": "alpha"}), 404)
        everything = (await b.get("/v1/events", params={"follow": "false"})).text
        assert sandbox_id not in everything
        assert snapshot_id not in everything
        assert "key_created" not in everything  # keys are administrators' business
        # nor can it create in alpha's name
        assert_error(await b.post("/v1/sandboxes", json={"project": "alpha"}), 403, "forbidden")

        # alpha sees its own; the administrator sees everything
        assert (await a.get(f"/v1/sandboxes/{sandbox_id}")).status_code == 200
        own = (await a.get("/v1/events", params={"follow": "false"})).text
        assert sandbox_id in own
        assert snapshot_id in own
        assert "key_created" not in own
        assert (await a.get(f"/v1/snapshots/{snapshot_id}")).status_code == 200
        assert [s["snapshot_id"] for s in (await a.get("/v1/snapshots")).json()["snapshots"]] == [
            snapshot_id
        ]
        assert (await adm.get(f"/v1/sandboxes/{sandbox_id}")).status_code == 200
        listed = (await adm.get("/v1/sandboxes")).json()["sandboxes"]
        assert sandbox_id in {s["sandbox_id"] for s in listed}
        assert "key_created" in (await adm.get("/v1/events", params={"follow": "false"})).text

        # and the sandbox is untouched by beta's attempts
        destroyed = await a.delete(f"/v1/sandboxes/{sandbox_id}?wait=60s")
        assert destroyed.status_code == 200, destroyed.text
        assert destroyed.json()["status"] == "destroyed"
        # The meter role debits after `destroyed`, on its own time: wait for alpha's row.
        async with asyncio.timeout(30):
            while not (usage := (await a.get("/v1/usage")).json())["usage"]:
                await asyncio.sleep(0.1)
        assert {row["project"] for row in usage["usage"]} == {"alpha"}
        assert [x["project"] for x in (await b.get("/v1/credits")).json()["accounts"]] in (
            [],
            ["beta"],
        )


async def test_another_projects_idempotency_key_shows_nothing_of_its_sandbox(
    front: Front,
) -> None:
    """A sandbox's id comes from its command id, and command ids are global: a key of beta
    that reuses alpha's Idempotency-Key names alpha's create. It must not get its outcome."""
    alpha, beta = await front.key("alpha"), await front.key("beta")
    idempotent = {"Idempotency-Key": "build-4711"}
    async with front.http(alpha) as a, front.http(beta) as b:
        made = await a.post("/v1/sandboxes?wait=60s", json={}, headers=idempotent)
        assert made.status_code == 201, made.text
        sandbox_id = made.json()["sandbox_id"]
        taken = await b.post("/v1/sandboxes?wait=30s", json={}, headers=idempotent)
        assert_error(taken, 409, "idempotency_key_taken")
        assert sandbox_id not in taken.text
        # The owner's own retry is still the same command, answered with its sandbox.
        again = await a.post("/v1/sandboxes?wait=30s", json={}, headers=idempotent)
        assert again.status_code == 201, again.text
        assert again.json()["sandbox_id"] == sandbox_id
        await a.delete(f"/v1/sandboxes/{sandbox_id}?wait=30s")


async def test_another_projects_idempotency_key_past_the_duplicate_window_is_refused(
    front: Front,
) -> None:
    """As above, past the commands stream's duplicate window (shortened here to a second),
    so beta's create reaches the control worker. It was taken for alpha's create sent again:
    nothing recorded, alpha's job sent again. Now it is refused sandbox_exists under beta's
    key, and alpha's sandbox and alpha's own retry are untouched."""
    alpha, beta = await front.key("alpha"), await front.key("beta")
    beta_id = key_id_for(hash_key(beta))
    command_id = new_command_id()
    idempotent = {"Idempotency-Key": command_id}
    js = front.service.client.js
    async with front.http(alpha) as a, front.http(beta) as b:
        made = await a.post("/v1/sandboxes?wait=60s", json={}, headers=idempotent)
        assert made.status_code == 201, made.text
        sandbox_id = made.json()["sandbox_id"]
        before = (await a.get(f"/v1/sandboxes/{sandbox_id}")).json()

        await shorten_duplicate_window(js, subjects.COMMANDS_STREAM)
        await asyncio.sleep(3.0)  # the server forgets ids on a timer of its own: a margin
        taken = await b.post("/v1/sandboxes", json={}, headers=idempotent)
        assert_error(taken, 409, "idempotency_key_taken")
        assert sandbox_id not in taken.text

        subject = subjects.rejection_subject(command_id)
        async with asyncio.timeout(30):
            while not (
                found := [d async for _seq, d in read_subject(front.service.client.nc, subject)]
            ):
                await asyncio.sleep(0.05)
        (rejection,) = [json.loads(data) for data in found]
        assert (rejection["code"], rejection["actor"]["id"]) == ("sandbox_exists", beta_id)
        assert "ready" not in rejection["reason"]

        after = (await a.get(f"/v1/sandboxes/{sandbox_id}")).json()
        assert after == before
        again = await a.post("/v1/sandboxes?wait=30s", json={}, headers=idempotent)
        assert again.status_code == 201, again.text
        assert again.json()["sandbox_id"] == sandbox_id
        await a.delete(f"/v1/sandboxes/{sandbox_id}?wait=30s")


async def test_another_projects_rejection_under_a_command_id_does_not_hide_its_own(
    front: Front,
) -> None:
    """Alpha's create is rejected (an unknown profile); then beta's key sends a command under
    alpha's command id on its own bus subject, under a message id of its own (past the
    commands stream's duplicate window, as a hostile key may), and it is rejected too, under
    beta's key. Alpha's status URL and alpha's key on the bus still answer alpha's
    rejection. Before, the view kept one rejection per command id, the last: beta's, which
    alpha may not see, so alpha's status URL answered 202 (pending) for ever."""
    alpha, beta = await front.key("alpha"), await front.key("beta")
    alpha_id, beta_id = key_id_for(hash_key(alpha)), key_id_for(hash_key(beta))
    command_id = new_command_id()
    nope = {"profile": "profile.nope"}
    client = front.service.client

    async def rejections() -> int:
        subject = subjects.rejection_subject(command_id)
        return len([seq async for seq, _data in read_subject(client.nc, subject)])

    async with front.http(alpha) as a:
        made = await a.post("/v1/sandboxes", json=nope, headers={"Idempotency-Key": command_id})
        assert made.status_code == 202, made.text
        status_url = made.json()["status_url"]
        async with asyncio.timeout(30):
            while (answer := await a.get(status_url)).status_code == 202:
                await asyncio.sleep(0.05)
        assert_error(answer, 422, "unknown_profile")

        beta_actor = {"type": "agt", "id": beta_id, "project": "beta"}
        await client.js.publish(
            subjects.stamped(subjects.command_subject("create"), beta_id),
            json.dumps(
                {"command_id": command_id, "inputs": {}, "actor": beta_actor} | nope
            ).encode(),
            headers={"Nats-Msg-Id": f"{command_id}-{beta_id}"},
        )
        async with asyncio.timeout(30):
            while await rejections() < 2:
                await asyncio.sleep(0.05)
        last = (await client.js.stream_info(subjects.EVENTS_STREAM)).state.last_seq
        await client.query(subjects.QUERY_REJECTION, {"command_id": command_id, "min_seq": last})

        answer = await a.get(status_url)
        error = assert_error(answer, 422, "unknown_profile")
        assert beta_id not in json.dumps(error)
    url = front.service.settings.nats_urls[0]
    alpha_nc = await nats.connect(url, inbox_prefix=key_inbox_prefix(alpha_id))
    try:
        alpha_key = SandboxerClient(
            alpha_nc, actor={"type": "agt", "id": alpha_id, "project": "alpha"}, key_id=alpha_id
        )
        asked = {"command_id": command_id, "min_seq": last}
        found = (await alpha_key.query(subjects.QUERY_REJECTION, asked))["rejection"]
        assert found is not None
        assert found["actor"]["id"] == alpha_id
    finally:
        await alpha_nc.close()


async def test_a_revoked_key_stops_working_at_once(front: Front) -> None:
    key = await front.key("alpha")
    async with front.http(key) as api:
        assert (await api.get("/v1/sandboxes")).status_code == 200
        await revoke_key(front.admin, key_id_for(hash_key(key)))
        assert_error(await api.get("/v1/sandboxes"), 401, "unauthorized")
        assert_error(await api.get("/v1/profiles"), 401, "unauthorized")
    listed = await list_keys(front.admin, include_revoked=True)
    assert [k["status"] for k in listed] == ["revoked"]


async def _quiet(_stream: str, _data: bytes) -> None:
    pass


@pytest.mark.parametrize("exec_heartbeat", [1.0])
async def test_a_revoked_keys_running_exec_is_stopped(front: Front) -> None:
    """An exec checks its key when it starts and may run for days (a ``tail -f``). Revoked,
    the key's command is stopped: its caller is answered 401 and the process is gone."""
    key = await front.key("alpha")
    async with front.http(key) as api:
        created = await api.post("/v1/sandboxes?wait=60s", json={})
        assert created.status_code == 201, created.text
        sandbox_id = created.json()["sandbox_id"]
        argv = ["sh", "-c", "echo $$ > /workspace/held; exec sleep 300"]
        running = asyncio.ensure_future(
            api.post(f"/v1/sandboxes/{sandbox_id}/exec", json={"argv": argv})
        )
        admin = front.service.client
        async with asyncio.timeout(30):
            while await admin.exec(sandbox_id, ["test", "-s", "/workspace/held"], _quiet) != 0:
                await asyncio.sleep(0.2)
        await revoke_key(front.admin, key_id_for(hash_key(key)))
        answer = await asyncio.wait_for(running, 30)
        assert_error(answer, 401, "unauthorized")
        alive = ["sh", "-c", "kill -0 $(cat /workspace/held)"]
        async with asyncio.timeout(30):
            while await admin.exec(sandbox_id, alive, _quiet) == 0:
                await asyncio.sleep(0.5)
        await admin.destroy(sandbox_id)


async def test_a_key_revoked_while_its_body_arrives_runs_nothing(front: Front) -> None:
    """An exec's or an upload's key is checked before its body is read (a caller without one
    must not make the gateway take in megabytes), and a body may come slowly. Revoked
    meanwhile, the command or the copy must not start: the route took the key as checked
    before the body, and a running one was looked at again only a second after it began, so
    a quick command ran and a small file was written, answered 200, after the revocation."""
    key = await front.key("alpha")
    admin = front.service.client
    async with front.http(key) as api:
        created = await api.post("/v1/sandboxes?wait=60s", json={})
        assert created.status_code == 201, created.text
        sandbox_id = created.json()["sandbox_id"]
        revoked = asyncio.Event()

        async def dripped(head: bytes, tail: bytes, revoking: str) -> AsyncIterator[bytes]:
            yield head
            # The gateway checks the key as the headers arrive: well before this.
            await asyncio.sleep(1.0)
            await revoke_key(front.admin, key_id_for(hash_key(revoking)))
            revoked.set()
            yield tail

        command = json.dumps({"argv": ["sh", "-c", "echo ran > /workspace/ran"]}).encode()
        ran = await api.post(
            f"/v1/sandboxes/{sandbox_id}/exec",
            content=dripped(command[:10], command[10:], key),
            headers={"Content-Type": "application/json"},
        )
        assert revoked.is_set()
        assert_error(ran, 401, "unauthorized")
        assert await admin.exec(sandbox_id, ["test", "-e", "/workspace/ran"], _quiet) == 1

        other = await front.key("alpha")  # the key above is revoked now
        async with front.http(other) as api2:
            revoked.clear()
            put = await api2.put(
                f"/v1/sandboxes/{sandbox_id}/files",
                params={"path": "put.txt"},
                content=dripped(b"written ", b"after revocation", other),
            )
        assert revoked.is_set()
        error = assert_error(put, 401, "unauthorized")
        assert "nothing was done" in error["message"]
        assert await admin.exec(sandbox_id, ["test", "-e", "/workspace/put.txt"], _quiet) == 1
        await admin.destroy(sandbox_id)


UPLOAD = (
    "PUT /v1/sandboxes/{sandbox_id}/files?path=big.bin",
    "application/octet-stream",
    b"",
    "/workspace/big.bin",
)
EXEC = (
    "POST /v1/sandboxes/{sandbox_id}/exec",
    "application/json",
    b'{"argv": ["sh", "-c", "echo ran > /workspace/ran"], "stdin": "',  # base64 follows
    "/workspace/ran",
)


@pytest.mark.parametrize("route", [UPLOAD, EXEC], ids=["upload", "exec"])
async def test_a_key_revoked_while_its_body_arrives_has_the_rest_left_unread(
    front: Front, route: tuple[str, str, bytes, str]
) -> None:
    """An upload may be a GiB dripped over minutes, an exec's JSON 12 MiB. On the old code
    the gateway read a revoked key's body to its end (an upload's into a scratch file, an
    exec's parsed whole by FastAPI) before it answered 401: here it answered only once the
    last chunk was sent. Now it stops reading once it finds the key revoked (it looks again
    at most once a second) and answers while the body still comes."""
    line, content_type, opening, made = route
    key = await front.key("alpha")
    admin = front.service.client
    async with front.http(key) as api:
        created = await api.post("/v1/sandboxes?wait=60s", json={})
        assert created.status_code == 201, created.text
        sandbox_id = created.json()["sandbox_id"]
    host, port = httpx.URL(front.url).host, httpx.URL(front.url).port
    reader, writer = await asyncio.open_connection(host, port)
    head = (
        f"{line.format(sandbox_id=sandbox_id)} HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: {content_type}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"%x\r\n%s\r\n" % (65536, b"A" * 65536)  # base64 too, for the exec's stdin
    first = b"%x\r\n%s\r\n" % (len(opening), opening) if opening else b""
    writer.write(head.encode() + first + chunk)
    await writer.drain()
    await revoke_key(front.admin, key_id_for(hash_key(key)))
    answered = asyncio.ensure_future(reader.readuntil(b"\r\n\r\n"))
    sent = 0
    try:
        while not answered.done() and sent < 150:  # 15 s of body, 9.4 MiB
            writer.write(chunk)
            await writer.drain()
            sent += 1
            await asyncio.sleep(0.1)
        assert answered.done(), "the gateway read the revoked key's body on to its end"
        assert answered.result().startswith(b"HTTP/1.1 401"), answered.result()
        assert sent < 60, sent  # within a few of its once-a-second looks
    finally:
        answered.cancel()
        writer.close()
    assert await admin.exec(sandbox_id, ["test", "-e", made], _quiet) == 1
    await admin.destroy(sandbox_id)


async def test_the_rate_limit_holds(front: Front) -> None:
    key = await front.key("alpha", rate_per_second=3)
    async with front.http(key) as api:
        answers = await asyncio.gather(*(api.get("/v1/profiles") for _ in range(20)))
        codes = [r.status_code for r in answers]
        assert codes.count(200) >= 1
        assert codes.count(200) <= 6, codes  # the burst is the rate, plus what refills meanwhile
        limited = [r for r in answers if r.status_code == 429]
        assert limited
        for response in limited:
            assert_error(response, 429, "rate_limited")
            assert int(response.headers["retry-after"]) >= 1
        await asyncio.sleep(1.1)
        assert (await api.get("/v1/profiles")).status_code == 200  # refilled


async def test_the_live_sandbox_limit_holds(front: Front) -> None:
    key = await front.key("alpha", max_live=1)
    async with front.http(key) as api:
        first = await api.post("/v1/sandboxes?wait=60s", json={})
        assert first.status_code == 201, first.text
        second = await api.post("/v1/sandboxes", json={})
        error = assert_error(second, 429, "live_limit")
        assert "alpha" in error["message"]
        assert int(second.headers["retry-after"]) >= 1
        gone = await api.delete(f"/v1/sandboxes/{first.json()['sandbox_id']}?wait=60s")
        assert gone.status_code == 200
        third = await api.post("/v1/sandboxes?wait=60s", json={})
        assert third.status_code == 201, third.text
        await api.delete(f"/v1/sandboxes/{third.json()['sandbox_id']}?wait=60s")


async def test_the_live_sandbox_limit_counts_past_a_page(front: Front) -> None:
    """The gateway counts a project's live sandboxes as the view counts them for the control
    worker, however many the project has. It counted them in a list of at most 10,000 (a
    page's most), oldest first, failed ones included: behind 10,000 failed sandboxes a live
    one was not counted, and a create past a limit of 1 was answered 202 (then refused only
    in its status)."""
    store = JetStreamEventStore(front.admin.nc, front.admin.nc.jetstream())
    operator = Actor(type="adm", id="ops", project="omega")
    gate = asyncio.Semaphore(200)

    async def made(at: str, *, failed: bool) -> None:  # its create never routed
        command_id = new_command_id()
        head = {
            "sandbox_id": derive_sandbox_id(command_id),
            "command_id": command_id,
            "actor": operator,
            "at": at,
        }
        events: list[SandboxEvent] = [
            SandboxRequested(**head, profile="profile.local", profile_version=1)
        ]
        if failed:
            events.append(SandboxFailed(**head, reason="x", stage="provision", retryable=False))
        async with gate:
            await store.append(Loaded(SandboxState(sandbox_id=head["sandbox_id"]), 0), events)

    old = "2020-01-01T00:00:00.000Z"
    await asyncio.gather(*(made(old, failed=True) for _ in range(10_000)))
    await made(utc_now(), failed=False)
    async with asyncio.timeout(120):  # the projector folds them; the count is exact at once
        while await front.admin.live_count("omega") != 1:
            await asyncio.sleep(0.2)
    key = await front.key("omega", max_live=1)
    async with front.http(key) as api:
        refused = await api.post("/v1/sandboxes", json={})  # at once, not 202
        error = assert_error(refused, 429, "live_limit")
        assert "project omega has 1 live sandboxes" in error["message"]


async def test_a_keys_event_stream_waits_for_the_view_to_know_an_events_sandbox(
    front: Front, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stream reads the log; whose sandbox an event is about, the view says. A `ready`
    read before the projector has folded its sandbox must wait for the view: taken as no
    one's, it was hidden, and with it every later event of that sandbox for the stream's
    life (a scheduler contract test's example waited 60 s for a `ready` it never saw)."""
    folding = asyncio.Event()
    folding.set()
    save = SandboxView.save

    async def held(self: SandboxView, *args: Any, **kwargs: Any) -> Any:
        await folding.wait()  # the projector falls behind the log while this is clear
        return await save(self, *args, **kwargs)

    monkeypatch.setattr(SandboxView, "save", held)
    key = await front.key("alpha")
    alpha = SandboxerClient(
        front.service.client.nc, actor={"type": "agt", "id": "pytest", "project": "alpha"}
    )
    folding.clear()
    sandbox_id = (await alpha.create("profile.local"))["sandbox_id"]
    async with front.http(key) as api:

        async def first_ready() -> str:
            params = {"type": "ready", "sandbox": sandbox_id}
            async with api.stream("GET", "/v1/events", params=params) as stream:
                async for line in stream.aiter_lines():
                    if line.startswith("data:"):
                        return line
            return ""

        reading = asyncio.create_task(first_ready())
        await asyncio.sleep(0.5)  # the stream has read the `ready`, the view has not folded it
        folding.set()
        async with asyncio.timeout(30):
            assert sandbox_id in await reading
    await alpha.destroy(sandbox_id)


async def test_a_wait_under_another_projects_create_id_answers_nothing_of_its_failure(
    front: Front, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A create's sandbox id comes from its command id, the caller's ``Idempotency-Key``, one
    namespace across projects. A key naming another project's create is answered 409 once
    the view shows that sandbox; before it does (the projector behind the log), ``?wait=``
    took the other create's failure for its own outcome and answered it, the other
    project's event and reason in the body."""
    folding = asyncio.Event()
    save = SandboxView.save

    async def held(self: SandboxView, *args: Any, **kwargs: Any) -> Any:
        await folding.wait()  # the projector falls behind the log while this is clear
        return await save(self, *args, **kwargs)

    beta = await front.key("beta")
    monkeypatch.setattr(SandboxView, "save", held)
    store = JetStreamEventStore(front.admin.nc, front.admin.nc.jetstream())
    command_id = new_command_id()
    sandbox_id = derive_sandbox_id(command_id)
    head = {
        "sandbox_id": sandbox_id,
        "command_id": command_id,
        "actor": Actor(type="agt", id="alpha-agent", project="alpha"),
        "at": utc_now(),
    }
    secret = "alpha's provider refused: team alpha-corp is over its quota"
    events: list[SandboxEvent] = [
        SandboxRequested(**head, profile="profile.local", profile_version=1),
        SandboxFailed(**head, reason=secret, stage="provision", code="provider_quota"),
    ]
    await store.append(Loaded(SandboxState(sandbox_id=sandbox_id), 0), events)

    async def catch_up_later() -> None:
        await asyncio.sleep(1.0)  # the gateway has read the log's failure by now
        folding.set()

    catching_up = asyncio.create_task(catch_up_later())
    async with front.http(beta) as api:
        answer = await api.post(
            "/v1/sandboxes?wait=10s", json={}, headers={"Idempotency-Key": command_id}
        )
    await catching_up
    assert secret not in answer.text
    assert "alpha" not in answer.text
    assert_error(answer, 409, "idempotency_key_taken")


async def test_a_revoked_keys_event_stream_ends(front: Front) -> None:
    """A stream is checked when it opens; it may stay open for days. Revoked, its key hears
    nothing more: the stream ends at the first event after the next look at the log."""
    key = await front.key("alpha")
    alpha = SandboxerClient(
        front.service.client.nc, actor={"type": "agt", "id": "pytest", "project": "alpha"}
    )
    heard: list[str] = []
    async with front.http(key) as api:

        async def listen() -> None:
            params = {"type": "ready"}
            async with api.stream("GET", "/v1/events", params=params) as stream:
                async for line in stream.aiter_lines():
                    if line.startswith("data:"):
                        heard.append(line)

        listening = asyncio.create_task(listen())
        before = (await alpha.create("profile.local"))["sandbox_id"]
        async with asyncio.timeout(30):
            while not any(before in line for line in heard):
                await asyncio.sleep(0.05)
        await revoke_key(front.admin, key_id_for(hash_key(key)))
        await asyncio.sleep(context.KEY_RECHECK_SECONDS + 0.2)
        after = (await alpha.create("profile.local"))["sandbox_id"]
        async with asyncio.timeout(30):
            await listening  # the stream ended
        assert not any(after in line for line in heard)
    for sandbox_id in (before, after):
        await alpha.destroy(sandbox_id)


async def test_a_revoked_keys_stream_of_a_quiet_sandbox_ends(front: Front) -> None:
    """A stream looked at its key only with each event it read: one of a sandbox that has
    nothing more to say (ready and idle, or destroyed) stayed open for a revoked key until
    its client left, holding its reader of the log and its slot of the key's streams."""
    key = await front.key("alpha")
    async with front.http(key) as api:
        created = await api.post("/v1/sandboxes?wait=60s", json={})
        assert created.status_code == 201, created.text
        sandbox_id = created.json()["sandbox_id"]
        heard: list[str] = []

        async def listen() -> None:
            async with api.stream("GET", f"/v1/sandboxes/{sandbox_id}/events") as stream:
                assert stream.status_code == 200
                async for line in stream.aiter_lines():
                    heard.append(line)

        listening = asyncio.create_task(listen())
        async with asyncio.timeout(30):
            while "event: ready" not in heard:
                await asyncio.sleep(0.05)
        await revoke_key(front.admin, key_id_for(hash_key(key)))
        async with asyncio.timeout(10):
            await listening  # the stream ended, with no event of the sandbox after the revoke
    await front.service.client.destroy(sandbox_id)


async def test_a_keys_snapshot_list_is_narrowed_to_its_project_before_the_limit(
    front: Front,
) -> None:
    """A confined key's snapshot list counts its own project's snapshots only, on the gateway
    and on the bus, however many of another project's came first: 10,001 of beta's, recorded
    before snapshots named their project (beta's through their sandbox), then one of alpha's.
    Narrowed after a list of 10,000, alpha's would never be among them."""
    alpha, beta = await front.key("alpha"), await front.key("beta")
    async with front.http(alpha) as a, front.http(beta) as b:
        made = await b.post("/v1/sandboxes?wait=60s", json={})
        assert made.status_code == 201, made.text
        beta_box = made.json()["sandbox_id"]
        store = JetStreamEventStore(front.admin.nc, front.admin.nc.jetstream())
        gate = asyncio.Semaphore(200)

        async def requested(sandbox_id: str, actor: Actor, at: str, project: str | None) -> str:
            command_id = new_command_id()
            snapshot_id = derive_snapshot_id(command_id)
            event = SnapshotRequested(
                snapshot_id=snapshot_id,
                command_id=command_id,
                actor=actor,
                at=at,
                sandbox_id=sandbox_id,
                extension="ext.local",
                project=project,
            )
            async with gate:
                await store.append_snapshot(
                    LoadedSnapshot(SnapshotState(snapshot_id=snapshot_id), 0), [event]
                )
            return snapshot_id

        operator = Actor(type="adm", id="ops")  # an administrator took beta's, long ago
        old = "2020-01-01T00:00:00.000Z"
        await asyncio.gather(*(requested(beta_box, operator, old, None) for _ in range(10_001)))
        mine = Actor(type="agt", id=key_id_for(hash_key(alpha)), project="alpha")
        own = await requested(
            derive_sandbox_id(new_command_id()), mine, "2020-01-02T00:00:00.000Z", "alpha"
        )
        async with asyncio.timeout(120):  # the projector folds in log order: alpha's is last
            while (await a.get(f"/v1/snapshots/{own}")).status_code != 200:
                await asyncio.sleep(0.2)

        listed = await a.get("/v1/snapshots", params={"limit": 5})
        assert listed.status_code == 200, listed.text
        assert [s["snapshot_id"] for s in listed.json()["snapshots"]] == [own]
        asked = subjects.stamped(subjects.QUERY_SNAPSHOT_LIST, mine.id)
        # As the key asks on the bus (no server auth here: its inbox is all it takes).
        url = front.service.settings.nats_urls[0]
        as_key = await nats.connect(url, inbox_prefix=key_inbox_prefix(mine.id))
        try:
            reply = await as_key.request(asked, msgspec.json.encode({"limit": 5}), timeout=30)
        finally:
            await as_key.close()
        on_bus = msgspec.json.decode(reply.data)
        assert [s["snapshot_id"] for s in on_bus["snapshots"]] == [own], on_bus
        theirs = (await b.get("/v1/snapshots", params={"limit": 3})).json()["snapshots"]
        assert len(theirs) == 3
        assert all(s["project"] is None and s["sandbox_id"] == beta_box for s in theirs)
        await b.delete(f"/v1/sandboxes/{beta_box}?wait=30s")


async def test_a_keys_credits_list_holds_its_account_behind_a_thousand_others(
    front: Front,
) -> None:
    """``GET /v1/credits`` for a confined key is its own account, however many projects sort
    before it: picked out of the list's first thousand accounts, it would be missing."""
    zeta = await front.key("zeta")
    store = JetStreamEventStore(front.admin.nc, front.admin.nc.jetstream())
    operator = Actor(type="adm", id="ops")
    gate = asyncio.Semaphore(200)

    async def funded(project: str) -> None:
        event = CreditsAdded(
            project=project, command_id=new_command_id(), actor=operator, at=utc_now(), amount=1
        )
        async with gate:
            await store.append_account(LoadedAccount(AccountBook.empty(project), 0), [event])

    await asyncio.gather(*(funded(f"a{n:04}") for n in range(1000)))
    await funded("zeta")
    async with front.http(zeta) as z:
        async with asyncio.timeout(120):  # the projector folds in log order: zeta's is last
            while (await z.get("/v1/credits/zeta")).status_code != 200:
                await asyncio.sleep(0.2)
        listed = await z.get("/v1/credits")
        assert listed.status_code == 200, listed.text
        assert [a["project"] for a in listed.json()["accounts"]] == ["zeta"]
