"""A scenario past its deadline leaves where the harness waited (chaos/__main__.py)."""

from __future__ import annotations

import asyncio
import contextlib
import types
from collections.abc import AsyncIterator
from pathlib import Path

from chaos.__main__ import STALL_STACKS, run_one


async def _waits_for_ever(workdir: Path) -> None:
    async def the_stalled_step() -> None:
        await asyncio.Event().wait()

    await the_stalled_step()


async def test_a_stalled_scenario_names_the_await_it_stalled_in(tmp_path: Path) -> None:
    scenario = types.SimpleNamespace(NAME="stalls", DEADLINE=0.3, run=_waits_for_ever)
    result = await run_one(scenario, tmp_path, budget=60)  # type: ignore[arg-type]
    assert not result.passed
    assert "did not finish within its deadline" in result.problems[0]
    assert str(tmp_path / STALL_STACKS) in result.problems[0]
    stacks = (tmp_path / STALL_STACKS).read_text()
    assert "in _waits_for_ever" in stacks
    assert "in the_stalled_step" in stacks  # the innermost await, not only the task's top


async def _waits_inside_a_context_manager(workdir: Path) -> None:
    @contextlib.asynccontextmanager
    async def entering() -> AsyncIterator[None]:
        await asyncio.Event().wait()  # stalls in __aenter__, inside the generator
        yield

    async with entering():
        pass


async def test_the_stacks_follow_an_async_context_manager_into_its_generator(
    tmp_path: Path,
) -> None:
    """A stall while entering an ``asynccontextmanager`` names the generator's own line, not
    only ``__aenter__`` (what it awaits, the generator's ``anext``, does not lead there)."""
    scenario = types.SimpleNamespace(
        NAME="stalls", DEADLINE=0.3, run=_waits_inside_a_context_manager
    )
    result = await run_one(scenario, tmp_path, budget=60)  # type: ignore[arg-type]
    assert not result.passed
    stacks = (tmp_path / STALL_STACKS).read_text()
    assert "in __aenter__" in stacks
    assert "in entering" in stacks
