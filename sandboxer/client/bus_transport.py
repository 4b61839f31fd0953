"""The bus transport of :class:`sandboxer.client.Sandboxer`: NATS, through the low-level
:class:`~sandboxer.client.bus.SandboxerClient` (docs/protocol.md).

It answers as the HTTP transport does, so the facade cannot tell them apart:
a command that waits answers with the resource's row (read after the outcome,
which the client's own writes include), a command about nothing that exists
raises :class:`NotFound`, and exec or a copy on a sandbox no worker can hold
is refused at once rather than after the worker's answer times out.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from pathlib import Path
from typing import Any, TypeVar

from sandboxer.client.bus import SandboxerClient
from sandboxer.client.rejections import rejection_error
from sandboxer.client.transport import OutputCallback, Row
from sandboxer.errors import BusError, CommandFailed, InvalidInput, NotFound
from sandboxer.ids import derive_sandbox_id, new_command_id
from sandboxer.pagination import DEFAULT_LIMIT, Page
from sandboxer.transfer import Copied, StdinSource

__all__ = ["BusTransport"]

T = TypeVar("T")

GONE = frozenset({"destroyed"})
"""Statuses in which no worker holds a sandbox (the gateway's exec and files answer the same)."""
EXEC_WAIT_SLACK = 30.0
"""How much longer than the command's own timeout the call waits for its exit."""


async def _found(call: Callable[[], Awaitable[T]]) -> T:
    """``call()``, with a rejection raised as the HTTP transport raises it: one that names
    nothing as :class:`NotFound`, one for a key's limit as RateLimited."""
    try:
        return await call()
    except CommandFailed as exc:
        message = str(exc.event.get("reason") or exc.message)
        error = rejection_error(message, exc.event, sandbox_id=exc.sandbox_id)
        if isinstance(error, CommandFailed):
            raise
        raise error from exc


class BusTransport:
    """Speaks the bus as ``client``'s actor; closes ``client`` on :meth:`close`."""

    name = "bus"

    def __init__(self, client: SandboxerClient) -> None:
        self.client = client

    async def close(self) -> None:
        await self.client.close()

    def _for_project(self, project: str | None) -> SandboxerClient:
        """The client, or a sibling on the same connection acting for ``project`` (as
        ``create --project`` does: the service checks the name and who pays)."""
        if project is None or project == self.client.actor.get("project"):
            return self.client
        if self.client.key_id is not None:
            raise InvalidInput(
                f"this API key acts for project {self.client.actor.get('project')} only; it "
                f"cannot create for project {project}"
            )
        sibling = SandboxerClient(self.client.nc, actor={**self.client.actor, "project": project})
        sibling.seen_seq = self.client.seen_seq
        return sibling

    async def _learn(self, other: SandboxerClient) -> None:
        self.client.seen_seq = max(self.client.seen_seq, await other.outcomes.position())

    async def _row(self, sandbox_id: str) -> Row:
        row = await self.client.get(sandbox_id)
        if row is None:  # the view answers after the outcome, so this is not expected
            raise BusError(f"sandbox {sandbox_id} finished its command but the view lacks it")
        return row

    async def _live(self, sandbox_id: str) -> None:
        """Refuse at once what no worker would answer: an unknown or destroyed sandbox."""
        row = await self.client.get(sandbox_id)
        if row is None:
            raise NotFound(
                f"no sandbox {sandbox_id}", code="unknown_sandbox", sandbox_id=sandbox_id
            )
        status = str(row.get("status"))
        if status in GONE:
            reason = f"sandbox {sandbox_id} is {status}: nothing runs in it any more"
            event = {"type": "rejected", "code": "not_ready", "reason": reason}
            raise CommandFailed(reason, event | {"sandbox_id": sandbox_id})

    # -- sandboxes -------------------------------------------------------------------------------

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
        client = self._for_project(project)
        try:  # a command id made by the client itself is known to be fresh (no read-back)
            answer = await _found(
                lambda: client.create(
                    profile,
                    inputs,
                    sandbox_id=sandbox_id,
                    command_id=command_id,
                    host=host,
                    ttl=ttl,
                    network=network,
                    consumer=consumer,
                    wait=wait,
                    timeout=timeout,
                )
            )
        finally:
            await self._learn(client)
        if not wait:
            return answer
        return await self._row(str(answer["sandbox_id"]))

    async def get(self, sandbox_id: str) -> Row | None:
        return await self.client.get(sandbox_id)

    async def list_sandboxes(
        self,
        *,
        status: str | None,
        include_destroyed: bool,
        limit: int,
        consumer: Mapping[str, Any] | None = None,
        after: str | None = None,
    ) -> Page[Row]:
        return await self.client.list_sandboxes(
            status=status,
            include_destroyed=include_destroyed,
            limit=limit,
            consumer=consumer,
            after=after,
        )

    async def destroy(
        self, sandbox_id: str, *, command_id: str | None, wait: bool, timeout: float
    ) -> Row:
        answer = await _found(
            lambda: self.client.destroy(
                sandbox_id, command_id=command_id, wait=wait, timeout=timeout
            )
        )
        return await self._row(sandbox_id) if wait else answer

    async def extend_ttl(self, sandbox_id: str, duration: str, *, command_id: str | None) -> Row:
        return await _found(
            lambda: self.client.extend_ttl(sandbox_id, duration, command_id=command_id)
        )

    async def pause_or_resume(
        self, verb: str, sandbox_id: str, *, command_id: str | None, timeout: float
    ) -> Row:
        method = self.client.pause if verb == "pause" else self.client.resume
        await _found(lambda: method(sandbox_id, command_id=command_id, timeout=timeout))
        return await self._row(sandbox_id)

    # -- snapshots -------------------------------------------------------------------------------

    async def snapshot(
        self, sandbox_id: str, *, name: str | None, command_id: str | None, timeout: float
    ) -> Row:
        return await _found(
            lambda: self.client.snapshot(
                sandbox_id, name=name, command_id=command_id, timeout=timeout
            )
        )

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
    ) -> Row:
        client = self._for_project(project)
        command_id = command_id or new_command_id()
        try:
            await _found(
                lambda: client.restore(
                    snapshot_id,
                    consumer=consumer,
                    profile=profile,
                    sandbox_id=sandbox_id,
                    inputs=inputs,
                    command_id=command_id,
                    timeout=timeout,
                )
            )
        finally:
            await self._learn(client)
        return await self._row(sandbox_id or derive_sandbox_id(command_id))

    async def snapshot_get(self, snapshot_id: str) -> Row | None:
        return await self.client.snapshot_get(snapshot_id)

    async def snapshots(
        self,
        *,
        sandbox_id: str | None,
        include_deleted: bool,
        limit: int,
        after: str | None = None,
    ) -> Page[Row]:
        return await self.client.snapshots(
            sandbox_id=sandbox_id, include_deleted=include_deleted, limit=limit, after=after
        )

    async def delete_snapshot(
        self, snapshot_id: str, *, command_id: str | None, timeout: float
    ) -> Row:
        await _found(
            lambda: self.client.delete_snapshot(snapshot_id, command_id=command_id, timeout=timeout)
        )
        row = await self.client.snapshot_get(snapshot_id)
        if row is None:
            raise BusError(f"snapshot {snapshot_id} was deleted but the view lacks it")
        return row

    # -- exec and files --------------------------------------------------------------------------

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
        await self._live(sandbox_id)
        try:
            code = await self.client.exec(
                sandbox_id,
                argv,
                on_output,
                service=service,
                stdin=stdin,
                command_timeout=timeout,
                timeout=(timeout or 3600.0) + EXEC_WAIT_SLACK,
            )
        except CommandFailed as exc:
            if not exc.event.get("timed_out"):
                raise
            return {"exit_code": None, "timed_out": True}
        return {"exit_code": code, "timed_out": False}

    async def copy_in(
        self, sandbox_id: str, source: Path, path: str, *, service: str | None, max_mb: int
    ) -> Copied:
        await self._live(sandbox_id)
        return await self.client.copy_in(sandbox_id, source, path, service=service, max_mb=max_mb)

    async def copy_out(
        self, sandbox_id: str, path: str, destination: Path, *, service: str | None, max_mb: int
    ) -> Copied:
        await self._live(sandbox_id)
        return await self.client.copy_out(
            sandbox_id, path, destination, service=service, max_mb=max_mb
        )

    async def events(
        self,
        *,
        sandbox_id: str | None,
        follow: bool,
        after: int,
        types: Collection[str],
    ) -> AsyncIterator[tuple[int, Row]]:
        async for seq, event in self.client.events(
            sandbox_id=sandbox_id, follow=follow, start_seq=after + 1
        ):
            if not types or event.get("type") in types:
                yield seq, event

    # -- credits and routing ---------------------------------------------------------------------

    async def credits(
        self, project: str | None, *, limit: int = DEFAULT_LIMIT, after: str | None = None
    ) -> Page[Row]:
        return await self.client.credits(project, limit=limit, after=after)

    async def usage(
        self,
        *,
        project: str | None,
        since: str | None,
        until: str | None,
        limit: int,
        by: str | None = None,
        after: str | None = None,
    ) -> Row:
        return await self.client.usage(
            project=project, since=since, until=until, limit=limit, by=by, after=after
        )

    async def route_explain(self, profile: str, ttl: str | None) -> Row:
        return await self.client.route_explain(profile, ttl)
