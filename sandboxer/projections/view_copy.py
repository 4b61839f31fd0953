"""Copies of the sandbox view's SQLite file, as its checkpoint carries it (docs/performance.md,
"Replay"). Blocking (SQLite's own calls): the projector runs these in a thread.

A copy is taken by a connection of its own, so the projector's connection goes on
writing meanwhile: the view is in WAL mode, where a reader sees the database as of its
last commit, rows and position together (they are written in one transaction).
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from sandboxer.projections.sandbox_view import NAME

__all__ = ["copy_view", "view_identity"]


def copy_view(live: Path, destination: Path) -> tuple[str | None, int]:
    """A compact copy of the view at ``live``, as of its last commit, written to
    ``destination``; the fingerprint and position it records (:func:`view_identity`)."""
    destination.unlink(missing_ok=True)
    # mode=rw: a view that is not there is an error here, not an empty file made in its place.
    with contextlib.closing(sqlite3.connect(f"file:{live}?mode=rw", uri=True)) as db:
        db.execute("VACUUM INTO ?", (str(destination),))
    return view_identity(destination)


def view_identity(path: Path) -> tuple[str | None, int]:
    """The fingerprint of the code that wrote the view file at ``path`` and the stream
    sequence it has reached; ``(None, 0)`` for a file that is not such a view."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            fingerprint = db.execute("SELECT value FROM meta WHERE key = 'fingerprint'").fetchone()
            position = db.execute(
                "SELECT seq FROM position WHERE projection = ?", (NAME,)
            ).fetchone()
    except sqlite3.DatabaseError:
        return None, 0
    if fingerprint is None or position is None:
        return None, 0
    return str(fingerprint[0]), int(position[0])
