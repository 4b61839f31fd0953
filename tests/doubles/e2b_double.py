"""A double of E2B's control-plane API, kept to ``../shared/specs/e2b-openapi.json``.

It serves the operations ext.e2b uses (create, get, list v2, kill, timeout,
pause, resume) on :class:`SpecDouble`, which refuses any request the spec
does not allow and records any answer it does not declare. Sandboxes live in
a dict; a running sandbox past its ``endAt`` is gone, as at E2B, and a paused
one keeps until it is resumed or killed.

``STATUSES`` lists, as data, every status each handler can answer (besides
the 401 the auth check sends), so the conformance test holds them against
the spec. The create answer carries an ``envdAccessToken``, a per-sandbox
secret the adapter must never record; tests look for it in what it returns.

Use the ``e2b_double`` fixture: it serves the double on loopback and fails
the test at teardown if anything broke the spec.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

import pytest
from starlette.types import Message, Receive, Scope, Send

from tests.doubles.network_check import is_address, is_cidr, is_domain
from tests.doubles.spec_double import Answer, Call, Handler, Served, SpecDouble

__all__ = ["STATUSES", "E2bDouble", "E2bRecord", "e2b_double"]

SPEC_FILE = "e2b-openapi.json"
API_KEY = "e2b_" + "0" * 8 + secrets.token_hex(16)
"""The key the double accepts (a fresh value per run; tests pass it as settings.api_key)."""
TEMPLATES = {"base": "rki5dems9wqfm4r03t7g", "code-interpreter-v1": "nlhz8vlwyupq845jsqg3"}
"""Template aliases the double knows, and their ids (a template id is accepted too)."""

STATUSES: dict[tuple[str, str], set[int]] = {
    ("POST", "/sandboxes"): {201, 400},
    ("GET", "/v2/sandboxes"): {200, 400},
    ("GET", "/sandboxes/{sandboxID}"): {200, 404},
    ("DELETE", "/sandboxes/{sandboxID}"): {204, 404},
    ("POST", "/sandboxes/{sandboxID}/timeout"): {204, 404},
    ("POST", "/sandboxes/{sandboxID}/pause"): {204, 404, 409},
    ("POST", "/sandboxes/{sandboxID}/resume"): {201, 404, 409},
}
"""Every (method, path) the double serves, and every status its handler may answer."""

AUTH_STATUS = 401
DEFAULT_TIMEOUT = 15  # seconds, the spec's default for NewSandbox and ResumedSandbox
PAGE_LIMIT = 100

_next_token: ContextVar[dict[str, str]] = ContextVar("e2b_double_headers")


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class E2bRecord:
    """One sandbox at the double."""

    sandbox_id: str
    template_id: str
    alias: str | None
    metadata: dict[str, str]
    started_at: datetime
    end_at: datetime
    state: str = "running"
    env_vars: dict[str, str] = field(default_factory=dict)
    allow_internet_access: bool | None = None
    network: dict[str, Any] | None = None
    network_fields: dict[str, Any] = field(default_factory=dict)
    """Exactly the network fields its create carried (``allow_internet_access``, ``network``)."""
    access_token: str = field(default_factory=lambda: "envd-" + secrets.token_hex(20))
    timeouts: list[int] = field(default_factory=list)
    """Every timeout (seconds) asked for it: at create, resume and /timeout, in order."""
    owner: str | None = None
    """The key (team) that made it; None: the double's own key. Other keys do not see it."""
    keys: list[str] = field(default_factory=list)
    """The key of every call that reached it (its create, and each call naming it)."""

    def listed(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "templateID": self.template_id,
            "sandboxID": self.sandbox_id,
            "clientID": "6532622b",
            "startedAt": _iso(self.started_at),
            "endAt": _iso(self.end_at),
            "cpuCount": 2,
            "memoryMB": 512,
            "diskSizeMB": 10240,
            "metadata": dict(self.metadata),
            "state": self.state,
            "envdVersion": "0.2.4",
        }
        if self.alias:
            body["alias"] = self.alias
        return body

    def detail(self) -> dict[str, Any]:
        return {
            **self.listed(),
            "envdAccessToken": self.access_token,
            "domain": "e2b.app",
            "allowInternetAccess": self.allow_internet_access,
        }

    def created(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "templateID": self.template_id,
            "sandboxID": self.sandbox_id,
            "clientID": "6532622b",
            "envdVersion": "0.2.4",
            "envdAccessToken": self.access_token,
            "trafficAccessToken": None,
            "domain": "e2b.app",
        }
        if self.alias:
            body["alias"] = self.alias
        return body


