"""docs/ttl.md's examples are true: its command parses, its limits parse as a profile's."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from sandboxer.commands.parse import parse_command
from sandboxer.commands.types import ExpireSandbox
from sandboxer.config.profile import Ttl

PAGE = Path(__file__).resolve().parents[2] / "docs" / "ttl.md"


def blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", PAGE.read_text(), re.S)


def test_the_expire_command_example_is_what_the_expirer_sends() -> None:
    [example] = blocks("json")
    command = parse_command("sandboxer.cmd.expire", example.encode())
    assert isinstance(command, ExpireSandbox)
    assert command.command_id == f"expire-{command.sandbox_id}-7"
    assert json.loads(example)["actor"] == {"type": "atm", "id": "sandboxer-expirer"}


def test_the_profile_limits_example_is_valid() -> None:
    [example] = blocks("yaml")
    Ttl.model_validate(yaml.safe_load(example)["ttl"])
