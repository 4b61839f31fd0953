"""An inline upload (``"inline": true``, the bytes streamed on the bus: how an API key copies
in) must arrive whole within its deadline, against the real service, a ``sandboxer worker
ext.local`` process started with ``SANDBOXER_INLINE_UPLOAD_DEADLINE`` and a real sandbox
(docs/protocol.md#files).

The client identity sends the requests here: an inline put is served the same way whoever
sends it (workers/inline_files.py), a key's only answered in its own inbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import tarfile
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client
from nats.errors import Error as NatsError

from sandboxer.cleanup_waits import cancel_until_done
from sandboxer.exec_protocol.wire import FILES_HEADER, STDIN_HEADER, files_subject
from tests.integration.conftest import reap_local, start_service, start_worker

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEADLINE = 2.0
"""The worker's SANDBOXER_INLINE_UPLOAD_DEADLINE here (34 minutes by default)."""
TRICKLE = 0.5
"""Seconds between the trickling client's one-byte chunks: far inside the input inbox's
idle limit (two minutes), which alone never stops it."""


def one_file_tar(name: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


async def inline_put(
    nc: Client, sandbox_id: str, path: str, chunks: list[bytes], every: float, within: float
) -> tuple[dict[str, Any], float]:
    """Put ``path`` inline, as any client may: each chunk sent once the previous one is
    answered, ``every`` seconds apart, then the end (a client trickling for ever sends more
    chunks than it has time for). The ``done`` body, and the seconds from the ``input``
    message to it; the test fails when none comes within ``within`` seconds."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    request = {"op": "put", "path": path, "kind": "file", "inline": True}
    await nc.publish(files_subject(sandbox_id), msgspec.json.encode(request), reply=inbox)
    feeder: asyncio.Task[None] | None = None
    asked = 0.0

    async def feed(subject: str) -> None:
        with contextlib.suppress(NatsError):  # refused, the worker stopped answering chunks
            for chunk in chunks:
                await nc.request(subject, chunk, headers={STDIN_HEADER: "data"}, timeout=10)
                await asyncio.sleep(every)
            await nc.request(subject, b"", headers={STDIN_HEADER: "end"}, timeout=10)

    try:
        async with asyncio.timeout(within):
            while True:
                msg = await sub.next_msg(timeout=None)
                kind = (msg.headers or {}).get(FILES_HEADER)
                if kind == "input":
                    asked = time.monotonic()
                    feeder = asyncio.create_task(feed(msgspec.json.decode(msg.data)["stdin"]))
                elif kind == "done":
                    return dict(msgspec.json.decode(msg.data)), time.monotonic() - asked
    finally:
        if feeder is not None:
            await cancel_until_done(feeder)
        await sub.unsubscribe()


async def test_an_inline_upload_trickling_past_its_deadline_is_refused_leaving_nothing(
    nats_server: Any, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that sends a byte every half second, never idle for long, is refused once
    the deadline passes, with the reason; the worker's scratch and the sandbox's workspace
    hold nothing of it, and an upload that arrives in time is written. On the old code the
    trickle went on as long as the client liked (no ``done`` within the test's 15 s)."""
    monkeypatch.setenv("SANDBOXER_INLINE_UPLOAD_DEADLINE", f"{DEADLINE:g}")
    service = await start_service(home, nats_server.url, roles=["control", "projector"])
    worker = start_worker(home, nats_server.url)
    try:
        nc = service.client.nc
        sandbox_id = (await service.client.create("profile.local", {}))["sandbox_id"]
        workspace = home / "local" / sandbox_id / "workspace"
        staging = home / "staging" / "files"

        archive = one_file_tar("slow.bin", b"x" * 1000)
        trickle = [archive[i : i + 1] for i in range(len(archive))]
        done, took = await inline_put(nc, sandbox_id, "slow.bin", trickle, TRICKLE, 15)
        assert done["ok"] is False, done
        assert done["code"] == "workspace_refused", done
        assert f"did not arrive whole within {DEADLINE:g} s" in done["error"], done
        assert "SANDBOXER_INLINE_UPLOAD_DEADLINE" in done["error"], done
        assert DEADLINE - 0.5 < took < DEADLINE + 3  # counted from just before ``input``
        assert list(staging.iterdir()) == []
        assert sorted(workspace.rglob("*")) == []

        quick = one_file_tar("quick.bin", b"in time\n")
        done, _took = await inline_put(nc, sandbox_id, "quick.bin", [quick], 0, 15)
        assert done["ok"] is True, done
        assert (workspace / "quick.bin").read_bytes() == b"in time\n"
        assert list(staging.iterdir()) == []
    finally:
        if worker.poll() is None:
            worker.terminate()
            await asyncio.to_thread(worker.wait, 30)
        await service.client.close()
        await service.shutdown()
        await reap_local(home)
