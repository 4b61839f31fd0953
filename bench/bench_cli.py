"""The CLI's start-up: ``sandboxer --help``, wall time from exec to exit.

Every call of the CLI pays its imports before it does anything, and people and
scripts call it many times (docs/performance.md, "CLI start-up"). The figure is the
median of RUNS runs of the installed ``sandboxer`` script; the baseline, alternating
with it, is ``python -c pass`` with the same interpreter: what any Python command
costs. About 10 s on an idle 2-core machine; no service is needed.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _harness import Unmeasurable, main, progress
from _table import Row

RUNS = 20


def wall_ms(argv: list[str], env: dict[str, str]) -> float:
    began = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return (time.perf_counter() - began) * 1000


async def rows() -> list[Row]:
    script = Path(sys.executable).parent / "sandboxer"
    if not script.exists():
        raise Unmeasurable(f"{script} is missing: pip install -e . (or make dev) in this venv")
    with tempfile.TemporaryDirectory() as home:
        env = dict(os.environ, HOME=home, SANDBOXER_HOME=str(Path(home) / "sandboxer"))
        wall_ms([str(script), "--help"], env)  # (untimed: the first run fills the caches)
        helps, bare = [], []
        for _ in range(RUNS):
            helps.append(wall_ms([str(script), "--help"], env))
            bare.append(wall_ms([sys.executable, "-c", "pass"], env))
    progress(f"sandboxer --help p50 {statistics.median(helps):.0f} ms (n={RUNS})")
    return [
        Row(
            "CLI start-up: sandboxer --help p50",
            "ms",
            statistics.median(helps),
            statistics.median(bare),
            "python -c pass p50",
        )
    ]


if __name__ == "__main__":
    main(rows)
