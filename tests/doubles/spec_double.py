"""An HTTP double of a provider that enforces the provider's published OpenAPI spec.

Every request is checked against the spec before a handler sees it, and every
answer against the spec before it is sent. What breaks the spec is refused
(400 in the provider's error shape) and recorded in ``violations``, which the
fixtures assert empty: a test passes only if our client kept to the spec.

Answers a handler gives must be statuses the spec declares for the operation.
The spec files do not declare every error a provider really sends (Daytona's
declare none; E2B's create declares no 429), so error statuses outside the
spec are sent only when a test injects them as faults (``faults``), always in
the provider's documented error shape. A provider's documented deviations
(Daytona answers 201 where its spec says 200) are listed per double. The one
fault that breaks the spec on purpose is ``answer``: a test gives the exact
body (a login page where the API should be, a list item without its id), to
show that our client refuses what the provider's spec does not describe.

The double runs uvicorn in a thread of its own, so it serves workers in
other processes and tests whose event loop is busy alike.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import uvicorn
from openapi_core import OpenAPI
from openapi_core.templating.responses.exceptions import ResponseNotFound
from openapi_core.testing import MockRequest, MockResponse
from starlette.requests import ClientDisconnect, Request
from starlette.routing import Match, Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

SPECS = Path(__file__).resolve().parents[2].parent / "shared" / "specs"
"""The providers' specs, kept outside the project (``../shared/specs``)."""

VALIDATION_HOST = "http://double.invalid"


@dataclass
class Call:
    """A request that passed the spec, as a handler sees it."""

    method: str
    pattern: str
    path_params: dict[str, str]
    query: list[tuple[str, str]]
    headers: Mapping[str, str]
    body: Any


@dataclass
class Answer:
    status: int
    body: Any = None


Handler = Callable[[Call], Awaitable[Answer]]


FaultKind = Literal["latency", "status", "hang", "lost", "answer"]


@dataclass
class Fault:
    kind: FaultKind
    """latency: act and answer ``seconds`` late (and, given ``until``, not before it is set);
    status: answer ``status`` without acting; hang: never act, answer after ``seconds`` (the
    client has timed out); lost: act, then answer after ``seconds``; answer: answer
    ``status`` with ``body`` as given, without acting (not the spec's)."""
    method: str | None = None
    pattern: str | None = None
    status: int = 500
    seconds: float = 0.0
    times: int = 1
    body: Any = None
    """For ``answer``: bytes or text sent as they are (as ``content_type``), else JSON."""
    content_type: str = "application/json"
    until: threading.Event | None = None
    """For ``latency``: the request is held until the test sets it, so a test orders it
    after what it waits for rather than guessing how long that takes."""


@dataclass
class Faults:
    """Faults to inject into the next matching requests (thread-safe: tests add, the double takes)."""

    pending: list[Fault] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: FaultKind, **how: Any) -> None:
        with self._lock:
            self.pending.append(Fault(kind, **how))

    def take(self, method: str, pattern: str) -> Fault | None:
        with self._lock:
            for fault in self.pending:
                if fault.method not in {None, method} or fault.pattern not in {None, pattern}:
                    continue
                fault.times -= 1
                if fault.times <= 0:
                    self.pending.remove(fault)
                return fault
        return None


