"""Consumer attribution (docs/protocol.md#consumer-attribution): a create's or restore's
``consumer`` is checked, recorded in ``requested``, folded into the state, kept in the view's
columns, filtered by ``list`` and grouped by ``usage``. Pure rules and the real SQLite view."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from sandboxer.commands.parse import InvalidCommand, parse_command
from sandboxer.commands.types import CreateSandbox, RestoreSnapshot
from sandboxer.domain.sandbox_decide import AdmittedCreate, decide
from sandboxer.domain.sandbox_state import SandboxState, evolve
from sandboxer.errors import RequestError
from sandboxer.events.types import Actor, ConsumerRecord, SandboxRequested, UsageMetered
from sandboxer.projections.account_rows import AccountRows, answer_account_query
from sandboxer.projections.consumer_filter import consumer_filter
from sandboxer.projections.sandbox_view import SandboxView
from sandboxer.statehub.body import SandboxContext, fold_context

ACTOR = {"type": "agt", "id": "agent-7", "project": "p"}
NOW = "2026-12-02T10:00:00.000Z"
CONSUMER = {
    "harness": "agent-harness",
    "session_id": "sess-42",
    "run_id": "run/2026-12-02:1",
    "job_id": "job@7",
    "labels": {"team": "core", "tier": "gold silver"},
}


def create(consumer: object, verb: str = "create") -> bytes:
    body: dict[str, Any] = {"command_id": "c1", "actor": ACTOR, "consumer": consumer}
    if verb == "create":
        body["profile"] = "profile.local"
    else:
        body["snapshot_id"] = "snap0001"
    return json.dumps(body).encode()


def test_a_create_and_a_restore_carry_a_consumer() -> None:
    made = parse_command("sandboxer.cmd.create", create(CONSUMER))
    assert isinstance(made, CreateSandbox)
    assert made.consumer is not None
    assert made.consumer.harness == "agent-harness"
    assert made.consumer.labels == {"team": "core", "tier": "gold silver"}
    restored = parse_command("sandboxer.cmd.restore", create({"harness": "code-gen"}, "restore"))
    assert isinstance(restored, RestoreSnapshot)
    assert restored.consumer is not None
    assert restored.consumer.harness == "code-gen"


@pytest.mark.parametrize(
    ("consumer", "code", "fragment"),
    [
        ({"harness": "Agent Harness"}, "invalid_consumer", "consumer.harness"),
        ({"harness": "a" * 65}, "invalid_consumer", "consumer.harness"),
        ({"session_id": "x\ny"}, "invalid_consumer", "consumer.session_id"),
        ({"run_id": "-starts-with-dash"}, "invalid_consumer", "consumer.run_id"),
        ({"job_id": "j" * 129}, "invalid_consumer", "consumer.job_id"),
        ({"labels": {f"k{i}": "v" for i in range(17)}}, "invalid_consumer", "limit is 16"),
        ({"labels": {'a"b': "v"}}, "invalid_consumer", "label key"),
        ({"labels": {"Team": "v"}}, "invalid_consumer", "label key"),
        ({"labels": {"team": "\x1b[31m"}}, "invalid_consumer", "printable"),
        ({"labels": {"team": "v" * 257}}, "invalid_consumer", "printable"),
        ({"labels": {"team": 7}}, "invalid_field", "labels"),
        ({"harness": "h", "owner": "me"}, "invalid_field", "owner"),
        ("agent-harness", "invalid_field", "consumer"),
    ],
)
def test_a_hostile_consumer_is_refused_with_a_reason(
    consumer: object, code: str, fragment: str
) -> None:
    with pytest.raises(InvalidCommand) as caught:
        parse_command("sandboxer.cmd.create", create(consumer))
    assert caught.value.code == code
    assert fragment in caught.value.reason
    assert caught.value.command_id == "c1"  # so the rejection is recorded as an event


def requested_state(sandbox_id: str, consumer: dict[str, Any] | None) -> SandboxState:
    command = parse_command(
        "sandboxer.cmd.create",
        json.dumps(
            {
                "command_id": f"c-{sandbox_id}",
                "actor": ACTOR,
                "profile": "profile.local",
                "sandbox_id": sandbox_id,
                **({"consumer": consumer} if consumer is not None else {}),
            }
        ).encode(),
    )
    assert isinstance(command, CreateSandbox)
    admitted = AdmittedCreate(
        command=command,
        sandbox_id=sandbox_id,
        profile_version=1,
        inputs={},
        extension="ext.local",
        route_reason="fixed by profile",
    )
    state = SandboxState(sandbox_id=sandbox_id)
    for event in decide(state, admitted, NOW):
        state = evolve(state, event)
    return state


def test_requested_records_the_consumer_and_the_state_keeps_it() -> None:
    state = requested_state("sandbox0001", CONSUMER)
    assert state.consumer == msgspec.convert(CONSUMER, ConsumerRecord)
    # The recorded type is the event's tolerant record, not the command's strict one.
    assert type(state.consumer) is ConsumerRecord
    assert requested_state("sandbox0002", None).consumer is None


def test_an_older_requested_without_a_consumer_decodes_to_none() -> None:
    old = {
        "type": "requested",
        "sandbox_id": "sandbox0001",
        "command_id": "c1",
        "actor": ACTOR,
        "at": NOW,
        "profile": "profile.local",
        "profile_version": 1,
    }
    event = msgspec.json.decode(json.dumps(old).encode(), type=SandboxRequested)
    assert event.consumer is None
    newer = {**old, "consumer": {"harness": "h", "added_later": 1}}
    assert msgspec.convert(newer, SandboxRequested).consumer == ConsumerRecord(harness="h")


def test_the_state_hub_body_names_the_consumer() -> None:
    state = requested_state("sandbox0001", CONSUMER)
    event = SandboxRequested(
        sandbox_id="sandbox0001",
        command_id="c1",
        actor=Actor(type="agt", id="agent-7", project="p"),
        at=NOW,
        profile="profile.local",
        profile_version=1,
        consumer=state.consumer,
    )
    context = fold_context(SandboxContext(sandbox_id="sandbox0001"), event)
    assert context.consumer is not None
    assert context.consumer["harness"] == "agent-harness"
    assert context.consumer["labels"] == {"team": "core", "tier": "gold silver"}
    assert context.consumer["actor_id"] == "agent-7"


def usage(sandbox_id: str, seconds: int, amount: int) -> UsageMetered:
    return UsageMetered(
        project="p",
        command_id=f"meter-{sandbox_id}",
        actor=Actor(type="atm", id="sandboxer"),
        at=NOW,
        sandbox_id=sandbox_id,
        extension="ext.local",
        profile="profile.local",
        seconds=seconds,
        amount=amount,
    )


async def test_list_filters_and_usage_groups_by_the_consumer(tmp_path: Path) -> None:
    view = await SandboxView.open(tmp_path / "view.db")
    try:
        states = [
            requested_state("sandbox0001", CONSUMER),
            requested_state("sandbox0002", {"harness": "agent-harness", "session_id": "other"}),
            requested_state("sandbox0003", {"harness": "code-gen", "labels": {"team": "core"}}),
            requested_state("sandbox0004", None),
        ]
        rows = AccountRows()
        for index, state in enumerate(states, start=1):
            await rows.apply(usage(state.sandbox_id, 10 * index, 100 * index), index, None)
        await view.save([(s, i) for i, s in enumerate(states, 1)], [], 4, accounts=rows)

        async def listed(**request: Any) -> list[str]:
            found = await view.list_states(consumer=consumer_filter(request))
            return [s.sandbox_id for s in found]

        assert await listed(harness="agent-harness") == ["sandbox0001", "sandbox0002"]
        assert await listed(harness="agent-harness", session_id="sess-42") == ["sandbox0001"]
        assert await listed(run_id="run/2026-12-02:1", job_id="job@7") == ["sandbox0001"]
        assert await listed(labels={"team": "core"}) == ["sandbox0001", "sandbox0003"]
        assert await listed(labels={"team": "core", "tier": "gold silver"}) == ["sandbox0001"]
        assert await listed(harness="nobody") == []
        assert len(await listed()) == 4

        reply = await answer_account_query("usage.list", view.db, {"by": "harness"}, now=NOW)
        assert reply["by"] == "harness"
        assert reply["summary"] == [
            {"harness": None, "sandboxes": 1, "seconds": 40, "amount": 400, "byok_sandboxes": 0},
            {
                "harness": "agent-harness",
                "sandboxes": 2,
                "seconds": 30,
                "amount": 300,
                "byok_sandboxes": 0,
            },
            {
                "harness": "code-gen",
                "sandboxes": 1,
                "seconds": 30,
                "amount": 300,
                "byok_sandboxes": 0,
            },
        ]
        assert reply["total"]["amount"] == 1000
        with pytest.raises(RequestError, match="grouped by"):
            await answer_account_query("usage.list", view.db, {"by": "profile; DROP"}, now=NOW)
    finally:
        await view.close()


@pytest.mark.parametrize(
    ("request_", "fragment"),
    [
        ({"harness": 7}, "must be a string"),
        ({"harness": "Bad Name"}, "consumer.harness"),
        ({"labels": ["team=core"]}, "object of strings"),
        ({"labels": {"x') OR 1=1 --": "v"}}, "label key"),
        ({"labels": {f"k{i}": "v" for i in range(17)}}, "at most 16"),
    ],
)
def test_a_hostile_filter_is_refused(request_: dict[str, Any], fragment: str) -> None:
    with pytest.raises(RequestError) as caught:
        consumer_filter(request_)
    assert fragment in caught.value.message
