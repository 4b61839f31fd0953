"""The floor a guarded durable's remake keeps on disk (sandboxer/bus/remake_marker.py); the
remake cut short that needs it runs against a real server in
tests/integration/test_redefined_durables.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandboxer.bus.remake_marker import RemakeMarker, marker_file

CREATED = "2026-12-03T10:00:00+00:00"


def test_a_kept_floor_is_read_back_until_cleared(tmp_path: Path) -> None:
    marker = RemakeMarker(marker_file(tmp_path, "meter"), "SANDBOXER_EVENTS")
    assert marker.read(CREATED) is None
    marker.keep(41, CREATED)
    assert marker.exists()
    assert marker.read(CREATED) == 41
    marker.clear()
    assert not marker.exists()
    marker.clear()  # twice: nothing to clear


def test_a_floor_kept_for_another_incarnation_of_the_stream_is_not_taken(
    tmp_path: Path,
) -> None:
    """A stream deleted and made again numbers from 1 again: an old floor would skip its
    first events."""
    marker = RemakeMarker(marker_file(tmp_path, "meter"), "SANDBOXER_EVENTS")
    marker.keep(41, CREATED)
    assert marker.read("2027-01-01T00:00:00+00:00") is None
    assert RemakeMarker(marker.path, "OTHER").read(CREATED) is None


THIS = f'"stream": "SANDBOXER_EVENTS", "stream_created": "{CREATED}"'


@pytest.mark.parametrize(
    ("text", "floor"),
    [
        ("", None),
        ("{", None),
        ("[]", None),
        (f'{{{THIS}, "floor": "41"}}', None),
        (f'{{{THIS}, "floor": -1}}', None),
        (f'{{{THIS}, "floor": 41}}', 41),
    ],
)
def test_an_unreadable_marker_is_no_floor(tmp_path: Path, text: str, floor: int | None) -> None:
    path = marker_file(tmp_path, "meter")
    path.parent.mkdir()
    path.write_text(text)
    assert RemakeMarker(path, "SANDBOXER_EVENTS").read(CREATED) == floor


def test_a_disk_that_fails_it_only_loses_the_marker(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")  # the marker's directory cannot be made under a file
    marker = RemakeMarker(blocked / "guarded" / "meter.json", "SANDBOXER_EVENTS")
    marker.keep(41, CREATED)
    assert marker.read(CREATED) is None
    marker.clear()
