"""The meter export against a real nats-server, usage events stored straight on the events
stream (docs/payments.md#export): an event no one can read, a position file a power cut or a
hand left without a sequence, and an endpoint that stays down while usage piles up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from sandboxer import subjects
from sandboxer.bus.connect import connect
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.bus.streams import ensure_streams
from sandboxer.cleanup_waits import cancel_until_done
from sandboxer.workers import meter_export
from sandboxer.workers.meter_export import FileExport, HttpExport

pytestmark = pytest.mark.integration

URL = "http://billing.test/usage"


@pytest.fixture(autouse=True)
def _quick(monkeypatch: pytest.MonkeyPatch) -> None:
    # raising=False: the same tests run on the code before these constants existed.
    monkeypatch.setattr(meter_export, "POLL", 0.1, raising=False)
    monkeypatch.setattr(meter_export, "POSITION_RECHECK", 0.2, raising=False)


@pytest.fixture
async def nc(nats_server: NatsServerProcess) -> AsyncIterator[Client]:
    """The export's own connection (its counts are the export's alone)."""
    client = await connect([nats_server.url], name="test-meter-export", long_lived=False)
    try:
        await ensure_streams(client.jetstream())
        yield client
    finally:
        await client.close()


@pytest.fixture
async def writer(nats_server: NatsServerProcess, nc: Client) -> AsyncIterator[JetStreamContext]:
    client = await connect([nats_server.url], name="test-usage-writer", long_lived=False)
    try:
        yield client.jetstream()
    finally:
        await client.close()


def usage(event_id: str) -> bytes:
    return msgspec.json.encode(
        {"type": "usage_metered", "v": 1, "event_id": event_id, "project": "acme", "amount": 7}
    )


async def store(js: JetStreamContext, data: bytes) -> int:
    """Store ``data`` as a usage event (as the meter appends one); its stream sequence."""
    ack = await js.publish(
        "sandboxer.evt.account.acme.usage_metered", data, stream=subjects.EVENTS_STREAM
    )
    return ack.seq


class Endpoint:
    """A billing endpoint: what it took (Idempotency-Key, body), and whether it is up."""

    def __init__(self) -> None:
        self.up = True
        self.taken: list[tuple[str, dict[str, Any]]] = []
        self.refused = 0
        self.client = httpx.AsyncClient(transport=httpx.MockTransport(self._answer))

    def _answer(self, request: httpx.Request) -> httpx.Response:
        if not self.up:
            self.refused += 1
            return httpx.Response(503)
        self.taken.append(
            (request.headers["Idempotency-Key"], msgspec.json.decode(request.content))
        )
        return httpx.Response(200)

    def keys(self) -> list[str]:
        return [key for key, _body in self.taken]


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    answering = Endpoint()
    try:
        yield answering
    finally:
        await answering.client.aclose()


@contextlib.asynccontextmanager
async def running(
    run: Callable[[], Coroutine[Any, Any, None]],
) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(run())
    try:
        yield task
    finally:
        await cancel_until_done(task)  # the export loops: a lost cancel must not hang here


async def until(check: Callable[[], bool], task: asyncio.Task[None], seconds: float = 20) -> None:
    async with asyncio.timeout(seconds):
        while not check():
            if task.done():  # the export ended: its error says why
                task.result()
                raise AssertionError("the export ended")
            await asyncio.sleep(0.05)


def http_export(nc: Client, endpoint: Endpoint, position: Path) -> HttpExport:
    return HttpExport(nc.jetstream(), URL, position, client=endpoint.client, wait_max=0.05)


UNREADABLE = (b"\xff not json", b"[1, 2]", b"")  # malformed bytes, not an object, nothing


async def test_an_unreadable_usage_event_is_skipped_and_every_later_one_posted_once(
    nc: Client,
    writer: JetStreamContext,
    endpoint: Endpoint,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """On the old code the export raised at the first unreadable event, and restarted there
    for ever: nothing after it was ever exported."""
    await store(writer, usage("u1"))
    bad = [await store(writer, data) for data in UNREADABLE]
    last = await store(writer, usage("u2"))
    position = tmp_path / "http.position"
    with caplog.at_level(logging.ERROR, logger=meter_export.__name__):
        async with running(http_export(nc, endpoint, position).run) as task:
            await until(lambda: position.exists() and position.read_text() == f"{last}\n", task)
    assert endpoint.keys() == ["u1", "u2"]
    assert [body["stream_seq"] for _key, body in endpoint.taken] == [bad[0] - 1, last]
    for seq in bad:
        assert f"skips event {seq} " in caplog.text
        assert f"nats stream get SANDBOXER_EVENTS {seq}" in caplog.text

    # A restart goes on after the last one: nothing twice, the next one once.
    later = await store(writer, usage("u3"))
    async with running(http_export(nc, endpoint, position).run) as task:
        await until(lambda: len(endpoint.taken) >= 3, task)
        await asyncio.sleep(0.5)  # nothing more comes
    assert endpoint.keys() == ["u1", "u2", "u3"]
    assert position.read_text() == f"{later}\n"


async def test_an_unreadable_usage_event_is_left_out_of_the_file_and_the_next_one_written(
    nc: Client, writer: JetStreamContext, tmp_path: Path
) -> None:
    await store(writer, usage("u1"))
    for data in UNREADABLE:
        await store(writer, data)
    await store(writer, usage("u2"))
    export = tmp_path / "usage.jsonl"

    def lines() -> list[dict[str, Any]]:
        return [msgspec.json.decode(line) for line in export.read_bytes().splitlines()]

    async with running(FileExport(nc.jetstream(), export).run) as task:
        await until(lambda: export.exists() and len(lines()) >= 2, task)
        await asyncio.sleep(0.5)
    assert [line["event_id"] for line in lines()] == ["u1", "u2"]


@pytest.mark.parametrize("left", ["", "garbage\n", "\x00\x00\x00\x00", "-3\n"])
async def test_a_position_file_without_a_sequence_stops_the_export_until_it_is_mended(
    nc: Client,
    writer: JetStreamContext,
    endpoint: Endpoint,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    left: str,
) -> None:
    """An empty file is what a power cut left of a position renamed unsynced. On the old code
    it read as 0 and every event was sent again (a duplicate charge wherever the endpoint no
    longer kept their keys), and any other content crashed the export at every restart."""
    first = await store(writer, usage("u1"))
    position = tmp_path / "http.position"
    async with running(http_export(nc, endpoint, position).run) as task:
        await until(lambda: position.exists() and position.read_text() == f"{first}\n", task)

    position.write_text(left)
    later = await store(writer, usage("u2"))
    with caplog.at_level(logging.ERROR, logger=meter_export.__name__):
        async with running(http_export(nc, endpoint, position).run) as task:
            await asyncio.sleep(1.0)
            assert not task.done(), task.exception() if task.done() else ""
            assert endpoint.keys() == ["u1"]  # nothing sent again, nothing sent past it
            assert f"its position file {position}" in caplog.text
            assert "Write that number there" in caplog.text

            position.write_text(f"{first}\n")  # mended: it goes on after that event
            await until(lambda: len(endpoint.taken) >= 2, task)
            await asyncio.sleep(0.3)
    assert endpoint.keys() == ["u1", "u2"]
    assert position.read_text() == f"{later}\n"


@contextlib.contextmanager
def recorded_syncs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, str]]]:
    """Every fsync (of which path) and rename (onto which path) this process makes."""
    calls: list[tuple[str, str]] = []
    fsync, replace = os.fsync, os.replace

    def recording_fsync(fd: int) -> None:
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def recording_replace(source: Any, target: Any, **kwargs: Any) -> None:
        calls.append(("replace", str(target)))
        replace(source, target, **kwargs)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    yield calls


async def test_the_position_is_synced_before_its_rename_and_the_rename_after(
    nc: Client,
    writer: JetStreamContext,
    endpoint: Endpoint,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On the old code the position was renamed into place unsynced: after a power cut the
    rename could be on disk without the data (an empty file), or not at all."""
    seq = await store(writer, usage("u1"))
    position = tmp_path / "meter-export" / "http.position"
    with recorded_syncs(monkeypatch) as calls:
        async with running(http_export(nc, endpoint, position).run) as task:
            await until(lambda: position.exists() and position.read_text() == f"{seq}\n", task)
    renamed = calls.index(("replace", str(position)))
    synced_before = [path for op, path in calls[:renamed] if op == "fsync"]
    assert any(Path(path).parent == position.parent for path in synced_before), calls
    assert ("fsync", str(position.parent)) in calls[renamed + 1 :], calls