class E2bDouble:
    """The provider's state and handlers; ``app`` is the spec-checking ASGI app serving them."""

    def __init__(self, api_key: str = API_KEY) -> None:
        self.api_key = api_key
        self._keys = {api_key}
        """Every key the double accepts: each is a team of its own (``accept_key``)."""
        self.made: list[E2bRecord] = []
        """Every sandbox ever created through the API, gone or not."""
        self._records: dict[str, E2bRecord] = {}
        self._lock = threading.Lock()
        self._issued: list[str] = []
        handlers: dict[tuple[str, str], Handler] = {
            ("POST", "/sandboxes"): self._create,
            ("GET", "/v2/sandboxes"): self._list,
            ("GET", "/sandboxes/{sandboxID}"): self._get,
            ("DELETE", "/sandboxes/{sandboxID}"): self._kill,
            ("POST", "/sandboxes/{sandboxID}/timeout"): self._timeout,
            ("POST", "/sandboxes/{sandboxID}/pause"): self._pause,
            ("POST", "/sandboxes/{sandboxID}/resume"): self._resume,
        }
        assert set(handlers) == set(STATUSES)
        self.app = SpecDouble(
            SPEC_FILE,
            handlers,
            error_body=lambda status, message, _path: {"code": status, "message": message},
            authorized=lambda headers: headers.get("x-api-key") in self._keys,
        )

    # -- helpers for tests ------------------------------------------------------------------

    def accept_key(self, key: str) -> None:
        """Accept ``key`` too, as another team's: it sees and reaches only what it made."""
        self._keys.add(key)

    def live(self) -> list[E2bRecord]:
        """The sandboxes that exist now (running or paused), oldest first."""
        with self._lock:
            self._expire()
            return sorted(self._records.values(), key=lambda r: r.started_at)

    def plant_orphan(
        self, metadata: dict[str, str], *, state: str = "running", timeout: int = 300
    ) -> E2bRecord:
        """A sandbox made behind the adapter's back (a leak, or someone else's)."""
        now = _now()
        record = E2bRecord(
            sandbox_id=_new_id(),
            template_id=TEMPLATES["base"],
            alias="base",
            metadata=dict(metadata),
            started_at=now,
            end_at=now + timedelta(seconds=timeout),
            state=state,
        )
        with self._lock:
            self._records[record.sandbox_id] = record
        return record

    def issued_tokens(self) -> list[str]:
        """Every per-sandbox token the double has answered with (none may reach a log)."""
        with self._lock:
            return list(self._issued)

    def time_out(self, sandbox_id: str) -> None:
        """End a sandbox as its timeout would, behind the adapter's back."""
        with self._lock:
            self._records[sandbox_id].end_at = _now()

    @property
    def violations(self) -> list[str]:
        return self.app.violations

    @property
    def calls(self) -> list[tuple[str, str]]:
        return self.app.calls

    # -- handlers ----------------------------------------------------------------------------

    async def _create(self, call: Call) -> Answer:
        body = call.body or {}
        refused = _network_refusal(body)
        if refused is not None:
            return Answer(400, {"code": 400, "message": refused})
        template = str(body["templateID"])
        if template in TEMPLATES:
            alias: str | None = template
            template_id = TEMPLATES[template]
        elif template in TEMPLATES.values():
            alias, template_id = None, template
        else:
            return Answer(400, {"code": 400, "message": f"template '{template}' not found"})
        timeout = int(body.get("timeout", DEFAULT_TIMEOUT))
        now = _now()
        record = E2bRecord(
            sandbox_id=_new_id(),
            template_id=template_id,
            alias=alias,
            metadata=dict(body.get("metadata") or {}),
            started_at=now,
            end_at=now + timedelta(seconds=timeout),
            env_vars=dict(body.get("envVars") or {}),
            allow_internet_access=body.get("allow_internet_access"),
            network=body.get("network"),
            network_fields={k: body[k] for k in ("allow_internet_access", "network") if k in body},
            timeouts=[timeout],
            owner=_key(call),
            keys=[_key(call)],
        )
        with self._lock:
            self.made.append(record)
            self._records[record.sandbox_id] = record
            self._issued.append(record.access_token)
        return Answer(201, record.created())

    async def _list(self, call: Call) -> Answer:
        query: dict[str, str] = dict(call.query)
        wanted = dict(parse_qsl(query.get("metadata", ""), keep_blank_values=True))
        states = set(query["state"].split(",")) if query.get("state") else {"running"}
        limit = int(query.get("limit", PAGE_LIMIT))
        start = int(query.get("nextToken") or 0)
        with self._lock:
            self._expire()
            matching = [
                record.listed()
                for record in sorted(
                    self._records.values(), key=lambda r: r.started_at, reverse=True
                )
                if record.state in states
                and self._visible(record, call)
                and all(record.metadata.get(k) == v for k, v in wanted.items())
            ]
        page = matching[start : start + limit]
        if start + limit < len(matching):
            _next_token.get()["x-next-token"] = str(start + limit)
        return Answer(200, page)

    async def _get(self, call: Call) -> Answer:
        with self._lock:
            record = self._find(call)
            return Answer(200, record.detail()) if record else _missing(call)

    async def _kill(self, call: Call) -> Answer:
        with self._lock:
            record = self._find(call)
            if record is None:
                return _missing(call)
            del self._records[record.sandbox_id]
        return Answer(204)

    async def _timeout(self, call: Call) -> Answer:
        timeout = int((call.body or {})["timeout"])
        with self._lock:
            record = self._find(call)
            if record is None:
                return _missing(call)
            record.timeouts.append(timeout)
            if record.state == "running":
                record.end_at = _now() + timedelta(seconds=timeout)
        return Answer(204)

    async def _pause(self, call: Call) -> Answer:
        with self._lock:
            record = self._find(call)
            if record is None:
                return _missing(call)
            if record.state == "paused":
                return Answer(409, {"code": 409, "message": "sandbox is already paused"})
            record.state = "paused"
        return Answer(204)

    async def _resume(self, call: Call) -> Answer:
        timeout = int((call.body or {}).get("timeout", DEFAULT_TIMEOUT))
        with self._lock:
            record = self._find(call)
            if record is None:
                return _missing(call)
            if record.state == "running":
                return Answer(409, {"code": 409, "message": "sandbox is already running"})
            record.state = "running"
            record.timeouts.append(timeout)
            record.end_at = _now() + timedelta(seconds=timeout)
            return Answer(201, record.created())

    # -- state ------------------------------------------------------------------------------

    def _find(self, call: Call) -> E2bRecord | None:
        """The sandbox a path names, if it still exists (call with the lock held)."""
        self._expire()
        record = self._records.get(call.path_params["sandboxID"])
        if record is None or not self._visible(record, call):
            return None  # another team's: E2B answers as if it did not exist
        record.keys.append(_key(call))
        return record

    def _visible(self, record: E2bRecord, call: Call) -> bool:
        return (record.owner or self.api_key) == _key(call)

    def _expire(self) -> None:
        """Running sandboxes past their end are gone (call with the lock held)."""
        now = _now()
        for key in [
            k for k, r in self._records.items() if r.state == "running" and r.end_at <= now
        ]:
            del self._records[key]


