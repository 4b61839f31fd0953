"""docs/snapshots.md says what the code does: its example calls exist, its CLI lines parse,
its refusal codes are the ones the code raises, and its backend table matches the declarations."""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import yaml
from typer.testing import CliRunner

from sandboxer.cli.app import app
from sandboxer.client import SandboxerClient

ROOT = Path(__file__).resolve().parents[2]
PAGE = (ROOT / "docs" / "snapshots.md").read_text()
CODE = "\n".join(
    path.read_text()
    for path in [
        ROOT / "sandboxer" / "domain" / "sandbox_snapshots.py",
        ROOT / "sandboxer" / "domain" / "snapshot_decide.py",
        ROOT / "sandboxer" / "domain" / "sandbox_decide.py",
        ROOT / "sandboxer" / "workers" / "snapshot_commands.py",
    ]
)


def test_the_python_example_calls_what_the_client_has() -> None:
    [block] = re.findall(r"```python\n(.*?)```", PAGE, re.S)
    body = "".join(f"    {line}\n" for line in block.splitlines())
    tree = ast.parse(f"async def example(client, sandbox_id):\n{body}")
    called = {
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    }
    assert {"snapshot", "restore", "delete_snapshot", "get"} <= called
    for name in called:
        assert hasattr(SandboxerClient, name), name


def test_every_cli_line_is_a_command_the_cli_takes() -> None:
    [block] = re.findall(r"```console\n(.*?)```", PAGE, re.S)
    lines = [line[2:].split("#")[0] for line in block.splitlines() if line.startswith("$ ")]
    assert len(lines) == 7
    runner = CliRunner()
    for line in lines:
        argv = shlex.split(line)
        assert argv[0] == "sandboxer"
        result = runner.invoke(app, [*argv[1:], "--help"])
        assert result.exit_code == 0, (line, result.output)


def test_the_refusal_codes_are_raised_by_the_code() -> None:
    section = PAGE.split("## Refusals", 1)[1].split("##", 1)[0]
    codes = set(re.findall(r"`([a-z_]+)`", section.split("|---|---|", 1)[1]))
    codes = {code for code in codes if "_" in code}  # not the states named in the table
    assert codes >= {"not_snapshottable", "snapshot_unsupported", "not_restorable"}
    for code in codes:
        assert f'"{code}"' in CODE, code


def test_every_backend_in_the_table_declares_snapshots() -> None:
    table = PAGE.split("## Per backend", 1)[1].split("##", 1)[0]
    backends = re.findall(r"^\| (ext\.[a-z-]+) \| yes \|", table, re.M)
    assert backends == ["ext.local", "ext.vm-packer", "ext.compose-ssh", "ext.daytona", "ext.modal"]
    for backend in backends:
        declaration = yaml.safe_load((ROOT / "extensions" / f"{backend}.yaml").read_text())
        assert declaration["capabilities"]["snapshot"] is True, backend
    without = re.findall(r"^\| (ext\.[a-z0-9-]+(?:, ext\.[a-z0-9-]+)*) \| no \|", table, re.M)
    for backend in ", ".join(without).split(", "):
        declaration = yaml.safe_load((ROOT / "extensions" / f"{backend}.yaml").read_text())
        assert declaration["capabilities"]["snapshot"] is False, backend
