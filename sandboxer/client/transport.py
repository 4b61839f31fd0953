"""What :class:`sandboxer.client.Sandboxer` needs of a way to reach the service.

Two transports implement it: :mod:`sandboxer.client.bus_transport` (NATS, through
the low-level :class:`~sandboxer.client.bus.SandboxerClient`) and
:mod:`sandboxer.client.http` (the HTTP gateway's ``/v1/`` API). Each answers with
the service's JSON (the view's rows, events) and raises errors of the one tree,
mapped alike: the facade turns the JSON into typed results, once, for both.

Rows are returned as the service sends them, a list's as a
:class:`~sandboxer.pagination.Page` (its ``next``: the cursor of the page after); ``Accepted`` answers are
``{"command_id", "sandbox_id" | "snapshot_id"}``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from pathlib import Path
from typing import Any, Protocol

from sandboxer.pagination import DEFAULT_LIMIT, Page
from sandboxer.transfer import Copied, StdinSource

__all__ = ["OutputCallback", "Row", "Transport"]

Row = dict[str, Any]
OutputCallback = Callable[[str, bytes], Awaitable[None] | None]


class Transport(Protocol):
    """One connection to the service, acting as one actor (the bus's ``actor``, or the
    HTTP API key's)."""

    @property
    def name(self) -> str:
        """``bus`` or ``http``."""
        ...

    async def close(self) -> None: ...

    async def create(
        self,
        profile: str,
        inputs: Mapping[str, str],
        *,
        sandbox_id: str | None,
        command_id: str | None,
        host: str | None,
        ttl: str | None,
        project: str | None,
        wait: bool,
        timeout: float,
        network: Mapping[str, Any] | None = None,
        consumer: Mapping[str, Any] | None = None,
    ) -> Row:
        """The sandbox's row once ready (with ``wait``), else the accepted ids."""
        ...

    async def get(self, sandbox_id: str) -> Row | None: ...

    async def list_sandboxes(
        self,
        *,
        status: str | None,
        include_destroyed: bool,
        limit: int,
        consumer: Mapping[str, Any] | None = None,
        after: str | None = None,
    ) -> Page[Row]:
        """``consumer``: harness, session_id, run_id, job_id and labels to filter by;
        ``after``: the ``next`` of the page before."""
        ...

    async def destroy(
        self, sandbox_id: str, *, command_id: str | None, wait: bool, timeout: float
    ) -> Row: ...

    async def extend_ttl(self, sandbox_id: str, duration: str, *, command_id: str | None) -> Row:
        """The ``ttl_extended`` event."""
        ...

    async def pause_or_resume(
        self, verb: str, sandbox_id: str, *, command_id: str | None, timeout: float
    ) -> Row: ...

    async def snapshot(
        self, sandbox_id: str, *, name: str | None, command_id: str | None, timeout: float
    ) -> Row: ...

    async def restore(
        self,
        snapshot_id: str,
        *,
        profile: str | None,
        sandbox_id: str | None,
        inputs: Mapping[str, str] | None,
        project: str | None,
        command_id: str | None,
        timeout: float,
        consumer: Mapping[str, Any] | None = None,
    ) -> Row: ...

    async def snapshot_get(self, snapshot_id: str) -> Row | None: ...

    async def snapshots(
        self,
        *,
        sandbox_id: str | None,
        include_deleted: bool,
        limit: int,
        after: str | None = None,
    ) -> Page[Row]: ...

    async def delete_snapshot(
        self, snapshot_id: str, *, command_id: str | None, timeout: float
    ) -> Row: ...

    async def exec(
        self,
        sandbox_id: str,
        argv: list[str],
        *,
        stdin: StdinSource | None,
        timeout: float | None,
        service: str | None,
        on_output: OutputCallback,
    ) -> Row:
        """``{"exit_code", "timed_out"}`` once the command is over; its output went to
        ``on_output`` (as it came over the bus, at the end over HTTP) and, over HTTP,
        ``stdout_truncated``/``stderr_truncated`` say whether the gateway dropped some."""
        ...

    async def copy_in(
        self, sandbox_id: str, source: Path, path: str, *, service: str | None, max_mb: int
    ) -> Copied: ...

    async def copy_out(
        self, sandbox_id: str, path: str, destination: Path, *, service: str | None, max_mb: int
    ) -> Copied: ...

    def events(
        self,
        *,
        sandbox_id: str | None,
        follow: bool,
        after: int,
        types: Collection[str],
    ) -> AsyncIterator[tuple[int, Row]]: ...

    async def credits(
        self, project: str | None, *, limit: int = DEFAULT_LIMIT, after: str | None = None
    ) -> Page[Row]: ...

    async def usage(
        self,
        *,
        project: str | None,
        since: str | None,
        until: str | None,
        limit: int,
        by: str | None = None,
        after: str | None = None,
    ) -> Row: ...

    async def route_explain(self, profile: str, ttl: str | None) -> Row: ...
