"""The base class of the two SSH backends (``ext.compose-ssh``, ``ext.vm-packer``).

What they do the same way: find their sandboxes on every host that answers,
tear one down only when no other backend's marker claims it (and, for one
provisioning, only when its marker says that provisioning or an earlier one
made it: :meth:`SshBackend.teardown_attempt`), start a create clean over what
an earlier attempt left and hold the sandbox's lock on the host for the rest of its make
(:meth:`SshBackend._making`), run a
command in a sandbox's directory with its output streamed, and copy that
directory back for a snapshot. Everything
validates before it connects and reaches hosts only through
:mod:`sandboxer.ssh`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from sandboxer.config.settings import Settings
from sandboxer.domain.attempt_order import made_later
from sandboxer.domain.found import FoundSandbox, MadeBy
from sandboxer.domain.left_out import LeftOut
from sandboxer.errors import ExtensionError, SandboxNotFound, Unsupported
from sandboxer.extensions import ssh_checks
from sandboxer.extensions.base import OutputSink, ProvisionRequest, Stdin
from sandboxer.extensions.ssh_exec_stop import STOP_TIMEOUT, kill_argv, on_close_line, stoppable
from sandboxer.extensions.ssh_targets import (
    LIST_CONNECT_TIMEOUT,
    Target,
    reachable_targets,
    session,
    target,
)
from sandboxer.extensions.ssh_workspace import (
    ENV_FILE,
    Probe,
    exists,
    probe,
    sandbox_lock,
    write_marker,
)
from sandboxer.ssh import Connection, command_line, fetch_tree, remote, stream
from sandboxer.workspaces.extract import extract_host_tree
from sandboxer.workspaces.limits import ArchiveLimits

__all__ = ["SshBackend"]

log = logging.getLogger(__name__)

SNAPSHOT_TIMEOUT = 1800.0
"""Seconds the host's tar may take to send a workspace back."""


