"""Every malformed or hostile command becomes an InvalidCommand with a reason."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies

from sandboxer.commands.parse import MAX_COMMAND_BYTES, InvalidCommand, parse_command
from sandboxer.commands.types import CreateSandbox, DestroySandbox, RecreateSandbox

ACTOR = {"type": "agt", "id": "agent-7", "project": "p"}


def raw(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def test_valid_create() -> None:
    command = parse_command(
        "sandboxer.cmd.create",
        raw(command_id="c1", profile="profile.local", inputs={"repo": "/src"}, actor=ACTOR),
    )
    assert isinstance(command, CreateSandbox)
    assert command.inputs == {"repo": "/src"}


def test_valid_destroy() -> None:
    command = parse_command(
        "sandboxer.cmd.destroy", raw(command_id="c1", sandbox_id="abcdefgh", actor=ACTOR)
    )
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
        (
            "create",
            raw(command_id="c", profile="p", actor={"type": "root", "id": "x"}),
            "invalid_field",
            "actor",
        ),
        (
            "create",
            raw(command_id="c", profile="p", actor=ACTOR, extra=1),
            "invalid_field",
            "extra",
        ),
        (
            "create",
            raw(command_id="c", profile="p", actor=ACTOR, sandbox_id="../etc"),
            "invalid_id",
            "lowercase",
        ),
        (
            "create",
            raw(command_id="c", profile="p", actor=ACTOR, sandbox_id="ab;rm -rf /"),
            "invalid_id",
            "lowercase",
        ),
        (
            "create",
            raw(command_id="c", profile="p", actor=ACTOR, sandbox_id="UPPERCASE1"),
            "invalid_id",
            "lowercase",
        ),
        (
            "create",
            raw(command_id="c", profile="p", actor=ACTOR, inputs={"$(x)": "1"}),
            "invalid_input",
            "input name",
        ),
        (
            "create",
            raw(command_id="c", profile="p", actor=ACTOR, inputs={"a": 5}),
            "invalid_field",
            "inputs",
        ),
        ("destroy", raw(command_id="c", actor=ACTOR), "invalid_field", "sandbox_id"),
        ("explode", raw(command_id="c", actor=ACTOR), "unknown_command", "known subjects"),
        (
            "nope.create",
            raw(command_id="c", profile="p", actor=ACTOR),
            "unknown_command",
            "sandboxer.cmd.create",
        ),
        (
            "x.y.create",
            raw(command_id="c", profile="p", actor=ACTOR),
            "unknown_command",
            "known subjects",
        ),
        (
            "create",
            raw(command_id="c", profile="p", actor={**ACTOR, "role": "root"}),
            "invalid_field",
            "actor",
        ),
        ("create", b"[" * 3000 + b"]" * 3000, "malformed", "nested too deeply"),
        (
            "create",
            b'{"command_id": "c", "inputs": ' + b'{"a": ' * 3000 + b"1" + b"}" * 3001,
            "malformed",
            "nested too deeply",
        ),
    ],
)
def test_rejections_say_why(verb: str, data: bytes, code: str, fragment: str) -> None:
    with pytest.raises(InvalidCommand) as caught:
        parse_command(f"sandboxer.cmd.{verb}", data)
    assert caught.value.code == code
    assert fragment in caught.value.reason


def test_rejection_keeps_the_command_id_when_readable() -> None:
    with pytest.raises(InvalidCommand) as caught:
        parse_command("sandboxer.cmd.create", raw(command_id="keep-me", actor=ACTOR))
    assert caught.value.command_id == "keep-me"
    assert caught.value.actor is not None


def test_huge_payload_is_refused_before_decoding() -> None:
    data = raw(command_id="c", profile="p", actor=ACTOR, inputs={"x": "y" * MAX_COMMAND_BYTES})
    with pytest.raises(InvalidCommand) as caught:
        parse_command("sandboxer.cmd.create", data)
    assert caught.value.code == "too_large"


@pytest.mark.parametrize("reason", ["\x1b]0;owned\x07", "line one\nforged: line", "x" * 2000])
def test_an_expiry_reason_is_printable_and_short(reason: str) -> None:
    data = raw(command_id="c", sandbox_id="abcdefgh", reason=reason, actor=ACTOR)
    with pytest.raises(InvalidCommand, match="printable") as caught:
        parse_command("sandboxer.cmd.expire", data)
    assert caught.value.code == "invalid_field"


def test_a_rejection_records_only_an_actor_the_log_may_hold() -> None:
    """An oversized command whose actor id is most of its megabyte: its rejection must not
    carry that id (it would be too large to append, and the command handed back for ever)."""
    huge = {"type": "agt", "id": "x" * MAX_COMMAND_BYTES, "project": "p"}
    data = raw(command_id="c", profile="p", actor=huge)
    with pytest.raises(InvalidCommand) as caught:
        parse_command("sandboxer.cmd.create", data)
    assert (caught.value.code, caught.value.actor) == ("too_large", None)
    for bad in ({**ACTOR, "id": "a\x1b[2Jb"}, {**ACTOR, "project": "no such.project"}):
        with pytest.raises(InvalidCommand) as caught:
            parse_command("sandboxer.cmd.create", raw(command_id="c", actor=bad))
        assert caught.value.actor is None
    with pytest.raises(InvalidCommand) as caught:
        parse_command("sandboxer.cmd.create", raw(command_id="c", actor=ACTOR))
    assert caught.value.actor is not None  # a good actor is kept


@pytest.mark.parametrize(
    "subject",
    [
        "sandboxer.cmd",
        "cmd.create",
        "sandboxer.create",
        "other.cmd.create",
        "sandboxer.cmd.create.extra",
    ],
)
def test_only_the_exact_command_subject_is_a_command(subject: str) -> None:
    data = raw(command_id="c", profile="profile.local", actor=ACTOR)
    with pytest.raises(InvalidCommand) as caught:
        parse_command(subject, data)
    assert caught.value.code == "unknown_command"
    assert caught.value.command_id == "c"


@settings(max_examples=300, deadline=None)
@given(
    subject=strategies.sampled_from(
        [
            "sandboxer.cmd.create",
            "sandboxer.cmd.destroy",
            "sandboxer.cmd.recreate",
            "sandboxer.cmd.x.create",
        ]
    ),
    data=strategies.one_of(
        strategies.binary(max_size=256),
        strategies.recursive(
            strategies.none()
            | strategies.booleans()
            | strategies.integers()
            | strategies.text(max_size=8),
            lambda inner: (
                strategies.lists(inner, max_size=4)
                | strategies.dictionaries(strategies.text(max_size=12), inner, max_size=5)
            ),
            max_leaves=20,
        )
        .map(json.dumps)
        .map(str.encode),
    ),
)
def test_any_bytes_become_a_command_or_a_reason(subject: str, data: bytes) -> None:
    """Whatever is published, parsing ends in a command or an InvalidCommand: nothing else."""
    outcome: object
    try:
        outcome = parse_command(subject, data)
    except InvalidCommand as invalid:
        outcome = invalid
    assert isinstance(outcome, CreateSandbox | DestroySandbox | RecreateSandbox | InvalidCommand)
    assert not isinstance(outcome, InvalidCommand) or outcome.reason


@pytest.mark.parametrize("actor_id", ["", "x" * 129, "agent\n7", "a\x00b"])
def test_an_actor_id_that_names_no_one_is_refused(actor_id: str) -> None:
    """Found by the fault suite (chaos/scenarios/malformed.py): an empty or 5,000-character
    actor id made a sandbox, and would have named who asked in every event it caused."""
    data = raw(command_id="c", profile="p", actor={**ACTOR, "id": actor_id})
    with pytest.raises(InvalidCommand) as caught:
        parse_command("sandboxer.cmd.create", data)
    assert caught.value.code == "invalid_field"
    assert "actor.id" in caught.value.reason


def test_the_services_own_command_ids_are_refused_from_clients() -> None:
    """``reserve-<sandbox>`` sent as a ``set_byok`` would mark the create's reservation done
    on the account before the create: it would reserve nothing and never be metered."""
    from sandboxer.domain.account_decide import (
        extend_command_id,
        meter_command_id,
        reserve_command_id,
    )
    from sandboxer.workers.expirer import expire_command

    derived = [
        reserve_command_id("sbxvictim01"),
        meter_command_id("sbxvictim01"),
        extend_command_id("sbxvictim01", "e1"),
        expire_command({"sandbox_id": "sbxvictim01", "version": 7})["command_id"],
        "reroute-sbxvictim01-4",
    ]
    byok = {"project": "p", "extension": "ext.e2b", "key_ref": None, "actor": ACTOR}
    for command_id in derived:
        with pytest.raises(InvalidCommand) as refused:
            parse_command("sandboxer.cmd.set_byok", raw(command_id=command_id, **byok))
        assert refused.value.code == "reserved_id"
        assert "the service's own" in refused.value.reason
        with pytest.raises(InvalidCommand, match="the service's own"):
            parse_command(
                "sandboxer.cmd.touch",
                raw(command_id=command_id, sandbox_id="sbxvictim01", actor=ACTOR),
            )
    # Each is still the command id of the service's own command on its own verb.
    expire = expire_command({"sandbox_id": "sbxvictim01", "version": 7})
    assert parse_command("sandboxer.cmd.expire", json.dumps(expire).encode()).command_id
    # An id that merely contains a prefix is a client's to use.
    assert parse_command(
        "sandboxer.cmd.destroy", raw(command_id="my-reserve-1", sandbox_id="abcdefgh", actor=ACTOR)
    )


def test_a_create_or_restore_may_not_take_a_pool_member_s_id() -> None:
    """A claimed member keeps its own id as the name of its cgroups, network and uid on
    ext.local: a sandbox made under that id started clean over the claimed one's."""
    member = "pool0123456789abcdef"
    for verb, fields in (
        ("create", {"profile": "profile.local"}),
        ("restore", {"snapshot_id": "snpabcdefgh"}),
    ):
        with pytest.raises(InvalidCommand) as refused:
            parse_command(
                f"sandboxer.cmd.{verb}",
                raw(command_id="c1", sandbox_id=member, actor=ACTOR, **fields),
            )
        assert refused.value.code == "invalid_id"
        assert "warm pool member" in refused.value.reason
    # Other ids that start with 'pool' are a client's to choose, and a command on an
    # existing sandbox is not refused for its id's form.
    assert parse_command(
        "sandboxer.cmd.create",
        raw(command_id="c2", sandbox_id="poolside1", profile="p", actor=ACTOR),
    )
    assert parse_command(
        "sandboxer.cmd.destroy", raw(command_id="c3", sandbox_id=member, actor=ACTOR)
    )
