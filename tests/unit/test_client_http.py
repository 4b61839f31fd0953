"""The HTTP transport's pure parts: error answers mapped to the one error tree, and the
Server-Sent Events reader (docs/http-api.md#errors, #live-events-server-sent-events)."""

from __future__ import annotations

import pytest

from sandboxer.client.http_errors import error_for, parse_retry_after
from sandboxer.client.sse import SseMessage, SseParser
from sandboxer.errors import (
    AccessDenied,
    BusError,
    CommandFailed,
    ExtensionError,
    InvalidInput,
    NotFound,
    PathRefused,
    RateLimited,
    RequestError,
    SandboxerError,
    ServiceNotRunning,
    Unsupported,
    ViewBehind,
    WorkerLost,
    WorkspaceRefused,
)


def body(code: str, message: str = "why", **details: object) -> dict[str, object]:
    error: dict[str, object] = {"code": code, "message": message}
    if details:
        error["details"] = details
    return {"error": error}


def test_a_rejected_command_is_command_failed_with_its_event() -> None:
    event = {"type": "rejected", "code": "insufficient_credits", "reason": "need 1800"}
    exc = error_for(402, body("insufficient_credits", "need 1800", event=event))
    assert isinstance(exc, CommandFailed)
    assert exc.event == event
    assert exc.message == "need 1800"


def test_a_failed_sandbox_is_command_failed_even_on_a_quota() -> None:
    event = {"type": "failed", "code": "provider_quota", "reason": "429", "retryable": True}
    exc = error_for(429, body("provider_quota", event=event), {"retry-after": "30"})
    assert isinstance(exc, CommandFailed)
    assert exc.event["code"] == "provider_quota"


@pytest.mark.parametrize("code", ["unknown_sandbox", "unknown_snapshot"])
def test_what_does_not_exist_is_not_found(code: str) -> None:
    plain = error_for(404, body(code, "no sandbox x"), sandbox_id="sbx12345678")
    assert isinstance(plain, NotFound)
    assert plain.code == code
    assert plain.sandbox_id == "sbx12345678"
    rejected = error_for(404, body(code, event={"type": "rejected", "code": code}))
    assert isinstance(rejected, NotFound)


def test_an_unknown_profile_stays_a_rejected_command() -> None:
    event = {"type": "rejected", "code": "unknown_profile", "reason": "no profile x"}
    exc = error_for(422, body("unknown_profile", "no profile x", event=event))
    assert isinstance(exc, CommandFailed)
    assert not isinstance(exc, NotFound)


def test_the_keys_refusals() -> None:
    unauthorized = error_for(401, body("unauthorized", "no key"))
    assert isinstance(unauthorized, AccessDenied)
    assert unauthorized.code == "unauthorized"
    forbidden = error_for(403, body("forbidden", "another project"))
    assert isinstance(forbidden, AccessDenied)
    assert forbidden.code == "forbidden"
    limited = error_for(429, body("rate_limited", "slow down"), {"retry-after": "3"})
    assert isinstance(limited, RateLimited)
    assert limited.retry_after == 3.0
    live = error_for(429, body("live_limit", "10 live"), {})
    assert isinstance(live, RateLimited)
    assert (live.code, live.retry_after) == ("live_limit", None)


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (400, "path_refused", PathRefused),
        (400, "workspace_refused", WorkspaceRefused),
        (413, "workspace_refused", WorkspaceRefused),
        (422, "invalid_request", InvalidInput),
        (400, "malformed", InvalidInput),
        (400, "bad_request", RequestError),
        (501, "unsupported", Unsupported),
        (502, "pause_failed", ExtensionError),
        (503, "service_not_running", ServiceNotRunning),
        (503, "bus", BusError),
        (503, "worker_lost", WorkerLost),
        (503, "view_behind", ViewBehind),
        (500, "internal_error", BusError),
    ],
)
def test_every_status_maps_into_the_tree(status: int, code: str, kind: type[Exception]) -> None:
    exc = error_for(status, body(code, "the reason"))
    assert type(exc) is kind
    assert exc.message == "the reason" or "the reason" in exc.message


