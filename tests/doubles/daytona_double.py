"""A Daytona double on :class:`SpecDouble`: the REST API of ``daytona-openapi.json`` (v0.190.0).

It serves what ext.daytona uses, under ``/api`` like app.daytona.io: create
(``creating``, then ``started`` after a few polls, or a test's chosen failure
state with an ``errorReason``), get by id or name, list with the JSON-encoded
``labels`` filter and cursor pages, delete (``destroying`` for a poll, then
gone), stop/start, the auto-stop and auto-delete intervals, and the toolbox's
synchronous execute, which runs the command for real as a local subprocess in
a directory of its own per sandbox. A sandbox's programs are its tenant's (it
has root there): its own ``usr/local/bin`` comes first on the command's PATH,
so a test can replace one, as a hostile tenant would.

Where the real API differs from its spec, the difference is data
(:data:`DEVIATIONS`, each with its reason) and the conformance test holds it;
every status a handler may answer is listed in :data:`ANSWERS`.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any, Literal

import pytest

from tests.doubles.network_check import is_cidr, is_domain
from tests.doubles.spec_double import Answer, Call, Handler, Served, SpecDouble

__all__ = ["ANSWERS", "DEVIATIONS", "DaytonaDouble", "DaytonaServed", "daytona_double"]

SPEC_FILE = "daytona-openapi.json"
PREFIX = "/api"
API_KEY = "dtn_double_key_0123456789abcdef"
"""The key the served double accepts (tests pass it as a literal setting)."""

SANDBOX = "/sandbox"
ONE = "/sandbox/{sandboxIdOrName}"
STOP = "/sandbox/{sandboxIdOrName}/stop"
START = "/sandbox/{sandboxIdOrName}/start"
AUTOSTOP = "/sandbox/{sandboxIdOrName}/autostop/{interval}"
AUTODELETE = "/sandbox/{sandboxIdOrName}/autodelete/{interval}"
EXECUTE = "/toolbox/{sandboxId}/toolbox/process/execute"

_NOT_FOUND = "the real API answers 404 for an unknown sandbox; the spec declares no errors"
_AUTH = "the real API answers 401 to a missing or wrong key; the spec declares no errors"
_CREATED = "the real API (NestJS) answers 201 to this POST; the spec says 200"

DEVIATIONS: dict[tuple[str, str], dict[int, str]] = {
    ("POST", SANDBOX): {
        201: _CREATED,
        409: "the real API answers 409 when a sandbox of that name exists",
        400: "the real API refuses resources (cpu, memory, disk, gpu) with a snapshot, and "
        "a networkAllowList of more than 5 CIDR blocks or of an IPv6 one (its docs, Network "
        "Limits: up to 5, IPv4 CIDR ranges)",
        401: _AUTH,
    },
    ("GET", SANDBOX): {401: _AUTH},
    ("GET", ONE): {404: _NOT_FOUND, 401: _AUTH},
    ("DELETE", ONE): {404: _NOT_FOUND, 401: _AUTH},
    ("POST", STOP): {201: _CREATED, 404: _NOT_FOUND, 401: _AUTH},
    ("POST", START): {201: _CREATED, 404: _NOT_FOUND, 401: _AUTH},
    ("POST", AUTOSTOP): {201: _CREATED, 404: _NOT_FOUND, 401: _AUTH},
    ("POST", AUTODELETE): {201: _CREATED, 404: _NOT_FOUND, 401: _AUTH},
    ("POST", EXECUTE): {
        404: _NOT_FOUND,
        400: "the toolbox refuses a command for a sandbox that is not started",
        401: _AUTH,
    },
}
"""Statuses the real API answers that its spec does not declare, with why."""

ANSWERS: dict[tuple[str, str], set[int]] = {
    ("POST", SANDBOX): {201, 400, 409},
    ("GET", SANDBOX): {200},
    ("GET", ONE): {200, 404},
    ("DELETE", ONE): {200, 404},
    ("POST", STOP): {201, 404},
    ("POST", START): {201, 404},
    ("POST", AUTOSTOP): {201, 404},
    ("POST", AUTODELETE): {201, 404},
    ("POST", EXECUTE): {200, 400, 404},
}
"""Every status each handler can answer (401 comes from the auth check, for every route)."""

RESOURCES = {"cpu", "memory", "disk", "gpu", "gpuType"}

GONE_STATES = {"destroyed", "destroying", "error", "build_failed"}
"""Left out of a list unless ``includeErroredDeleted`` asks for them."""

EndState = Literal["started", "error", "build_failed"]


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


NETWORK_FIELDS = ("networkBlockAll", "networkAllowList", "domainAllowList")
"""CreateSandbox's network fields: block everything, or allow these CIDRs and these domains
(each a comma-separated list; the spec's example domains are ``example.com,*.daytona.io``)."""

MAX_CIDRS = 5
"""Daytona's docs (Network Limits): "networkAllowList accepts up to 5 CIDR network blocks";
the spec does not say, so the double keeps its own copy of the number, not our code's."""


@dataclass
class Record:
    """One sandbox the double holds."""

    id: str
    name: str
    labels: dict[str, str]
    body: dict[str, Any]
    root: Path
    state: str = "creating"
    error_reason: str | None = None
    polls_left: int = 0
    """GETs still to answer before a transitional state moves on."""
    next_state: str | None = None
    auto_stop: float = 15
    auto_delete: float = -1
    created_at: str = field(default_factory=_now)
    owner: str | None = None
    """The key (organization) that made it; None: the double's own. Other keys do not see it."""
    keys: list[str] = field(default_factory=list)
    """The key of every call that reached it (its create, and each call naming it)."""
    auto_stop_sets: int = 0
    """How many times its auto-stop interval was set after its create."""
    network_fields: dict[str, Any] = field(default_factory=dict)
    """Exactly the network fields its create carried (:data:`NETWORK_FIELDS`)."""


class DaytonaDouble:
    """The records and the handlers; ``app`` is the spec-enforcing ASGI app around them."""

    def __init__(self, key: str = API_KEY) -> None:
        self.key = key
        self._keys = {key}
        """Every key the double accepts: each is an organization of its own (``accept_key``)."""
        self.made: list[Record] = []
        """Every sandbox ever created through the API, gone or not."""
        self.records: dict[str, Record] = {}
        self.ready_after_polls = 2
        """GETs that still see ``creating`` before the sandbox reaches its end state."""
        self.end_state: EndState = "started"
        self.error_reason = "snapshot ubuntu:missing could not be pulled"
        self.page_size = 200
        """The largest page a list answers (a test lowers it to exercise the cursor)."""
        self.exec_log: list[dict[str, Any]] = []
        self.creates = 0
        self._lock = threading.Lock()
        self._scratch = Path(tempfile.mkdtemp(prefix="daytona-double-"))
        routes: dict[tuple[str, str], Handler] = {
            ("POST", SANDBOX): self._create,
            ("GET", SANDBOX): self._list,
            ("GET", ONE): self._get,
            ("DELETE", ONE): self._delete,
            ("POST", STOP): self._stop,
            ("POST", START): self._start,
            ("POST", AUTOSTOP): self._autostop,
            ("POST", AUTODELETE): self._autodelete,
            ("POST", EXECUTE): self._execute,
        }
        self.app = SpecDouble(
            SPEC_FILE,
            {route: _checked(route, handler) for route, handler in routes.items()},
            error_body=_error_body,
            authorized=lambda headers: _bearer(headers) in self._keys,
            prefix=PREFIX,
            deviations={route: set(statuses) for route, statuses in DEVIATIONS.items()},
        )

    # -- helpers for tests -------------------------------------------------------------------

    def accept_key(self, key: str) -> None:
        """Accept ``key`` too, as another organization's: it sees and reaches only its own."""
        self._keys.add(key)

    def live(self) -> list[Record]:
        """Sandboxes that exist at the provider (not destroying)."""
        with self._lock:
            return [r for r in self.records.values() if r.state not in {"destroying", "destroyed"}]

    def plant_orphan(self, labels: Mapping[str, str], *, state: str = "started") -> Record:
        """A sandbox made behind our back (a leak, a worker killed before ``ready``)."""
        record = self._new_record({"labels": dict(labels)})
        record.state = state
        return record

    def close(self) -> None:
        shutil.rmtree(self._scratch, ignore_errors=True)

    # -- records ----------------------------------------------------------------------------

    def _new_record(self, body: dict[str, Any]) -> Record:
        provider_id = str(uuid.uuid4())
        root = self._scratch / provider_id
        (root / "home" / "daytona").mkdir(parents=True)
        record = Record(
            id=provider_id,
            name=body.get("name") or provider_id,
            labels=dict(body.get("labels") or {}),
            body=body,
            root=root,
            polls_left=self.ready_after_polls,
            next_state=self.end_state,
            auto_stop=body.get("autoStopInterval", 15),
            auto_delete=body.get("autoDeleteInterval", -1),
            network_fields={k: body[k] for k in NETWORK_FIELDS if k in body},
        )
        if self.end_state != "started":
            record.error_reason = self.error_reason
        with self._lock:
            self.records[provider_id] = record
        return record

    def _find(self, id_or_name: str, call: Call) -> Record | None:
        """The caller's sandbox of that id or name (another organization's is not found)."""
        with self._lock:
            for record in self.records.values():
                if id_or_name in {record.id, record.name} and self._visible(record, call):
                    record.keys.append(_bearer(call.headers))
                    return record
        return None

    def _visible(self, record: Record, call: Call) -> bool:
        return (record.owner or self.key) == _bearer(call.headers)

    def _advance(self, record: Record) -> None:
        """A poll: a transitional state moves on once its polls are used up."""
        if record.next_state is None:
            return
        if record.polls_left > 0:
            record.polls_left -= 1
            return
        record.state, record.next_state = record.next_state, None
        if record.state == "destroyed":
            with self._lock:
                self.records.pop(record.id, None)
            shutil.rmtree(record.root, ignore_errors=True)

    def _body(self, record: Record) -> dict[str, Any]:
        """The Sandbox schema's required fields and the ones the adapter reads."""
        given = record.body
        body: dict[str, Any] = {
            "id": record.id,
            "organizationId": "org-double",
            "name": record.name,
            "snapshot": given.get("snapshot", "daytonaio/sandbox:0.4.3"),
            "user": "daytona",
            "env": dict(given.get("env") or {}),
            "labels": dict(record.labels),
            "public": False,
            "networkBlockAll": bool(given.get("networkBlockAll", False)),
            "target": given.get("target", "us"),
            "cpu": given.get("cpu", 1),
            "gpu": given.get("gpu", 0),
            "memory": given.get("memory", 1),
            "disk": given.get("disk", 3),
            "state": record.state,
            "desiredState": _desired(record),
            "autoStopInterval": record.auto_stop,
            "autoDeleteInterval": record.auto_delete,
            "createdAt": record.created_at,
            "updatedAt": _now(),
            "toolboxProxyUrl": "https://proxy.double.invalid/toolbox",
        }
        for allow_list in ("networkAllowList", "domainAllowList"):
            if given.get(allow_list):
                body[allow_list] = given[allow_list]
        if record.error_reason:
            body["errorReason"] = record.error_reason
        return body

    # -- handlers ---------------------------------------------------------------------------

    async def _create(self, call: Call) -> Answer:
        body = dict(call.body or {})
        name = body.get("name")
        if name and self._find(name, call) is not None:
            message = f"Sandbox with name {name} already exists"
            return Answer(409, _error_body(409, message, _path(call)))
        if body.get("snapshot") and RESOURCES & set(body):
            return Answer(
                400,
                _error_body(
                    400, "Cannot specify Sandbox resources when using a snapshot", _path(call)
                ),
            )
        for allow_list, is_item, items in (
            ("networkAllowList", is_cidr, "CIDRs"),
            ("domainAllowList", is_domain, "domains"),
        ):
            given = body.get(allow_list)
            if given is not None and not all(is_item(i) for i in str(given).split(",")):
                message = f"{allow_list} {given!r} must be a comma-separated list of {items}"
                return Answer(400, _error_body(400, message, _path(call)))
        blocks = str(body.get("networkAllowList") or "").split(",")
        # Daytona's docs: "Use networkAllowList for IPv4 CIDR ranges" (the spec's example is
        # IPv4 too): an IPv6 block is refused, not taken and never applied. Each block is a
        # CIDR by now, and only an IPv6 one holds a ':'.
        ipv6 = [b for b in blocks if ":" in b]
        if ipv6:
            message = f"networkAllowList takes IPv4 CIDR ranges, not {', '.join(ipv6)}"
            return Answer(400, _error_body(400, message, _path(call)))
        if len(blocks) > MAX_CIDRS:
            message = f"networkAllowList accepts up to {MAX_CIDRS} CIDR blocks, not {len(blocks)}"
            return Answer(400, _error_body(400, message, _path(call)))
        self.creates += 1
        record = self._new_record(body)
        record.owner = _bearer(call.headers)
        record.keys.append(record.owner)
        with self._lock:
            self.made.append(record)
        return Answer(201, self._body(record))

    async def _get(self, call: Call) -> Answer:
        record = self._find(call.path_params["sandboxIdOrName"], call)
        if record is None:
            return _not_found(call)
        self._advance(record)
        if record.id not in self.records:
            return _not_found(call)
        return Answer(200, self._body(record))

    async def _list(self, call: Call) -> Answer:
        query = dict(call.query)
        wanted = json.loads(query["labels"]) if "labels" in query else {}
        include_gone = query.get("includeErroredDeleted") == "true"
        limit = min(int(float(query.get("limit", 100))), self.page_size)
        start = int(query.get("cursor", "0"))
        with self._lock:
            records = list(self.records.values())
        matching = [
            r
            for r in records
            if all(r.labels.get(k) == v for k, v in wanted.items())
            and self._visible(r, call)
            and (include_gone or r.state not in GONE_STATES)
        ]
        page = matching[start : start + limit]
        more = start + limit < len(matching)
        return Answer(
            200,
            {
                "items": [self._body(r) for r in page],
                "nextCursor": str(start + limit) if more else None,
            },
        )

    async def _delete(self, call: Call) -> Answer:
        record = self._find(call.path_params["sandboxIdOrName"], call)
        if record is None:
            return _not_found(call)
        record.state, record.next_state, record.polls_left = "destroying", "destroyed", 1
        return Answer(200, self._body(record))

    async def _stop(self, call: Call) -> Answer:
        record = self._find(call.path_params["sandboxIdOrName"], call)
        if record is None:
            return _not_found(call)
        record.state, record.next_state, record.polls_left = "stopping", "stopped", 1
        return Answer(201, self._body(record))

    async def _start(self, call: Call) -> Answer:
        record = self._find(call.path_params["sandboxIdOrName"], call)
        if record is None:
            return _not_found(call)
        record.state, record.next_state, record.polls_left = "starting", "started", 1
        return Answer(201, self._body(record))

    async def _autostop(self, call: Call) -> Answer:
        record = self._find(call.path_params["sandboxIdOrName"], call)
        if record is None:
            return _not_found(call)
        record.auto_stop = float(call.path_params["interval"])
        record.auto_stop_sets += 1
        return Answer(201, self._body(record))

    async def _autodelete(self, call: Call) -> Answer:
        record = self._find(call.path_params["sandboxIdOrName"], call)
        if record is None:
            return _not_found(call)
        record.auto_delete = float(call.path_params["interval"])
        return Answer(201, self._body(record))

    async def _execute(self, call: Call) -> Answer:
        with self._lock:
            record = self.records.get(call.path_params["sandboxId"])  # by id only
            if record is not None and self._visible(record, call):
                record.keys.append(_bearer(call.headers))
            else:
                record = None
        if record is None:
            return _not_found(call)
        if record.state != "started":
            return Answer(
                400, _error_body(400, f"sandbox is {record.state}, not started", _path(call))
            )
        body = call.body or {}
        self.exec_log.append(dict(body))
        home = record.root / "home" / "daytona"
        cwd = (record.root / str(body["cwd"]).lstrip("/")).resolve() if body.get("cwd") else home
        if not cwd.is_relative_to(record.root) or not cwd.is_dir():
            return Answer(400, _error_body(400, f"no directory {body['cwd']}", _path(call)))
        own = record.root / "usr" / "local" / "bin"  # the tenant's programs go first
        path = f"{own}{os.pathsep}{os.environ.get('PATH', os.defpath)}"
        exit_code, output = await asyncio.to_thread(
            _run, str(body["command"]), cwd, float(body.get("timeout") or 10), path
        )
        return Answer(200, {"exitCode": exit_code, "result": output})


def _run(command: str, cwd: Path, timeout: float, path: str) -> tuple[int, str]:
    """The daemon splits the command into words (it is not given to a shell) and answers
    the combined output as text."""
    try:
        done = subprocess.run(
            shlex.split(command),
            cwd=cwd,
            env={**os.environ, "PATH": path},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        return -1, (exc.output or b"").decode(errors="replace")
    except OSError as exc:
        return 127, f"{exc}\n"
    return done.returncode, done.stdout.decode(errors="replace")


def _desired(record: Record) -> str:
    if record.state in {"destroying", "destroyed"}:
        return "destroyed"
    if record.state in {"stopping", "stopped"}:
        return "stopped"
    return "started"


def _path(call: Call) -> str:
    return PREFIX + call.pattern.format(**call.path_params)


def _bearer(headers: Mapping[str, str]) -> str:
    return str(headers.get("authorization", "")).removeprefix("Bearer ")


def _not_found(call: Call) -> Answer:
    key = call.path_params.get("sandboxIdOrName") or call.path_params.get("sandboxId")
    return Answer(404, _error_body(404, f"Sandbox with ID or name {key} not found", _path(call)))


def _error_body(status: int, message: str, path: str = "") -> dict[str, Any]:
    """Daytona's error shape."""
    return {
        "path": path,
        "timestamp": _now(),
        "statusCode": status,
        "error": HTTPStatus(status).phrase,
        "message": message,
    }


def _checked(route: tuple[str, str], handler: Handler) -> Handler:
    """The handler, refusing to answer a status :data:`ANSWERS` does not list for it."""

    async def answer(call: Call) -> Answer:
        given = await handler(call)
        if given.status not in ANSWERS[route]:
            raise AssertionError(f"{route} answered {given.status}, not listed in ANSWERS")
        return given

    return answer


@dataclass
class DaytonaServed:
    """The served double: ``api_url`` is what ext.daytona's ``api_url`` setting takes."""

    double: DaytonaDouble
    served: Served

    @property
    def app(self) -> SpecDouble:
        return self.double.app

    @property
    def api_url(self) -> str:
        return self.served.url + PREFIX

    @property
    def key(self) -> str:
        return self.double.key


@pytest.fixture
def daytona_double() -> Iterator[DaytonaServed]:
    """A served Daytona double; the test fails if our client broke the spec."""
    double = DaytonaDouble()
    try:
        with Served(double.app) as served:
            yield DaytonaServed(double, served)
    finally:
        double.close()
    assert double.app.violations == [], double.app.violations
