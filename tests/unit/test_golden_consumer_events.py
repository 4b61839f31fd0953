"""The first events that record a consumer and setup commands still decode, keep every field
and fold to the same state (tests/golden/README.md): the optional ``consumer`` of
``requested``, the optional ``setup`` of ``ready``, a setup that failed (``setup_failed``),
and the ``missing_consumer`` and ``invalid_consumer`` rejections."""

from __future__ import annotations

from typing import Any

import msgspec

from sandboxer.events.types import (
    CommandRejected,
    Event,
    SandboxFailed,
    SandboxReady,
    SandboxRequested,
)
from tests.unit.golden_files import GOLDEN, assert_folds_to, decoded_all, folded, stored_states

EVENTS = "consumer-events-2026-12-02.jsonl"
STATES = "consumer-states-2026-12-02.json"
SECRET = "golden-secret-value-42"
"""The build token the recording worker held: it is in none of the stored bytes."""


def events() -> list[Event]:
    """Every stored event, each decoding on its subject with every field."""
    return decoded_all(EVENTS)


def test_every_stored_event_decodes_and_keeps_every_field() -> None:
    assert events()


def test_requested_records_the_consumer_and_ready_the_setup() -> None:
    consumers: dict[str, Any] = {}
    setups: dict[str, Any] = {}
    for event in events():
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
    stored = events()
    [failed] = [e for e in stored if isinstance(e, SandboxFailed)]
    assert (failed.code, failed.stage) == ("setup_failed", "provision")
    assert "exited with code 3" in failed.reason
    assert "token [redacted]" in failed.reason
    codes = sorted(e.code for e in stored if isinstance(e, CommandRejected))
    assert codes == ["invalid_consumer", "missing_consumer"]
    assert SECRET not in (GOLDEN / EVENTS).read_text()


def test_replay_folds_the_stored_events_to_the_same_state() -> None:
    assert_folds_to(folded(events())["sandboxes"], stored_states(STATES))