def test_a_state_refusal_without_an_event_is_a_rejection() -> None:
    exc = error_for(409, body("not_ready", "destroyed"), sandbox_id="sbx12345678")
    assert isinstance(exc, CommandFailed)
    assert exc.event == {
        "type": "rejected",
        "code": "not_ready",
        "reason": "destroyed",
        "sandbox_id": "sbx12345678",
    }


@pytest.mark.parametrize("answer", [None, "text", {"error": "flat"}, {"error": {"code": 5}}, []])
def test_an_answer_out_of_shape_is_still_an_error_of_the_tree(answer: object) -> None:
    exc = error_for(404, answer)
    assert isinstance(exc, SandboxerError)
    assert exc.message


def test_retry_after_is_whole_seconds_or_nothing() -> None:
    assert parse_retry_after("30") == 30.0
    assert parse_retry_after(" 2 ") == 2.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert parse_retry_after("-1") is None


def feed(parser: SseParser, text: str) -> list[SseMessage]:
    messages = []
    for line in text.split("\n"):
        message = parser.feed(line)
        if message is not None:
            messages.append(message)
    return messages


def test_sse_messages_as_the_gateway_sends_them() -> None:
    stream = (
        'event: requested\nid: 7\ndata: {"type":"requested"}\n\n'
        ": ping\n\n"
        'event: ready\nid: 9\ndata: {"type":"ready"}\n\n'
    )
    assert feed(SseParser(), stream) == [
        SseMessage(id="7", event="requested", data='{"type":"requested"}'),
        SseMessage(id="9", event="ready", data='{"type":"ready"}'),
    ]


def test_sse_multi_line_data_and_a_kept_id() -> None:
    messages = feed(SseParser(), "id: 3\ndata: a\ndata:b\n\ndata: c\n\n")
    assert messages == [
        SseMessage(id="3", event="message", data="a\nb"),
        SseMessage(id="3", event="message", data="c"),  # the last id stays until a new one
    ]


def test_sse_a_message_without_data_is_not_dispatched() -> None:
    assert feed(SseParser(), "event: ready\nid: 4\n\n") == []


async def test_a_live_stream_that_goes_silent_is_resumed_after_its_last_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A connection that dies without closing (a NAT drops it) sent nothing more, and the
    client, reading with no timeout, waited for ever; it now resumes after the last event."""
    import asyncio

    import httpx

    from sandboxer.client import http as client_http

    monkeypatch.setattr(client_http, "STREAM_SILENCE", 0.5)
    monkeypatch.setattr(client_http, "POLL_INTERVAL", 0.01)
    resumed_after: list[str] = []
    connections: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        last = next(
            (
                line.split(":", 1)[1].strip()
                for line in head.split("\r\n")
                if line.lower().startswith("last-event-id:")
            ),
            "",
        )
        resumed_after.append(last)
        seq = int(last or 0) + 1
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        body = f'id: {seq}\nevent: touched\ndata: {{"type": "touched", "n": {seq}}}\n\n'.encode()
        writer.write(f"{len(body):x}\r\n".encode() + body + b"\r\n")
        await writer.drain()
        await asyncio.sleep(30)  # then silence, the connection left open

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport = client_http.HttpTransport(httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}"))
    seen: list[int] = []
    try:
        async with asyncio.timeout(10):
            async for seq, _event in transport.events(
                sandbox_id=None, follow=True, after=0, types=()
            ):
                seen.append(seq)
                if len(seen) == 2:
                    break
    finally:
        await transport.http.aclose()
        server.close()
        for writer in connections:  # the silent ones the client left: closed, not leaked
            writer.close()
        await server.wait_closed()
    assert seen == [1, 2]
    assert resumed_after[:2] == ["", "1"]


def test_a_keys_limit_refused_by_the_control_worker_is_rate_limited() -> None:
    """The control worker's live_limit rejection (a create the gateway forwarded): the same
    RateLimited as the gateway's own 429, not a CommandFailed."""
    event = {"type": "rejected", "code": "live_limit", "reason": "project p has 1 live"}
    live = error_for(429, body("live_limit", "project p has 1 live", event=event), {})
    assert isinstance(live, RateLimited)
    assert (live.code, live.retry_after) == ("live_limit", 30.0)
    said = error_for(429, body("live_limit", "1 live", event=event), {"retry-after": "5"})
    assert isinstance(said, RateLimited)
    assert said.retry_after == 5.0
