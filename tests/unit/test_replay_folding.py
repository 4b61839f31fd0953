"""Replay's fast paths fold the same rows as the plain ones.

The rebuild folds the log in chunks, writes each batch while the next one
folds (``flush(behind=True)``), skips route sampling for events that give no
sample, writes only the latency samples the prune would keep and collects
garbage less often. These check each against the
straightforward way, on the golden events of every kind stored so far.
"""

from __future__ import annotations

import gc
import json
import random
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from sandboxer.domain.route_signals import LatencySample, failure_sample, latency_sample
from sandboxer.domain.sandbox_state import SandboxState, evolve
from sandboxer.events.codec import UnreadableEvent, decode_event, encode_event
from sandboxer.events.types import NOT_SANDBOX_EVENTS, Actor, SandboxTouched
from sandboxer.fewer_collections import REPLAY_THRESHOLD, fewer_collections
from sandboxer.projections import rows
from sandboxer.projections.folding import LONG_HISTORY, Batch
from sandboxer.projections.route_rows import (
    KEEP,
    ROUTE_SCHEMA,
    SAMPLED_EVENTS,
    RouteSamples,
    save_route_samples,
)
from sandboxer.projections.sandbox_view import SandboxView
from tests.unit.golden_files import GOLDEN


def golden_log() -> list[tuple[int, bytes]]:
    """Every golden event file's events, one after another, numbered as one log."""
    bodies = [
        json.loads(line)["body"].encode()
        for path in sorted(GOLDEN.glob("*events-*.jsonl"))
        for line in path.read_text().splitlines()
        if line.strip()
    ]
    return list(enumerate(bodies, start=1))


async def fold_into(
    path: Path, log: list[tuple[int, bytes]], every: int, chunk: int, *, fresh: bool = True
) -> Any:
    view = await SandboxView.open(path, scratch=True)
    try:
        batch = Batch(view, fresh=fresh)
        for start in range(0, len(log), chunk):
            await batch.apply_many(log[start : start + chunk])
            if batch.size >= every:
                await batch.flush(behind=True)
        await batch.flush()
        return await view.dump(), await view.position()
    finally:
        await view.close()


async def test_chunked_folds_and_writes_behind_give_the_rows_of_one_event_at_a_time(
    tmp_path: Path,
) -> None:
    log = golden_log()
    one_by_one = await fold_into(tmp_path / "one.sqlite3", log, every=1, chunk=1)
    for every, chunk in ((5, 3), (20, 7), (10_000, 10_000)):
        assert await fold_into(tmp_path / f"{every}.sqlite3", log, every, chunk) == one_by_one
    assert one_by_one[1] == len(log)
    assert one_by_one[0]["sandboxes"]