class SshBackend:
    """Finds, tears down and runs commands in sandboxes kept on hosts of the hosts file.

    A subclass sets ``id`` and implements ``_found_on`` (what one host holds)
    and ``_teardown_on`` (remove one sandbox from one host, idempotently).
    """

    id: str
    host_local = False
    directory_inputs = ("repo",)
    """Inputs read as a directory of the worker's machine: the worker vets them first."""
    snapshot_leaves_out: tuple[str, ...] = (ENV_FILE,)
    """Top-level names of a sandbox's directory that the backend wrote there and that a
    snapshot leaves out: a restore, anywhere, writes its own (the secrets of its profile)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def _found_on(self, item: Target, conn: Connection) -> list[FoundSandbox]:
        raise NotImplementedError

    async def _teardown_on(
        self, conn: Connection, item: Target, sandbox_id: str, found: Probe
    ) -> None:
        raise NotImplementedError

    async def _teardown_owned(
        self, conn: Connection, item: Target, sandbox_id: str, made_by: MadeBy | None = None
    ) -> None:
        """Tear down ``sandbox_id`` on one host unless another backend's marker claims it
        (or, with ``made_by``, a later provisioning than that one made it), under the
        sandbox's lock on the host, whose file goes with the sandbox."""
        async with sandbox_lock(conn, item, sandbox_id) as lock:
            if lock is None:
                return  # no workspace root on this host: nothing of the sandbox is here
            if await self._teardown_held(conn, item, sandbox_id, made_by):
                lock.remove()

    async def _teardown_held(
        self, conn: Connection, item: Target, sandbox_id: str, made_by: MadeBy | None
    ) -> bool:
        """:meth:`_teardown_owned`'s read and removal, the sandbox's lock held; whether it
        removed the sandbox (False: another backend's, or a later provisioning's)."""
        found = await probe(conn, item, sandbox_id)
        if (owner := found.foreign(self.id)) is not None:
            log.warning(
                "%s: sbx-%s on host %s belongs to %s; not touching it",
                self.id,
                sandbox_id,
                item.name,
                owner,
            )
            return False
        later = None if made_by is None else made_later(found.made_by, made_by)
        if later is not None:
            assert made_by is not None  # only a scoped teardown finds a later provisioning
            log.info(
                "%s: sbx-%s on host %s left alone by the teardown of generation %d attempt %d: "
                "a later provisioning (generation %d, attempt %d) made it",
                self.id,
                sandbox_id,
                item.name,
                *made_by,
                *later,
            )
            return False
        await self._teardown_on(conn, item, sandbox_id, found)
        return True

    @contextlib.asynccontextmanager
    async def _making(
        self,
        conn: Connection,
        item: Target,
        request: ProvisionRequest,
        marker: Mapping[str, Any],
        *,
        claimed: bool,
    ) -> AsyncIterator[None]:
        """Hold the sandbox's lock on the host for the rest of a create's make: the repo's
        copy (``rsync --delete``), the secrets and override files, ``up``, the setup steps.

        ``claimed``: :func:`~.ssh_workspace.claim` made the sandbox (and let go of the lock
        as it ended); under the lock again, the marker must still record this provisioning.
        Otherwise the long way: the claim found something of the sandbox there (an earlier
        attempt's), which is torn down and this provisioning's marker written. Either way
        :meth:`_superseded` (ExtensionError, nothing touched) when a later provisioning made
        it, or its marker no longer records this one: this one was frozen or cut off while
        its job went to another worker, which may have made the sandbox the log's ``ready``
        names and a user may be working in; a copy mirroring deletions would wipe that work.

        The whole make holds it, not each step after a look: a look then a step leaves the
        window where a freeze is likeliest (inside a long step, which goes on when the worker
        does). The price: a later attempt's claim, or a teardown, waits for the
        whole make, image pulls of ``up`` and setup steps included, and fails LOCK-BUSY past
        :data:`~.ssh_workspace.LOCK_WAIT` (retried as any failed step is); and a worker frozen
        while it makes holds the lock until it goes on or its connection drops. (ext.local's
        make lets its lock go before the setup steps: its teardown kills the holder, so a
        setup step left running cannot write into a later attempt's sandbox.)"""
        sandbox_id = request.sandbox_id
        async with sandbox_lock(conn, item, sandbox_id, make=True):
            found = await probe(conn, item, sandbox_id)
            if claimed:
                if found.marker_exists and found.made_by == request.made_by:
                    yield
                    return
                raise self._superseded(item, request, found.made_by)
            if made_later(found.made_by, request.made_by) is not None:
                raise self._superseded(item, request, found.made_by)
            await self._teardown_held(conn, item, sandbox_id, None)
            await write_marker(conn, item, sandbox_id, marker, made_by=request.made_by)
            yield

    def _superseded(
        self, item: Target, request: ProvisionRequest, made: MadeBy | None
    ) -> ExtensionError:
        """The error of a provisioning that stops: the sandbox on the host is no longer its
        own (a later one made it, or its marker went)."""
        by = (
            f"a later provisioning (generation {made[0]}, attempt {made[1]}) made it"
            if made is not None and made > request.made_by
            else "its marker no longer records this provisioning (removed or replaced)"
        )
        return ExtensionError(
            f"{self.id} sandbox {request.sandbox_id} on host {item.name}: {by} while this one "
            f"(generation {request.generation}, attempt {request.attempt}) was held up; this "
            "one stops",
            sandbox_id=request.sandbox_id,
            extension=self.id,
        )

    async def teardown(self, sandbox_id: str, *, host: str | None = None) -> None:
        await self._teardown_scoped(sandbox_id, None, host)

    async def teardown_attempt(
        self, sandbox_id: str, made_by: MadeBy, *, host: str | None = None
    ) -> None:
        """Tear the sandbox down as :meth:`teardown` does, unless its marker says a later
        provisioning than ``made_by`` made it: then nothing is done (logged). One whose
        marker does not say (written before the record) counts as earlier
        (:mod:`sandboxer.domain.attempt_order`).

        The worker calls it for a recreate's clean start and a failed or taken-over attempt's
        cleanup, after reading the log (so do its leak sweep and ``reap-stale``); a worker
        frozen (SIGSTOP) or cut off past the ack wait between that read and here would
        otherwise remove the sandbox a later attempt made meanwhile, which the log's
        ``ready`` names. The marker is read and the sandbox removed under its lock on the
        host, which a create holds from its look at what is there until it has written its
        marker (and again for the rest of its make, :meth:`_making`): a later attempt
        cannot make the sandbox in between."""
        await self._teardown_scoped(sandbox_id, made_by, host)

    async def _teardown_scoped(
        self, sandbox_id: str, made_by: MadeBy | None, host: str | None
    ) -> None:
        ssh_checks.check_sandbox_id(sandbox_id, self.id)
        if host is not None:
            item = target(self.settings, host, sandbox_id=sandbox_id, extension=self.id)
            async with session(item) as conn:
                await self._teardown_owned(conn, item, sandbox_id, made_by)
            return
        # No host recorded: look on every host that answers (ids are unique).
        await reachable_targets(
            self.settings,
            self.id,
            lambda item, conn: self._teardown_owned(conn, item, sandbox_id, made_by),
        )

    async def list_sandboxes(self) -> Sequence[FoundSandbox]:
        found = await reachable_targets(self.settings, self.id, self._found_on)
        return [sandbox for _, items in found for sandbox in items]

    async def list_host(self, host: str) -> Sequence[FoundSandbox]:
        """What ``host`` holds; HostUnreachable (or HostKeyRejected) when it does not answer."""
        item = target(self.settings, host, sandbox_id=None, extension=self.id)
        async with session(item, timeout=LIST_CONNECT_TIMEOUT) as conn:
            return await self._found_on(item, conn)

    async def snapshot_workspace(
        self, sandbox_id: str, destination: Path, *, host: str | None = None
    ) -> LeftOut:
        """Copy the sandbox's directory on its host into ``destination`` (without
        :attr:`snapshot_leaves_out`), through a tar archive checked like any workspace
        archive, except that hard links arrive as copies and FIFOs and devices are left out
        (:func:`~sandboxer.workspaces.extract.extract_host_tree`): what it left out."""
        ssh_checks.check_sandbox_id(sandbox_id, self.id)
        limits = ArchiveLimits.from_mb(self.settings.upload_max_mb)
        archive = destination.parent / f"{destination.name}.tar"
        item = await self._exec_target(sandbox_id, host)
        try:
            async with session(item) as conn:
                directory = await self._existing_directory(conn, item, sandbox_id)
                await fetch_tree(
                    conn,
                    directory,
                    archive,
                    exclude=self.snapshot_leaves_out,
                    max_bytes=limits.max_bytes,
                    timeout=SNAPSHOT_TIMEOUT,
                )
            unpacked = await asyncio.to_thread(extract_host_tree, archive, destination, limits)
        finally:
            archive.unlink(missing_ok=True)
        return unpacked.left_out

    async def _existing_directory(self, conn: Connection, item: Target, sandbox_id: str) -> str:
        directory = item.workspace(sandbox_id)
        if not await exists(conn, directory, "d"):
            raise SandboxNotFound(
                f"{self.id} sandbox {sandbox_id} has no directory {directory} on host "
                f"{item.name}; create it again or tear it down",
                sandbox_id=sandbox_id,
                extension=self.id,
            )
        return directory

    async def _exec_target(self, sandbox_id: str, host: str | None) -> Target:
        """Where to run an exec; a subclass may search the hosts when none was recorded."""
        return target(self.settings, host, sandbox_id=sandbox_id, extension=self.id)

    async def exec(
        self,
        sandbox_id: str,
        argv: Sequence[str],
        output: OutputSink,
        *,
        host: str | None = None,
        service: str | None = None,
        stdin: Stdin | None = None,
    ) -> int:
        """Run ``argv`` on the host, in the sandbox's directory, streaming its output
        (and ``stdin`` to its input). Cancelled, it kills what the command started
        (:mod:`~sandboxer.extensions.ssh_exec_stop`); the host does so too when this
        worker is killed and its connection drops, with ``stdin`` or without."""
        ssh_checks.check_sandbox_id(sandbox_id, self.id)
        ssh_checks.check_argv(argv, sandbox_id, self.id)
        if service is not None:
            raise Unsupported(
                f"{self.id} sandboxes have no services: drop --service (it applies to compose "
                "sandboxes)",
                sandbox_id=sandbox_id,
                extension=self.id,
            )
        item = await self._exec_target(sandbox_id, host)
        async with session(item) as conn:
            directory = await self._existing_directory(conn, item, sandbox_id)

            async def run(name: str, value: str) -> int:
                env = {**item.config.env, name: value}
                # A killed worker stops nothing: the host does, when the channel closes.
                on_close = on_close_line(command_line(kill_argv(name, value)))
                return await stream(
                    conn, argv, output, env=env, cwd=directory, stdin=stdin, on_close=on_close
                )

            async def stop(kill: list[str]) -> object:
                return await remote.run(conn, kill, timeout=STOP_TIMEOUT, check=False)

            # Given up (timeout, client gone): what it started is stopped on the host too.
            return await stoppable(run, stop, what=f"exec in {sandbox_id}")
