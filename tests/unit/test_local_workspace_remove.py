"""Removing a local sandbox's directory while another worker removes it too."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from sandboxer.extensions.local import workspace
from sandboxer.extensions.local.workspace import Layout


def _made(tmp_path: Path) -> Layout:
    layout = Layout(tmp_path, "sbxremove01")
    (layout.dir / "workspace" / "deep").mkdir(parents=True)
    (layout.dir / "workspace" / "deep" / "file").write_text("x")
    return layout


def test_a_directory_the_other_worker_removed_first_is_not_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = _made(tmp_path)
    real_rmtree = shutil.rmtree

    def raced(path: Any, *args: Any, **kwargs: Any) -> None:
        real_rmtree(path)  # the other worker got there first...
        raise FileNotFoundError(2, "No such file or directory", str(path))  # ...mid-walk

    monkeypatch.setattr(shutil, "rmtree", raced)
    workspace.remove(layout)
    assert not layout.dir.exists()


def test_what_the_other_worker_left_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = _made(tmp_path)
    real_rmtree = shutil.rmtree
    calls = []

    def half_raced(path: Any, *args: Any, **kwargs: Any) -> None:
        calls.append(path)
        if len(calls) == 1:  # an entry vanished under the first walk; the rest is still there
            real_rmtree(Path(path) / "workspace" / "deep")
            raise FileNotFoundError(2, "No such file or directory", str(path))
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", half_raced)
    workspace.remove(layout)
    assert not layout.dir.exists()
    assert len(calls) == 2
