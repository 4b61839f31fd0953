"""Turn the raw bytes of a published command into a typed command, or say why not.

Parsing is pure. Whatever comes in, the result is either a command or an
:class:`InvalidCommand` carrying enough (the command id when it is readable)
for the control worker to record a rejection.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import msgspec

from sandboxer.commands.consumer_rules import consumer_refusal
from sandboxer.commands.types import (
    COMMAND_TYPES,
    AddCredits,
    Command,
    CreateSandbox,
    ExpireSandbox,
    ExtendTtl,
    RestoreSnapshot,
    SetBudget,
    SetByok,
    SnapshotSandbox,
    asked_policy,
)
from sandboxer.domain.account_state import PROJECT_RULE, is_valid_project
from sandboxer.domain.key_decide import key_command_refusal
from sandboxer.domain.key_state import is_valid_key_id
from sandboxer.domain.pool_state import is_member_id
from sandboxer.durations import parse_duration
from sandboxer.errors import InvalidCommand, InvalidInput, InvalidNetworkPolicy
from sandboxer.events.types import Actor
from sandboxer.ids import (
    COMMAND_ID_RULE,
    HOST_NAME,
    SANDBOX_ID_RULE,
    is_valid_command_id,
    is_valid_sandbox_id,
    system_id_refusal,
)

__all__ = [
    "MAX_COMMAND_BYTES",
    "InvalidCommand",
    "key_of",
    "parse_command",
    "readable_actor",
    "verb_of",
]

MAX_COMMAND_BYTES = 64 * 1024
"""Commands are small; a larger payload is a mistake or an attack."""

MAX_INPUTS = 64
MAX_INPUT_VALUE = 4096
MAX_REASON = 500
MAX_SNAPSHOT_NAME = 100
MAX_DURATION_DAYS = 3650
"""Longer TTLs or extensions are typos (and would overflow date arithmetic)."""
MAX_CREDITS = 10**12
"""The most credits one ``add_credits`` adds (a million USD): more is a typo."""
MAX_BUDGET = 10**15
MAX_KEY_REF = 500
MAX_ACTOR_ID = 128
"""An actor's id names who asked in every event it causes: a name, not a payload."""
_EXTENSION_ID = re.compile(r"^ext\.[a-z0-9][a-z0-9-]{0,62}$")
_KEY_REF = re.compile(r"^(env:[A-Za-z_][A-Za-z0-9_]{0,127}|file:/[^\x00-\x1f]{1,498})$")


