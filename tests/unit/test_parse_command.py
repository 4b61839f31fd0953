"""Every malformed or hostile command becomes an InvalidCommand with a reason."""

from __future__ import annotations

import json

import pytest

from sandboxer.commands.parse import MAX_COMMAND_BYTES, InvalidCommand, parse_command
from sandboxer.commands.types import CreateSandbox, DestroySandbox

ACTOR = {"type": "agt", "id": "agent-7", "project": "p"}


def raw(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def test_valid_create() -> None:
    command = parse_command("create", raw(command_id="c1", profile="profile.local",
                                          inputs={"repo": "/src"}, actor=ACTOR))
    assert isinstance(command, CreateSandbox)
    assert command.inputs == {"repo": "/src"}


def test_valid_destroy() -> None:
    command = parse_command("destroy", raw(command_id="c1", sandbox_id="abcdefgh", actor=ACTOR))
    assert isinstance(command, DestroySandbox)


@pytest.mark.parametrize(
    ("verb", "data", "code", "fragment"),
    [
        ("create", b"{not json", "malformed", "not valid JSON"),
        ("create", b"[1, 2]", "malformed", "JSON object"),
        ("create", raw(profile="p", actor=ACTOR), "invalid_field", "missing field 'command_id'"),
        ("create", raw(command_id="a b", profile="p", actor=ACTOR), "invalid_field", "letters"),
        ("create", raw(command_id="c", actor=ACTOR), "invalid_field", "profile"),
        ("create", raw(command_id="c", profile="p"), "invalid_field", "actor"),
        ("create", raw(command_id="c", profile="p", actor={"type": "root", "id": "x"}),
         "invalid_field", "actor"),
        ("create", raw(command_id="c", profile="p", actor=ACTOR, extra=1), "invalid_field",
         "extra"),
        ("create", raw(command_id="c", profile="p", actor=ACTOR, sandbox_id="../etc"),
         "invalid_id", "lowercase"),
        ("create", raw(command_id="c", profile="p", actor=ACTOR, sandbox_id="ab;rm -rf /"),
         "invalid_id", "lowercase"),
        ("create", raw(command_id="c", profile="p", actor=ACTOR, sandbox_id="UPPERCASE1"),
         "invalid_id", "lowercase"),
        ("create", raw(command_id="c", profile="p", actor=ACTOR, inputs={"$(x)": "1"}),
         "invalid_input", "input name"),
        ("create", raw(command_id="c", profile="p", actor=ACTOR, inputs={"a": 5}),
         "invalid_field", "inputs"),
        ("destroy", raw(command_id="c", actor=ACTOR), "invalid_field", "sandbox_id"),
        ("explode", raw(command_id="c", actor=ACTOR), "unknown_command", "known commands"),
    ],
)
def test_rejections_say_why(verb: str, data: bytes, code: str, fragment: str) -> None:
    with pytest.raises(InvalidCommand) as caught:
        parse_command(verb, data)
    assert caught.value.code == code
    assert fragment in caught.value.reason


def test_rejection_keeps_the_command_id_when_readable() -> None:
    with pytest.raises(InvalidCommand) as caught:
        parse_command("create", raw(command_id="keep-me", actor=ACTOR))
    assert caught.value.command_id == "keep-me"
    assert caught.value.actor is not None


def test_huge_payload_is_refused_before_decoding() -> None:
    data = raw(command_id="c", profile="p", actor=ACTOR, inputs={"x": "y" * MAX_COMMAND_BYTES})
    with pytest.raises(InvalidCommand) as caught:
        parse_command("create", data)
    assert caught.value.code == "too_large"
