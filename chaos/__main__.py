"""``python -m chaos [names...]``: run the fault suite (all scenarios, or those named), one
line per scenario, exit 1 if any failed. Each scenario has its own deadline (its module's
``DEADLINE``, seconds) and the suite a total one; a scenario past either is a FAIL."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import pkgutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import ModuleType

from chaos import scenarios
from chaos.result import ScenarioResult, format_line

ORDER = (
    "kill_roles",
    "kill_hosted",
    "kill_ssh",
    "embedded_kill",
    "sigstop",
    "same_command_id",
    "conflicting",
    "malformed",
    "leader_kill",
    "disk_full",
    "planted_secrets",
    "credits_redelivery",
)
"""The suite's order; a scenario module not listed runs after these, by name."""

DEFAULT_DEADLINE = 180.0
SUITE_DEADLINE = 25 * 60.0
SHOWN_PROBLEMS = 10
STALL_STACKS = "stall-stacks.txt"
STACKS_BEFORE = 2.0
"""Seconds before a scenario's deadline at which the harness's tasks' stacks are written."""


def discover() -> list[ModuleType]:
    names = [m.name for m in pkgutil.iter_modules(scenarios.__path__) if not m.name.startswith("_")]
    ordered = [n for n in ORDER if n in names] + sorted(n for n in names if n not in ORDER)
    return [importlib.import_module(f"chaos.scenarios.{n}") for n in ordered]


async def run_one(module: ModuleType, workdir: Path, budget: float) -> ScenarioResult:
    name = str(module.NAME)
    deadline = min(float(getattr(module, "DEADLINE", DEFAULT_DEADLINE)), budget)
    started = time.monotonic()
    stacks = workdir / STALL_STACKS
    # Just before the deadline cancels it, where every task of the harness waits: a stall
    # (leader-kill's, twice: docs/reliability.md) then names its own await.
    snapshot = asyncio.get_running_loop().call_later(
        max(0.0, deadline - STACKS_BEFORE), _write_stacks, stacks
    )
    try:
        async with asyncio.timeout(deadline):
            result: ScenarioResult = await module.run(workdir)
            return result
    except TimeoutError:
        problem = f"did not finish within its deadline of {deadline:.0f} s (stacks: {stacks})"
    except Exception as exc:  # a scenario that breaks is a failure, reported, not a crash
        problem = f"raised {type(exc).__name__}: {exc}\n{traceback.format_exc()}"
    finally:
        snapshot.cancel()
    return ScenarioResult(name, False, round(time.monotonic() - started, 1), {}, [problem])


def _write_stacks(path: Path) -> None:
    """Every task's chain of awaits, innermost last, as it waits now, into ``path``
    (``Task.print_stack`` shows only a suspended task's outermost frame)."""
    lines = []
    for task in asyncio.all_tasks():
        lines.append(f"--- {task.get_name()}")
        awaited: object = task.get_coro()
        while awaited is not None:
            frame = (
                getattr(awaited, "cr_frame", None)
                or getattr(awaited, "gi_frame", None)
                or getattr(awaited, "ag_frame", None)
            )
            if frame is not None:
                code = frame.f_code
                lines.append(f"  {code.co_filename}:{frame.f_lineno} in {code.co_name}")
            awaited = (
                _entered_generator(frame)
                or getattr(awaited, "cr_await", None)
                or getattr(awaited, "gi_yieldfrom", None)
                or getattr(awaited, "ag_await", None)
            )
    path.write_text("\n".join(lines) + "\n")


def _entered_generator(frame: object) -> object:
    """The async generator an ``asynccontextmanager``'s ``__aenter__``/``__aexit__`` waits on
    (what it awaits, the generator's ``anext``, does not lead to it), or None."""
    if getattr(getattr(frame, "f_code", None), "co_name", "") not in {"__aenter__", "__aexit__"}:
        return None
    gen = getattr(getattr(frame, "f_locals", {}).get("self"), "gen", None)
    return gen if getattr(gen, "ag_frame", None) is not None else None


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__)
    parser.add_argument("names", nargs="*", help="scenario names (kill-roles ...); all if none")
    parser.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    args = parser.parse_args(argv)
    modules = discover()
    if args.names:
        wanted = {n.replace("_", "-") for n in args.names}
        unknown = wanted - {m.NAME for m in modules}
        if unknown:
            known = ", ".join(m.NAME for m in modules)
            parser.error(f"no scenario {', '.join(sorted(unknown))} (there are: {known})")
        modules = [m for m in modules if m.NAME in wanted]
    suite_end = time.monotonic() + SUITE_DEADLINE
    base = Path(tempfile.mkdtemp(prefix="sandboxer-chaos-"))
    # The harness's own clients log their retries (a lost leader...): to a file, so the
    # suite prints one line per scenario and nothing between them.
    logging.basicConfig(
        filename=base / "runner.log",
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    print(f"chaos: {len(modules)} scenarios, work directory {base}", flush=True)
    failed = 0
    total = time.monotonic()
    for module in modules:
        remaining = suite_end - time.monotonic()
        if remaining <= 0:
            result = ScenarioResult(module.NAME, False, 0.0, {}, ["not run: suite time bound"])
        else:
            workdir = base / module.NAME
            workdir.mkdir()
            result = await run_one(module, workdir, remaining)
        failed += not result.passed
        print(format_line(result), flush=True)
        for problem in result.problems[:SHOWN_PROBLEMS]:
            print(f"      - {problem}", flush=True)
        if len(result.problems) > SHOWN_PROBLEMS:
            print(f"      - ... and {len(result.problems) - SHOWN_PROBLEMS} more", flush=True)
    verdict = "all passed" if not failed else f"{failed} failed"
    print(f"chaos: {len(modules)} scenarios, {verdict}, {time.monotonic() - total:.1f} s")
    if not args.keep and not failed:
        import shutil

        shutil.rmtree(base, ignore_errors=True)
    elif failed:
        print(f"chaos: logs kept in {base}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
