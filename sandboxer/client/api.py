"""The public Python API of sandboxer: :class:`Sandboxer` (docs/python-client.md).

One class, two ways to reach the service, the same methods and the same typed
results on both:

- ``await Sandboxer.over_bus(...)``: NATS, as the CLI speaks it (commands,
  queries, the events stream: docs/protocol.md), acting as the ``actor`` given;
- ``Sandboxer.over_http(base_url, api_key)``: the HTTP gateway's ``/v1/`` API
  (docs/http-api.md), acting as the key's actor;
- ``await Sandboxer.from_env()``: the HTTP API when ``SANDBOXER_API_KEY`` is
  set, else the bus, each found as the CLI finds the service.

Every error is a :class:`sandboxer.errors.SandboxerError`, mapped alike on both
transports. Ids are checked here, before anything is sent, so a malformed one is
:class:`InvalidInput` on both (never a request to some other URL).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from sandboxer.bus.nats_auth import NatsCredentials
from sandboxer.client.bus import SandboxerClient
from sandboxer.client.bus_transport import BusTransport
from sandboxer.client.pages import Paged, pages
from sandboxer.client.results import (
    Accepted,
    Account,
    Event,
    ExecResult,
    RouteExplanation,
    Sandbox,
    Snapshot,
    Usage,
)
from sandboxer.client.transport import OutputCallback, Row, Transport
from sandboxer.command_outcomes import notify
from sandboxer.config.settings import Settings
from sandboxer.errors import BusError, InvalidInput, ServiceNotRunning
from sandboxer.ids import is_valid_sandbox_id
from sandboxer.pagination import ACCOUNTS, DEFAULT_LIMIT, SANDBOXES, SNAPSHOTS, USAGE, Listing, Page
from sandboxer.service_discovery import find_service_urls, read_service_file
from sandboxer.transfer import Copied, StdinSource
from sandboxer.workspaces.limits import DEFAULT_MAX_MB

if TYPE_CHECKING:
    # httpx (with the CLI helpers it loads) only for a client of the HTTP API: the bus
    # client, which the CLI and `sandboxer up` import, does without it.
    import httpx

__all__ = ["API_KEY_VARIABLE", "HTTP_URL_VARIABLE", "Sandboxer"]

API_KEY_VARIABLE = "SANDBOXER_API_KEY"
"""With it set, :meth:`Sandboxer.from_env` speaks the HTTP API bearing this key."""
HTTP_URL_VARIABLE = "SANDBOXER_HTTP_URL"
"""The gateway's URL; without it, the ``http_url`` of the local service's record."""
P = TypeVar("P", bound=Paged)


def _check_id(value: str, what: str = "sandbox") -> None:
    if not is_valid_sandbox_id(value):
        raise InvalidInput(
            f"invalid {what} id {value!r}: use lowercase letters and digits, 8 to 32 characters"
        )


def _check_cursor(after: str | None, listing: Listing) -> None:
    """A cursor that is not ``listing``'s own is RequestError before anything is sent, on
    both transports alike (the gateway would answer 422, the bus's service refuse it)."""
    if after is not None:
        listing.position(after)


class Sandboxer:
    """Sandboxes to create, run commands in, copy files in and out of, watch, snapshot and
    pay for: the same calls over the bus or over the HTTP API (docs/python-client.md).

    Use it as ``async with await Sandboxer.from_env() as sbx:`` (or call :meth:`close`).
    """

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    # -- connecting --------------------------------------------------------------------------

    @classmethod
    async def over_bus(
        cls,
        urls: list[str] | None = None,
        *,
        actor: Mapping[str, Any] | None = None,
        credentials: NatsCredentials | None = None,
        settings: Settings | None = None,
        api_key: str | None = None,
    ) -> Sandboxer:
        """Speak NATS: to ``urls`` (with ``credentials``, docs/security.md), or without them
        as the CLI finds the service (``SANDBOXER_NATS_URL``, else ``sandboxer up``'s record
        and its client credentials). ``actor`` is who the commands are from:
        ``{"type": "agt" | "atm" | "adm", "id": ..., "project": ...}``. With ``api_key``
        the client logs in to NATS as that key, which decides the actor and confines it to
        its project (docs/security.md#keys-on-the-bus)."""
        if api_key is not None:
            found = urls or find_service_urls(settings or Settings.from_env())
            client = await SandboxerClient.connect(found, api_key=api_key)
        elif urls is None:
            client = await SandboxerClient.from_env(actor=actor, settings=settings)
        else:
            client = await SandboxerClient.connect(urls, credentials=credentials, actor=actor)
        return cls(BusTransport(client))

    @classmethod
    def over_http(
        cls,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> Sandboxer:
        """Speak the HTTP API at ``base_url`` bearing ``api_key`` (the key decides the
        actor and what it may see: docs/http-api.md#keys). ``timeout`` bounds a request
        that waits for nothing; ``transport`` is httpx's (a proxy, a test's)."""
        from sandboxer.client.http import HttpTransport

        return cls(HttpTransport.open(base_url, api_key, timeout=timeout, transport=transport))

    @classmethod
    async def from_env(
        cls, *, actor: Mapping[str, Any] | None = None, settings: Settings | None = None
    ) -> Sandboxer:
        """With ``SANDBOXER_API_KEY`` set: the HTTP API at ``SANDBOXER_HTTP_URL`` (else the
        gateway ``sandboxer up`` serves for ``SANDBOXER_HOME``), as that key (``actor`` is
        not used: the key decides). Otherwise the bus, as :meth:`over_bus` finds it."""
        key = os.environ.get(API_KEY_VARIABLE)
        if not key:
            return await cls.over_bus(actor=actor, settings=settings)
        url = os.environ.get(HTTP_URL_VARIABLE)
        if not url:
            record = read_service_file(settings or Settings.from_env()) or {}
            url = record.get("http_url")
        if not isinstance(url, str) or not url:
            raise ServiceNotRunning(
                f"{API_KEY_VARIABLE} is set but no gateway was found: set {HTTP_URL_VARIABLE} "
                "(e.g. http://127.0.0.1:8788) or run 'sandboxer up' with its gateway on"
            )
        return cls.over_http(url, key)

    @property
    def transport(self) -> str:
        """``bus`` or ``http``."""
        return self._transport.name

    @property
    def bus(self) -> SandboxerClient:
        """The low-level bus client underneath, for what only the bus offers (adding
        credits, uploading a directory input, hosts...); :class:`BusError` over HTTP."""
        if isinstance(self._transport, BusTransport):
            return self._transport.client
        raise BusError("this client speaks the HTTP API; the bus client needs Sandboxer.over_bus")

    async def close(self) -> None:
        """Finish what is in flight and disconnect."""
        await self._transport.close()

    async def __aenter__(self) -> Sandboxer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- sandboxes ---------------------------------------------------------------------------

    @overload
    async def create(
        self,
        profile: str = ...,
        inputs: Mapping[str, str] | None = ...,
        *,
        ttl: str | None = ...,
        sandbox_id: str | None = ...,
        command_id: str | None = ...,
        host: str | None = ...,
        project: str | None = ...,
        network: Mapping[str, Any] | None = ...,
        consumer: Mapping[str, Any] | None = ...,
        wait: Literal[True] = ...,
        timeout: float = ...,
    ) -> Sandbox: ...

    @overload
    async def create(
        self,
        profile: str = ...,
        inputs: Mapping[str, str] | None = ...,
        *,
        ttl: str | None = ...,
        sandbox_id: str | None = ...,
        command_id: str | None = ...,
        host: str | None = ...,
        project: str | None = ...,
        network: Mapping[str, Any] | None = ...,
        consumer: Mapping[str, Any] | None = ...,
        wait: Literal[False],
        timeout: float = ...,
    ) -> Accepted: ...

    async def create(
        self,
        profile: str = "profile.local",
        inputs: Mapping[str, str] | None = None,
        *,
        ttl: str | None = None,
        sandbox_id: str | None = None,
        command_id: str | None = None,
        host: str | None = None,
        project: str | None = None,
        network: Mapping[str, Any] | None = None,
        consumer: Mapping[str, Any] | None = None,
        wait: bool = True,
        timeout: float = 300.0,
    ) -> Sandbox | Accepted:
        """Create a sandbox from ``profile``; wait until it is ready and return it (a
        rejection or a failure raises :class:`CommandFailed` with the event), or with
        ``wait=False`` return the :class:`Accepted` ids at once.

        ``ttl`` (``90s``, ``2h``) within the profile's limit; ``project`` pays (else the
        actor's or the key's); the same ``command_id`` twice is one command and one sandbox.
        ``network`` (``{"default": "deny", "egress": ["pypi.org:443"]}``) narrows the
        profile's network policy; a widening is rejected unless the actor is ``adm``
        (docs/network.md). ``consumer`` (``{"harness", "session_id", "run_id", "job_id",
        "labels"}``, each optional) says who the sandbox is for; ``list_sandboxes`` and
        ``usage`` filter and group by it (docs/protocol.md#consumer-attribution).
        """
        if sandbox_id is not None:
            _check_id(sandbox_id)
        row = await self._transport.create(
            profile,
            dict(inputs or {}),
            sandbox_id=sandbox_id,
            command_id=command_id,
            host=host,
            ttl=ttl,
            project=project,
            wait=wait,
            timeout=timeout,
            network=network,
            consumer=consumer,
        )
        return Sandbox.from_row(row) if wait else Accepted.from_row(row)

    async def get(self, sandbox_id: str) -> Sandbox | None:
        """The sandbox, or None when there is none (or the key may not see it). Reads the
        client's own writes: it includes what this client's commands did."""
        _check_id(sandbox_id)
        row = await self._transport.get(sandbox_id)
        return None if row is None else Sandbox.from_row(row)

    async def list_sandboxes(
        self,
        *,
        status: str | None = None,
        include_destroyed: bool = False,
        limit: int = DEFAULT_LIMIT,
        consumer: Mapping[str, Any] | None = None,
        after: str | None = None,
    ) -> Page[Sandbox]:
        """A page of sandboxes, oldest first (destroyed ones with ``include_destroyed``);
        ``consumer`` (``{"harness": "agents", "labels": {"team": "core"}}``) keeps those whose
        consumer has every part it names. The page is a list; its ``next`` is the cursor to
        pass as ``after`` for the page after it (None: none follows); :meth:`pages` walks
        them all."""
        _check_cursor(after, SANDBOXES)
        rows = await self._transport.list_sandboxes(
            status=status,
            include_destroyed=include_destroyed,
            limit=limit,
            consumer=dict(consumer or {}),
            after=after,
        )
        return rows.map(Sandbox.from_row)

    @overload
    async def destroy(
        self,
        sandbox_id: str,
        *,
        command_id: str | None = ...,
        wait: Literal[True] = ...,
        timeout: float = ...,
    ) -> Sandbox: ...

    @overload
    async def destroy(
        self,
        sandbox_id: str,
        *,
        command_id: str | None = ...,
        wait: Literal[False],
        timeout: float = ...,
    ) -> Accepted: ...

    async def destroy(
        self,
        sandbox_id: str,
        *,
        command_id: str | None = None,
        wait: bool = True,
        timeout: float = 120.0,
    ) -> Sandbox | Accepted:
        """Tear the sandbox down (its history stays); returns it ``destroyed``, or the
        :class:`Accepted` ids with ``wait=False``. :class:`NotFound` when there is none."""
        _check_id(sandbox_id)
        row = await self._transport.destroy(
            sandbox_id, command_id=command_id, wait=wait, timeout=timeout
        )
        return Sandbox.from_row(row) if wait else Accepted.from_row(row)

    async def extend_ttl(
        self, sandbox_id: str, duration: str, *, command_id: str | None = None
    ) -> Sandbox:
        """Push the sandbox's expiry later by ``duration`` (``2h``); returns the sandbox with
        its new ``expires_at`` (:class:`CommandFailed` past the profile's ``ttl.max``)."""
        _check_id(sandbox_id)
        await self._transport.extend_ttl(sandbox_id, duration, command_id=command_id)
        return await self._current(sandbox_id)

    async def pause(
        self, sandbox_id: str, *, command_id: str | None = None, timeout: float = 60.0
    ) -> Sandbox:
        """Freeze the sandbox's processes (its TTL clock stops); returns it ``paused``."""
        _check_id(sandbox_id)
        row = await self._transport.pause_or_resume(
            "pause", sandbox_id, command_id=command_id, timeout=timeout
        )
        return Sandbox.from_row(row)

    async def resume(
        self, sandbox_id: str, *, command_id: str | None = None, timeout: float = 60.0
    ) -> Sandbox:
        """Thaw a paused sandbox; returns it running again."""
        _check_id(sandbox_id)
        row = await self._transport.pause_or_resume(
            "resume", sandbox_id, command_id=command_id, timeout=timeout
        )
        return Sandbox.from_row(row)

    async def _current(self, sandbox_id: str) -> Sandbox:
        row = await self._transport.get(sandbox_id)
        if row is None:
            raise BusError(f"sandbox {sandbox_id} took the command but the view lacks it")
        return Sandbox.from_row(row)

    # -- snapshots ---------------------------------------------------------------------------

    async def snapshot(
        self,
        sandbox_id: str,
        *,
        name: str | None = None,
        command_id: str | None = None,
        timeout: float = 600.0,
    ) -> Snapshot:
        """Store a copy of the sandbox's workspace; returns the snapshot once ``created``
        (:class:`CommandFailed` when it was refused or failed)."""
        _check_id(sandbox_id)
        row = await self._transport.snapshot(
            sandbox_id, name=name, command_id=command_id, timeout=timeout
        )
        return Snapshot.from_row(row)

    async def restore(
        self,
        snapshot_id: str,
        *,
        profile: str | None = None,
        sandbox_id: str | None = None,
        inputs: Mapping[str, str] | None = None,
        project: str | None = None,
        command_id: str | None = None,
        timeout: float = 300.0,
        consumer: Mapping[str, Any] | None = None,
    ) -> Sandbox:
        """A new sandbox from the snapshot (on its profile, or ``profile``: any backend);
        returns it once ready. ``consumer`` as in :meth:`create`."""
        _check_id(snapshot_id, "snapshot")
        if sandbox_id is not None:
            _check_id(sandbox_id)
        row = await self._transport.restore(
            snapshot_id,
            profile=profile,
            sandbox_id=sandbox_id,
            inputs=inputs,
            project=project,
            command_id=command_id,
            timeout=timeout,
            consumer=consumer,
        )
        return Sandbox.from_row(row)

    async def snapshot_get(self, snapshot_id: str) -> Snapshot | None:
        """The snapshot, or None when there is none."""
        _check_id(snapshot_id, "snapshot")
        row = await self._transport.snapshot_get(snapshot_id)
        return None if row is None else Snapshot.from_row(row)

    async def snapshots(
        self,
        *,
        sandbox_id: str | None = None,
        include_deleted: bool = False,
        limit: int = DEFAULT_LIMIT,
        after: str | None = None,
    ) -> Page[Snapshot]:
        """A page of snapshots in the order they were requested (one sandbox's with
        ``sandbox_id``); ``after`` and ``next`` as :meth:`list_sandboxes`'."""
        if sandbox_id is not None:
            _check_id(sandbox_id)
        _check_cursor(after, SNAPSHOTS)
        rows = await self._transport.snapshots(
            sandbox_id=sandbox_id, include_deleted=include_deleted, limit=limit, after=after
        )
        return rows.map(Snapshot.from_row)

    async def delete_snapshot(
        self, snapshot_id: str, *, command_id: str | None = None, timeout: float = 60.0
    ) -> Snapshot:
        """Delete the snapshot's data (its history stays); returns it ``deleted``."""
        _check_id(snapshot_id, "snapshot")
        row = await self._transport.delete_snapshot(
            snapshot_id, command_id=command_id, timeout=timeout
        )
        return Snapshot.from_row(row)

    # -- exec and files ----------------------------------------------------------------------

    async def exec(
        self,
        sandbox_id: str,
        argv: list[str],
        *,
        stdin: StdinSource | None = None,
        timeout: float | None = None,
        on_output: OutputCallback | None = None,
        collect: bool = True,
        service: str | None = None,
    ) -> ExecResult:
        """Run ``argv`` in the sandbox and return how it ended.

        ``stdin``: bytes, or an async iterable of bytes (without it the input is empty).
        ``timeout``: seconds the command may run; past it, it is killed and the result has
        ``timed_out`` (and no ``exit_code``). ``on_output(stream, data)`` (plain or async;
        ``stream`` is ``stdout`` or ``stderr``) gets the output as it is written over the bus,
        at the end over HTTP. ``collect=False`` keeps no output in the result (for output
        too large to hold). ``service``: a compose sandbox's container (bus only).
        """
        _check_id(sandbox_id)
        if not argv or not all(isinstance(arg, str) for arg in argv):
            raise InvalidInput("argv must be a non-empty list of strings")
        kept: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}

        async def output(stream: str, data: bytes) -> None:
            if collect and stream in kept:
                kept[stream].extend(data)
            await notify(on_output, stream, data)

        answer: Row = await self._transport.exec(
            sandbox_id, argv, stdin=stdin, timeout=timeout, service=service, on_output=output
        )
        exit_code = answer.get("exit_code")
        return ExecResult(
            exit_code=exit_code if isinstance(exit_code, int) else None,
            stdout=bytes(kept["stdout"]),
            stderr=bytes(kept["stderr"]),
            timed_out=answer.get("timed_out") is True,
            stdout_truncated=answer.get("stdout_truncated") is True,
            stderr_truncated=answer.get("stderr_truncated") is True,
        )

    async def copy_in(
        self,
        sandbox_id: str,
        source: str | os.PathLike[str],
        path: str,
        *,
        service: str | None = None,
        max_mb: int = DEFAULT_MAX_MB,
    ) -> Copied:
        """Copy a local file (written at ``path``) or directory (its contents into the
        directory ``path``) into the sandbox's workspace; ``path`` is relative to it."""
        _check_id(sandbox_id)
        return await self._transport.copy_in(
            sandbox_id, Path(source), path, service=service, max_mb=max_mb
        )

    async def copy_out(
        self,
        sandbox_id: str,
        path: str,
        destination: str | os.PathLike[str],
        *,
        service: str | None = None,
        max_mb: int = DEFAULT_MAX_MB,
    ) -> Copied:
        """Copy ``path`` of the sandbox's workspace (a file or a directory) to
        ``destination``, into it when it is an existing directory (as ``cp -r``)."""
        _check_id(sandbox_id)
        return await self._transport.copy_out(
            sandbox_id, path, Path(destination), service=service, max_mb=max_mb
        )

    # -- events ------------------------------------------------------------------------------

    async def events(
        self,
        *,
        sandbox_id: str | None = None,
        follow: bool = False,
        after: int = 0,
        types: Collection[str] = (),
    ) -> AsyncIterator[Event]:
        """The log's events (one sandbox's with ``sandbox_id``; only ``types`` when given),
        oldest first, after the sequence ``after``. Without ``follow`` it ends at the end of
        the log; with it, it waits for new events for ever (break out of the loop). Pass the
        last :attr:`Event.seq` seen as ``after`` to go on where a loop stopped: nothing is
        lost, nothing repeats (over HTTP a dropped stream resumes so by itself)."""
        if sandbox_id is not None:
            _check_id(sandbox_id)
        if after < 0:
            raise InvalidInput(f"after must be a sequence (0 or more), not {after}")
        async for seq, data in self._transport.events(
            sandbox_id=sandbox_id, follow=follow, after=after, types=frozenset(types)
        ):
            yield Event.from_log(seq, data)

    # -- credits, usage and routing ----------------------------------------------------------

    async def credits(
        self, project: str | None = None, *, limit: int = DEFAULT_LIMIT, after: str | None = None
    ) -> Page[Account]:
        """A page of the accounts the actor may see, by project, or ``project``'s alone (none
        before its first credits): balance, reserved, available, budget (1 credit = 1
        micro-USD); ``after`` and ``next`` as :meth:`list_sandboxes`'."""
        _check_cursor(after, ACCOUNTS)
        rows = await self._transport.credits(project, limit=limit, after=after)
        return rows.map(Account.from_row)

    async def usage(
        self,
        *,
        project: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int = DEFAULT_LIMIT,
        by: str | None = None,
        after: str | None = None,
    ) -> Usage:
        """Metered sandboxes and spend by project, profile and backend (``since`` and
        ``until``: a date or a UTC time); with ``by`` (``harness``, ``session_id``, ``run_id``,
        ``job_id``) the summary is spend by that part of the sandboxes' consumer. ``rows`` is
        a page of at most ``limit`` (``after`` and ``next`` as :meth:`list_sandboxes`'); the
        summary and total count the whole period."""
        _check_cursor(after, USAGE)
        reply = await self._transport.usage(
            project=project, since=since, until=until, limit=limit, by=by, after=after
        )
        return Usage.from_reply(reply)

    @staticmethod
    def pages(
        list_page: Callable[..., Awaitable[P]], /, *, after: str | None = None, **asked: Any
    ) -> AsyncIterator[P]:
        """Every page of one of the lists above, one request each, following ``next``:
        ``async for page in sbx.pages(sbx.list_sandboxes, status="ready"): ...``
        (``after``: start after that cursor rather than at the first page)."""
        return pages(list_page, after=after, **asked)

    async def route_explain(self, profile: str, ttl: str | None = None) -> RouteExplanation:
        """How a create of ``profile`` would be routed now, and why; nothing is created."""
        return RouteExplanation.from_reply(await self._transport.route_explain(profile, ttl))
