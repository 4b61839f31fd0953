"""The first events that record a consumer and setup commands still decode, keep every field
and fold to the same state (tests/golden/README.md): the optional ``consumer`` of
``requested``, the optional ``setup`` of ``ready``, a setup that failed (``setup_failed``),
and the ``missing_consumer`` and ``invalid_consumer`` rejections."""

from __future__ import annotations

import json
from typing import Any

import msgspec

from sandboxer.domain.sandbox_state import SandboxState, evolve
from sandboxer.events.codec import current_versions, decode_event
from sandboxer.events.types import (
    NOT_SANDBOX_EVENTS,
    CommandRejected,
    SandboxFailed,
    SandboxReady,
    SandboxRequested,
    event_type,
)
from tests.unit.test_golden_events import GOLDEN, contains

EVENTS = GOLDEN / "consumer-events-2026-12-02.jsonl"
STATES = GOLDEN / "consumer-states-2026-12-02.json"
SECRET = "golden-secret-value-42"
"""The build token the recording worker held: it is in none of the stored bytes."""


def lines() -> list[dict[str, Any]]:
    return [json.loads(line) for line in EVENTS.read_text().splitlines()]


def test_every_stored_event_decodes_and_keeps_every_field() -> None:
    for line in lines():
        event = decode_event(line["body"].encode())
        assert line["subject"].endswith("." + event_type(event))
        body = json.loads(line["body"])
        if body["v"] == current_versions()[body["type"]]:
            assert contains(json.loads(msgspec.json.encode(event)), body), line["subject"]


def test_requested_records_the_consumer_and_ready_the_setup() -> None:
    consumers: dict[str, Any] = {}
    setups: dict[str, Any] = {}
    for line in lines():
        event = decode_event(line["body"].encode())
        if isinstance(event, SandboxRequested):
            consumers[event.sandbox_id] = msgspec.to_builtins(event.consumer)
        if isinstance(event, SandboxReady):
            setups[event.sandbox_id] = msgspec.to_builtins(event.setup)
    assert consumers == {
        "goldencons01": {
            "harness": "agent-harness",
            "session_id": "sess-golden-1",
            "run_id": "run-1",
            "job_id": "job-1",
            "labels": {"team": "core"},
        },
        "goldencons02": {"harness": "code-generator", "job_id": "job-2"},
        "goldencons03": {"harness": "code-generator"},
    }
    assert setups == {
        "goldencons01": [],
        "goldencons02": [
            {"index": 0, "exit_code": 0, "output_tail": "preparing"},
            {"index": 1, "exit_code": 0, "output_tail": "token [redacted]"},
        ],
    }


def test_the_failed_setup_and_the_rejections_are_on_record() -> None:
    events = [decode_event(line["body"].encode()) for line in lines()]
    [failed] = [e for e in events if isinstance(e, SandboxFailed)]
    assert (failed.code, failed.stage) == ("setup_failed", "provision")
    assert "exited with code 3" in failed.reason
    assert "token [redacted]" in failed.reason
    codes = sorted(e.code for e in events if isinstance(e, CommandRejected))
    assert codes == ["invalid_consumer", "missing_consumer"]
    assert SECRET not in EVENTS.read_text()


def test_replay_folds_the_stored_events_to_the_same_state() -> None:
    states: dict[str, SandboxState] = {}
    for line in lines():
        event = decode_event(line["body"].encode())
        if isinstance(event, NOT_SANDBOX_EVENTS):
            continue
        state = states.get(event.sandbox_id) or SandboxState(sandbox_id=event.sandbox_id)
        states[event.sandbox_id] = evolve(state, event)
    expected = json.loads(STATES.read_text())
    assert set(states) == set(expected)
    for sandbox_id, state in states.items():
        assert contains(json.loads(msgspec.json.encode(state)), expected[sandbox_id]), sandbox_id
