"""The HTTP gateway against the real service: uvicorn on a free port, real nats-server,
real ext.local sandboxes, and httpx as a plain HTTP client (no sandboxer code on the
client side: what a consumer with curl sees)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.cli.key_commands import create_key
from sandboxer.client import SandboxerClient
from sandboxer.gateway import openapi
from tests.integration.conftest import reap_local, serve_gateway, start_service

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
async def api(nats_server: NatsServerProcess, home: Path) -> AsyncIterator[httpx.AsyncClient]:
    """Every role of the service, and the gateway role beside them on its own connection
    (as 'sandboxer worker gateway' runs it), serving on a free loopback port; the client
    bears an administrator's API key (tests/integration/test_gateway_keys.py tests keys)."""
    service = await start_service(home, nats_server.url)
    admin = SandboxerClient(service.client.nc, actor={"type": "adm", "id": "pytest-admin"})
    key, _ = await create_key(
        admin, project="default", key_type="adm", max_live=100, rate_per_second=1000
    )
    headers = {"Authorization": f"Bearer {key}"}
    try:
        async with (
            serve_gateway(service, home) as url,
            httpx.AsyncClient(base_url=url, timeout=120, headers=headers) as client,
        ):
            yield client
    finally:
        await service.client.close()
        await service.shutdown()
        await reap_local(home)


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The documented error shape, with a reason."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) <= {"code", "message", "details"}, error
    assert isinstance(error["code"], str)
    assert error["code"]
    assert isinstance(error["message"], str)
    assert error["message"]
    if code is not None:
        assert error["code"] == code, error
    return dict(error)


async def poll(client: httpx.AsyncClient, url: str, until: set[str]) -> dict[str, Any]:
    """GET a status URL until the resource's status is one of ``until`` (202 meanwhile)."""
    for _ in range(600):
        response = await client.get(url)
        assert response.status_code in {200, 202}, response.text
        body = response.json()
        if response.status_code == 200 and body["status"] in until:
            return dict(body)
        await asyncio.sleep(0.1)
    raise AssertionError(f"{url} never reached {until}")


async def test_the_whole_lifecycle_over_http(api: httpx.AsyncClient) -> None:
    created = await api.post("/v1/sandboxes?wait=60s", json={"profile": "profile.local"})
    assert created.status_code == 201, created.text
    sandbox = created.json()
    sandbox_id = sandbox["sandbox_id"]
    assert sandbox["status"] == "ready"
    assert created.headers["location"] == f"/v1/sandboxes/{sandbox_id}"

    got = await api.get(f"/v1/sandboxes/{sandbox_id}")
    assert got.status_code == 200
    assert got.json()["status"] == "ready"
    listed = (await api.get("/v1/sandboxes", params={"profile": "profile.local"})).json()
    assert [s["sandbox_id"] for s in listed["sandboxes"]] == [sandbox_id]
    assert (await api.get("/v1/sandboxes", params={"profile": "profile.x"})).json() == {
        "sandboxes": [],
        "next": None,
    }
    assert (await api.get("/v1/sandboxes", params={"status": "destroyed"})).json() == {
        "sandboxes": [],
        "next": None,
    }

    extended = await api.post(f"/v1/sandboxes/{sandbox_id}/extend-ttl", json={"duration": "1h"})
    assert extended.status_code == 200, extended.text
    assert extended.json()["type"] == "ttl_extended"

    snap = await api.post(f"/v1/sandboxes/{sandbox_id}/snapshot?wait=60s", json={"name": "one"})
    assert snap.status_code == 201, snap.text
    snapshot = snap.json()
    assert snapshot["status"] == "created"
    assert snapshot["name"] == "one"
    snapshot_id = snapshot["snapshot_id"]
    assert (await api.get(f"/v1/snapshots/{snapshot_id}")).json()["sha256"] == snapshot["sha256"]
    listed_snaps = (await api.get("/v1/snapshots", params={"sandbox_id": sandbox_id})).json()
    assert [s["snapshot_id"] for s in listed_snaps["snapshots"]] == [snapshot_id]

    destroyed = await api.delete(f"/v1/sandboxes/{sandbox_id}?wait=60s")
    assert destroyed.status_code == 200, destroyed.text
    assert destroyed.json()["status"] == "destroyed"
    deleted = await api.delete(f"/v1/snapshots/{snapshot_id}?wait=30s")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["status"] == "deleted"

    # the catalog, health and the other reads answer too
    profiles = (await api.get("/v1/profiles")).json()
    assert "profile.local" in {p["id"] for p in profiles}
    assert (await api.get("/v1/profiles/profile.local")).json()["id"] == "profile.local"
    assert_error(await api.get("/v1/profiles/profile.nope"), 404, "unknown_profile")
    assert "ext.local" in {e["id"] for e in (await api.get("/v1/extensions")).json()}
    health = (await api.get("/v1/health")).json()
    assert health["status"] == "ok"
    assert "position" in health["service"]
    explained = await api.get("/v1/route/explain", params={"profile": "profile.local"})
    assert explained.status_code == 200
    assert explained.json()["decision"]["chosen"] == "ext.local"
    accounts = (await api.get("/v1/credits")).json()["accounts"]
    assert [a["project"] for a in accounts] == ["default"]  # metered when destroyed
    assert (await api.get("/v1/credits/default")).json()["balance"] == accounts[0]["balance"]
    assert_error(await api.get("/v1/credits/nobody"), 404, "unknown_account")
    assert (await api.get("/v1/usage")).status_code == 200


