"""Removing a local sandbox's directory while other workers remove it too, on the real file
system: threads racing through the same tree see entries vanish under their walk."""

from __future__ import annotations

import threading
from pathlib import Path

from sandboxer.extensions.local import workspace
from sandboxer.extensions.local.workspace import Layout


def _made(root: Path) -> Layout:
    layout = Layout(root, "sbxremove01")
    for branch in range(30):
        directory = layout.dir / "workspace" / f"d{branch}"
        directory.mkdir(parents=True)
        for leaf in range(60):
            (directory / f"f{leaf}").write_text("x")
    return layout


def _race(layout: Layout, workers: int = 4) -> list[BaseException]:
    """``workspace.remove(layout)`` in ``workers`` threads at once; what they raised."""
    errors: list[BaseException] = []

    def remove() -> None:
        try:
            workspace.remove(layout)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=remove) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_workers_removing_one_directory_at_once_all_succeed(tmp_path: Path) -> None:
    # Four plain rmtree calls racing like this failed with FileNotFoundError in every round.
    for round_ in range(5):
        layout = _made(tmp_path / f"round{round_}")
        assert _race(layout) == []
        assert not layout.dir.exists()


def test_nothing_there_and_a_planted_link_are_handled(tmp_path: Path) -> None:
    layout = Layout(tmp_path, "sbxremove02")
    workspace.remove(layout)  # never made: nothing to do
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("host file")
    layout.dir.symlink_to(outside)
    workspace.remove(layout)
    assert not layout.dir.is_symlink()
    assert (outside / "keep").read_text() == "host file"  # the link was not followed
