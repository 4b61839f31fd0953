"""What the CLI loads before a command runs: only what that command needs.

People and scripts run ``sandboxer`` many times, and every run pays for its imports
first (docs/performance.md#cli-start-up). The bus client (nats-py with aiohttp), the
backends, the gateway and the service are imported by the commands that use them, when
they run; ``--help`` and the app itself load none of them. Checked in a fresh Python,
since this one has imported them all already.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

NOT_FOR_HELP = (
    "asyncio",
    "nats",
    "aiohttp",
    "httpx",
    "fastapi",
    "uvicorn",
    "asyncssh",
    "modal",
    "yaml",
    "bcrypt",
    "sandboxer.client",
    "sandboxer.service",
    "sandboxer.gateway",
    "sandboxer.extensions",
    "sandboxer.workers",
    "sandboxer.statehub",
    "sandboxer.config.profile",
    "sandboxer.config.catalog",
)
"""Loaded by neither ``import sandboxer.cli.app`` nor any ``--help``."""

NOT_FOR_THE_APP = (*NOT_FOR_HELP, "pydantic")
"""Typer itself loads pydantic to show a command's options (not the command list)."""

NOT_FOR_A_BUS_CLIENT = (
    "httpx",
    "aiohttp",  # nats-py's WebSocket transport's (sandboxer/bus/nats_websockets.py)
    "fastapi",
    "asyncssh",
    "modal",
    "sandboxer.service",
    "sandboxer.gateway",
    "sandboxer.extensions.base",
    "sandboxer.extensions.local.backend",
    "sandboxer.workers",
    "sandboxer.config.profile",
    "sandboxer.config.hosts",
)
"""What a command that talks to the bus has no use for: the service's own parts (the exec
and file protocol it shares with the workers is sandboxer.exec_protocol)."""

# Run as `sandboxer ARGS` would be; at exit (help exits), name what was loaded of `unwanted`.
SCRIPT = """
    import atexit, sys

    def loaded():
        found = [u for u in {unwanted} if any(n == u or n.startswith(u + ".") for n in sys.modules)]
        print(" ".join(found) or "none")

    atexit.register(loaded)
    sys.argv = ["sandboxer", *{args}]
    {run}
"""


def _loaded(
    tmp_path: Path, unwanted: tuple[str, ...], args: list[str], run: str, *, exits: int = 0
) -> str:
    env = os.environ | {"HOME": str(tmp_path), "SANDBOXER_HOME": str(tmp_path / "sandboxer")}
    script = textwrap.dedent(SCRIPT).format(unwanted=repr(unwanted), args=repr(args), run=run)
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == exits, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_importing_the_cli_loads_no_client_backend_or_config_parser(tmp_path: Path) -> None:
    assert _loaded(tmp_path, NOT_FOR_THE_APP, [], "import sandboxer.cli.app") == "none"


def test_sandboxer_help_loads_no_more_than_the_app(tmp_path: Path) -> None:
    run = "from sandboxer.cli.app import main; main()"
    assert _loaded(tmp_path, NOT_FOR_THE_APP, ["--help"], run) == "none"


@pytest.mark.parametrize(
    "args",
    [["list", "--help"], ["exec", "--help"], ["keys", "create", "--help"], ["credits", "--help"]],
)
def test_a_commands_help_loads_none_of_what_the_command_uses(
    tmp_path: Path, args: list[str]
) -> None:
    run = "from sandboxer.cli.app import main; main()"
    assert _loaded(tmp_path, NOT_FOR_HELP, args, run) == "none"


def test_the_bus_client_the_cli_connects_with_loads_no_backend_or_worker(tmp_path: Path) -> None:
    run = "import sandboxer.cli.background"
    assert _loaded(tmp_path, NOT_FOR_A_BUS_CLIENT, [], run) == "none"


def test_a_command_s_options_are_read_without_pydantic(tmp_path: Path) -> None:
    """typer 0.29 coerces every option of the command it runs through a pydantic
    ``TypeAdapter``: +0.3 s of CPU for each run (pyproject.toml holds typer below it). Here
    ``list`` reads its options and looks for the service, which is not running."""
    run = "from sandboxer.cli.app import main; main()"
    assert _loaded(tmp_path, ("pydantic",), ["list", "--limit", "5"], run, exits=1) == "none"