def _key(call: Call) -> str:
    return str(call.headers.get("x-api-key", ""))


def _missing(call: Call) -> Answer:
    sandbox = call.path_params["sandboxID"]
    return Answer(
        404,
        {
            "code": 404,
            "message": f"sandbox \"{sandbox}\" doesn't exist or you don't have access to it",
        },
    )


def _new_id() -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "i" + "".join(secrets.choice(alphabet) for _ in range(19))


class _WithHeaders:
    """Adds the headers a handler left for its answer (``X-Next-Token``) to the response.

    :class:`SpecDouble`'s answers carry a status and a body only; the list's
    paging cursor travels in a header, so the handler puts it in a context
    variable this wrapper reads as the response starts.
    """

    def __init__(self, app: SpecDouble) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers: dict[str, str] = {}
        _next_token.set(headers)

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start" and headers:
                extra = [(k.encode(), v.encode()) for k, v in headers.items()]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, sending)


@dataclass
class ServedE2b:
    """The double and where it listens."""

    double: E2bDouble
    url: str

    @property
    def api_key(self) -> str:
        return self.double.api_key


def served(double: E2bDouble) -> Served:
    """The double's server on loopback (enter it to start serving)."""
    return Served(_WithHeaders(double.app))


@pytest.fixture
def e2b_double() -> Iterator[ServedE2b]:
    """An E2B double on loopback; the test fails if a request or answer broke the spec."""
    double = E2bDouble()
    with served(double) as server:
        yield ServedE2b(double, server.url)
    assert double.violations == []


def _network_refusal(body: dict[str, Any]) -> str | None:
    """SandboxNetworkConfig's rules: allowOut takes CIDRs, bare addresses and (wildcard)
    domain names; denyOut takes CIDRs and addresses only."""
    network = body.get("network") or {}
    for entry in network.get("allowOut") or []:
        if not (is_cidr(entry) or is_address(entry) or is_domain(entry)):
            return f"invalid allowOut entry {entry!r}: expected a CIDR, an IP address or a domain"
    for entry in network.get("denyOut") or []:
        if not (is_cidr(entry) or is_address(entry)):
            return f"invalid denyOut entry {entry!r}: domain names are not supported for deny rules"
    return None
