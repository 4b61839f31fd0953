"""The app of the HTTP API under ``/v1/`` (docs/http-api.md): the factory, the middleware
and the routers, one module per group of routes.

Each route is a thin translation: validate what the request carries, call the bus
client the CLI uses, and answer with its result or the one error shape. Commands
answer ``202 Accepted`` with a status URL at once, or wait for their outcome with
``?wait=30s`` (answering 202 all the same when the wait runs out).

- ``health.py``: ``GET /v1/health``, the one route without a key;
- ``sandboxes.py``: sandboxes and their lifecycle;
- ``snapshots.py``: snapshots, and restoring one;
- ``accounts.py``: credits, usage and route explain;
- ``catalog.py``: profiles and extensions;
- ``events.py``: event history and live streams (Server-Sent Events);
- ``files.py``: exec and files;
- ``common.py``: what they share (error answers, path ids, a command's answers).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, HTTPException
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sandboxer import __version__
from sandboxer.gateway import accounts, catalog, events, files, health, sandboxes, snapshots
from sandboxer.gateway.context import CHECKED_KEY, Gateway, key_of
from sandboxer.gateway.errors import error_response, install_error_handlers
from sandboxer.gateway.transfers import TransferLimit

__all__ = ["MAX_BODY_BYTES", "create_app"]

MAX_BODY_BYTES = 64 * 1024
"""The largest request body (a command on the bus is at most 64 KiB too)."""

MAX_HEADER_BYTES = 16 * 1024
"""The largest total of a request's header names and values."""


def create_app(gw: Gateway) -> FastAPI:
    """The ASGI app of one gateway process (``gw`` holds its bus connection and catalog)."""
    app = FastAPI(
        title="sandboxer",
        version=__version__,
        summary="Establish isolated sandboxes on many backends (docs/http-api.md).",
        openapi_url="/openapi.json",
        docs_url=None,
        redirect_slashes=False,
        redoc_url=None,
    )
    app.state.gateway = gw
    install_error_handlers(app)
    app.include_router(health.router)  # the one route without a key
    app.include_router(sandboxes.router)
    app.include_router(snapshots.router)
    app.include_router(accounts.router)  # credits, usage, route explain
    app.include_router(catalog.router)
    app.include_router(events.router)
    app.include_router(files.router)  # exec and files
    # Inside BodyLimit, which checks an exec's or a copy's key before anything else.
    app.add_middleware(
        TransferLimit, transfers=gw.transfers, applies=files.is_transfer, checked_key=CHECKED_KEY
    )
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES, gw=gw)
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        return _as_openapi_31(generate())

    app.openapi = openapi  # type: ignore[method-assign]
    return app


SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "description": "One Server-Sent Event (before OpenAPI 3.2, an event stream's schema "
    "describes each event): `id` is the stream sequence, `event` the event type and `data` "
    "the event as JSON",
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9]+$"},
        "event": {"type": "string"},
        "data": {"type": "string", "contentMediaType": "application/json"},
        "retry": {"type": "integer", "minimum": 0},
    },
    "required": ["data"],
}


def _as_openapi_31(document: dict[str, Any]) -> dict[str, Any]:
    """FastAPI describes an event stream's items with OpenAPI 3.2's ``itemSchema`` in a
    document that says 3.1, which 3.1 validators refuse: say it in 3.1's words instead
    (there a stream's ``schema`` is each event's, as schema-driven tools read it)."""
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            for answer in operation.get("responses", {}).values():
                stream = answer.get("content", {}).get("text/event-stream")
                if isinstance(stream, dict) and "itemSchema" in stream:
                    del stream["itemSchema"]
                    stream["schema"] = SSE_EVENT
    return document


class BodyLimit:
    """Refuse a request body over ``limit`` bytes with 413 in the error shape: at once when
    its Content-Length says so, else as soon as the bytes read pass it; and headers over
    MAX_HEADER_BYTES with 431.

    A request allowed a larger body (an exec, an upload) shows a valid key before any of
    its body is read: the routes' own key check runs only once the body has been read and
    parsed, and a caller with no key could otherwise have the gateway take in megabytes
    of JSON for each request it sends. A download's key is checked here too: every exec
    and copy leaves its key in the scope state for ``TransferLimit``, which caps how many
    each key runs at once."""

    def __init__(self, app: ASGIApp, limit: int, gw: Gateway) -> None:
        self.app = app
        self.limit = limit
        self.gw = gw

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if sum(len(k) + len(v) for k, v in scope["headers"]) > MAX_HEADER_BYTES:
            message = f"the request's headers are larger than {MAX_HEADER_BYTES} bytes"
            await error_response(431, "headers_too_large", message)(scope, receive, send)
            return
        limit = files.body_limit(scope, self.limit)  # uploads and execs may be larger
        length = Headers(scope=scope).get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            status, code = (413, "too_large") if length.isdigit() else (400, "bad_request")
            message = (
                f"the body is larger than {limit} bytes"
                if length.isdigit()
                else "Content-Length is not a number"
            )
            await error_response(status, code, message)(scope, receive, send)
            return
        if limit > self.limit or files.is_transfer(scope):
            try:
                key = await key_of(self.gw, Headers(scope=scope).get("authorization"))
            except HTTPException as exc:  # 401, or 503 with no bus
                detail: dict[str, Any] = exc.detail if isinstance(exc.detail, dict) else {}
                answer = error_response(
                    exc.status_code,
                    str(detail.get("code", "unauthorized")),
                    str(detail.get("message", exc.detail)),
                    headers=dict(exc.headers or {}),
                )
                await answer(scope, receive, send)
                return
            scope.setdefault("state", {})[CHECKED_KEY] = key
        total = 0

        async def limited() -> Message:
            nonlocal total
            message = await receive()
            if message["type"] == "http.request":
                total += len(message.get("body", b""))
                if total > limit:
                    raise HTTPException(
                        413,
                        {
                            "code": "too_large",
                            "message": f"the body is larger than {limit} bytes",
                        },
                    )
            return message

        await self.app(scope, limited, send)
