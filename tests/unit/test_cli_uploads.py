"""Which inputs the CLI uploads, and the progress it shows while it does."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandboxer.cli.uploads import _meter, plan_uploads
from sandboxer.config.settings import Settings


def test_local_directories_given_for_directory_inputs_are_uploaded(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", nats_urls=(), nats_server=None, ack_wait=5)
    tree = tmp_path / "project"
    tree.mkdir()
    assert plan_uploads(settings, "profile.local", {"repo": str(tree)}) == {"repo": tree}
    ref = "object:sha256:" + "ab" * 32
    assert plan_uploads(settings, "profile.local", {"repo": ref}) == {}
    assert plan_uploads(settings, "profile.local", {"repo": "/srv/on/the/worker"}) == {}
    assert plan_uploads(settings, "profile.unknown-here", {"repo": str(tree)}) == {}


def test_progress_is_shown_for_large_uploads_only(capsys: pytest.CaptureFixture[str]) -> None:
    mib = 1024 * 1024
    show = _meter("repo", enabled=True)
    for done in range(0, 33 * mib, 4 * mib):
        show("uploading", min(done, 32 * mib), 32 * mib)
    show("uploaded", 32 * mib, 32 * mib)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "  uploading repo: 0.0/32.0 MiB"
    assert "  uploading repo: 32.0/32.0 MiB" in lines
    assert lines[-1] == "  repo: 32.0 MiB uploaded"
    assert len(lines) <= 6  # every quarter, not every chunk
    small = _meter("repo", enabled=True)
    small("uploading", mib, 2 * mib)
    small("present", 2 * mib, 2 * mib)
    assert capsys.readouterr().err.splitlines() == [
        "  repo: 2.0 MiB already stored, not sent again"
    ]
