"""The view's copy for its checkpoint (projections/view_copy.py): the view as of its last
commit, and nothing made where there is no view."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from sandboxer.projections.sandbox_view import FINGERPRINT, SandboxView
from sandboxer.projections.view_copy import copy_view, view_identity


async def test_a_copy_is_the_view_as_of_its_last_commit(tmp_path: Path) -> None:
    live = tmp_path / "view.sqlite3"
    view = await SandboxView.open(live)
    try:
        await view.save([], [], position=7)
        copy = tmp_path / "copy.sqlite3"
        assert copy_view(live, copy) == (FINGERPRINT, 7)
        copy.write_bytes(b"stale")  # a copy left by a write cut off is replaced
        await view.save([], [], position=9)
        assert copy_view(live, copy) == (FINGERPRINT, 9)
    finally:
        await view.close()


def test_a_view_that_is_not_there_is_an_error_and_nothing_is_made(tmp_path: Path) -> None:
    with pytest.raises(sqlite3.Error):
        copy_view(tmp_path / "gone.sqlite3", tmp_path / "copy.sqlite3")
    assert list(tmp_path.iterdir()) == []


def test_a_file_that_is_not_a_view_has_no_identity(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"not a database" * 100)
    empty = tmp_path / "empty.sqlite3"
    sqlite3.connect(empty).close()
    assert view_identity(garbage) == (None, 0)
    assert view_identity(empty) == (None, 0)
    assert view_identity(tmp_path / "missing") == (None, 0)