class _StrictActor(Actor, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Commands check the actor strictly (events tolerate fields a later version adds)."""


def _command_parts(subject: str) -> tuple[str, str | None]:
    """``(verb, key id)`` of ``sandboxer.cmd.<verb>`` or ``sandboxer.cmd.<verb>.<key id>`` (a key
    identity's, docs/security.md#keys-on-the-bus); ``("", None)`` for any other subject."""
    parts = subject.split(".")
    if parts[:2] != ["sandboxer", "cmd"] or len(parts) not in {3, 4}:
        return "", None
    key = parts[3] if len(parts) == 4 else None
    if key is not None and not is_valid_key_id(key):
        return "", None
    return parts[2], key


def verb_of(subject: str) -> str:
    """The verb of a command subject; the empty string for any other subject."""
    return _command_parts(subject)[0]


def key_of(subject: str) -> str | None:
    """The key id a key identity's command subject ends in; None for any other subject."""
    return _command_parts(subject)[1]


def _peek(payload: object, key: str) -> object:
    return payload.get(key) if isinstance(payload, dict) else None


def parse_command(subject: str, data: bytes) -> Command:
    """Decode and validate one command published on ``subject``.

    Raises InvalidCommand, with a reason a person can act on, for anything
    that is not a valid command: never any other exception.
    """
    # Decoding comes first even for an oversized command (the stream caps messages at
    # 1 MiB) so that its rejection can still be keyed by its command id.
    try:
        payload = msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise InvalidCommand("malformed", f"command is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidCommand(
            "malformed", "command JSON is nested too deeply; commands are flat objects of strings"
        ) from None

    raw_id = _peek(payload, "command_id")
    command_id = raw_id if isinstance(raw_id, str) and is_valid_command_id(raw_id) else None
    raw_sandbox = _peek(payload, "sandbox_id")
    sandbox_id = (
        raw_sandbox if isinstance(raw_sandbox, str) and is_valid_sandbox_id(raw_sandbox) else None
    )
    actor = readable_actor(_peek(payload, "actor"))

    def invalid(code: str, reason: str) -> InvalidCommand:
        return InvalidCommand(code, reason, command_id, sandbox_id, actor)

    if len(data) > MAX_COMMAND_BYTES:
        raise invalid(
            "too_large",
            f"command is {len(data)} bytes; the limit is {MAX_COMMAND_BYTES}. "
            "Pass large content as a reference (a path or URL input), not inline.",
        )
    verb = verb_of(subject)
    command_type = COMMAND_TYPES.get(verb)
    if command_type is None:
        known = ", ".join(f"sandboxer.cmd.{name}" for name in sorted(COMMAND_TYPES))
        raise invalid(
            "unknown_command",
            f"no command is published on {subject[:200]!r}; known subjects: {known}",
        )
    if not isinstance(payload, dict):
        raise invalid("malformed", "command must be a JSON object")
    if raw_id is None:
        raise invalid("invalid_field", "missing field 'command_id'")
    if command_id is None:
        raise invalid("invalid_field", f"command_id {raw_id!r} is invalid: use {COMMAND_ID_RULE}")
    reserved = system_id_refusal(command_id, verb)
    if reserved is not None:
        raise invalid("reserved_id", reserved)
    if raw_sandbox is not None and sandbox_id is None:
        raise invalid("invalid_id", f"sandbox_id {raw_sandbox!r} is invalid: use {SANDBOX_ID_RULE}")
    if "actor" in payload:
        _check_actor(payload["actor"], invalid)
    try:
        command = msgspec.convert(payload, command_type)
    except msgspec.ValidationError as exc:
        raise invalid("invalid_field", f"invalid {verb} command: {exc}") from None
    _check_fields(command, invalid)
    return command


def _check_fields(command: Command, invalid: Callable[[str, str], InvalidCommand]) -> None:
    """Checks a field's type cannot express: names, lengths, durations."""
    if isinstance(command, RestoreSnapshot | CreateSandbox) and is_member_id(command.sandbox_id):
        # A claimed member keeps its own id as the name of its cgroups, network and uid on
        # ext.local: a new sandbox under that id would start clean over them (docs/pools.md).
        raise invalid(
            "invalid_id",
            f"sandbox_id {command.sandbox_id!r} has the form of a warm pool member's id "
            "('pool' and 16 hex digits), which is the service's own; choose another",
        )
    if isinstance(command, RestoreSnapshot | CreateSandbox) and command.consumer is not None:
        unfit = consumer_refusal(command.consumer)
        if unfit is not None:
            raise invalid("invalid_consumer", unfit)
    if isinstance(command, RestoreSnapshot):
        _check_inputs(command, invalid)
    if isinstance(command, CreateSandbox):
        _check_inputs(command, invalid)
        if command.host is not None and not re.fullmatch(HOST_NAME, command.host):
            raise invalid(
                "invalid_field",
                f"host {command.host!r} is not a host name: use lowercase letters, digits and '-'",
            )
        if command.ttl is not None:
            _check_duration("ttl", command.ttl, invalid)
        if command.network is not None:
            try:
                asked_policy(command.network)
            except InvalidNetworkPolicy as exc:
                raise invalid("invalid_network", exc.message) from None
    if isinstance(command, ExtendTtl):
        _check_duration("duration", command.duration, invalid)
    # An expiry's reason is recorded in its note and shown by 'get' and 'describe': no
    # control characters (terminal escapes, line breaks that forge lines).
    if (
        isinstance(command, ExpireSandbox)
        and command.reason is not None
        and (len(command.reason) > MAX_REASON or not command.reason.isprintable())
    ):
        raise invalid("invalid_field", f"reason must be at most {MAX_REASON} printable characters")
    _check_snapshot_fields(command, invalid)
    _check_account_fields(command, invalid)
    refusal = key_command_refusal(command)  # create_key, revoke_key (domain/key_decide.py)
    if refusal is not None:
        raise invalid(*refusal)


def _check_account_fields(command: Command, invalid: Callable[[str, str], InvalidCommand]) -> None:
    """Projects are subject tokens; amounts are whole credits within bounds; keys are
    references (``env:NAME``, ``file:/PATH``), never values."""
    if not isinstance(command, AddCredits | SetBudget | SetByok):
        return
    if not is_valid_project(command.project):
        raise invalid(
            "invalid_project", f"project {command.project[:100]!r} is invalid: use {PROJECT_RULE}"
        )
    if isinstance(command, AddCredits) and not 0 < command.amount <= MAX_CREDITS:
        raise invalid(
            "invalid_amount",
            f"amount {command.amount} must be a whole number of credits from 1 to {MAX_CREDITS} "
            "(1 credit = 1 micro-USD)",
        )
    limit = command.limit if isinstance(command, SetBudget) else None
    if limit is not None and not 0 <= limit <= MAX_BUDGET:
        raise invalid(
            "invalid_amount",
            f"limit {limit} must be a whole number of credits from 0 to {MAX_BUDGET}",
        )
    if isinstance(command, SetByok):
        if not _EXTENSION_ID.fullmatch(command.extension):
            raise invalid(
                "invalid_field", f"extension {command.extension[:100]!r} is not an extension id"
            )
        if command.key_ref is not None and not _KEY_REF.fullmatch(command.key_ref):
            raise invalid(
                "invalid_field",
                "key_ref must be a secret reference, env:NAME or file:/ABSOLUTE/PATH (at most "
                f"{MAX_KEY_REF} characters), never the key itself",
            )


def _check_snapshot_fields(command: Command, invalid: Callable[[str, str], InvalidCommand]) -> None:
    """Snapshot ids are subject tokens, like sandbox ids; names are short printable labels."""
    snapshot_id = getattr(command, "snapshot_id", None)
    if snapshot_id is not None and not is_valid_sandbox_id(snapshot_id):
        raise invalid(
            "invalid_id", f"snapshot_id {snapshot_id!r} is invalid: use {SANDBOX_ID_RULE}"
        )
    if isinstance(command, SnapshotSandbox) and command.name is not None:
        name = command.name
        if not name or len(name) > MAX_SNAPSHOT_NAME or not name.isprintable():
            raise invalid(
                "invalid_field",
                f"name must be 1 to {MAX_SNAPSHOT_NAME} printable characters",
            )


def _check_duration(name: str, text: str, invalid: Callable[[str, str], InvalidCommand]) -> None:
    try:
        seconds = parse_duration(text)
    except InvalidInput as exc:
        raise invalid("invalid_field", f"{name}: {exc.message}") from None
    if seconds <= 0:
        raise invalid("invalid_field", f"{name} {text!r} must be longer than zero")
    if seconds > MAX_DURATION_DAYS * 86400:
        raise invalid("invalid_field", f"{name} {text!r} is longer than {MAX_DURATION_DAYS}d")


def _check_actor(raw: object, invalid: Callable[[str, str], InvalidCommand]) -> None:
    try:
        actor = msgspec.convert(raw, _StrictActor)
    except msgspec.ValidationError as exc:
        raise invalid(
            "invalid_field",
            f"invalid actor: {exc} (an actor is "
            '{"type": "adm"|"agt"|"atm", "id": "...", "project": ...})',
        ) from None
    refusal = _actor_refusal(actor)
    if refusal is not None:
        raise invalid(*refusal)


def _actor_refusal(actor: Actor) -> tuple[str, str] | None:
    """``(code, reason)`` when an actor's id or project is not one the log may record."""
    if not 0 < len(actor.id) <= MAX_ACTOR_ID or not actor.id.isprintable():
        return (
            "invalid_field",
            f"actor.id {actor.id[:100]!r} is invalid: use 1 to {MAX_ACTOR_ID} printable characters",
        )
    if actor.project is not None and not is_valid_project(actor.project):
        # The project names the account its sandboxes are paid from: a subject token.
        return (
            "invalid_project",
            f"actor.project {actor.project[:100]!r} is invalid: use {PROJECT_RULE}",
        )
    return None


def _check_inputs(
    command: CreateSandbox | RestoreSnapshot, invalid: Callable[[str, str], InvalidCommand]
) -> None:
    if len(command.inputs) > MAX_INPUTS:
        raise invalid(
            "invalid_input", f"too many inputs ({len(command.inputs)}; limit {MAX_INPUTS})"
        )
    for key, value in command.inputs.items():
        if not key.isidentifier():
            raise invalid(
                "invalid_input", f"input name {key!r} is invalid: use letters, digits and '_'"
            )
        if len(value) > MAX_INPUT_VALUE or "\x00" in value:
            raise invalid(
                "invalid_input",
                f"input {key!r} is too long or contains a NUL byte (limit {MAX_INPUT_VALUE} chars)",
            )


def readable_actor(raw: object) -> Actor | None:
    """The actor a rejection of a command on a plain subject records (a key identity's
    command's: the key's own), and what a client waiting for the command's outcome expects
    of its rejection (command_outcomes.py): only one that passes the checks a command's
    actor does. An actor id of any length (up to the whole 1 MiB command) made a rejection
    too large to append, and its command was handed back for ever."""
    try:
        actor = msgspec.convert(raw, Actor)
    except msgspec.ValidationError:
        return None
    return actor if _actor_refusal(actor) is None else None
