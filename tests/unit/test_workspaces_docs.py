"""docs/workspaces.md says what the code does: its examples parse, its names and limits match."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

from sandboxer import subjects
from sandboxer.client import SandboxerClient
from sandboxer.config.profile import InputSpec
from sandboxer.workspaces.limits import DEFAULT_MAX_ENTRIES, DEFAULT_MAX_MB
from sandboxer.workspaces.pack import FIXED_MTIME
from sandboxer.workspaces.refs import object_name, object_ref

PAGE = (Path(__file__).resolve().parents[2] / "docs" / "workspaces.md").read_text()


def test_the_inputs_example_is_valid() -> None:
    [block] = re.findall(r"```yaml\n(.*?)```", PAGE, re.S)
    inputs = {
        name: InputSpec.model_validate(spec)
        for name, spec in yaml.safe_load(block)["inputs"].items()
    }
    assert inputs["repo"].type == "directory"
    assert inputs["compose_file"].type == "string"


def test_the_python_example_calls_what_the_client_has() -> None:
    [block] = re.findall(r"```python\n(.*?)```", PAGE, re.S)
    body = "".join(f"    {line}\n" for line in block.splitlines())
    tree = ast.parse(f"async def example(client):\n{body}")
    called = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    assert {"upload_directory", "create"} <= called
    for name in ("upload_directory", "create"):
        assert hasattr(SandboxerClient, name)


def test_names_and_limits_match_the_code() -> None:
    assert f"`{subjects.WORKSPACES_BUCKET}`" in PAGE
    assert object_ref("ab" * 32).startswith("object:sha256:")
    assert "`object:sha256:<64 lowercase hex digits>`" in PAGE
    assert object_name("<hex>") == "sha256-<hex>"
    assert "`sha256-<hex>`" in PAGE
    assert f"| {DEFAULT_MAX_MB} MiB |" in PAGE
    assert f"{DEFAULT_MAX_ENTRIES:,}".replace(",", " ") in PAGE
    assert FIXED_MTIME == 946684800  # 2000-01-01T00:00:00Z, as the page says
    assert "2000-01-01T00:00:00Z" in PAGE
