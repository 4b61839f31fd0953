"""ext.local's per-sandbox lock: one step at a time on a sandbox, across worker processes."""

from __future__ import annotations

import asyncio
import fcntl
import os
from pathlib import Path

import pytest

from sandboxer.errors import ExtensionError
from sandboxer.extensions.local.sandbox_lock import LOCK_DIR, sandbox_lock


def held_elsewhere(path: Path) -> bool:
    """Whether another open file description (another worker) holds ``path``'s lock."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


async def test_a_second_step_waits_for_the_first(tmp_path: Path) -> None:
    order: list[str] = []
    first_in = asyncio.Event()

    async def step(name: str, hold: float) -> None:
        async with sandbox_lock(tmp_path, "sbx1"):
            order.append(f"{name} in")
            first_in.set()
            await asyncio.sleep(hold)
            order.append(f"{name} out")

    first = asyncio.create_task(step("first", 0.1))
    await first_in.wait()
    await asyncio.gather(first, step("second", 0))
    assert order == ["first in", "first out", "second in", "second out"]


async def test_a_waiter_on_a_removed_lock_file_locks_the_new_one(tmp_path: Path) -> None:
    """A teardown removes the lock file while it holds it; whoever was waiting on that file
    must not go on holding a lock that no one else can see."""
    path = tmp_path / LOCK_DIR / "sbx1"
    release = asyncio.Event()
    waiter_in = asyncio.Event()

    async def teardown() -> None:
        async with sandbox_lock(tmp_path, "sbx1", remove=True):
            await release.wait()

    async def waiter() -> None:
        async with sandbox_lock(tmp_path, "sbx1"):
            waiter_in.set()
            await release.wait()

    first = asyncio.create_task(teardown())
    await asyncio.sleep(0.02)
    second = asyncio.create_task(waiter())
    await asyncio.sleep(0.02)
    assert not waiter_in.is_set()
    release.set()
    release = asyncio.Event()  # the waiter holds on until told again
    await first
    await asyncio.wait_for(waiter_in.wait(), 5)
    # The file was removed under the waiter: it holds a new one, which a third step sees.
    assert held_elsewhere(path)
    release.set()
    await second
    assert not held_elsewhere(path)


async def test_a_lock_held_past_the_wait_is_named(tmp_path: Path) -> None:
    async with sandbox_lock(tmp_path, "sbx1"):
        with pytest.raises(ExtensionError, match=r"another ext.local worker has held its lock"):
            async with sandbox_lock(tmp_path, "sbx1", wait=0.05):
                pass


async def test_an_unmade_sandbox_leaves_no_lock_file(tmp_path: Path) -> None:
    async with sandbox_lock(tmp_path, "sbx1"):
        pass
    assert (tmp_path / LOCK_DIR / "sbx1").exists()  # a live sandbox keeps its file
    async with sandbox_lock(tmp_path, "sbx1", remove=True):
        pass
    assert list((tmp_path / LOCK_DIR).iterdir()) == []


async def test_a_step_that_finds_its_sandbox_gone_removes_the_file_it_holds(
    tmp_path: Path,
) -> None:
    """A pause that waited out a teardown removes the lock file itself, through the lock,
    and only while it holds it: once released, the path may be another holder's file."""
    path = tmp_path / LOCK_DIR / "sbx1"
    async with sandbox_lock(tmp_path, "sbx1") as lock:
        lock.remove()
        assert not path.exists()
    async with sandbox_lock(tmp_path, "sbx1") as late:
        pass
    with pytest.raises(AssertionError, match="only while its lock is held"):
        late.remove()
    assert path.exists()


async def _hold_until(root: Path, entered: asyncio.Event, release: asyncio.Event) -> None:
    async with sandbox_lock(root, "sbx1"):
        entered.set()
        await release.wait()


async def test_removing_twice_leaves_the_next_holders_file(tmp_path: Path) -> None:
    """A step that removed its file (a pause that found its sandbox gone) and then leaves
    with ``remove`` removes nothing more: meanwhile the next caller made a new file and
    locks it, and removing that would let a third lock beside it."""
    path = tmp_path / LOCK_DIR / "sbx1"
    entered, release = asyncio.Event(), asyncio.Event()
    async with sandbox_lock(tmp_path, "sbx1", remove=True) as lock:
        lock.remove()
        nxt = asyncio.create_task(_hold_until(tmp_path, entered, release))
        async with asyncio.timeout(5):
            await entered.wait()
        lock.remove()
    assert path.exists(), "the next holder's lock file was removed"
    assert held_elsewhere(path)
    release.set()
    await nxt


async def test_a_lock_file_replaced_under_its_holder_is_not_removed(tmp_path: Path) -> None:
    """A held file removed by someone else (an operator clearing ``.locks`` by hand) and
    made anew by the next caller is that caller's: the first holder's removal leaves it."""
    path = tmp_path / LOCK_DIR / "sbx1"
    entered, release = asyncio.Event(), asyncio.Event()
    async with sandbox_lock(tmp_path, "sbx1") as lock:
        path.unlink()
        nxt = asyncio.create_task(_hold_until(tmp_path, entered, release))
        async with asyncio.timeout(5):
            await entered.wait()
        lock.remove()
    assert path.exists(), "another holder's lock file was removed"
    assert held_elsewhere(path)
    release.set()
    await nxt
