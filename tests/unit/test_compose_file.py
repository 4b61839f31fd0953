"""Which compose file a repo names, and the names refused before anything reaches a host."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandboxer.errors import ComposeFileError
from sandboxer.extensions.compose_ssh.compose_file import (
    CANDIDATES,
    check_compose_file,
    resolve_compose_file,
)


def make_repo(repo: Path, *, name: str) -> None:
    """A repository holding a compose file at ``name``."""
    path = repo / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("services:\n  app:\n    image: localhost/mini:latest\n")


def test_compose_file_resolution(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    with pytest.raises(ComposeFileError) as none:
        resolve_compose_file(repo, None)
    for candidate in CANDIDATES:
        assert candidate in str(none.value)
    make_repo(repo, name="docker-compose.yml")
    assert resolve_compose_file(repo, None) == "docker-compose.yml"
    make_repo(repo, name="e2e/docker-compose.yml")
    assert resolve_compose_file(repo, None) == "e2e/docker-compose.yml"
    make_repo(repo, name="e2e/compose.yml")
    assert resolve_compose_file(repo, None) == "e2e/compose.yml"
    assert resolve_compose_file(repo, "docker-compose.yml") == "docker-compose.yml"
    (repo / "escape.yml").symlink_to("/etc/passwd")
    with pytest.raises(ComposeFileError, match="leads out of the repo"):
        resolve_compose_file(repo, "escape.yml")
    for bad in (
        "",
        "/abs.yml",
        "../x.yml",
        "a/./b.yml",
        "a//b.yml",
        "a b.yml",
        "$(x).yml",
        "a\nb.yml",
        "x" * 300,
    ):
        with pytest.raises(ComposeFileError):
            check_compose_file(bad)