async def test_accepted_then_polled_to_ready_and_destroyed(api: httpx.AsyncClient) -> None:
    accepted = await api.post("/v1/sandboxes", json={})
    assert accepted.status_code == 202, accepted.text
    body = accepted.json()
    assert body["status"] == "accepted"
    assert body["status_url"] == accepted.headers["location"]
    ready = await poll(api, body["status_url"], {"ready"})
    assert ready["sandbox_id"] == body["sandbox_id"]

    gone = await api.delete(f"/v1/sandboxes/{body['sandbox_id']}")
    assert gone.status_code == 202, gone.text
    destroyed = await poll(api, gone.json()["status_url"], {"destroyed"})
    assert destroyed["sandbox_id"] == body["sandbox_id"]


async def test_the_same_idempotency_key_twice_is_one_sandbox(api: httpx.AsyncClient) -> None:
    headers = {"Idempotency-Key": "gateway-test-key-1"}
    first = await api.post("/v1/sandboxes", json={}, headers=headers)
    second = await api.post("/v1/sandboxes?wait=60s", json={}, headers=headers)
    assert first.status_code == 202, first.text
    assert second.status_code == 201, second.text
    assert first.json()["sandbox_id"] == second.json()["sandbox_id"]
    assert first.json()["command_id"] == "gateway-test-key-1"
    listed = (await api.get("/v1/sandboxes")).json()["sandboxes"]
    assert len(listed) == 1
    bad = await api.post("/v1/sandboxes", json={}, headers={"Idempotency-Key": "a b/../c"})
    assert_error(bad, 400, "invalid_idempotency_key")
    await api.delete(f"/v1/sandboxes/{listed[0]['sandbox_id']}?wait=60s")


