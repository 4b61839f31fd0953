"""Putting a record's new version in place (:mod:`.file_swap`): atomic for a reader at every
moment, nothing left under the new version's name, and the same result without the exchange."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from sandboxer.extensions.local import file_swap
from sandboxer.extensions.local.file_swap import swap_into_place


def _version(directory: Path, text: str) -> Path:
    new = directory / "record.tmp"
    new.write_text(text)
    return new


def test_a_first_version_is_moved_into_place(tmp_path: Path) -> None:
    swap_into_place(_version(tmp_path, "one"), tmp_path / "record")
    assert (tmp_path / "record").read_text() == "one"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["record"]


def test_a_new_version_replaces_the_old_and_the_old_is_gone(tmp_path: Path) -> None:
    target = tmp_path / "record"
    for text in ("one", "two", "three"):
        swap_into_place(_version(tmp_path, text), target)
        assert target.read_text() == text
        assert sorted(path.name for path in tmp_path.iterdir()) == ["record"]


def test_a_reader_never_finds_the_record_missing_or_partial(tmp_path: Path) -> None:
    target = tmp_path / "record"
    versions = [f"{n:04d}" * 400 for n in range(300)]  # 1.6 KB each, as a state.json is
    swap_into_place(_version(tmp_path, versions[0]), target)
    seen: list[str] = []
    done = threading.Event()

    missing: list[OSError] = []

    def read() -> None:
        while not done.is_set():
            try:
                seen.append(target.read_text())
            except OSError as exc:
                missing.append(exc)
            time.sleep(0)  # the GIL to the writer: a switch interval per read is too slow

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for text in versions[1:]:
            swap_into_place(_version(tmp_path, text), target)
    finally:
        done.set()
        reader.join()
    assert missing == []
    assert seen
    assert set(seen) <= set(versions)


def test_a_missing_new_version_is_an_error_and_the_record_stays(tmp_path: Path) -> None:
    target = tmp_path / "record"
    swap_into_place(_version(tmp_path, "one"), target)
    with pytest.raises(FileNotFoundError):
        swap_into_place(tmp_path / "absent", target)
    assert target.read_text() == "one"


def test_without_the_exchange_a_plain_rename_does_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(file_swap, "_renameat2", None)  # an old libc
    target = tmp_path / "record"
    for text in ("one", "two"):
        swap_into_place(_version(tmp_path, text), target)
        assert target.read_text() == text
    assert sorted(path.name for path in tmp_path.iterdir()) == ["record"]
