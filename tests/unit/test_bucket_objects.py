"""Which objects of the workspaces bucket are collected besides snapshots' own: unmarked, held
by nobody, older than the grace period (domain/bucket_objects.py); and the setting."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sandboxer.bus.memory_store import MemoryEventStore
from sandboxer.config.settings import Settings
from sandboxer.domain.bucket_objects import DEFAULT_OBJECT_GRACE, Stored, aged, stale_chunks, unheld
from sandboxer.errors import SettingError
from sandboxer.events.types import Actor, SandboxDestroyed, SandboxRequested

NOW = datetime(2026, 12, 4, 22, 0, tzinfo=UTC)
GRACE = 3600.0


def stored(name: str, seconds_ago: float, owner: str | None = None) -> Stored:
    return Stored(
        name=name,
        nuid="n-" + name,
        owner=owner,
        seq=1,
        written=NOW - timedelta(seconds=seconds_ago),
    )


def test_an_unmarked_object_nobody_holds_goes_once_past_the_grace() -> None:
    objects = [
        stored("old", GRACE + 1),
        stored("exactly", GRACE),
        stored("young", GRACE - 1),  # put or touched lately: a create may be on its way
        stored("held", GRACE * 10),  # a sandbox not destroyed or a snapshot names it
        stored("marked", GRACE * 10, owner="snap1"),  # the snapshot rule's
    ]
    assert [o.name for o in unheld(objects, {"held"}, NOW, GRACE)] == ["old", "exactly"]


def test_the_log_is_read_only_when_some_unmarked_object_is_old_enough() -> None:
    assert not aged([stored("young", 10), stored("m", GRACE * 2, owner="s")], NOW, GRACE)
    assert aged([stored("young", 10), stored("old", GRACE * 2)], NOW, GRACE)
    assert not aged([], NOW, GRACE)


def test_stray_chunks_go_once_their_last_chunk_is_past_the_grace() -> None:
    strays = {
        "$O.B.C.killed": NOW - timedelta(seconds=GRACE * 2),
        "$O.B.C.running": NOW - timedelta(seconds=1),  # a put still writing its chunks
    }
    assert stale_chunks(strays, NOW, GRACE) == ["$O.B.C.killed"]


def test_the_grace_is_a_day_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SANDBOXER_OBJECT_GRACE", raising=False)
    assert Settings.from_env().object_grace == DEFAULT_OBJECT_GRACE == 86400
    monkeypatch.setenv("SANDBOXER_OBJECT_GRACE", "600")
    assert Settings.from_env().object_grace == 600
    for bad in ("0", "-5", "soon"):
        monkeypatch.setenv("SANDBOXER_OBJECT_GRACE", bad)
        with pytest.raises(SettingError, match="SANDBOXER_OBJECT_GRACE"):
            Settings.from_env()


async def test_the_memory_store_names_the_objects_of_sandboxes_not_destroyed() -> None:
    store = MemoryEventStore()
    actor = Actor(type="adm", id="pytest")
    for sandbox_id, value in (
        ("mem000000001", "object:sha256:" + "1" * 64),
        ("mem000000002", "/srv/app"),
    ):
        requested = SandboxRequested(
            sandbox_id=sandbox_id,
            command_id="c-" + sandbox_id,
            actor=actor,
            at="2026-12-04T22:00:00.000Z",
            profile="profile.local",
            profile_version=1,
            inputs={"repo": value},
        )
        await store.append(await store.load(sandbox_id), [requested])
    assert await store.objects_in_use() == {"object:sha256:" + "1" * 64}
    destroyed = SandboxDestroyed(
        sandbox_id="mem000000001", command_id="d", actor=actor, at="2026-12-04T22:00:01.000Z"
    )
    await store.append(await store.load("mem000000001"), [destroyed])
    assert await store.objects_in_use() == set()