async def test_a_rejection_comes_through_verbatim(api: httpx.AsyncClient) -> None:
    waited = await api.post("/v1/sandboxes?wait=20s", json={"profile": "profile.nope"})
    error = assert_error(waited, 422, "unknown_profile")
    event = error["details"]["event"]
    assert event["type"] == "rejected"
    assert error["message"] == event["reason"]
    assert error["message"].startswith("unknown profile 'profile.nope'")

    accepted = await api.post("/v1/sandboxes", json={"profile": "profile.nope", "ttl": "2h"})
    assert accepted.status_code == 202
    for _ in range(100):  # the status URL turns into the rejection
        polled = await api.get(accepted.json()["status_url"])
        if polled.status_code != 202:
            break
        await asyncio.sleep(0.1)
    assert assert_error(polled, 422, "unknown_profile")["message"] == error["message"]

    unknown = await api.delete("/v1/sandboxes/nosuchsandbox1?wait=20s")
    assert assert_error(unknown, 404, "unknown_sandbox")["details"]["event"]["type"] == "rejected"
    assert_error(await api.get("/v1/sandboxes/nosuchsandbox1"), 404, "unknown_sandbox")
    bad_ttl = await api.post("/v1/sandboxes?wait=20s", json={"ttl": "forever"})
    assert_error(bad_ttl, 422, "invalid_field")


def parse_sse(lines: list[str]) -> list[dict[str, str]]:
    events: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in lines:
        if not line:
            if "data" in current:
                events.append(current)
            current = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            current[name] = value.removeprefix(" ")
    return events


