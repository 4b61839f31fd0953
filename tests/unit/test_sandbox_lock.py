"""ext.local's per-sandbox lock: one step at a time on a sandbox, across worker processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sandboxer.errors import ExtensionError
from sandboxer.extensions.local.sandbox_lock import LOCK_FILE, lock_offset, sandbox_lock

HOLD_IN_A_CHILD = """
import asyncio, sys
from pathlib import Path
from sandboxer.extensions.local.sandbox_lock import sandbox_lock

async def main() -> None:
    async with sandbox_lock(Path(sys.argv[1]), sys.argv[2]):
        print("held", flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


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


async def test_two_sandboxes_do_not_wait_for_each_other(tmp_path: Path) -> None:
    async with sandbox_lock(tmp_path, "sbx1"), sandbox_lock(tmp_path, "sbx2", wait=0.05):
        pass


async def test_a_lock_held_past_the_wait_is_named(tmp_path: Path) -> None:
    async with sandbox_lock(tmp_path, "sbx1"):
        with pytest.raises(ExtensionError, match=r"another ext.local worker has held its lock"):
            async with sandbox_lock(tmp_path, "sbx1", wait=0.05):
                pass


async def test_another_process_holds_it_until_killed(tmp_path: Path) -> None:
    """Two worker processes on one root exclude each other, and a ``kill -9`` of the holder
    lets the other in: the kernel drops the lock with the process."""
    with subprocess.Popen(
        [sys.executable, "-c", HOLD_IN_A_CHILD, str(tmp_path), "sbx1"],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    ) as child:
        try:
            assert child.stdout is not None
            assert await asyncio.to_thread(child.stdout.readline) == b"held\n"
            with pytest.raises(ExtensionError, match=r"another ext\.local worker"):
                async with sandbox_lock(tmp_path, "sbx1", wait=0.05):
                    pass
            async with sandbox_lock(tmp_path, "sbx2", wait=0.05):
                pass  # its other sandboxes are not held
            child.send_signal(signal.SIGKILL)
            await asyncio.to_thread(child.wait)
            async with sandbox_lock(tmp_path, "sbx1", wait=5):
                pass
        finally:
            child.kill()


async def test_a_root_keeps_one_lock_file_whatever_it_held(tmp_path: Path) -> None:
    """Nothing per sandbox is made on disk, so nothing is left behind when a sandbox goes."""
    for n in range(20):
        async with sandbox_lock(tmp_path, f"sbx{n}"):
            pass
    assert [entry.name for entry in tmp_path.iterdir()] == [LOCK_FILE]
    assert (tmp_path / LOCK_FILE).stat().st_size == 0  # a lock's range needs no bytes


async def test_a_root_not_made_yet_is_made_for_its_lock(tmp_path: Path) -> None:
    async with sandbox_lock(tmp_path / "not" / "yet", "sbx1"):
        pass
    assert (tmp_path / "not" / "yet" / LOCK_FILE).is_file()


def test_offsets_are_stable_and_fit_a_file_offset() -> None:
    offsets = {lock_offset(f"sbx{n:08d}") for n in range(10_000)}
    assert len(offsets) == 10_000
    assert all(0 <= offset < 2**62 for offset in offsets)
    assert lock_offset("sbx1") == lock_offset("sbx1")
