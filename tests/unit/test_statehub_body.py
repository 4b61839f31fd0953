"""The State Hub's bodies, folded from events without I/O, and the page that documents them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from sandboxer.events.types import (
    Actor,
    SandboxDestroyed,
    SandboxExpired,
    SandboxFailed,
    SandboxProvisioning,
    SandboxReady,
    SandboxRequested,
    SandboxRouted,
    SandboxTouched,
    SnapshotCreated,
)
from sandboxer.statehub.body import (
    DELIVERED_TYPES,
    SandboxContext,
    fold_context,
    hub_body,
)
from sandboxer.statehub.follower import filter_subjects

PAGE = Path(__file__).resolve().parents[2] / "docs" / "integrations" / "state-hub.md"
REQUESTER = Actor(type="atm", id="validator", project="checkout")
SID = "k3v9x2m4q8r1t6w0"


def documented_body() -> dict[str, Any]:
    [block] = re.findall(r"```json\n(.*?)```", PAGE.read_text(), re.S)
    body: dict[str, Any] = json.loads(block)
    return body


def lifecycle_until_ready() -> list[Any]:
    common = {"sandbox_id": SID, "command_id": "c-7d1f0e", "actor": REQUESTER}
    return [
        SandboxRequested(
            **common,
            at="2026-12-02T09:00:00.120Z",
            profile="profile.compose-e2e",
            profile_version=1,
        ),
        SandboxRouted(
            **common,
            at="2026-12-02T09:00:00.300Z",
            extension="ext.compose-ssh",
            reason="fixed by profile",
            host="build-01",
        ),
        SandboxProvisioning(**common, at="2026-12-02T09:00:00.400Z", extension="ext.compose-ssh"),
        SandboxReady(
            **common,
            event_id="5f0c1d2e3a4b5c6d7e8f90a1b2c3d4e5",
            at="2026-12-02T09:00:04.512Z",
            reachability={"kind": "ssh"},
        ),
    ]


def fold_all(events: list[Any]) -> SandboxContext:
    context = SandboxContext(sandbox_id=SID)
    for event in events:
        context = fold_context(context, event)
    return context


def test_the_documented_example_is_what_the_code_sends_for_its_events() -> None:
    events = lifecycle_until_ready()
    context = fold_all(events)
    assert hub_body(events[-1], context, stream_seq=4182) == documented_body()


def test_the_body_is_json_and_every_documented_field_is_sent() -> None:
    events = lifecycle_until_ready()
    body = hub_body(events[0], fold_all(events[:1]), stream_seq=1)
    assert json.loads(json.dumps(body)) == body
    assert set(body) == set(documented_body())
    fields_table = PAGE.read_text().split("| field | meaning |")[1]
    for name in body:
        assert f"`{name}`" in fields_table, name


def test_the_context_follows_a_reroute_and_folding_twice_changes_nothing() -> None:
    events = lifecycle_until_ready()
    rerouted = SandboxRouted(
        sandbox_id=SID,
        command_id="c-7d1f0e",
        actor=REQUESTER,
        at="2026-12-02T09:00:02.000Z",
        extension="ext.e2b",
        reason="fallback",
    )
    context = fold_all([*events, rerouted])
    assert (context.extension_id, context.host) == ("ext.e2b", None)
    assert fold_all([*events, *events]) == fold_all(events)


def test_the_consumer_is_who_asked_and_the_actor_who_did_it() -> None:
    events = lifecycle_until_ready()
    expired = SandboxExpired(
        sandbox_id=SID,
        command_id="expire-x-4",
        actor=Actor(type="atm", id="sandboxer"),
        at="2026-12-02T10:00:00.000Z",
        cause="ttl",
        due_at="2026-12-02T10:00:00.000Z",
    )
    body = hub_body(expired, fold_all([*events, expired]), stream_seq=9)
    assert body["consumer"] == {"actor_id": "validator", "actor_type": "atm", "project": "checkout"}
    assert (body["actor_type"], body["actor_id"]) == ("atm", "sandboxer")
    assert body["detail"] == {"cause": "ttl", "due_at": "2026-12-02T10:00:00.000Z"}


def test_failed_and_snapshot_bodies_carry_their_detail() -> None:
    context = fold_all(lifecycle_until_ready())
    failed = SandboxFailed(
        sandbox_id=SID,
        command_id="c",
        actor=REQUESTER,
        at="2026-12-02T09:00:05.000Z",
        reason="no host answered",
        stage="provision",
        code="host_unreachable",
    )
    assert hub_body(failed, context, 5)["detail"] == {
        "reason": "no host answered",
        "stage": "provision",
        "code": "host_unreachable",
    }
    created = SnapshotCreated(
        snapshot_id="snap0001",
        command_id="c-snap",
        actor=REQUESTER,
        at="2026-12-02T09:10:00.000Z",
        bucket="SANDBOXER_WORKSPACES",
        object="sha256-ab",
        size=10,
        sha256="ab",
    )
    body = hub_body(created, context, 7)
    assert (body["type"], body["snapshot_id"], body["sandbox_id"]) == (
        "snapshot_created",
        "snap0001",
        SID,
    )
    assert body["profile_id"] == "profile.compose-e2e"


def test_the_consumer_filter_takes_every_delivered_type_and_no_chatter() -> None:
    filters = filter_subjects()
    for kind in DELIVERED_TYPES:
        if kind == "snapshot_created":
            assert "sandboxer.evt.snapshot.*.created" in filters
        else:
            assert f"sandboxer.evt.sandbox.*.{kind}" in filters
    assert "sandboxer.evt.sandbox.*.routed" in filters  # where extension and host come from
    assert not any(f.endswith((".touched", ".ttl_extended")) for f in filters)


def test_events_that_are_not_delivered_leave_the_context_alone() -> None:
    context = fold_all(lifecycle_until_ready())
    touched = SandboxTouched(sandbox_id=SID, command_id="c", actor=REQUESTER, at="x")
    destroyed = SandboxDestroyed(sandbox_id=SID, command_id="c", actor=REQUESTER, at="x")
    assert fold_context(context, touched) == context == fold_context(context, destroyed)
