"""A snapshot's copy on ext.local and a teardown that does not wait for it (a reconcile's
failed provision, a reap, another worker's) racing: never a snapshot stored from a
partial tree."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from pathlib import Path

import pytest

from sandboxer.client import CommandFailed
from sandboxer.extensions.local import LocalExtension
from sandboxer.workspaces import tree_copy
from tests.integration.conftest import Service
from tests.integration.test_snapshots import run_in

pytestmark = pytest.mark.integration

FILES = ("a", "b", "c")


async def test_a_teardown_under_a_snapshot_s_copy_never_stores_a_partial_tree(
    service: Service, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = service.client
    sandbox_id = (await client.create())["sandbox_id"]
    await run_in(client, sandbox_id, " && ".join(f"echo {n} > /workspace/{n}" for n in FILES))
    loop = asyncio.get_running_loop()
    other_worker = LocalExtension(home / "local")  # the same root, as a second worker's
    teardowns: list[concurrent.futures.Future[None]] = []
    copy_file = tree_copy._copy_file

    def copy_then_tear_down(directory: int, name: str, target: Path, budget: object) -> int | None:
        found = copy_file(directory, name, target, budget)  # type: ignore[arg-type]
        if name == FILES[0] and not teardowns:
            # The copy has its first file: the sandbox is torn down now, under it. Given a
            # few seconds (the copy runs in a thread, the teardown on the worker's loop).
            teardowns.append(
                asyncio.run_coroutine_threadsafe(other_worker.teardown(sandbox_id), loop)
            )
            with contextlib.suppress(concurrent.futures.TimeoutError):
                teardowns[0].result(timeout=3)  # on the new code it waits for the copy
        return found

    monkeypatch.setattr(tree_copy, "_copy_file", copy_then_tear_down)
    try:
        snapshot = await client.snapshot(sandbox_id)
    except CommandFailed:
        snapshot = None  # the copy came after the teardown: failed, which is safe
    monkeypatch.setattr(tree_copy, "_copy_file", copy_file)
    assert teardowns, "the copy never reached the first file"
    await asyncio.wrap_future(teardowns[0])  # the teardown happened, either way
    assert not (home / "local" / sandbox_id).exists()
    if snapshot is not None:
        restored = (await client.restore(snapshot["snapshot_id"]))["sandbox_id"]
        listed = await run_in(client, restored, "cd /workspace && ls " + " ".join(FILES))
        assert listed.split() == list(FILES)  # on the old code: only "a", b and c vanished
