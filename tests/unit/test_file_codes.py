"""Every ``code`` a file worker's ``done`` carries reaches the caller as the error of the
tree it names (transfer.py's ``_ERRORS``), and over HTTP as its status (gateway/files.py).
docs/protocol.md#files and docs/http-api.md#exec-and-files list the same."""

from __future__ import annotations

import json

import pytest
from fastapi.responses import JSONResponse

from sandboxer.client.http_errors import error_for
from sandboxer.errors import (
    CommandFailed,
    ConfigError,
    ExtensionError,
    InvalidInput,
    PathRefused,
    RateLimited,
    SandboxerError,
    ServiceNotRunning,
    Unsupported,
    WorkspaceRefused,
)
from sandboxer.gateway.errors import response_for
from sandboxer.gateway.files import _refusal
from sandboxer.transfer import _error

CODES: dict[str, tuple[type[SandboxerError], int]] = {
    "path_refused": (PathRefused, 400),
    "workspace_refused": (WorkspaceRefused, 400),
    "invalid_input": (InvalidInput, 422),
    "unsupported": (Unsupported, 501),
    "frozen": (CommandFailed, 409),
    "config": (ConfigError, 500),
    "worker_stopped": (ServiceNotRunning, 503),
    # the backend or the worker failed
    "extension": (ExtensionError, 502),
    "host_unreachable": (ExtensionError, 502),
    "error": (ExtensionError, 502),
}


def answered(exc: SandboxerError) -> JSONResponse:
    """The gateway's answer: its own refusals, else the app's handlers'."""
    try:
        return _refusal(exc)
    except SandboxerError as raised:
        return response_for(raised)


@pytest.mark.parametrize(("code", "expected"), CODES.items())
def test_each_code_is_its_error_and_status(
    code: str, expected: tuple[type[SandboxerError], int]
) -> None:
    kind, status = expected
    error = _error({"error": "why", "code": code}, "sbx1")
    assert type(error) is kind
    assert error.sandbox_id == "sbx1"
    assert answered(error).status_code == status


def test_a_paused_sandbox_is_the_same_rejection_on_both_transports() -> None:
    on_bus = _error({"error": "sandbox sbx1 is paused", "code": "frozen"}, "sbx1")
    answer = answered(on_bus)
    body = json.loads(bytes(answer.body))
    assert body["error"]["code"] == "frozen"
    over_http = error_for(answer.status_code, body, sandbox_id="sbx1")
    assert isinstance(over_http, CommandFailed)
    assert isinstance(on_bus, CommandFailed)
    assert over_http.event["type"] == on_bus.event["type"] == "rejected"
    assert over_http.event["code"] == on_bus.event["code"] == "frozen"


def test_a_keys_copy_past_its_rate_is_rate_limited_with_the_wait_it_says() -> None:
    """A copy refused for the key's rate on the bus (workers/key_reach.py): RateLimited with
    the ``retry_after`` the ``done`` carries, and a 429 saying when should it reach HTTP."""
    done = {"ok": False, "error": "key k may make 5 requests a second", "code": "rate_limited"}
    error = _error({**done, "retry_after": 0.2}, "sbx1")
    assert isinstance(error, RateLimited)
    assert (error.code, error.retry_after) == ("rate_limited", 0.2)
    answer = answered(error)
    assert (answer.status_code, answer.headers["retry-after"]) == (429, "1")
    for unreadable in ("soon", -1, True, 10**9):  # what a worker says is not trusted blindly
        refused = _error({**done, "retry_after": unreadable}, "sbx1")
        assert isinstance(refused, RateLimited)
        assert refused.retry_after is None
