"""The stored golden events (tests/golden/README.md), read and checked the same way by every
test of a golden file: each line decodes on the subject the store appends its event on,
under its own message id, and keeps every field it was stored with."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec

from sandboxer.bus.jetstream_store import event_subject
from sandboxer.domain.account_state import AccountState, evolve_account
from sandboxer.domain.pool_state import MemberState, evolve_member
from sandboxer.domain.sandbox_state import SandboxState, evolve
from sandboxer.domain.snapshot_state import SnapshotState, evolve_snapshot
from sandboxer.events.codec import current_versions, decode_event
from sandboxer.events.types import (
    ACCOUNT_EVENTS,
    NOT_SANDBOX_EVENTS,
    POOL_EVENTS,
    SNAPSHOT_EVENTS,
    Event,
)

GOLDEN = Path(__file__).resolve().parent.parent / "golden"


def stored_lines(name: str) -> list[dict[str, Any]]:
    """The lines of the golden file ``name`` (subject, headers, body), in stored order."""
    return [json.loads(line) for line in (GOLDEN / name).read_text().splitlines()]


def stored_states(name: str) -> Any:
    return json.loads((GOLDEN / name).read_text())


def contains(actual: Any, expected: Any) -> bool:
    """``actual`` holds everything ``expected`` does (dicts may have gained keys)."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            key in actual and contains(actual[key], value) for key, value in expected.items()
        )
    return bool(actual == expected)


def as_json(value: Any) -> Any:
    """A state or event as plain JSON values, as the golden states files hold them."""
    return json.loads(msgspec.json.encode(value))


def decoded(line: dict[str, Any]) -> Event:
    """The event of a stored ``line``, checked: on its subject, under its id, every field
    kept (a type at a later version than stored is compared after its upcast elsewhere)."""
    event = decode_event(line["body"].encode())
    assert line["subject"] == event_subject(event), line["subject"]
    assert line["headers"]["Nats-Msg-Id"] == event.event_id
    body = json.loads(line["body"])
    if body["v"] == current_versions()[body["type"]]:
        assert contains(as_json(event), body), line["subject"]
    return event


def decoded_all(name: str) -> list[Event]:
    """Every event of the golden file ``name``, each checked by :func:`decoded`."""
    return [decoded(line) for line in stored_lines(name)]


def folded(events: list[Event]) -> dict[str, dict[str, Any]]:
    """What ``events`` fold to, as replay folds them: every sandbox, snapshot, account and pool
    member, by kind (``sandboxes``, ``snapshots``, ``accounts``, ``members``) and id, as JSON.
    Rejections, host and key events fold into none of these."""
    sandboxes: dict[str, SandboxState] = {}
    snapshots: dict[str, SnapshotState] = {}
    accounts: dict[str, AccountState] = {}
    members: dict[str, MemberState] = {}
    for event in events:
        if isinstance(event, SNAPSHOT_EVENTS):
            snapshot = snapshots.get(event.snapshot_id) or SnapshotState(
                snapshot_id=event.snapshot_id
            )
            snapshots[event.snapshot_id] = evolve_snapshot(snapshot, event)
        elif isinstance(event, ACCOUNT_EVENTS):
            account = accounts.get(event.project) or AccountState(project=event.project)
            accounts[event.project] = evolve_account(account, event)
        elif isinstance(event, POOL_EVENTS):
            member = members.get(event.member_id) or MemberState(member_id=event.member_id)
            members[event.member_id] = evolve_member(member, event)
        elif not isinstance(event, NOT_SANDBOX_EVENTS):
            sandbox = sandboxes.get(event.sandbox_id) or SandboxState(sandbox_id=event.sandbox_id)
            sandboxes[event.sandbox_id] = evolve(sandbox, event)
    kinds: dict[str, dict[str, Any]] = {
        "sandboxes": sandboxes,
        "snapshots": snapshots,
        "accounts": accounts,
        "members": members,
    }
    return {
        kind: {key: as_json(state) for key, state in by_id.items()} for kind, by_id in kinds.items()
    }


def assert_folds_to(states: dict[str, Any], expected: dict[str, Any]) -> None:
    """The folded ``states`` (one kind, by id) are the stored ones, each holding at least what
    was stored (a state may have gained fields since)."""
    assert set(states) == set(expected)
    for key, state in states.items():
        assert contains(state, expected[key]), key
