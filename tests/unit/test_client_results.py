"""The public client's typed results, read from the service's JSON (no I/O).

They must be forward compatible: a newer service may add fields, leave some out or
change a type, and an older client still reads what it knows and keeps the rest in
``raw``."""

from __future__ import annotations

import base64

import msgspec
import pytest

from sandboxer.client import (
    Accepted,
    Account,
    Event,
    ExecResult,
    RouteExplanation,
    Sandbox,
    Snapshot,
    Usage,
)

ROW = {
    "sandbox_id": "mysandbox01",
    "status": "ready",
    "version": 4,
    "profile": "profile.local",
    "inputs": {},
    "extension": "ext.local",
    "host": None,
    "actor": {"type": "agt", "id": "agent-7", "project": "demo"},
    "generation": 1,
    "reachability": {"kind": "local"},
    "failure": None,
    "expires_at": "2026-11-23T12:19:04.120Z",
    "created_at": "2026-11-23T08:19:04.120Z",
    "updated_at": "2026-11-23T08:19:04.151Z",
}


def test_a_sandbox_row_reads_its_known_fields() -> None:
    sandbox = Sandbox.from_row(ROW)
    assert sandbox.sandbox_id == "mysandbox01"
    assert sandbox.status == "ready"
    assert sandbox.is_live
    assert (sandbox.profile, sandbox.extension, sandbox.host) == (
        "profile.local",
        "ext.local",
        None,
    )
    assert sandbox.project == "demo"
    assert sandbox.generation == 1
    assert sandbox.expires_at == "2026-11-23T12:19:04.120Z"
    assert sandbox.raw == ROW


def test_a_newer_services_row_does_not_break_an_older_client() -> None:
    newer = {
        **ROW,
        "status": "hibernating",  # a status this client does not know
        "generation": "two",  # a type that changed
        "shiny_new_field": {"x": 1},
    }
    del newer["expires_at"]
    sandbox = Sandbox.from_row(newer)
    assert sandbox.status == "hibernating"
    assert not sandbox.is_live
    assert sandbox.generation is None
    assert sandbox.expires_at is None
    assert sandbox.raw["shiny_new_field"] == {"x": 1}


def test_results_are_frozen_and_encode_as_json() -> None:
    sandbox = Sandbox.from_row(ROW)
    with pytest.raises(AttributeError):
        sandbox.status = "destroyed"  # type: ignore[misc]
    assert msgspec.json.decode(msgspec.json.encode(sandbox))["sandbox_id"] == "mysandbox01"


def test_a_snapshot_row() -> None:
    row = {
        "snapshot_id": "snpabcdefgh",
        "status": "created",
        "sandbox_id": "mysandbox01",
        "name": "before-upgrade",
        "size": 10240,
        "sha256": "ab" * 32,
        "bucket": "x",
    }
    snapshot = Snapshot.from_row(row)
    assert (snapshot.snapshot_id, snapshot.status, snapshot.name) == (
        "snpabcdefgh",
        "created",
        "before-upgrade",
    )
    assert snapshot.size == 10240
    assert snapshot.raw["bucket"] == "x"


def test_accepted_carries_the_ids() -> None:
    accepted = Accepted.from_row({"command_id": "c1", "sandbox_id": "sbx12345678"})
    assert (accepted.command_id, accepted.sandbox_id, accepted.snapshot_id) == (
        "c1",
        "sbx12345678",
        None,
    )


def test_an_http_exec_answer_is_decoded() -> None:
    answer = {
        "exit_code": 0,
        "stdout": base64.b64encode(b"SHOUT\n").decode(),
        "stderr": "",
        "timed_out": False,
        "stdout_truncated": True,
    }
    result = ExecResult.from_http(answer)
    assert (result.exit_code, result.stdout, result.stderr) == (0, b"SHOUT\n", b"")
    assert result.ok
    assert result.stdout_truncated
    assert not result.stderr_truncated
    killed = ExecResult.from_http({"exit_code": None, "stdout": "", "timed_out": True})
    assert killed.exit_code is None
    assert killed.timed_out
    assert not killed.ok


def test_an_event_keeps_its_sequence_and_data() -> None:
    data = {"type": "ready", "v": 1, "sandbox_id": "mysandbox01", "command_id": "c1"}
    event = Event.from_log(42, data)
    assert (event.seq, event.type, event.sandbox_id) == (42, "ready", "mysandbox01")
    assert event.data == data
    account_event = Event.from_log(43, {"type": "credits_added", "project": "acme"})
    assert account_event.sandbox_id is None


def test_an_account_usage_and_a_route_explanation() -> None:
    account = Account.from_row(
        {"project": "acme", "balance": 5_000_000, "reserved": 0, "available": 5_000_000}
    )
    assert (account.project, account.balance, account.available) == ("acme", 5_000_000, 5_000_000)
    assert account.budget is None

    usage = Usage.from_reply(
        {
            "ok": True,
            "usage": [
                {"sandbox_id": "sbx1abcdefg", "project": "acme", "seconds": 12.5, "amount": 3},
                "not a row",
            ],
            "summary": [{"project": "acme", "sandboxes": 1}],
            "total": {"sandboxes": 1, "seconds": 12.5, "amount": 3},
            "unit": "micro-USD",
        }
    )
    assert [row.sandbox_id for row in usage.rows] == ["sbx1abcdefg"]
    assert usage.rows[0].seconds == 12.5
    assert usage.total["amount"] == 3
    assert usage.unit == "micro-USD"

    explained = RouteExplanation.from_reply(
        {"decision": {"chosen": "ext.local", "reason": "only candidate"}, "signals": {}, "at": "t"}
    )
    assert (explained.chosen, explained.reason, explained.at) == (
        "ext.local",
        "only candidate",
        "t",
    )
    assert RouteExplanation.from_reply({}).chosen is None
