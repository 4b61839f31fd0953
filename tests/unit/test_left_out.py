"""What a snapshot left out, told in bounded lines whatever the sandbox held."""

from __future__ import annotations

import msgspec

from sandboxer.domain.left_out import MAX_LINE, MAX_NAME, MAX_NAMES, Kind, LeftOut, shown_name
from sandboxer.events.types import Actor, SnapshotCreated


def test_one_line_per_kind_with_its_count_and_names() -> None:
    left_out = LeftOut()
    left_out.add("device", "dev/null")
    for name in ("run/a.fifo", "run/b.fifo", "c"):
        left_out.add("fifo", name)
    assert left_out.warnings() == (
        "left out 3 FIFOs: run/a.fifo, run/b.fifo, c",
        "left out 1 device node: dev/null",
    )
    assert LeftOut().warnings() == ()
    assert not LeftOut()


def test_many_and_long_names_stay_within_the_line() -> None:
    left_out = LeftOut()
    for number in range(100_000):
        left_out.add("fifo", f"{number:05d}" + "x" * 5000)
    [line] = left_out.warnings()
    assert len(line) <= MAX_LINE
    assert line.startswith("left out 100000 FIFOs: 00000xxx")
    assert line.endswith(" more")
    assert line.count("...") >= 1
    short = LeftOut()
    for number in range(12):
        short.add("socket", f"s{number}")
    assert short.warnings() == (
        f"left out 12 sockets: {', '.join(f's{n}' for n in range(MAX_NAMES))} and 7 more",
    )


def test_a_name_is_escaped_and_cut() -> None:
    assert shown_name("a\nb\x1b\udcff") == "a\\nb\\x1b\\udcff"
    assert shown_name("é") == "é"
    assert len(shown_name("\n" * 1000)) == MAX_NAME


def test_merged_names_go_below_their_directory_and_keep_their_count() -> None:
    volume = LeftOut()
    for number in range(9):
        volume.add("fifo", f"p{number}")
    left_out = LeftOut()
    left_out.add("fifo", "top")
    left_out.merge(volume, under=".sandboxer/volumes/data")
    assert left_out.count("fifo") == 10
    assert left_out.warnings()[0].startswith("left out 10 FIFOs: top, .sandboxer/volumes/data/p0, ")


def test_the_worst_event_is_small_and_encodes() -> None:
    """Every kind, each with a host of names of unprintable and undecodable characters: the
    event stays a few kilobytes (a stream's messages are at most 1 MiB) and is valid JSON."""
    left_out = LeftOut()
    kinds: tuple[Kind, ...] = ("fifo", "socket", "device")
    for number in range(1000):
        for kind in kinds:
            left_out.add(kind, f"\udcff\n{number}" * 2000)
    event = SnapshotCreated(
        snapshot_id="snp",
        command_id="c",
        actor=Actor(type="atm", id="t"),
        at="2026-12-03T00:00:00.000Z",
        bucket="b",
        object="o",
        size=1,
        sha256="s",
        warnings=left_out.warnings(),
    )
    encoded = msgspec.json.encode(event)
    assert len(encoded) < 4096
    assert len(msgspec.json.decode(encoded)["warnings"]) == 3
