"""Typed results of the public client (:class:`sandboxer.client.Sandboxer`).

Each is a frozen ``msgspec.Struct`` read from the JSON the service answers (the
view's rows of docs/protocol.md#queries, events of docs/protocol.md#events),
the same over the bus and over the HTTP API. They are forward compatible: a
field the service leaves out is ``None`` (or empty), a field of an unexpected
type is ``None`` rather than an error, and the whole answer stays reachable as
``raw``, so a newer service does not break an older client.

Reading a row is pure (no I/O): ``tests/unit/test_client_results.py`` covers it.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import msgspec

from sandboxer.transfer import Copied

__all__ = [
    "Accepted",
    "Account",
    "Copied",
    "Event",
    "ExecResult",
    "RouteExplanation",
    "Sandbox",
    "Snapshot",
    "Usage",
    "UsageRow",
]

LIVE_STATUSES = frozenset({"ready", "active"})


def _str(row: Mapping[str, Any], name: str) -> str | None:
    value = row.get(name)
    return value if isinstance(value, str) else None


def _int(row: Mapping[str, Any], name: str) -> int | None:
    value = row.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number(row: Mapping[str, Any], name: str) -> float | None:
    value = row.get(name)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _dict(row: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    value = row.get(name)
    return dict(value) if isinstance(value, dict) else None


def _rows(value: Any) -> list[dict[str, Any]]:
    return (
        [dict(item) for item in value if isinstance(item, dict)] if isinstance(value, list) else []
    )


class Sandbox(msgspec.Struct, frozen=True, kw_only=True):
    """A sandbox as the view holds it; ``raw`` is the whole row (docs/protocol.md#queries)."""

    sandbox_id: str
    status: str
    profile: str | None = None
    extension: str | None = None
    host: str | None = None
    actor: dict[str, Any] | None = None
    generation: int | None = None
    failure: str | None = None
    expires_at: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    reachability: dict[str, Any] | None = None
    restored_from: str | None = None
    network: dict[str, Any] | None = None
    """The network policy in force, ``{"default", "egress"}`` (docs/network.md)."""
    consumer: dict[str, Any] | None = None
    """Who the sandbox is for: ``harness``, ``session_id``, ``run_id``, ``job_id``, ``labels``
    (docs/protocol.md#consumer-attribution); None when its create named none."""
    setup: list[dict[str, Any]] = msgspec.field(default_factory=list)
    """Its profile's setup commands as they ran before ready: ``index``, ``exit_code``,
    ``output_tail`` (secrets redacted; docs/profiles.md#setup-commands)."""
    raw: dict[str, Any] = msgspec.field(default_factory=dict)

    @property
    def project(self) -> str | None:
        """The project the sandbox is for (its creator's)."""
        project = (self.actor or {}).get("project")
        return project if isinstance(project, str) else None

    @property
    def is_live(self) -> bool:
        """Ready to run commands (``ready``, or ``active``: a ready sandbox that was used)."""
        return self.status in LIVE_STATUSES

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Sandbox:
        return cls(
            sandbox_id=str(row.get("sandbox_id") or ""),
            status=str(row.get("status") or "unknown"),
            profile=_str(row, "profile"),
            extension=_str(row, "extension"),
            host=_str(row, "host"),
            actor=_dict(row, "actor"),
            generation=_int(row, "generation"),
            failure=_str(row, "failure"),
            expires_at=_str(row, "expires_at"),
            created_at=_str(row, "created_at"),
            updated_at=_str(row, "updated_at"),
            reachability=_dict(row, "reachability"),
            restored_from=_str(row, "restored_from"),
            network=_dict(row, "network"),
            consumer=_dict(row, "consumer"),
            setup=_rows(row.get("setup")),
            raw=dict(row),
        )


class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot's row (``status``: requested, created, failed, deleted)."""

    snapshot_id: str
    status: str
    sandbox_id: str | None = None
    project: str | None = None
    """The project it belongs to: its sandbox's, whoever took it (None if taken before
    snapshots recorded it)."""
    name: str | None = None
    profile: str | None = None
    extension: str | None = None
    size: int | None = None
    sha256: str | None = None
    warnings: tuple[str, ...] = ()
    """What the snapshot's copy left out (FIFOs, sockets, device nodes), one line per kind:
    a restore lacks it."""
    failure: str | None = None
    requested_at: str | None = None
    created_at: str | None = None
    deleted_at: str | None = None
    raw: dict[str, Any] = msgspec.field(default_factory=dict)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Snapshot:
        return cls(
            snapshot_id=str(row.get("snapshot_id") or ""),
            status=str(row.get("status") or "unknown"),
            sandbox_id=_str(row, "sandbox_id"),
            project=_str(row, "project"),
            name=_str(row, "name"),
            profile=_str(row, "profile"),
            extension=_str(row, "extension"),
            size=_int(row, "size"),
            sha256=_str(row, "sha256"),
            warnings=tuple(str(line) for line in row.get("warnings") or ()),
            failure=_str(row, "failure"),
            requested_at=_str(row, "requested_at"),
            created_at=_str(row, "created_at"),
            deleted_at=_str(row, "deleted_at"),
            raw=dict(row),
        )


class Accepted(msgspec.Struct, frozen=True, kw_only=True):
    """A command published without waiting for its outcome: the ids to follow it by."""

    command_id: str
    sandbox_id: str | None = None
    snapshot_id: str | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Accepted:
        return cls(
            command_id=str(row.get("command_id") or ""),
            sandbox_id=_str(row, "sandbox_id"),
            snapshot_id=_str(row, "snapshot_id"),
        )


class ExecResult(msgspec.Struct, frozen=True, kw_only=True):
    """How a command ended: ``exit_code`` (None when its timeout killed it: ``timed_out``),
    and its output when it was collected (``*_truncated``: the service dropped some)."""

    exit_code: int | None
    stdout: bytes = b""
    stderr: bytes = b""
    timed_out: bool = False
    stdout_truncated: bool = False
    stderr_truncated: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @classmethod
    def from_http(cls, body: Mapping[str, Any]) -> ExecResult:
        """The HTTP API's answer (output base64-encoded, docs/http-api.md#exec-and-files)."""

        def decoded(name: str) -> bytes:
            value = body.get(name)
            return base64.b64decode(value) if isinstance(value, str) else b""

        return cls(
            exit_code=_int(body, "exit_code"),
            stdout=decoded("stdout"),
            stderr=decoded("stderr"),
            timed_out=body.get("timed_out") is True,
            stdout_truncated=body.get("stdout_truncated") is True,
            stderr_truncated=body.get("stderr_truncated") is True,
        )


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """One event of the log: ``seq`` is its sequence in the events stream (resume after it),
    ``data`` the event as docs/protocol.md#events shows it."""

    seq: int
    type: str
    sandbox_id: str | None = None
    data: dict[str, Any] = msgspec.field(default_factory=dict)

    @classmethod
    def from_log(cls, seq: int, data: Mapping[str, Any]) -> Event:
        return cls(
            seq=seq,
            type=str(data.get("type") or "event"),
            sandbox_id=_str(data, "sandbox_id"),
            data=dict(data),
        )


class Account(msgspec.Struct, frozen=True, kw_only=True):
    """A project's credits (whole credits, 1 credit = 1 micro-USD: docs/payments.md)."""

    project: str
    balance: int | None = None
    reserved: int | None = None
    available: int | None = None
    budget: dict[str, Any] | None = None
    raw: dict[str, Any] = msgspec.field(default_factory=dict)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Account:
        return cls(
            project=str(row.get("project") or ""),
            balance=_int(row, "balance"),
            reserved=_int(row, "reserved"),
            available=_int(row, "available"),
            budget=_dict(row, "budget"),
            raw=dict(row),
        )


class UsageRow(msgspec.Struct, frozen=True, kw_only=True):
    """One metered sandbox: how long it ran and what it cost."""

    sandbox_id: str
    project: str | None = None
    profile: str | None = None
    extension: str | None = None
    seconds: float | None = None
    amount: int | None = None
    at: str | None = None
    raw: dict[str, Any] = msgspec.field(default_factory=dict)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> UsageRow:
        return cls(
            sandbox_id=str(row.get("sandbox_id") or ""),
            project=_str(row, "project"),
            profile=_str(row, "profile"),
            extension=_str(row, "extension"),
            seconds=_number(row, "seconds"),
            amount=_int(row, "amount"),
            at=_str(row, "at"),
            raw=dict(row),
        )


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    """Metered sandboxes (``rows``), spend by project, profile and backend (``summary``)
    and the ``total`` (docs/payments.md)."""

    rows: list[UsageRow]
    summary: list[dict[str, Any]] = msgspec.field(default_factory=list)
    total: dict[str, Any] = msgspec.field(default_factory=dict)
    unit: str | None = None
    next: str | None = None
    """The cursor of the next page of ``rows`` (None: this page is the last)."""
    raw: dict[str, Any] = msgspec.field(default_factory=dict)

    @classmethod
    def from_reply(cls, reply: Mapping[str, Any]) -> Usage:
        return cls(
            rows=[UsageRow.from_row(row) for row in _rows(reply.get("usage"))],
            summary=_rows(reply.get("summary")),
            total=_dict(reply, "total") or {},
            unit=_str(reply, "unit"),
            next=_str(reply, "next"),
            raw=dict(reply),
        )


class RouteExplanation(msgspec.Struct, frozen=True, kw_only=True):
    """How a create would be routed now, and why (docs/routing.md#route-explain)."""

    chosen: str | None
    reason: str | None
    decision: dict[str, Any] = msgspec.field(default_factory=dict)
    signals: dict[str, Any] = msgspec.field(default_factory=dict)
    at: str | None = None

    @classmethod
    def from_reply(cls, reply: Mapping[str, Any]) -> RouteExplanation:
        decision = _dict(reply, "decision") or {}
        return cls(
            chosen=_str(decision, "chosen"),
            reason=_str(decision, "reason"),
            decision=decision,
            signals=_dict(reply, "signals") or {},
            at=_str(reply, "at"),
        )
