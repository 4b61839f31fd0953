"""What ``sandboxer exec`` reads after the sandbox id: ``[--service NAME] [--] CMD ARGS...``."""

from __future__ import annotations

import pytest
import typer

from sandboxer.cli.sandbox_commands import split_exec_args


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--", "ls", "-l"], (None, ["ls", "-l"])),
        (["ls", "--service", "web"], (None, ["ls", "--service", "web"])),  # the command's own
        (["--service", "web", "--", "ls"], ("web", ["ls"])),
        (["--service=db", "--", "psql", "--", "x"], ("db", ["psql", "--", "x"])),
        (["--", "--service", "web"], (None, ["--service", "web"])),
    ],
)
def test_service_is_read_only_before_the_command(
    argv: list[str], expected: tuple[str | None, list[str]]
) -> None:
    assert split_exec_args(argv, None) == expected


def test_service_given_before_the_id_is_kept() -> None:
    assert split_exec_args(["--", "ls"], "web") == ("web", ["ls"])


def test_service_without_a_name_is_a_usage_error() -> None:
    with pytest.raises(typer.BadParameter, match="NAME"):
        split_exec_args(["--service"], None)
