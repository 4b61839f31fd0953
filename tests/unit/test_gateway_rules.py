"""The gateway's pure parts: statuses of errors, ?wait=, SANDBOXER_HTTP_ADDR, SSE resume."""

from __future__ import annotations

import json

import pytest

from sandboxer.config.settings import DEFAULT_HTTP_MAX_STREAMS, Settings, parse_http_addr
from sandboxer.errors import (
    BusError,
    CommandFailed,
    InvalidInput,
    RequestError,
    ServiceNotRunning,
    SettingError,
    ViewBehind,
    WorkerLost,
)
from sandboxer.gateway.context import parse_wait
from sandboxer.gateway.errors import REJECTION_STATUS, rejection_response, response_for
from sandboxer.gateway.events import EventFilter, start_after
from sandboxer.gateway.streams import KeyStreams

PROTOCOL_CODES = {
    "malformed", "too_large", "invalid_field", "invalid_id", "invalid_input", "missing_input",
    "unknown_command", "unknown_profile", "no_route", "sandbox_exists", "unknown_sandbox",
    "already_destroyed", "not_recreatable", "not_rerouting", "ttl_max_exceeded", "no_ttl",
    "not_extendable", "not_ready", "not_due", "not_snapshottable", "snapshot_unsupported",
    "pause_unsupported", "not_pausable", "already_paused", "not_paused", "snapshot_in_progress",
    "snapshot_exists", "not_restorable", "unknown_snapshot", "already_deleted", "no_host",
    "insufficient_credits", "budget_exceeded", "invalid_project", "invalid_amount", "forbidden",
    "internal_error", "live_limit", "live_count_unavailable", "rate_limited",
}  # fmt: skip


def body(response: object) -> dict[str, object]:
    return dict(json.loads(response.body))  # type: ignore[attr-defined]


def test_every_rejection_code_of_the_protocol_has_a_status() -> None:
    assert set(REJECTION_STATUS) >= PROTOCOL_CODES
    assert REJECTION_STATUS["insufficient_credits"] == 402
    assert REJECTION_STATUS["unknown_sandbox"] == 404
    assert all(400 <= s < 600 for s in REJECTION_STATUS.values())


def test_a_rejection_keeps_its_code_and_reason_verbatim() -> None:
    event = {"type": "rejected", "code": "budget_exceeded", "reason": "over the day's budget"}
    response = response_for(CommandFailed("create rejected: over the day's budget", event))
    assert response.status_code == 402
    assert body(response) == {
        "error": {
            "code": "budget_exceeded",
            "message": "over the day's budget",
            "details": {"event": event},
        }
    }


def test_a_keys_live_limit_rejection_answers_as_the_gateways_own_check() -> None:
    """The control worker's ``live_limit`` (a create the gateway's fast path let through, as
    two racing creates may) is the same 429 with Retry-After as the gateway's."""
    event = {"type": "rejected", "code": "live_limit", "reason": "project alpha has 1 live"}
    response = response_for(CommandFailed("create rejected", event))
    assert response.status_code == 429
    assert int(response.headers["retry-after"]) >= 1
    assert body(response)["error"]["code"] == "live_limit"  # type: ignore[index]


def test_a_keys_rate_rejection_on_the_bus_reads_over_http_as_a_429_with_its_wait() -> None:
    """A key's command refused for its rate on the bus (workers/key_rate.py), read back over
    HTTP (its status URL answers with ``rejection_response`` too): the wait it said, in
    whole seconds; a rejection that said none waits the usual 30 s."""
    event = {"type": "rejected", "code": "rate_limited", "reason": "slow", "retry_after": 0.2}
    response = response_for(CommandFailed("destroy rejected", event))
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"
    assert body(response)["error"]["details"] == {"event": event}  # type: ignore[index]
    limited = rejection_response("rate_limited", "slow", {"event": event}, 2.5)
    assert (limited.status_code, limited.headers["retry-after"]) == (429, "3")
    live = rejection_response("live_limit", "full", wait=None)
    assert (live.status_code, live.headers["retry-after"]) == (429, "30")
    assert "retry-after" not in rejection_response("not_ready", "no", wait=5).headers


@pytest.mark.parametrize("code", ["no_route", "no_host", "live_count_unavailable"])
def test_a_rejection_nothing_can_serve_now_is_a_503_saying_when_to_try_again(code: str) -> None:
    response = response_for(CommandFailed("rejected", {"type": "rejected", "code": code}))
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) >= 1


