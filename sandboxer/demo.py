"""``make demo``: the main job, end to end, through the real CLI.

Starts sandboxer with its own NATS (in a fresh data directory), establishes a
real bubblewrap sandbox with this repository copied in, runs commands inside
it, shows its events, destroys it and stops the service.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run(*args: str, check: bool = True, capture: bool = False) -> str:
    command = [sys.executable, "-m", "sandboxer.cli.app", *args]
    print(f"\n$ sandboxer {shlex.join(args)}", flush=True)
    result = subprocess.run(
        command, check=False, text=True, stdout=subprocess.PIPE if capture else None
    )
    if check and result.returncode != 0:
        raise SystemExit(
            f"demo step failed (exit {result.returncode}): sandboxer {shlex.join(args)}"
        )
    return result.stdout or ""


def main() -> None:
    home = tempfile.mkdtemp(prefix="sandboxer-demo-")
    os.environ["SANDBOXER_HOME"] = home
    os.environ.pop("SANDBOXER_NATS_URL", None)
    print(f"SANDBOXER_HOME={home}")
    try:
        # A failed check (e.g. cgroups that are not writable) is shown, not fatal: sandboxes
        # still start, and a missing tool stops the next step with its own message.
        run("doctor", check=False)
        run("profiles", "list")
        created = json.loads(
            run("create", "--input", f"repo={REPO / 'profiles'}", "--json", capture=True)
        )
        sandbox_id = created["sandbox_id"]
        print(
            json.dumps(
                {k: created[k] for k in ("sandbox_id", "status", "reachability", "warnings")},
                indent=2,
            )
        )
        run(
            "exec",
            sandbox_id,
            "--",
            "sh",
            "-c",
            "echo hello from $(hostname); ls /workspace; cat /proc/net/dev | tail -n +3 | "
            "cut -d: -f1; touch /usr/x 2>&1 || echo 'system is read-only'",
        )
        run("list")
        run("events", "--sandbox", sandbox_id)
        run("destroy", sandbox_id)
        run("get", sandbox_id)
    finally:
        run("down", check=False)
    print("\ndemo complete")


if __name__ == "__main__":
    main()
