"""When the embedded server's restart after a full disk is due, and when the disk has room for
it (bus/disk_room.py), and reading its log on from where the last look ended (bus/nats_log.py)."""

from __future__ import annotations

from pathlib import Path

from sandboxer.bus import disk_room, nats_log

WEDGED = (
    "[12] 2026/12/08 03:04:05.678901 [ERR] JetStream failed to store a msg on stream "
    "'$G > SANDBOXER_EVENTS': Filestore [SANDBOXER_EVENTS] Critical write error: write "
    "/home/nats/jetstream/$G/streams/SANDBOXER_EVENTS/msgs/1.blk: no space left on device"
)


def test_a_restart_is_due_on_the_servers_line_or_a_full_file_system() -> None:
    assert disk_room._wedged_in(["[12] ... [INF] Server is ready", WEDGED]) == WEDGED
    # Another critical write error is not a full disk's: nothing a restart would mend.
    assert disk_room._wedged_in(["Critical write error: input/output error"]) is None
    assert disk_room._full(disk_room.FULL) is None
    assert disk_room._full(4096) == "4096 bytes free on its store's file system"


def test_room_is_a_tenth_of_the_file_system_or_room_bytes_when_that_is_less() -> None:
    mib = 1024 * 1024
    assert disk_room._roomy(7 * mib, 64 * mib, disk_room.ROOM)  # a tenth of 64 MiB: 6.4 MiB
    assert not disk_room._roomy(6 * mib, 64 * mib, disk_room.ROOM)
    assert disk_room._roomy(64 * mib, 100_000 * mib, disk_room.ROOM)  # 64 MiB of 100 GB
    assert not disk_room._roomy(63 * mib, 100_000 * mib, disk_room.ROOM)


def test_the_log_is_read_on_from_where_the_last_look_ended(tmp_path: Path) -> None:
    log = tmp_path / "nats-server.log"
    assert nats_log.read_from(log, 0) == ([], 0)  # none yet
    log.write_bytes(b"one\ntwo\nhalf")
    lines, offset = nats_log.read_from(log, 0)
    assert (lines, offset) == (["one", "two"], 8)  # a half-written line waits
    with log.open("ab") as more:
        more.write(b" done\nthree\n")
    assert nats_log.read_from(log, offset) == (["half done", "three"], 24)
    assert nats_log.read_from(log, 24) == ([], 24)
    log.write_bytes(b"new\n")  # replaced: read from its start again
    assert nats_log.read_from(log, 24) == (["new"], 4)
