"""``sandboxer --help`` is read by newcomers: everyday commands first, operator ones after."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from sandboxer.cli.app import app

EVERYDAY = ["create", "list", "get", "exec", "destroy", "recreate", "events", "profiles"]
OPERATOR = ["up", "worker", "doctor", "reap-stale", "hosts", "replay", "extensions", "inspect"]


def _listed_commands(help_text: str) -> list[str]:
    """Command names in the order the help shows them (first word of each command row)."""
    names = []
    for line in help_text.splitlines():
        match = re.match(r"^[│|]?\s+([a-z][a-z-]+)\s{2,}\S", line)
        if match:
            names.append(match.group(1))
    return names


def test_help_lists_everyday_commands_before_operator_commands() -> None:
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "100", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    listed = [name for name in _listed_commands(result.output) if name in EVERYDAY + OPERATOR]
    assert sorted(listed) == sorted(EVERYDAY + OPERATOR), result.output
    assert listed[: len(EVERYDAY)] == EVERYDAY, result.output
    assert result.output.index("Everyday") < result.output.index("Operator")


def test_every_command_is_in_a_panel() -> None:
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "100", "NO_COLOR": "1"})
    assert "─ Commands ─" not in result.output, result.output


def test_the_cli_prints_no_line_of_stamina_s_own_per_retry() -> None:
    """A wait riding out a restarting service retries; stamina's bare 'retry_scheduled'
    lines would reach the terminal on each one (the CLI says what it waited for)."""
    import subprocess
    import sys

    script = (
        "import sys, stamina\n"
        "from sandboxer.cli.app import main\n"
        "sys.argv = ['sandboxer', '--help']\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(len(stamina.instrumentation.get_on_retry_hooks()))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip().splitlines()[-1] == "0"


def test_each_summary_in_a_listing_is_one_line_when_the_terminal_is_wide() -> None:
    """A docstring's first paragraph is wrapped in the source; its listing must not break
    where the source line did (typer's rich listing kept those breaks)."""
    groups = [[]] + [[info.name] for info in app.registered_groups if info.name]
    for group in groups:
        result = CliRunner().invoke(
            app, [*group, "--help"], env={"COLUMNS": "300", "NO_COLOR": "1"}
        )
        assert result.exit_code == 0, result.output
        continued = [
            line
            for line in result.output.splitlines()
            if re.match(r"^│\s{3,}\S", line) and "─" not in line
        ]
        assert continued == [], (group, continued)