async def read_sse(
    api: httpx.AsyncClient, url: str, count: int, headers: dict[str, str] | None = None
) -> list[dict[str, str]]:
    """Read ``count`` events of a live stream, then drop the connection."""
    lines: list[str] = []
    async with api.stream("GET", url, headers=headers or {}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            lines.append(line)
            if len(parse_sse(lines)) == count:
                break
    return parse_sse(lines)


async def test_events_resume_after_a_dropped_connection(api: httpx.AsyncClient) -> None:
    created = await api.post("/v1/sandboxes?wait=60s", json={})
    sandbox_id = created.json()["sandbox_id"]
    url = f"/v1/sandboxes/{sandbox_id}/events"
    history = parse_sse((await api.get(url, params={"follow": "false"})).text.splitlines())
    kinds = [e["event"] for e in history]
    assert kinds[:2] == ["requested", "routed"], kinds
    assert kinds[-1] == "ready", kinds

    first = await read_sse(api, url, 2)  # then the connection drops
    assert [e["id"] for e in first] == [e["id"] for e in history[:2]]
    # more happens while the client is away
    await api.post(f"/v1/sandboxes/{sandbox_id}/extend-ttl", json={"duration": "1h"})
    rest = await read_sse(
        api, url, len(history) - 2 + 1, headers={"Last-Event-ID": first[-1]["id"]}
    )
    seen = first + rest
    ids = [int(e["id"]) for e in seen]
    assert ids == sorted(set(ids)), ids  # nothing twice, in log order
    assert [e["id"] for e in seen[: len(history)]] == [e["id"] for e in history]
    assert seen[-1]["event"] == "ttl_extended"
    assert json.loads(seen[-1]["data"])["sandbox_id"] == sandbox_id

    # ?after= does the same; /v1/events filters by sandbox and type
    after = await read_sse(api, f"{url}?after={first[-1]['id']}", 1)
    assert after[0]["id"] == rest[0]["id"]
    only_ready = await read_sse(api, f"/v1/events?sandbox={sandbox_id}&type=ready,ttl_extended", 2)
    assert [e["event"] for e in only_ready] == ["ready", "ttl_extended"]
    await api.delete(f"/v1/sandboxes/{sandbox_id}?wait=60s")


async def test_hostile_input_gets_a_4xx_with_a_reason(api: httpx.AsyncClient) -> None:
    json_headers = {"content-type": "application/json"}
    assert_error(
        await api.post("/v1/sandboxes", content=b"{not json", headers=json_headers),
        400,
        "malformed",
    )
    assert_error(await api.post("/v1/sandboxes", content=b"[1, 2]", headers=json_headers), 422)
    big = json.dumps({"inputs": {"x": "y" * 200_000}}).encode()
    assert_error(await api.post("/v1/sandboxes", content=big, headers=json_headers), 413)
    unknown = await api.post("/v1/sandboxes", json={"profile": "profile.local", "colour": "red"})
    assert "colour" in assert_error(unknown, 422, "invalid_request")["message"]
    wrong_type = await api.post("/v1/sandboxes", json={"inputs": {"repo": 7}})
    assert_error(wrong_type, 422, "invalid_request")
    assert_error(await api.get("/v1/sandboxes/NOT-AN-ID"), 422, "invalid_request")
    assert_error(await api.delete("/v1/sandboxes/short"), 422, "invalid_request")
    for path in (
        "/v1/sandboxes/..%2F..%2Fetc%2Fpasswd",
        "/v1/sandboxes/%2e%2e",
        "/v1/sandboxes/abc%00defgh",
        "/v1/snapshots/..%2f",
        "/v1/sandboxes/abcdefgh/..%2F..%2Fevents",
    ):
        response = await api.get(path)
        assert 400 <= response.status_code < 500, (path, response.status_code)
        assert_error(response, response.status_code)
    assert_error(await api.post("/v1/sandboxes?wait=forever", json={}), 422, "invalid_wait")
    assert_error(await api.post("/v1/sandboxes?wait=9999s", json={}), 422, "invalid_wait")
    assert_error(await api.get("/v1/events?follow=false", headers={"Last-Event-ID": "abc"}), 422)
    assert_error(await api.get("/v1/events?after=-1&follow=false"), 422)
    assert_error(await api.get("/v1/credits/..%2Fx"), 404)
    assert_error(await api.get("/v1/credits/UPPER"), 422)
    assert_error(await api.get("/v1/usage?since=yesterday"), 400)
    assert_error(await api.get("/v1/route/explain?profile=..%2Fx"), 400)
    assert_error(await api.put("/v1/sandboxes"), 405)
    assert_error(await api.get("/v1/nothing-here"), 404)
    huge = {"X-Junk": "z" * 100_000}
    response = await api.get("/v1/health", headers=huge)
    assert 400 <= response.status_code < 500


async def test_up_runs_the_gateway_and_records_its_url(home: Path, tmp_path: Path) -> None:
    """'sandboxer up' binds SANDBOXER_HTTP_ADDR before it writes service.json, which names
    the URL that answers; it serves the committed OpenAPI document."""
    env = {k: v for k, v in os.environ.items() if k != "SANDBOXER_NATS_URL"}
    env |= {"SANDBOXER_HOME": str(home), "SANDBOXER_HTTP_ADDR": "127.0.0.1:0"}
    log = (tmp_path / "up.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "sandboxer.cli.app", "up"], env=env, stdout=log, stderr=log
    )
    try:
        record: dict[str, Any] = {}
        for _ in range(600):
            if (home / "service.json").exists():
                record = json.loads((home / "service.json").read_text())
                break
            await asyncio.sleep(0.05)
        assert record.get("http_url", "").startswith("http://127.0.0.1:"), record
        async with httpx.AsyncClient(base_url=record["http_url"], timeout=30) as client:
            for _ in range(200):
                health = await client.get("/v1/health")
                if health.status_code == 200:
                    break
                await asyncio.sleep(0.05)
            assert health.status_code == 200, health.text
            assert health.json()["service"]["http_url"] == record["http_url"]
            served = (await client.get("/openapi.json")).json()
            assert served == json.loads(openapi.DEFAULT_PATH.read_text())
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        log.close()
        await reap_local(home)
    assert process.returncode == 0, (tmp_path / "up.log").read_text()


async def test_worker_gateway_refuses_when_the_address_is_off(
    nats_server: NatsServerProcess, home: Path
) -> None:
    env = dict(os.environ) | {
        "SANDBOXER_HOME": str(home),
        "SANDBOXER_NATS_URL": nats_server.url,
        "SANDBOXER_HTTP_ADDR": "off",
    }
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "sandboxer.cli.app", "worker", "gateway"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "SANDBOXER_HTTP_ADDR is off" in result.stderr
