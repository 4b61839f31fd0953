"""Run every benchmark and print one table: each figure beside its baseline from the same run.

    python bench/run.py                  # all of them (what `make bench` runs)
    python bench/run.py create memory    # some of them, by the name after bench_

Each module runs in a process of its own (``python bench/bench_x.py --json``),
so one module's environment, memory or crash never touches another's figures;
its progress lines go to stderr as it runs. A module that fails, or runs past
its time, becomes a FAILED row with the reason: nothing is skipped silently.
The exit status is 1 when a row could not be measured (a target missed is a
figure, not an error).
"""

from __future__ import annotations

import collections
import datetime
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _table import Row, failed, render, rows_from_json

BENCH = Path(__file__).resolve().parent
# name -> seconds it may take (a few times what it takes on an idle 2-core machine)
MODULES = {
    "create": 180,
    "commands": 120,
    "replay": 180,
    "accounts": 120,
    "sandboxes": 60,
    "memory": 420,
    "remote": 360,
    "hosted": 120,
    "recovery": 300,
    "cli": 120,
}


def run_module(name: str, limit: float) -> list[Row]:
    """The rows of bench/bench_NAME.py, or one FAILED row saying why there are none."""
    tail: collections.deque[str] = collections.deque(maxlen=12)
    with tempfile.TemporaryFile() as out:
        process = subprocess.Popen(
            [sys.executable, str(BENCH / f"bench_{name}.py"), "--json"],
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # a timeout stops its children too
        )

        def relay() -> None:
            assert process.stderr is not None
            for line in process.stderr:
                sys.stderr.write(line)
                tail.append(line.rstrip())

        relaying = threading.Thread(target=relay, daemon=True)
        relaying.start()
        try:
            process.wait(limit)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            return [failed(f"bench_{name}", "", f"ran past its {limit:g} s")]
        relaying.join(5)
        out.seek(0)
        text = out.read().decode(errors="replace").strip()
    if process.returncode != 0 or not text:
        last = next((line for line in reversed(tail) if line.strip()), "no output")
        return [failed(f"bench_{name}", "", f"exited {process.returncode}: {last}")]
    try:
        return rows_from_json(text.splitlines()[-1])
    except (ValueError, TypeError) as exc:
        return [failed(f"bench_{name}", "", f"printed no rows ({exc}): {text[-200:]}")]


def main() -> int:
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(__doc__.strip())
        print(f"\nbenchmarks: {', '.join(MODULES)}")
        return 0
    chosen = sys.argv[1:] or list(MODULES)
    unknown = [name for name in chosen if name not in MODULES]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(MODULES)}")
        return 2
    began = time.monotonic()
    load_before = os.getloadavg()[0]
    rows: list[Row] = []
    for name in chosen:
        print(f"== bench_{name}", file=sys.stderr, flush=True)
        started = time.monotonic()
        rows += run_module(name, MODULES[name])
        print(f"   ({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"make bench, {now}, {platform.node()}: {os.cpu_count()} cores, "
        f"load {load_before:.1f} before and {os.getloadavg()[0]:.1f} after, "
        f"{time.monotonic() - began:.0f} s in all"
    )
    print(render(rows))
    return 1 if any(row.value is None for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
