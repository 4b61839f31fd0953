"""A key's execs and copies at the HTTP gateway, against the real service, the real gateway
on uvicorn, nats-server and ext.local sandboxes: how many one key may run at once, and
that its copies leave nothing in the workspaces bucket (docs/http-api.md#limits,
docs/security.md)."""

from __future__ import annotations

import asyncio
import base64
import io
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from nats.js.errors import NotFoundError

from sandboxer import subjects
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.gateway.transfers import MAX_KEY_TRANSFERS
from tests.integration.gateway_front import Front, front_door

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
async def front(nats_server: NatsServerProcess, home: Path) -> AsyncIterator[Front]:
    async with front_door(nats_server.url, home) as front:
        yield front


async def _quiet(_stream: str, _data: bytes) -> None:
    pass


def _refused(answer: httpx.Response) -> str:
    assert answer.status_code == 429, answer.text
    error = answer.json()["error"]
    assert error["code"] == "transfer_limit", error
    assert int(answer.headers["retry-after"]) >= 1
    return str(error["message"])


async def test_a_key_runs_at_most_its_cap_of_execs_and_copies_at_once(front: Front) -> None:
    """A key's rate bounds how fast it starts execs, not how many run: each pins megabytes
    of the gateway's memory. The key's next exec or copy past the cap is 429, another
    key's run meanwhile, and once the held ones end the key may start more."""
    busy, other = await front.key("alpha"), await front.key("alpha")
    admin = front.service.client
    async with front.http(busy) as api, front.http(other) as api2:
        created = await api.post("/v1/sandboxes?wait=60s", json={})
        assert created.status_code == 201, created.text
        sandbox_id = created.json()["sandbox_id"]
        base = f"/v1/sandboxes/{sandbox_id}"
        hold = "touch /workspace/started.$$; while [ ! -e /workspace/go ]; do sleep 0.1; done"
        held = [
            asyncio.ensure_future(api.post(f"{base}/exec", json={"argv": ["sh", "-c", hold]}))
            for _ in range(MAX_KEY_TRANSFERS)
        ]
        count = ["sh", "-c", f"test $(ls /workspace | grep -c ^started) -ge {MAX_KEY_TRANSFERS}"]
        async with asyncio.timeout(60):  # every held exec is running its command
            while await admin.exec(sandbox_id, count, _quiet) != 0:
                await asyncio.sleep(0.2)
        assert "execs and copies" in _refused(
            await api.post(f"{base}/exec", json={"argv": ["true"]})
        )
        _refused(await api.put(f"{base}/files", params={"path": "f"}, content=b"x"))
        _refused(await api.get(f"{base}/files", params={"path": "."}))
        # Another key of the same project is not held by this one's cap.
        done = await api2.post(f"{base}/exec", json={"argv": ["echo", "free"]})
        assert done.status_code == 200, done.text
        assert base64.b64decode(done.json()["stdout"]) == b"free\n"
        assert (await api2.put(f"{base}/files", params={"path": "f"}, content=b"x")).is_success
        assert not any(task.done() for task in held)
        assert await admin.exec(sandbox_id, ["touch", "/workspace/go"], _quiet) == 0
        async with asyncio.timeout(60):
            answers = await asyncio.gather(*held)
        assert [a.status_code for a in answers] == [200] * MAX_KEY_TRANSFERS
        # Their slots are given back: the key runs again.
        again = await api.post(f"{base}/exec", json={"argv": ["true"]})
        assert again.status_code == 200, again.text
        assert again.json()["exit_code"] == 0
        await api.delete(f"{base}?wait=60s")


async def _bucket_objects(front: Front) -> list[str]:
    """The names of the objects in the workspaces bucket (none when there is no bucket)."""
    js = front.service.client.js
    try:
        bucket = await js.object_store(subjects.WORKSPACES_BUCKET)
    except NotFoundError:  # BucketNotFoundError is one: nobody ever stored anything
        return []
    try:
        return [info.name for info in await bucket.list(ignore_deletes=True)]
    except NotFoundError:
        return []


async def test_a_keys_copies_through_http_leave_nothing_in_the_bucket(front: Front) -> None:
    """The bucket keeps what is stored in it for ever; a key's uploads and downloads through
    the gateway travel on the bus instead, so they cannot grow it without bound."""
    key = await front.key("alpha")
    async with front.http(key) as api:
        created = await api.post("/v1/sandboxes?wait=60s", json={})
        assert created.status_code == 201, created.text
        base = f"/v1/sandboxes/{created.json()['sandbox_id']}"
        assert await _bucket_objects(front) == []
        data = bytes(range(256)) * 2000
        put = await api.put(f"{base}/files", params={"path": "in/data.bin"}, content=data)
        assert put.status_code == 200, put.text
        tree = io.BytesIO()
        with tarfile.open(fileobj=tree, mode="w") as tar:
            info = tarfile.TarInfo("src/main.py")
            info.size = 15
            tar.addfile(info, io.BytesIO(b"print('hello')\n"))
        put = await api.put(
            f"{base}/files",
            params={"path": "project"},
            content=tree.getvalue(),
            headers={"Content-Type": "application/x-tar"},
        )
        assert put.status_code == 200, put.text
        got = await api.get(f"{base}/files", params={"path": "in/data.bin"})
        assert got.status_code == 200, got.text
        assert got.content == data
        got = await api.get(f"{base}/files", params={"path": "project"})
        assert got.status_code == 200, got.text
        assert got.headers["x-sandboxer-kind"] == "dir"
        with tarfile.open(fileobj=io.BytesIO(got.content)) as tar:
            main = tar.extractfile("src/main.py")
            assert main is not None
            assert main.read() == b"print('hello')\n"
        assert await _bucket_objects(front) == []
        await api.delete(f"{base}?wait=60s")
