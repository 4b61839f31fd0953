"""The files service's staging on the worker: what a killed worker left is removed when a
service starts, and a copy keeps on disk only what its next step needs."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import tarfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sandboxer.config.settings import Settings
from sandboxer.scratch import pid_scratch
from sandboxer.workers import file_service
from sandboxer.workers.file_service import FileRequest, FileService


class FakeSubscription:
    def __init__(self, subject: str) -> None:
        self.subject = subject
        self.messages: asyncio.Queue[bytes] = asyncio.Queue()

    async def next_msg(self, timeout: float) -> bytes:
        return await self.messages.get()

    async def unsubscribe(self) -> None:
        pass


class FakeNats:
    """What starting FileService uses: subscriptions in effect at once, and a message
    published to one delivered to it (the probe of bus/in_effect.py, on its inbox)."""

    def __init__(self) -> None:
        self.subscriptions: dict[str, FakeSubscription] = {}

    async def subscribe(self, subject: str, queue: str = "", cb: Any = None) -> FakeSubscription:
        self.subscriptions[subject] = FakeSubscription(subject)
        return self.subscriptions[subject]

    def new_inbox(self) -> str:
        return f"_INBOX.{len(self.subscriptions)}"

    async def publish(self, subject: str, payload: bytes) -> None:
        self.subscriptions[subject].messages.put_nowait(payload)

    def jetstream(self) -> object:
        return object()


def make_service(home: Path) -> FileService:
    settings = Settings(home=home, nats_urls=(), nats_server=None, ack_wait=5)
    extension = SimpleNamespace(id="ext.test", host_local=True)
    return FileService(FakeNats(), None, extension, settings)  # type: ignore[arg-type]


@pytest.fixture
def pids() -> Iterator[tuple[int, int]]:
    """The pid of a process that has ended, and of one still running (a frozen worker)."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    running = subprocess.Popen(["sleep", "30"])
    try:
        yield gone.pid, running.pid
    finally:
        running.kill()
        running.wait()


async def test_starting_removes_what_dead_workers_left_and_keeps_live_ones(
    tmp_path: Path, pids: tuple[int, int]
) -> None:
    gone, running = pids
    files = tmp_path / "home" / "staging" / "files"
    left = files / f"AbCdEfGhIjKlMnOpQrStUv-{gone}"  # killed mid-upload (kill -9)
    (left / "tree").mkdir(parents=True)
    (left / "upload.tar").write_bytes(b"x" * 4096)
    kept = files / f"AbCdEfGhIjKlMnOpQrStUw-{running}"
    kept.mkdir()
    unnamed = files / "AbCdEfGhIjKlMnOpQrStUx"  # no pid: not ours to judge
    unnamed.mkdir()
    await make_service(tmp_path / "home").start()
    assert not left.exists()
    assert kept.exists()
    assert unnamed.exists()


def one_file_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("data.bin")
        info.size = 1000
        tar.addfile(info, io.BytesIO(b"d" * 1000))
    return buffer.getvalue()


class Backend:
    """Lists the copy's staging while the sandbox's tar runs, and acts as that tar."""

    def __init__(self, staging: Path, stdout: bytes = b"") -> None:
        self.staging = staging
        self.stdout = stdout
        self.seen: list[str] = []

    async def exec(
        self,
        sandbox_id: str,
        argv: list[str],
        output: Any,
        *,
        host: str | None = None,
        service: str | None = None,
        stdin: AsyncIterator[bytes] | None = None,
    ) -> int:
        self.seen = sorted(path.name for path in self.staging.iterdir())
        if stdin is not None:
            async for _chunk in stdin:
                pass
        if self.stdout:
            await output("stdout", self.stdout)
        return 0


async def test_an_upload_keeps_only_what_goes_into_the_sandbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def fetched(_js: object, _sha: str, destination: Path, _limits: object) -> int:
        destination.write_bytes(one_file_tar())
        return destination.stat().st_size

    monkeypatch.setattr(file_service, "fetch_archive", fetched)
    service = make_service(tmp_path / "home")
    staging = pid_scratch(tmp_path / "home" / "staging" / "files", "AbCdEfGhIjKlMnOpQrStUv")
    assert f"-{os.getpid()}-" in staging.name
    backend = Backend(staging)
    state = SimpleNamespace(sandbox_id="sbx-test", host=None)
    request = FileRequest(op="put", path="in", kind="dir", ref="object:sha256:" + "ab" * 32)

    async def send(_kind: str, _body: dict[str, Any] | None = None) -> None:
        return None

    answer = await service._put(backend, state, request, staging, send, None)  # type: ignore[arg-type]
    assert answer["entries"] == 1
    assert backend.seen == ["in.tar"]  # neither upload.tar nor its tree


async def test_a_download_drops_the_sandboxs_tar_once_unpacked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    staging = pid_scratch(tmp_path / "home" / "staging" / "files", "AbCdEfGhIjKlMnOpQrStUv")
    seen: list[str] = []

    async def sent(_nc: object, _reply: str, path: Path, _header: str) -> None:
        seen.extend(sorted(found.name for found in staging.iterdir()))

    monkeypatch.setattr(file_service, "send_inline", sent)
    service = make_service(tmp_path / "home")
    backend = Backend(staging, stdout=one_file_tar())
    state = SimpleNamespace(sandbox_id="sbx-test", host=None)
    request = FileRequest(op="get", path="data.bin", inline=True)
    answer = await service._get(backend, state, request, staging, "_INBOX.x")  # type: ignore[arg-type]
    assert answer["kind"] == "file"
    assert seen == ["tree"]  # out.tar is gone