def with_long_histories(log: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """The log with two sandboxes touched past ``LONG_HISTORY`` decided ids, their touches
    interleaved with each other and with the log's own events, one command id repeated."""
    actor = Actor(type="agt", id="a")
    touches = [
        encode_event(
            SandboxTouched(
                sandbox_id=f"long000000{n % 2}",
                command_id=f"touch-{n // 2 if n % 7 else 0}",
                actor=actor,
                at=f"2026-12-03T08:{n // 60 % 60:02d}:{n % 60:02d}.000Z",
            )
        )
        for n in range(3 * LONG_HISTORY)
    ]
    bodies = [data for _seq, data in log]
    mixed = [*touches[: LONG_HISTORY * 2], *bodies, *touches[LONG_HISTORY * 2 :]]
    return list(enumerate(mixed, start=1))


async def test_a_rebuild_folds_long_histories_to_the_rows_of_evolve(tmp_path: Path) -> None:
    """A rebuild indexes a long history's decided ids and sets them at each flush; the live
    fold (not fresh) scans them with ``evolve``: the rows must be the same."""
    log = with_long_histories(golden_log())
    live = await fold_into(tmp_path / "live.sqlite3", log, every=1, chunk=1, fresh=False)
    for every, chunk in ((1, 1), (50, 17), (10_000, 10_000)):
        assert await fold_into(tmp_path / f"r{every}.sqlite3", log, every, chunk) == live
    handled = {
        row[0]: json.loads(row[7])["handled"]
        for row in live[0]["sandboxes"]
        if row[0][:4] == "long"
    }
    assert len(handled) == 2
    assert all(len(ids) == len(set(ids)) > LONG_HISTORY for ids in handled.values())


def test_only_the_sampled_event_classes_give_route_samples() -> None:
    states: dict[str, SandboxState] = {}
    sampled = 0
    for _seq, data in golden_log():
        event = decode_event(data)
        if isinstance(event, NOT_SANDBOX_EVENTS):
            continue
        before = states.get(event.sandbox_id) or SandboxState(sandbox_id=event.sandbox_id)
        after = states[event.sandbox_id] = evolve(before, event)
        gives = latency_sample(before, after, event) or failure_sample(before, event)
        if type(event) not in SAMPLED_EVENTS:
            assert gives is None, event
        sampled += gives is not None
    assert sampled  # the golden events do have ready latencies in them


async def route_rows_after(batches: list[list[tuple[LatencySample, int]]], plain: bool) -> Any:
    async with aiosqlite.connect(":memory:") as db:
        await db.executescript(ROUTE_SCHEMA)
        for latencies in batches:
            if not plain:
                await save_route_samples(db, RouteSamples(latencies=latencies))
                continue
            # What the rows were before samples were pruned in memory: every one written.
            for s, seq in latencies:
                await db.execute(
                    "INSERT OR REPLACE INTO route_latency VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (s.key, s.extension, s.host, s.started_at, s.ready_at, s.seconds, seq),
                )
            for extension in sorted({s.extension for s, _ in latencies}):
                await db.execute(
                    "DELETE FROM route_latency WHERE extension = ? AND seq NOT IN (SELECT seq "
                    "FROM route_latency WHERE extension = ? ORDER BY seq DESC LIMIT ?)",
                    (extension, extension, KEEP),
                )
        async with db.execute("SELECT * FROM route_latency ORDER BY key") as cursor:
            return await cursor.fetchall()


async def test_latency_samples_pruned_before_writing_leave_the_rows_of_writing_them_all() -> None:
    rng = random.Random(13)
    seq = 0
    for _ in range(20):
        batches = []
        for _ in range(rng.randint(1, 5)):
            batch = []
            # One extension crowds each batch, so the others' rows outlive it.
            weights = [rng.random() ** 4 for _ in range(3)]
            for _ in range(rng.randint(0, 4 * KEEP)):
                seq += 1
                # Few keys, so keys repeat within and across batches and across extensions.
                key = f"sbx{rng.randint(0, 3 * KEEP)}:1"
                (extension,) = rng.choices(("ext.a", "ext.b", "ext.c"), weights)
                sample = LatencySample(key, extension, None, "t0", f"t{seq}", seq / 10)
                batch.append((sample, seq))
            batches.append(batch)
        pruned = await route_rows_after(batches, plain=False)
        assert pruned == await route_rows_after(batches, plain=True)
        assert pruned


def test_fewer_collections_nests_and_puts_the_thresholds_back() -> None:
    before = gc.get_threshold()
    with fewer_collections():
        assert gc.get_threshold()[0] >= REPLAY_THRESHOLD
        with fewer_collections():
            assert gc.get_threshold()[0] >= REPLAY_THRESHOLD
        assert gc.get_threshold()[0] >= REPLAY_THRESHOLD
    assert gc.get_threshold() == before


async def rows_in(path: Path, batch: list[tuple[Any, ...]], *, plain: bool) -> list[Any]:
    async with aiosqlite.connect(path) as db:
        await db.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER, blob BLOB)")
        sql = "INSERT OR REPLACE INTO t VALUES (?, ?, ?)"
        if plain:
            await db.executemany(sql, batch)
        else:
            await rows.write_rows(db, sql, batch)
        return list(await (await db.execute("SELECT * FROM t ORDER BY k")).fetchall())


async def test_rows_written_in_statements_of_many_rows_are_the_rows_of_executemany(
    tmp_path: Path, monkeypatch: Any
) -> None:
    # Chunks of 3 rows: 11 rows make four statements, the last filled up with its last row.
    monkeypatch.setattr(rows, "CHUNK", 3)
    data = [(f"k{i % 5}", i, bytes([i])) for i in range(11)]  # keys repeat: the last one wins
    for n, batch in enumerate((data, data[:6], data[:2], [])):  # padded; whole; executemany; none
        written = await rows_in(tmp_path / f"multi{n}.db", batch, plain=False)
        assert written == await rows_in(tmp_path / f"plain{n}.db", batch, plain=True)
    assert [row[1] for row in await rows_in(tmp_path / "last.db", data, plain=False)] == [
        10,
        6,
        7,
        8,
        9,
    ]