class SpecDouble:
    """The ASGI app: spec checks, auth, faults, then the provider double's handlers."""

    def __init__(
        self,
        spec_file: str,
        routes: Mapping[tuple[str, str], Handler],
        *,
        error_body: Callable[[int, str, str], dict[str, Any]],
        authorized: Callable[[Mapping[str, str]], bool],
        prefix: str = "",
        deviations: Mapping[tuple[str, str], set[int]] | None = None,
    ) -> None:
        self.spec, self._openapi = _load(spec_file)
        self.routes = dict(routes)
        self._router = Router(
            [Route(prefix + pattern, _endpoint, methods=[method]) for method, pattern in routes]
        )
        self._prefix = prefix
        self._error_body = error_body
        self._authorized = authorized
        self.deviations = dict(deviations or {})
        self.faults = Faults()
        self.violations: list[str] = []
        self.calls: list[tuple[str, str]] = []
        self.handled: list[tuple[str, str, int]] = []
        """Every call a handler carried out, with the status it answered (also when the
        client had hung up by then: a request that outlived its killed caller)."""

    def declared_statuses(self, method: str, pattern: str) -> set[str]:
        return set(self.spec["paths"][pattern][method.lower()]["responses"])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        try:
            raw = await request.body()
        except ClientDisconnect:
            return  # its caller was killed mid-request (make chaos): nothing reached the provider
        method = request.method
        pattern, params = self._match(scope)
        path = request.url.path.removeprefix(self._prefix)
        if pattern is None:
            self.violations.append(f"{method} {path}: not a path this double serves")
            await self._send(send, 404, self._error_body(404, "not found", path))
            return
        self.calls.append((method, pattern))
        mock = MockRequest(
            VALIDATION_HOST,
            method.lower(),
            path,
            args=dict(request.query_params),
            headers=dict(request.headers),
            data=raw or None,
            content_type=request.headers.get("content-type", "application/json").split(";")[0],
        )
        if not self._authorized(request.headers):
            await self._answer(send, mock, method, pattern, Answer(401, None), path)
            return
        result = self._openapi.unmarshal_request(mock)
        if result.errors:
            why = "; ".join(_explain(error) for error in result.errors)
            self.violations.append(f"{method} {path}: request breaks the spec: {why}")
            await self._send(send, 400, self._error_body(400, why, path))
            return
        fault = self.faults.take(method, pattern)
        if fault is not None and fault.kind == "answer":
            await self._send_raw(send, fault.status, fault.body, fault.content_type)
            return
        if fault is not None and fault.kind == "status":
            body = self._error_body(fault.status, "injected fault", path)
            await self._send(send, fault.status, body)
            return
        if fault is not None and fault.kind == "latency":
            await asyncio.sleep(fault.seconds)
            while fault.until is not None and not fault.until.is_set():
                await asyncio.sleep(0.01)
        if fault is not None and fault.kind == "hang":
            if not await _hold(receive, fault.seconds):
                await self._send(send, 504, self._error_body(504, "injected hang", path))
            return
        call = Call(
            method=method,
            pattern=pattern,
            path_params=params,
            query=list(request.query_params.multi_items()),
            headers=request.headers,
            body=json.loads(raw) if raw else None,
        )
        answer = await self.routes[(method, pattern)](call)
        self.handled.append((method, pattern, answer.status))
        if fault is not None and fault.kind == "lost" and await _hold(receive, fault.seconds):
            return
        await self._answer(send, mock, method, pattern, answer, path)

    def _match(self, scope: Scope) -> tuple[str | None, dict[str, str]]:
        for route in self._router.routes:
            assert isinstance(route, Route)
            match, child = route.matches(scope)
            if match == Match.FULL:
                method = scope["method"]
                pattern = route.path.removeprefix(self._prefix)
                if (method, pattern) in self.routes:
                    return pattern, dict(child.get("path_params", {}))
        return None, {}

    async def _answer(
        self, send: Send, mock: MockRequest, method: str, pattern: str, answer: Answer, path: str
    ) -> None:
        body = answer.body
        if answer.status >= 400 and body is None:
            body = self._error_body(answer.status, "refused", path)
        data = b"" if body is None else json.dumps(body).encode()
        allowed_deviation = answer.status in self.deviations.get((method, pattern), set())
        if not allowed_deviation:
            response = MockResponse(
                data, status_code=answer.status, content_type="application/json"
            )
            try:
                self._openapi.validate_response(mock, response)
            except ResponseNotFound:
                self.violations.append(
                    f"{method} {pattern}: the double answered {answer.status}, which the spec "
                    "does not declare"
                )
            except Exception as exc:  # any validation failure is a violation
                self.violations.append(f"{method} {pattern}: answer breaks the spec: {exc!r}")
        await self._send(send, answer.status, body)

    @staticmethod
    async def _send(send: Send, status: int, body: Any) -> None:
        data = b"" if body is None or status == 204 else json.dumps(body).encode()
        await SpecDouble._send_raw(send, status, data, "application/json")

    @staticmethod
    async def _send_raw(send: Send, status: int, body: Any, content_type: str) -> None:
        if isinstance(body, str):
            body = body.encode()
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = [(b"content-type", content_type.encode())] if data else []
        headers.append((b"content-length", str(len(data)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})


@functools.cache
def _load(spec_file: str) -> tuple[dict[str, Any], OpenAPI]:
    """The spec and its validator, parsed once per run (Daytona's takes a second)."""
    spec = json.loads((SPECS / spec_file).read_text())
    validated = copy.deepcopy(spec)
    validated["servers"] = [{"url": VALIDATION_HOST}]
    return spec, OpenAPI.from_dict(validated)


async def _endpoint(_request: Request) -> None:  # routing only: SpecDouble answers
    raise AssertionError("never called")


def _explain(error: Exception) -> str:
    nested = getattr(error, "schema_errors", None) or getattr(error, "__cause__", None)
    if isinstance(nested, list | tuple):
        return f"{error}: " + ", ".join(str(getattr(e, "message", e)) for e in nested)
    if nested is not None:
        inner = getattr(nested, "schema_errors", None)
        if inner:
            return f"{error}: " + ", ".join(str(getattr(e, "message", e)) for e in inner)
        return f"{error}: {nested}"
    return str(error)


async def _hold(receive: Receive, seconds: float) -> bool:
    """Hold an answer for ``seconds``; True, and at once, when the client hangs up meanwhile
    (a worker killed waiting for it): nobody is left to answer, and a request held on
    would hold the double's shutdown for its full ``seconds`` (uvicorn waits for it)."""
    try:
        async with asyncio.timeout(seconds):
            while (await receive())["type"] != "http.disconnect":
                pass
    except TimeoutError:
        return False
    return True


class Served:
    """An ASGI app (a double) served by uvicorn on 127.0.0.1 in a thread of its own."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        )
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> Served:
        self._thread.start()
        for _ in range(500):
            if self._server.started:
                break
            threading.Event().wait(0.01)
        assert self._server.started, "the double did not start"
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    @property
    def url(self) -> str:
        sockets = self._server.servers[0].sockets
        port = sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"
