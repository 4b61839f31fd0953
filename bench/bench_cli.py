"""The CLI's start-up: ``sandboxer --help``, and ``sandboxer list`` against a running
service; wall time from exec to exit.

Every call of the CLI pays its imports before it does anything, and people and
scripts call it many times (docs/performance.md, "CLI start-up"). Each figure is the
median of RUNS runs of the installed ``sandboxer`` script; the baseline, alternating
with it, is ``python -c pass`` with the same interpreter: what any Python command
costs. ``--help`` needs no service; ``list`` (the bus client's imports, a connection and
one query of an empty view) runs against ``sandboxer up`` on a private nats-server.
About 30 s on an idle 2-core machine.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _harness import Unmeasurable, main, nats, progress, running_service
from _table import Row

RUNS = 20


def wall_ms(argv: list[str], env: dict[str, str]) -> float:
    began = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return (time.perf_counter() - began) * 1000


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """p50 of ``argv`` and of ``python -c pass``, RUNS times each, taking turns."""
    wall_ms(argv, env)  # (untimed: the first run fills the caches)
    runs, bare = [], []
    for _ in range(RUNS):
        runs.append(wall_ms(argv, env))
        bare.append(wall_ms([sys.executable, "-c", "pass"], env))
    return statistics.median(runs), statistics.median(bare)


async def rows() -> list[Row]:
    script = Path(sys.executable).parent / "sandboxer"
    if not script.exists():
        raise Unmeasurable(f"{script} is missing: pip install -e . (or make dev) in this venv")
    with tempfile.TemporaryDirectory() as home:
        env = dict(os.environ, HOME=home, SANDBOXER_HOME=str(Path(home) / "sandboxer"))
        helps, bare_help = timed([str(script), "--help"], env)
        progress(f"sandboxer --help p50 {helps:.0f} ms (n={RUNS})")
        tmp = Path(home)
        async with nats(tmp) as server, running_service(tmp, server.url) as service:
            env |= {"SANDBOXER_HOME": str(service.home), "SANDBOXER_NATS_URL": server.url}
            # In a thread: the service's client on this loop keeps answering its pings.
            lists, bare_list = await asyncio.to_thread(timed, [str(script), "list"], env)
        progress(f"sandboxer list p50 {lists:.0f} ms (n={RUNS})")
    return [
        Row("CLI start-up: sandboxer --help p50", "ms", helps, bare_help, "python -c pass p50"),
        Row("CLI: sandboxer list, service up, p50", "ms", lists, bare_list, "python -c pass p50"),
    ]


if __name__ == "__main__":
    main(rows)