async def test_an_export_held_by_a_down_endpoint_reads_no_further_ahead_and_misses_nothing(
    nc: Client, writer: JetStreamContext, endpoint: Endpoint, tmp_path: Path
) -> None:
    """On the old code an ordered push consumer handed the export every usage event the log
    held while it retried the first one: the whole backlog in memory (500 here; a year's
    usage in production)."""
    ids = [f"u{n}" for n in range(500)]
    for event_id in ids:
        await store(writer, usage(event_id))
    endpoint.up = False
    position = tmp_path / "http.position"
    before = nc.stats["in_msgs"]
    async with running(http_export(nc, endpoint, position).run) as task:
        await until(lambda: endpoint.refused >= 5, task)
        await asyncio.sleep(1.0)  # the server has had time to send whatever it would
        received = nc.stats["in_msgs"] - before
        assert received == 1, received  # the event in hand, not the backlog
        endpoint.up = True
        await until(lambda: len(endpoint.taken) >= len(ids), task, seconds=120)
        await asyncio.sleep(0.3)
    assert endpoint.keys() == ids  # every one, once, in order


def exported_ids(export: Path) -> list[str]:
    return [msgspec.json.decode(line)["event_id"] for line in export.read_bytes().splitlines()]


async def test_a_line_a_kill_left_unfinished_is_written_again_once(
    nc: Client, writer: JetStreamContext, tmp_path: Path
) -> None:
    """A kill -9 in the middle of writing a line leaves it without its newline: the restart
    cuts it off and writes that usage again, and nothing is lost or written twice."""
    for event_id in ("u1", "u2", "u3"):
        await store(writer, usage(event_id))
    export = tmp_path / "usage.jsonl"
    async with running(FileExport(nc.jetstream(), export).run) as task:
        await until(lambda: export.exists() and len(export.read_bytes().splitlines()) >= 3, task)
    whole = export.read_bytes()
    with export.open("rb+") as handle:  # u3's line as a kill left it: half of it
        handle.truncate(len(whole) - len(whole.splitlines()[-1]) // 2)
    await store(writer, usage("u4"))
    async with running(FileExport(nc.jetstream(), export).run) as task:
        await until(lambda: len(export.read_bytes().splitlines()) >= 4, task)
        await asyncio.sleep(0.3)
    assert exported_ids(export) == ["u1", "u2", "u3", "u4"]
    assert export.read_bytes().startswith(whole)


@pytest.mark.parametrize(
    "left",
    [b"garbage\n", b"\x00\x00\x00\x00\n", b'{"event_id": "x"}\n', b"[1, 2]\n", b"x" * 2_000_000],
    ids=["garbage", "zeros", "no_stream_seq", "not_an_object", "no_line_break_in_2MB"],
)
async def test_a_last_line_the_export_did_not_write_stops_it_until_mended(
    nc: Client,
    writer: JetStreamContext,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    left: bytes,
) -> None:
    """On the old code a last line that was no usage line crashed the export at every
    restart (the role's error every second, the file's export stopped for good). Now it
    waits, the line and the fix logged, and once the line is gone it goes on after the one
    before it: nothing skipped, nothing twice."""
    await store(writer, usage("u1"))
    export = tmp_path / "usage.jsonl"
    async with running(FileExport(nc.jetstream(), export).run) as task:
        await until(lambda: export.exists() and len(export.read_bytes().splitlines()) >= 1, task)
    good = export.read_bytes()
    bad = left + b"\n\n" if left.endswith(b"\n") else left + b"\n"  # blank lines after it too
    export.write_bytes(good + bad)
    await store(writer, usage("u2"))
    with caplog.at_level(logging.ERROR, logger=meter_export.__name__):
        async with running(FileExport(nc.jetstream(), export).run) as task:
            await asyncio.sleep(1.0)
            assert not task.done(), task.exception() if task.done() else ""
            assert export.read_bytes() == good + bad  # nothing written after it
            assert f"meter export to {export} stopped" in caplog.text
            assert "remove that line" in caplog.text

            export.write_bytes(good)  # mended: it goes on after u1
            await until(lambda: len(export.read_bytes().splitlines()) >= 2, task)
            await asyncio.sleep(0.3)
    assert exported_ids(export) == ["u1", "u2"]


@pytest.mark.parametrize("kept", ["past_the_end", "another_event"])
async def test_another_logs_export_file_stops_the_export(
    nc: Client,
    writer: JetStreamContext,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    kept: str,
) -> None:
    """A file kept from another log (another installation, a log made again) has its last
    line at a sequence past this log's end, or at another event. On the old code the export
    waited silently for this log to pass that sequence, then went on from there (every usage
    of this log up to it never exported), or went on at once after another log's event."""
    first = await store(writer, usage("u1"))
    export = tmp_path / "usage.jsonl"
    seq = first + 1000 if kept == "past_the_end" else first
    foreign = meter_export.export_line(seq, usage("elsewhere"))
    export.write_bytes(foreign)
    await store(writer, usage("u2"))
    with caplog.at_level(logging.ERROR, logger=meter_export.__name__):
        async with running(FileExport(nc.jetstream(), export).run) as task:
            await asyncio.sleep(1.0)
            assert not task.done(), task.exception() if task.done() else ""
            assert export.read_bytes() == foreign
            assert f"meter export to {export} stopped" in caplog.text
            assert "another log's export" in caplog.text
    assert "SANDBOXER_METER_EXPORT_FILE" in caplog.text
    # A new file for this log: every usage of it, from the start.
    fresh = tmp_path / "this-log.jsonl"
    async with running(FileExport(nc.jetstream(), fresh).run) as task:
        await until(lambda: fresh.exists() and len(fresh.read_bytes().splitlines()) >= 2, task)
        await asyncio.sleep(0.3)
    assert exported_ids(fresh) == ["u1", "u2"]


async def test_another_logs_position_past_the_end_stops_the_endpoints_export(
    nc: Client,
    writer: JetStreamContext,
    endpoint: Endpoint,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The endpoint's position file too: on the old code one past this log's end waited
    silently and then skipped every usage up to it."""
    first = await store(writer, usage("u1"))
    position = tmp_path / "http.position"
    position.write_text(f"{first + 1000}\n")
    with caplog.at_level(logging.ERROR, logger=meter_export.__name__):
        async with running(http_export(nc, endpoint, position).run) as task:
            await asyncio.sleep(1.0)
            assert not task.done(), task.exception() if task.done() else ""
            assert f"its position file {position} holds {first + 1000}" in caplog.text
            assert "another log's" in caplog.text

            position.write_text("0\n")  # mended: every usage of this log
            await until(lambda: len(endpoint.taken) >= 1, task)
            await asyncio.sleep(0.3)
    assert endpoint.keys() == ["u1"]
    assert position.read_text() == f"{first}\n"