@pytest.mark.parametrize(
    ("code", "status"),
    [("provider_quota", 429), ("provider_unavailable", 503), ("invalid_input", 422), (None, 502)],
)
def test_a_failed_sandbox_answers_by_its_code(code: str | None, status: int) -> None:
    event = {"type": "failed", "reason": "it broke", "stage": "provision", "code": code}
    response = response_for(CommandFailed("failed", event))
    assert response.status_code == status
    assert body(response)["error"]["message"] == "it broke"  # type: ignore[index]


def test_bus_errors_and_bad_requests() -> None:
    assert response_for(ServiceNotRunning("no service")).status_code == 503
    assert response_for(BusError("down")).status_code == 503
    assert response_for(BusError("down")).headers["Retry-After"] == "5"
    # An exec whose worker went silent may still run: nothing invites running it again.
    lost = response_for(WorkerLost("the worker stopped answering"))
    assert (lost.status_code, body(lost)["error"]["code"]) == (503, "worker_lost")  # type: ignore[index]
    assert "Retry-After" not in lost.headers
    bad = response_for(RequestError("sandboxer.query.usage.list: since must be a date"))
    assert bad.status_code == 400
    assert body(bad)["error"]["message"] == "since must be a date"  # type: ignore[index]
    assert response_for(InvalidInput("bad id")).status_code == 422
    # A projector that just started, its view behind the log: ask again shortly.
    behind = response_for(ViewBehind("sandboxer.query.sandbox.list: still catching up"))
    assert (behind.status_code, body(behind)["error"]["code"]) == (503, "view_behind")  # type: ignore[index]
    assert behind.headers["Retry-After"] == "5"


def test_wait_accepts_seconds_and_minutes_up_to_the_limit() -> None:
    assert parse_wait(None) == 0
    assert parse_wait("30s") == 30
    assert parse_wait("45") == 45
    assert parse_wait("2m") == 120
    for bad in ("-1", "1h", "301s", "abc", "1.5s", "", "9" * 20):
        with pytest.raises(Exception, match="wait"):
            parse_wait(bad)


def test_http_addr() -> None:
    assert parse_http_addr("off") is None
    assert parse_http_addr("127.0.0.1:8788") == ("127.0.0.1", 8788)
    assert parse_http_addr("[::1]:0") == ("::1", 0)
    assert parse_http_addr("0.0.0.0:80") == ("0.0.0.0", 80)
    for bad in ("8788", ":8788", "host:", "host:99999", "a b:1", "http://x:1", "x:-1"):
        with pytest.raises(SettingError, match="SANDBOXER_HTTP_ADDR"):
            parse_http_addr(bad)


def test_each_keys_event_streams_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SANDBOXER_HTTP_MAX_STREAMS", raising=False)
    assert Settings.from_env().http_max_streams == DEFAULT_HTTP_MAX_STREAMS
    monkeypatch.setenv("SANDBOXER_HTTP_MAX_STREAMS", "3")
    assert Settings.from_env().http_max_streams == 3
    for bad in ("0", "-1", "many"):
        monkeypatch.setenv("SANDBOXER_HTTP_MAX_STREAMS", bad)
        with pytest.raises(SettingError, match="SANDBOXER_HTTP_MAX_STREAMS"):
            Settings.from_env()
    streams = KeyStreams(limit=2)
    assert [streams.take("a") for _ in range(3)] == [True, True, False]
    assert streams.take("b")  # each key its own
    streams.release("a")
    assert [streams.take("a") for _ in range(2)] == [True, False]
    for _ in range(3):
        streams.release("a")
    assert "a" not in streams.running  # a key with none open is not kept


def test_events_resume_after_the_later_of_header_and_query() -> None:
    assert start_after(None, None) == 1
    assert start_after("41", None) == 42
    assert start_after("41", 50) == 51
    assert start_after(None, 7) == 8


def test_event_filter() -> None:
    ready = {"type": "ready", "actor": {"type": "agt", "id": "a", "project": "acme"}}
    credits = {"type": "credits_added", "project": "acme", "actor": {"type": "adm", "id": "o"}}
    assert EventFilter().matches(ready)
    assert EventFilter(types={"ready"}).matches(ready)
    assert not EventFilter(types={"failed"}).matches(ready)
    assert EventFilter(project="acme").matches(ready)
    assert EventFilter(project="acme").matches(credits)
    assert not EventFilter(project="other").matches(ready)
    assert not EventFilter(project="acme").matches({"type": "ready", "actor": None})