async def test_a_large_batch_prepares_one_statement_however_many_rows(tmp_path: Path) -> None:
    # The statement cache keeps what it prepared: batches of many sizes must not each add
    # a statement of their own size (the first version of write_rows did, hundreds of MB).
    seen: set[str] = set()
    async with aiosqlite.connect(tmp_path / "cache.db") as db:
        await db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
        await db.set_trace_callback(seen.add)
        sizes = range(rows.CHUNK, 3 * rows.CHUNK + 7, 97)
        for size in sizes:
            await rows.write_rows(
                db, "INSERT OR REPLACE INTO t VALUES (?, ?)", [(i, "x") for i in range(size)]
            )
        (count,) = await (await db.execute("SELECT count(*) FROM t")).fetchone()
    # The trace shows each statement with its values in place: count its rows.
    statements = {text.split(" VALUES ")[1].count("(") for text in seen if "VALUES" in text}
    assert statements == {rows.CHUNK}
    assert count == max(sizes)


UNREADABLE = [
    # a newer version of a known type whose field changed its JSON type
    b'{"type": "ttl_extended", "v": 2, "event_id": "e1", "sandbox_id": "poison0001",'
    b' "command_id": "c2", "actor": {"type": "agt", "id": "a"}, "at": "2026-12-03T08:00:01.000Z",'
    b' "expires_at": 7}',
    # a value this version does not know in a field of a known version
    b'{"type": "expired", "v": 1, "event_id": "e2", "sandbox_id": "poison0001",'
    b' "command_id": "c3", "actor": {"type": "svc", "id": "a"}, "at": "2026-12-03T08:00:02.000Z",'
    b' "cause": "budget"}',
    b"not json at all",
    b"[1, 2, 3]",
]


async def test_an_event_this_version_cannot_read_is_skipped_and_the_fold_goes_on(
    tmp_path: Path,
) -> None:
    """The log is forever: one stored event this version cannot read (a newer writer's, or
    malformed) once stopped the projector for good, live and in every rebuild."""
    actor = Actor(type="agt", id="a")
    touched = SandboxTouched(
        sandbox_id="poison0001", command_id="c9", actor=actor, at="2026-12-03T08:00:09.000Z"
    )
    log = golden_log()
    log = [*log, *((len(log) + 1 + i, data) for i, data in enumerate(UNREADABLE))]
    log.append((len(log) + 1, encode_event(touched)))
    for fresh in (True, False):
        dump, position = await fold_into(
            tmp_path / f"poison-{fresh}.sqlite3", log, every=1, chunk=3, fresh=fresh
        )
        assert position == len(log)
        assert "poison0001" in {row[0] for row in dump["sandboxes"]}


def test_the_codec_calls_each_of_them_unreadable() -> None:
    for data in UNREADABLE:
        with pytest.raises(UnreadableEvent):
            decode_event(data)


async def test_a_projects_list_finds_its_sandboxes_past_other_projects_thousands(
    tmp_path: Path,
) -> None:
    """A key's list is narrowed to its project in the view: it took every project's first
    rows up to the limit and picked its own out of them, so a project whose sandboxes came
    after a thousand of another's saw none of them."""
    from sandboxer.events.types import SandboxRequested
    from sandboxer.projections.key_queries import KeyQueries

    def requested(n: int, project: str) -> bytes:
        return encode_event(
            SandboxRequested(
                sandbox_id=f"sbx{project}{n:06d}",
                command_id=f"c-{project}-{n}",
                actor=Actor(type="agt", id="a", project=project),
                at=f"2026-12-03T08:{n // 60 % 60:02d}:{n % 60:02d}.000Z",
                profile="profile.local",
                profile_version=1,
            )
        )

    log = [requested(n, "other") for n in range(1200)] + [requested(9999, "mine")]
    view = await SandboxView.open(tmp_path / "projects.sqlite3", scratch=True)
    try:
        batch = Batch(view, fresh=True)
        await batch.apply_many(list(enumerate(log, start=1)))
        await batch.flush()
        mine = await view.list_states(project="mine", limit=1000)
        assert [s.sandbox_id for s in mine] == ["sbxmine009999"]
        assert len(await view.list_states(project="other", limit=2000)) == 1200
    finally:
        await view.close()
    agent = {"type": "agt", "id": "a", "project": "mine"}
    narrowed = KeyQueries._narrowed({"project": "other", "limit": 5}, agent, 5)
    assert (narrowed["project"], narrowed["limit"]) == ("mine", 5)
