"""fetch_archive refuses object metadata a client could have forged, before subscribing."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sandboxer.errors import WorkspaceRefused
from sandboxer.workspaces.fetch import fetch_archive
from sandboxer.workspaces.limits import ArchiveLimits


class FakeBucket:
    def __init__(self, nuid: str) -> None:
        self.info = SimpleNamespace(size=10, chunks=1, nuid=nuid, digest="")

    async def get_info(self, name: str) -> Any:
        return self.info


class FakeJs:
    def __init__(self, nuid: str) -> None:
        self.bucket = FakeBucket(nuid)
        self.subscribed: list[str] = []

    async def object_store(self, bucket: str) -> FakeBucket:
        return self.bucket

    async def subscribe(self, subject: str, **_: Any) -> None:
        self.subscribed.append(subject)
        raise AssertionError("subscribed to a forged chunk subject")


@pytest.mark.parametrize("nuid", [">", "*", "a.b", "", "x" * 65])
def test_a_forged_chunk_subject_is_refused(nuid: str, tmp_path: Path) -> None:
    js = FakeJs(nuid)
    with pytest.raises(WorkspaceRefused, match="not a NUID"):
        asyncio.run(fetch_archive(js, "0" * 64, tmp_path / "a.tar", ArchiveLimits()))  # type: ignore[arg-type]
    assert js.subscribed == []
