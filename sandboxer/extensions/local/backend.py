"""``ext.local``: sandboxes on this machine with bubblewrap, cgroups and nsenter.

A sandbox is a HOLDER process (``bwrap ... sleep infinity``) whose namespaces
are the sandbox: its own pid, mount, network (loopback only), ipc, uts and
cgroup namespaces, a read-only view of /usr and /etc, and a writable (or
read-only) /workspace bound from ``<root>/<id>/workspace``. Commands run inside
it with ``nsenter`` as an unprivileged user without capabilities (as root, a uid
of the sandbox's own: :mod:`.sandbox_uids`). The holder
is detached from the worker (see :mod:`.holder`), and ``state.json`` records
it, so a restarted worker adopts running sandboxes through
:meth:`LocalExtension.list_sandboxes`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import platform
import shutil
import socket
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from sandboxer.config.profile import Profile
from sandboxer.config.settings import Settings
from sandboxer.domain.found import MadeBy
from sandboxer.domain.left_out import LeftOut
from sandboxer.errors import ExtensionError, InvalidInput, SandboxNotFound, Unsupported
from sandboxer.events.reachability import ACCESS_KEY, LocalExecAccess, exec_hint
from sandboxer.extensions.base import (
    ClaimedAhead,
    FoundSandbox,
    OutputSink,
    ProvisionRequest,
    Readiness,
    Stdin,
)
from sandboxer.extensions.local import (
    attempt_record,
    cgroups,
    egress,
    freezer,
    keyrings,
    resource_names,
    sandbox_uids,
    sandbox_users,
    workspace,
)
from sandboxer.extensions.local.bwrap_command import enter_argv, launcher_argv
from sandboxer.extensions.local.egress_policy import DENY, LocalEgress, namespace_for
from sandboxer.extensions.local.holder import spawn_holder
from sandboxer.extensions.local.inventory import machine_report, scan_sandboxes
from sandboxer.extensions.local.leftovers import Leftover, scan_leftovers
from sandboxer.extensions.local.procs import (
    ProcessRef,
    kill,
    owning_user_namespace,
    uids_running,
)
from sandboxer.extensions.local.run import run_streaming
from sandboxer.extensions.local.sandbox_lock import sandbox_lock
from sandboxer.extensions.local.snapshot_copy import copy_workspace_out
from sandboxer.extensions.local.steps import local_egress_for, profile_warnings
from sandboxer.extensions.local.workspace import POOL_DIR, Layout, State
from sandboxer.extensions.output_capture import OutputCapture
from sandboxer.ids import SANDBOX_ID_RULE, is_valid_sandbox_id
from sandboxer.workspaces.limits import ArchiveLimits

__all__ = ["LocalExtension"]

log = logging.getLogger(__name__)

EGRESS_HOSTS_FILE = "egress-hosts"
"""``/etc/hosts`` lines under ``$SANDBOXER_HOME``: names the proxies resolve before DNS."""


FREE_BATCH = 64
"""Leftovers freed under one look at the host (:meth:`LocalExtension.free_leftovers`). Their
locks are held together, two open files each, so a batch is bounded: by the worker's open
files (1024 under systemd's default), and by how long a provision of one of them waits."""

INPUTS_IN = "inputs-in"
"""In a claimed sandbox's directory (outside its workspace: the sandbox cannot write it):
the claim's inputs are in, and a retried claim puts them in no more."""


class FreezerStep(Protocol):
    """:func:`.freezer.freeze` or :func:`.freezer.thaw`."""

    async def __call__(self, directory: Path, *, sandbox_id: str) -> None: ...


class LocalExtension:
    """The local bubblewrap backend. ``root`` holds every sandbox (``$SANDBOXER_HOME/local``)."""

    id = "ext.local"
    host_local = True
    enforces_workspace_access = True
    """``workspace.access`` ro binds the workspace read-only, none binds none (a scratch
    tmpfs instead); the extension worker warns for backends without this mark."""
    directory_inputs = ("repo",)
    """Inputs read as a directory of the worker's machine: the worker vets them first."""

    def __init__(
        self,
        root: Path,
        *,
        cgroup_base: Path = cgroups.CGROUP_BASE,
        egress_for: Callable[[ProvisionRequest], LocalEgress] = local_egress_for,
        egress_hosts_file: Path | None = None,
        egress_slots_dir: Path = egress.SLOTS_DIR,
        uids_dir: Path = sandbox_uids.UIDS_DIR,
        root_tag: str | None = None,
        pool: bool = False,
        snapshot_limits: ArchiveLimits | None = None,
    ) -> None:
        """``egress_for`` says what a request's sandbox may reach (see :mod:`.steps`);
        ``egress_hosts_file`` (``/etc/hosts`` lines) is what sandbox proxies resolve
        names with before the system resolver; tests use it, there being no DNS.
        ``egress_slots_dir`` and ``uids_dir`` hold the host-wide link slots and uids.
        ``pool``: this root holds warm pool members (:meth:`pool_members`).
        ``snapshot_limits``: where a snapshot's copy of a workspace stops
        (SANDBOXER_UPLOAD_MAX_MB; the default limits without settings)."""
        self.root = Path(root)
        self._snapshot_limits = snapshot_limits or ArchiveLimits()
        self._pool = pool
        self._tools: dict[str, str] = {}
        self._cgroup_base = cgroup_base
        self._egress_for = egress_for
        self._egress_hosts_file = egress_hosts_file
        self._egress_slots_dir = egress_slots_dir
        self._uids = sandbox_uids.uid_slots(uids_dir)
        self._as_root = os.geteuid() == 0
        # Cgroups are host-wide; tag them with the root so two roots never collide.
        self._root_tag = root_tag or resource_names.root_tag(self.root)

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalExtension:
        """How the worker builds it: sandboxes live under ``$SANDBOXER_HOME/local``; the
        proxies resolve names in ``$SANDBOXER_HOME/egress-hosts`` first when it exists."""
        hosts = settings.home / EGRESS_HOSTS_FILE
        return cls(
            settings.local_root,
            egress_hosts_file=hosts if hosts.is_file() else None,
            snapshot_limits=ArchiveLimits.from_mb(settings.upload_max_mb),
        )

    # -- the Extension protocol ------------------------------------------------------------

    async def provision(self, request: ProvisionRequest) -> None:
        started = time.monotonic()
        layout = self._layout(request.sandbox_id)
        # Inputs and tools vetted before anything is made.
        repo = request.inputs.get("repo")
        source = workspace.repo_source(repo, request.sandbox_id) if repo is not None else None
        workspace.check_secret_names(request.secrets, request.sandbox_id)
        bwrap = self._tool("bwrap", "bubblewrap")
        self._tool("nsenter", "util-linux")
        egress_of = self._egress_of(request)
        # Another worker's teardown of the same sandbox waits, and this waits for it: the
        # sandbox is made whole or not at all, never half under a teardown.
        async with sandbox_lock(self.root, request.sandbox_id):
            state = await self._make(request, layout, source, bwrap, egress_of)
        log.info(
            "local sandbox %s: holder pid %d started in %.0f ms",
            request.sandbox_id,
            state.holder_pid,
            (time.monotonic() - started) * 1000,
        )
        for index, instruction in enumerate(request.profile.setup.instructions):
            await self._run_setup(request, state, index, instruction)

    async def _make(
        self,
        request: ProvisionRequest,
        layout: Layout,
        source: Path | None,
        bwrap: str,
        egress_of: tuple[LocalEgress, list[str]],
    ) -> State:
        """Directories, network, workspace inputs, groups and the holder (the lock held). The
        network, the groups and the holder are each recorded in ``state.json`` before anything
        runs in or through them; what comes before a first record is found by the sandbox's
        name (``_left_behind``, ``_unmake``)."""
        profile = request.profile
        allowed, egress_warnings = egress_of

        left_behind = self._left_behind(layout)
        kept_uid = None
        if left_behind:
            self._refuse_if_made_later(workspace.read_state(layout), request)
            # Start clean after a partial earlier attempt, but with the uid it had: a
            # redelivered provision is the same sandbox (its keys are cleared all the same).
            kept_uid = await self._unmake(request.sandbox_id, keep_uid=True)
        layout.create()
        uid = None
        if self._as_root:
            # Taken once the directory exists, and freed before it is removed: a uid is never
            # held by a sandbox that no directory names (what a first attempt relies on).
            uid = self._uids.allocate(
                self._group(request.sandbox_id), recorded=kept_uid, fresh=not left_behind
            )
        state = State(
            sandbox_id=request.sandbox_id,
            created_at=datetime.now(UTC).isoformat(),
            workspace=str(layout.workspace),
            warnings=[*profile_warnings(profile), *egress_warnings, *self._keyring_warnings()],
            # A member names its own groups and network: once a claim moves its directory
            # to a sandbox's, its teardown still finds them, with nothing to write first.
            pool_member=request.sandbox_id if self._pool else None,
            made_by=[request.generation, request.attempt],
            uid=uid,
        )
        # Not written yet: a crash before the first write leaves a directory with no
        # record, whose teardown finds the uid, groups and network by the sandbox's name
        # (each write costs a rename; 0.2 to 0.3 ms here).
        network: egress.EgressState | None = None
        if not allowed.denies_all:
            # Built (and recorded) before the holder: nothing ever runs unfiltered.
            network = await egress.setup(
                name=self._group(request.sandbox_id),
                sandbox_id=request.sandbox_id,
                egress=allowed,
                sandbox_dir=layout.dir,
                hosts_file=self._egress_hosts_file,
                slots_dir=self._egress_slots_dir,
            )
            state = dataclasses.replace(state, egress=network.to_dict())
            workspace.write_state(layout, state)
        if source is not None:
            # The worker's own staged copy, for this provisioning alone, is moved into place
            # rather than copied a second time; a path from elsewhere is copied.
            put = workspace.take_repo if "repo" in request.staged else workspace.copy_repo
            await asyncio.to_thread(put, source, layout.workspace)
        owner = (uid, uid) if uid is not None else None
        if request.secrets:
            workspace.write_secrets(layout.workspace, request.secrets, owner)
        if owner is not None and source is None and not request.secrets:
            workspace.chown_tree(layout.workspace, *owner)  # still empty: one lchown, no thread
        elif owner is not None:
            await asyncio.to_thread(workspace.chown_tree, layout.workspace, *owner)

        groups = cgroups.setup(
            self._group(request.sandbox_id), profile.resources, self._cgroup_base
        )
        # The freezer's group is joined like the limit groups, so pause reaches every process.
        frozen_group, why = freezer.create_group(
            self._group(request.sandbox_id), self._cgroup_base, cgroups.GROUP
        )
        groups.dirs += [frozen_group] if frozen_group else []
        groups.warnings += [why] if why else []
        state = dataclasses.replace(
            state,
            cgroups=[str(path) for path in groups.dirs],
            warnings=[*state.warnings, *groups.warnings],
        )
        # The uid and cgroups recorded before anything runs as it or in them.
        workspace.write_state(layout, state)
        spawned = await spawn_holder(
            sandbox_id=request.sandbox_id,
            workspace=layout.workspace,
            read_only=profile.workspace.access == "ro",
            bind_workspace=profile.workspace.access != "none",
            join_files=groups.join_files,
            log_file=layout.log_file,
            as_root=self._as_root,
            bwrap=bwrap,
            # Its users' names, which bwrap copies into the sandbox: a pool member's are
            # given here too, so a claim (which moves its directory) gives none.
            users=sandbox_users.files_for(uid),
            netns=egress.namespace_path(network.namespace) if network else None,
        )
        state = dataclasses.replace(
            state,
            holder_pid=spawned.holder.pid,
            holder_start_time=spawned.holder.start_time,
            monitor_pid=spawned.monitor.pid if spawned.monitor else None,
            monitor_start_time=spawned.monitor.start_time if spawned.monitor else None,
        )
        try:
            workspace.write_state(layout, state)
        except BaseException:
            # Until state.json names the holder only this call knows it: a failed write (a
            # full disk; a directory removed by hand) would leave it running unrecorded.
            made = [ref for ref in (spawned.holder, spawned.monitor) if ref is not None]
            for ref in made:
                kill(ref)
            with contextlib.suppress(ExtensionError):  # the first failure is the one to see
                await self._gone(request.sandbox_id, made)  # SIGKILL lands a moment later
            await cgroups.destroy(groups.dirs)
            await egress.teardown(
                self._group(request.sandbox_id), network, slots_dir=self._egress_slots_dir
            )
            if uid is not None:  # nothing ran as it yet: no keys to clear
                self._uids.release(self._group(request.sandbox_id), uid)
            raise
        return state

    async def wait_ready(self, request: ProvisionRequest) -> Readiness:
        """Ready once the holder is alive: :func:`spawn_holder` returned only after bwrap
        had built the whole sandbox and started its idle command inside it (the holder's
        own proof), so entering it once more with nsenter would prove nothing new and
        cost a process and a cgroup join on every create."""
        layout = self._layout(request.sandbox_id)
        return self._readiness(layout, self._running_state(layout))

    def _readiness(self, layout: Layout, state: State) -> Readiness:
        """How a running sandbox is reached (``state``: its record, holder alive)."""
        self._tool("setpriv", "util-linux")  # what every exec runs inside, after nsenter
        node = socket.gethostname()
        descriptor: dict[str, Any] = {
            "kind": "local",
            "workspace": str(layout.workspace),
            "holder_pid": state.holder_pid,
            "exec": f"sandboxer exec {layout.sandbox_id} -- CMD",
            "network": _network_summary(egress.EgressState.from_dict(state.egress)),
            "node": node,
            ACCESS_KEY: LocalExecAccess(
                node=node,
                workdir=str(layout.workspace),
                exec=exec_hint(layout.sandbox_id),
            ).as_dict(),
        }
        return Readiness(descriptor=descriptor, warnings=list(state.warnings))

    async def teardown(self, sandbox_id: str, *, host: str | None = None) -> None:
        del host  # always this machine
        self._layout(sandbox_id)  # the id checked before it names a lock
        async with sandbox_lock(self.root, sandbox_id):
            await self._unmake(sandbox_id)

    async def teardown_attempt(
        self, sandbox_id: str, made_by: MadeBy, *, host: str | None = None
    ) -> None:
        """Tear the sandbox down as :meth:`teardown` does, unless its ``state.json`` says a
        later provisioning than ``made_by`` made (or claimed) it: then nothing is done (logged).
        One without the record counts as earlier (:mod:`.attempt_record`).

        The worker calls it for a recreate's clean start and a failed or taken-over attempt's
        cleanup, after reading the log; a worker frozen (SIGSTOP) or cut off past the ack wait
        between that read and here would otherwise remove the sandbox a later attempt made
        meanwhile, which the log's ``ready`` names. The record is read and the sandbox unmade
        under its lock, which a provision (or a claim) holds from its own look at what is there
        until it has recorded itself: a later attempt cannot make the sandbox in between."""
        del host  # always this machine
        layout = self._layout(sandbox_id)  # the id checked before it names a lock
        async with sandbox_lock(self.root, sandbox_id):
            found = workspace.read_state(layout)
            later = attempt_record.made_later(found.made_by if found else None, made_by)
            if later is not None:
                log.info(
                    "local sandbox %s: left alone by the teardown of generation %d attempt %d: "
                    "a later provisioning (generation %d, attempt %d) made it",
                    sandbox_id,
                    *made_by,
                    *later,
                )
                return
            await self._unmake(sandbox_id)

    async def _unmake(
        self, sandbox_id: str, *, keep_uid: bool = False, found_uids: Sequence[int] | None = None
    ) -> int | None:
        """Kill the holder, remove the groups, the network, the uid and the directory (the
        lock held). ``keep_uid``: a provision starting again keeps the sandbox's uid, whose
        keys are cleared all the same; the uid kept is returned (None: none, or not known).
        ``found_uids``: the uids the slot files give the sandbox, read under the lock by the
        caller (a reap's one look at the host), so not read again here."""
        layout = self._layout(sandbox_id)
        state = workspace.read_state(layout)
        if state is None and self._pool and not layout.dir.exists():
            # A member with no directory was claimed (its groups, network and uid, named
            # after it, are its sandbox's now) or is torn down already: nothing here is its
            # own. A member's groups come after its directory, so none was made without one.
            return None
        refs = [] if state is None else [ref for ref in (state.holder, state.monitor) if ref]
        group = self._group_of(sandbox_id, state)
        recorded = [Path(path) for path in state.cgroups] if state else []
        dirs = [path for path in recorded if path.name == group]  # only this sandbox's groups
        dirs += cgroups.sandbox_dirs(group, self._cgroup_base)
        freezer.thaw_now(dirs)  # a paused sandbox: frozen tasks act on SIGKILL once thawed
        for ref in refs:
            kill(ref)  # the holder is the pid namespace's init: the kernel kills the rest
        await cgroups.destroy(dirs)
        await egress.teardown(
            group,
            egress.EgressState.from_dict(state.egress) if state else None,
            slots_dir=self._egress_slots_dir,
        )
        await self._gone(sandbox_id, refs)
        # Kept only under the name it would be taken again by (not a claimed member's).
        kept = await self._free_uid(
            sandbox_id,
            group,
            state,
            keep=keep_uid and group == self._group(sandbox_id),
            found_uids=found_uids,
        )
        await asyncio.to_thread(workspace.remove, layout)
        return kept

    async def _free_uid(
        self,
        sandbox_id: str,
        group: str,
        state: State | None,
        *,
        keep: bool,
        found_uids: Sequence[int] | None = None,
    ) -> int | None:
        """Clear the keys of the uid ``group`` holds, then free it (unless ``keep``): the one
        ``state`` records, or, with no record, whichever the slot files give ``group``. The
        sandbox's processes are gone. A uid the record names but another sandbox now holds
        (the record outlived a reboot, which empties /run) is left alone."""
        if not self._as_root:
            return None
        if state is None:  # each slot file read, unless the caller just did
            uids = self._uids.owned_by(group) if found_uids is None else list(found_uids)
        elif state.uid is not None and self._uids.holds(group, state.uid):
            uids = [state.uid]
        else:  # none (made before sandboxes had their own: 65534 is no one's to free), or gone
            return None
        for index, uid in enumerate(uids):
            await sandbox_uids.clear_keys(uid, sandbox_id=sandbox_id)
            if not keep or index > 0:  # one is kept (a second would be a stray)
                self._uids.release(group, uid)
        return uids[0] if keep and uids else None

    async def list_sandboxes(self) -> Sequence[FoundSandbox]:
        return await asyncio.to_thread(scan_sandboxes, self.root)

    # -- leftover slots and groups (docs/ext-local.md#users-and-keyrings) ------------------

    async def list_leftovers(self) -> Sequence[FoundSandbox]:
        """Sandboxes of this root of which only host-wide slots or cgroups are left
        (:mod:`.leftovers`)."""
        return [item.found() for item in await asyncio.to_thread(self._leftovers)]

    async def free_leftovers(self, sandbox_ids: Collection[str]) -> list[str]:
        """Free what :meth:`list_leftovers` found of each of ``sandbox_ids`` as its teardown
        would (the uid's keys cleared first), if it is still unowned once its locks in both
        roots are held: no provision or claim of one (or of a pool member of that id) is
        halfway. The ids freed; those no longer left over are left alone.

        One look at the host for up to :data:`FREE_BATCH` of them, not one per id: a look
        reads every slot file, every directory's ``state.json`` and every process's
        ``/proc/<pid>/status``."""
        ids = sorted(set(sandbox_ids))
        for sandbox_id in ids:
            self._layout(sandbox_id)  # each id checked before it names a lock
        freed: list[str] = []
        for start in range(0, len(ids), FREE_BATCH):
            freed += await self._free_batch(ids[start : start + FREE_BATCH])
        return freed

    async def _free_batch(self, ids: Sequence[str]) -> list[str]:
        """:meth:`free_leftovers` of ``ids`` (sorted), under one look."""
        async with contextlib.AsyncExitStack() as locks:
            # Every pool lock before any root lock, each root's in id order: a claim takes
            # its member's pool lock before its sandbox's root lock, and another reap the
            # same order, so no two steps ever wait for each other.
            for root in (self.root / POOL_DIR, self.root):
                for sandbox_id in ids:
                    await locks.enter_async_context(sandbox_lock(root, sandbox_id))
            left = {item.sandbox_id: item for item in await asyncio.to_thread(self._leftovers)}
            freed = [sandbox_id for sandbox_id in ids if sandbox_id in left]
            for sandbox_id in freed:
                await self._unmake(sandbox_id, found_uids=left[sandbox_id].uids)
                log.info("local sandbox %s: freed the slots its lost directory left", sandbox_id)
        return freed

    def _leftovers(self) -> list[Leftover]:
        """Slots and groups named by this root and by none of its directories (or its
        pool's), which no process uses: none runs as the uid, none is in the sandbox's
        cgroups (blocking)."""
        if self._pool:  # the main root's look covers its pool's names (they share the tag)
            return []
        found = scan_leftovers(
            self.root,
            uids_dir=self._uids.directory,
            links_dir=self._egress_slots_dir,
            tag=self._root_tag,
            cgroup_base=self._cgroup_base,
        )
        if not found:
            return []
        running = uids_running()
        return [
            item
            for item in found
            if running.isdisjoint(item.uids)
            and not cgroups.member_pids(
                cgroups.sandbox_dirs(self._group(item.sandbox_id), self._cgroup_base)
            )
        ]

    async def snapshot_workspace(
        self, sandbox_id: str, destination: Path, *, host: str | None = None
    ) -> LeftOut:
        """Copy the workspace out (the sandbox keeps running); the worker stores the copy.
        The copy stops at the snapshot's limits, before it fills the worker's disk.

        The copy holds the sandbox's lock. A teardown that does not wait for the snapshot
        (a reconcile failing a sandbox whose processes died, a reap, another worker's)
        removed the workspace under a copy that skipped what vanished, and the snapshot was
        stored from a partial tree: a restore gave back a silently incomplete workspace. Now the teardown waits for the copy, or the copy, coming
        after it, finds no workspace and the snapshot fails."""
        del host  # always this machine
        layout = self._layout(sandbox_id)  # the id checked before it names a lock
        async with sandbox_lock(self.root, sandbox_id):
            return await asyncio.to_thread(
                copy_workspace_out,
                layout.workspace,
                destination,
                sandbox_id=sandbox_id,
                limits=self._snapshot_limits,
            )

    async def pause(self, sandbox_id: str, *, host: str | None = None) -> None:
        """Freeze every process of the sandbox (see :mod:`.freezer`)."""
        del host  # always this machine
        await self._freezer_step(sandbox_id, freezer.freeze)

    async def resume(self, sandbox_id: str, *, host: str | None = None) -> None:
        """Thaw the sandbox's processes; they carry on where they stopped."""
        del host  # always this machine
        await self._freezer_step(sandbox_id, freezer.thaw)

    async def _freezer_step(self, sandbox_id: str, step: FreezerStep) -> None:
        """Freeze or thaw the sandbox's group with its lock held. Without it, a freeze landing
        between a teardown's thaw and its kill (another worker's teardown, or a redelivered
        provision starting clean) left the SIGKILL pending on frozen tasks: their groups could
        not be removed and the teardown failed with the sandbox frozen and half removed. A
        resume, for its part, wrote to a group removed since it read ``state.json``."""
        layout = self._layout(sandbox_id)
        async with sandbox_lock(self.root, sandbox_id):
            state = self._running_state(layout)
            await step(self._freezer_of(state), sandbox_id=sandbox_id)

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
        del host  # always this machine
        if service is not None:
            raise Unsupported(
                f"{self.id} sandboxes have no services: drop --service (it applies to compose "
                "sandboxes)",
                sandbox_id=sandbox_id,
                extension=self.id,
            )
        if not argv or any("\0" in arg for arg in argv):
            raise InvalidInput(
                "exec needs a command: argv must be non-empty and free of NUL characters",
                sandbox_id=sandbox_id,
                extension=self.id,
            )
        state = self._running_state(self._layout(sandbox_id))
        control = freezer.find_control(Path(path) for path in state.cgroups)
        if control is not None and freezer.is_frozen(control):
            # Entering would put the command into the frozen group: it would hang, not run.
            raise ExtensionError(
                f"local sandbox {sandbox_id} is paused (its processes are frozen); "
                f"resume it first: sandboxer resume {sandbox_id}",
                sandbox_id=sandbox_id,
                extension=self.id,
            )
        return await self._run_inside(state, argv, output, stdin=stdin)

    async def inspect_host(self, host: str | None = None) -> dict[str, Any]:
        """Telemetry of this machine and what it holds for ext.local."""
        del host  # always this machine
        found = await self.list_sandboxes()
        report = await asyncio.to_thread(machine_report, self.root, self._cgroup_base)
        return {
            **report,
            "workspaces": [item.sandbox_id for item in found],
            "sandboxes": len(found),
            "alive": sum(1 for item in found if item.alive),
            "as_root": self._as_root,
            # Sandboxes with network access of this root, by namespace. A sandbox claimed
            # from a warm pool keeps its member's name (its state.json's pool_member).
            "egress_namespaces": egress.leftover_namespaces(self._root_tag),
            "nft": shutil.which("nft", path="/usr/sbin:/sbin:" + os.environ.get("PATH", "")),
        }

    async def tear_down_everything(self) -> None:
        """Tear down every sandbox and pool member of this root, and free what lost
        directories left: for a home about to be removed (a test's, a benchmark's, the fault
        suite's), after which nothing could find its cgroups, uids and link slots again. A
        teardown that fails does not stop the others; the first failure is raised at the end."""
        failed: list[Exception] = []
        for backend in (self, self.pool_members()):
            for found in await backend.list_sandboxes():
                try:
                    await backend.teardown(found.sandbox_id)
                except Exception as exc:
                    failed.append(exc)
        await self.free_leftovers([found.sandbox_id for found in await self.list_leftovers()])
        if failed:
            raise failed[0]

    # -- warm pools (docs/pools.md) --------------------------------------------------------

    @property
    def pool_node(self) -> str:
        """Where this backend's members live: this machine, and this root on it."""
        return f"{socket.gethostname()}-{self._root_tag}"

    def pool_members(self) -> LocalExtension:
        """The same backend over ``<root>/.pool``: members are made, listed and torn down
        there like sandboxes (same cgroup tag), until a claim moves one out."""
        return LocalExtension(
            self.root / POOL_DIR,
            cgroup_base=self._cgroup_base,
            egress_for=self._egress_for,
            egress_hosts_file=self._egress_hosts_file,
            egress_slots_dir=self._egress_slots_dir,
            uids_dir=self._uids.directory,
            root_tag=self._root_tag,
            pool=True,
            snapshot_limits=self._snapshot_limits,
        )

    @staticmethod
    def member_profile(profile: Profile) -> Profile:
        """What a member is made from: the profile without its setup instructions, which
        run at the claim, with the create's inputs and secrets in place."""
        return profile.model_copy(
            update={"setup": profile.setup.model_copy(update={"instructions": []})}
        )

    async def claim(self, member_id: str, request: ProvisionRequest) -> Readiness:
        """Make pool member ``member_id`` the sandbox ``request.sandbox_id``: move its directory
        (the holder keeps its mounts; the workspace is the same directory), then apply what
        belongs to this create: the ``repo`` input, the secrets and the setup instructions.
        Idempotent: a retried claim finds the member already moved. SandboxNotFound when the
        member is gone or dead (the create is then made cold); any other error is this
        create's own (a failing setup instruction fails it, as on a cold create)."""
        target = self._layout(request.sandbox_id)
        if not is_valid_sandbox_id(member_id):  # before it names a path or a lock
            raise InvalidInput(f"invalid pool member id {member_id!r}", extension=self.id)
        member = Layout(self.root / POOL_DIR, member_id)
        repo = request.inputs.get("repo")
        source = workspace.repo_source(repo, request.sandbox_id) if repo is not None else None
        workspace.check_secret_names(request.secrets, request.sandbox_id)
        # The member's lock keeps the keeper's teardown of it off; the sandbox's, another
        # worker's teardown of the sandbox (the move is the sandbox's making).
        async with (
            sandbox_lock(member.root, member_id),
            sandbox_lock(self.root, request.sandbox_id),
        ):
            state = await self._take(member, target, request, source)
        for index, instruction in enumerate(request.profile.setup.instructions):
            await self._run_setup(request, state, index, instruction)
        if not state.holder_alive():
            return await self.wait_ready(request)  # which says it is gone
        return self._readiness(target, state)  # the record in hand: no read of it again

    @contextlib.asynccontextmanager
    async def claim_ahead(
        self, member_id: str, request: ProvisionRequest
    ) -> AsyncIterator[ClaimedAhead]:
        """:meth:`claim` before the claim is on record, for a create with nothing to apply
        (no ``repo``, secrets or setup instructions): the member is moved under the
        sandbox's name as this is entered, and stays there unless given back while it is
        (its claim, sent meanwhile, was refused); both locks are held until it is left. A
        crash in between leaves the member under the sandbox's name, which a redelivered
        claim adopts or removes (:meth:`_take`). SandboxNotFound, on entering, when the
        member is gone or dead; InvalidInput for a create with something to apply, or one
        that already has a directory (an earlier attempt's: the usual claim deals with it)."""
        target = self._layout(request.sandbox_id)
        if not is_valid_sandbox_id(member_id):  # before it names a path or a lock
            raise InvalidInput(f"invalid pool member id {member_id!r}", extension=self.id)
        member = Layout(self.root / POOL_DIR, member_id)
        if (
            request.inputs.get("repo") is not None
            or request.secrets
            or request.profile.setup.instructions
        ):
            raise InvalidInput(
                f"sandbox {request.sandbox_id}: a claim ahead has nothing to apply",
                extension=self.id,
            )
        async with (
            sandbox_lock(member.root, member_id),
            sandbox_lock(self.root, request.sandbox_id),
        ):
            if target.dir.exists() or target.dir.is_symlink():
                raise InvalidInput(
                    f"sandbox {request.sandbox_id}: already has a directory", extension=self.id
                )
            state = await self._take(member, target, request, None)

            def give_back() -> None:
                os.rename(target.dir, member.dir)

            if not state.holder_alive():
                give_back()  # for the keeper's teardown of a dead member
                raise SandboxNotFound(
                    f"pool member {member_id} is dead; the create is made afresh",
                    sandbox_id=request.sandbox_id,
                    extension=self.id,
                )
            yield ClaimedAhead(self._readiness(target, state), give_back)

    async def _take(
        self, member: Layout, target: Layout, request: ProvisionRequest, source: Path | None
    ) -> State:
        """Move the member's directory to the sandbox's and put this create's inputs (the
        ``repo`` copied from ``source``, the secrets) in its workspace (both locks held); the
        member's record."""
        member_id = member.sandbox_id
        state = workspace.read_state(target)
        if state is None or state.pool_member != member_id:
            found = workspace.read_state(member)
            gone = SandboxNotFound(
                f"pool member {member_id} is gone or dead; the create is made afresh",
                sandbox_id=request.sandbox_id,
                extension=self.id,
            )
            if found is None or not found.holder_alive():
                raise gone
            if target.dir.exists() or target.dir.is_symlink():
                self._refuse_if_made_later(state, request)
                await self._unmake(request.sandbox_id)  # what an earlier attempt left
            claimed_by = [request.generation, request.attempt]
            if found.pool_member != member_id or found.made_by != claimed_by:
                # A member made before members named themselves: recorded before the move,
                # so that on either side of a crash its teardown finds its groups and network.
                # The claim records itself as the sandbox's maker (a member records [1, 1],
                # so a first create's first claim writes nothing): an earlier provisioning,
                # should it resume, leaves the sandbox alone, and a later one's clean start
                # or teardown (teardown_attempt) removes it.
                found = dataclasses.replace(found, pool_member=member_id, made_by=claimed_by)
                workspace.write_state(member, found)
            try:
                os.rename(member.dir, target.dir)
            except FileNotFoundError:
                raise gone from None  # torn down meanwhile
            # Its state.json keeps the member's id and path: the directory's name is the
            # sandbox's, and nothing reads those two fields for anything but messages.
            state = found
        else:
            # Moved by an earlier try of this claim (its job redelivered): the sandbox is
            # this provisioning's now, unless a later one took it over meanwhile.
            self._refuse_if_made_later(state, request)
            if state.made_by != [request.generation, request.attempt]:
                state = dataclasses.replace(state, made_by=[request.generation, request.attempt])
                workspace.write_state(target, state)
            if (target.dir / INPUTS_IN).exists():
                # After this create's inputs went in: its setup may have run the sandbox's
                # own code in the workspace since, and links it planted where the repo goes
                # would take a second copy outside, as root. What went in stays; the rest
                # of the claim goes on.
                return state
        if source is not None:
            await asyncio.to_thread(workspace.copy_repo, source, target.workspace)
        member_uid = self._uid_of(state)  # the member's: the claim keeps it
        owner = (member_uid, member_uid) if self._as_root else None
        if request.secrets:
            workspace.write_secrets(target.workspace, request.secrets, owner)
        if owner is not None and (source is not None or request.secrets):
            await asyncio.to_thread(workspace.chown_tree, target.workspace, *owner)
        if source is not None or request.secrets:
            # Before anything of the sandbox's runs in the workspace (setup comes after):
            # a retry copying again up to here is safe, and past here it must not.
            (target.dir / INPUTS_IN).touch()
        return state

    async def _gone(self, sandbox_id: str, refs: list[ProcessRef]) -> None:
        """Wait until the processes killed are gone (a SIGKILL lands a moment after it is
        sent, later on a busy machine); ExtensionError after 5 s."""
        deadline = time.monotonic() + 5.0
        while any(ref.alive() for ref in refs):
            if time.monotonic() > deadline:
                raise ExtensionError(
                    f"local sandbox {sandbox_id}: holder processes "
                    f"{[ref.pid for ref in refs if ref.alive()]} survived SIGKILL for 5s; "
                    "check them with ps and run the teardown again",
                    sandbox_id=sandbox_id,
                    extension=self.id,
                )
            await asyncio.sleep(0.02)

    # -- helpers ----------------------------------------------------------------------------

    def _layout(self, sandbox_id: str) -> Layout:
        """Validate first: the id becomes a directory name and a cgroup name."""
        if not is_valid_sandbox_id(sandbox_id):
            raise InvalidInput(
                f"invalid sandbox id {sandbox_id!r}: expected {SANDBOX_ID_RULE}",
                extension=self.id,
            )
        return Layout(self.root, sandbox_id)

    def _egress_of(self, request: ProvisionRequest) -> tuple[LocalEgress, list[str]]:
        """What the sandbox may reach, checked; loopback only (with a warning) without root."""
        allowed = self._egress_for(request)
        allowed.check()
        if allowed.denies_all or self._as_root:
            ipv6 = [rule for rule in allowed.addresses if rule.network.version == 6]
            warnings = list(allowed.warnings)
            if ipv6:
                warnings.append(
                    "IPv6 egress not provided: ext.local sandboxes have IPv4 links only "
                    f"({', '.join(str(rule.network) for rule in ipv6)} unreachable)"
                )
            return allowed, warnings
        return DENY, [
            "network egress not provided: ext.local builds a sandbox's network (namespace, "
            "veth, nftables) only when it runs as root; the sandbox has loopback only"
        ]

    def _refuse_if_made_later(self, found: State | None, request: ProvisionRequest) -> None:
        """ExtensionError when a later provisioning made what is there (``found``: its record,
        read under its lock): this one was frozen or slow while its job went to another
        worker, which made the sandbox since."""
        made = attempt_record.made_later(found.made_by if found else None, request.made_by)
        if made is not None:
            raise ExtensionError(
                f"local sandbox {request.sandbox_id}: a later provisioning (generation "
                f"{made[0]}, attempt {made[1]}) made it while this one (generation "
                f"{request.generation}, attempt {request.attempt}) was held up; this one stops",
                sandbox_id=request.sandbox_id,
                extension=self.id,
            )

    def _left_behind(self, layout: Layout) -> bool:
        """Whether an earlier attempt at this sandbox left anything to tear down.

        Teardown looks for stray proxies by scanning every process's command line,
        milliseconds on a busy host, so a first attempt skips it: every attempt makes
        the sandbox directory before anything else, except the cgroups and the network
        (its slot and namespace), which outlive a lost directory and are checked too. (Its
        uid is taken after the directory is made and freed before it is removed.)
        """
        group = self._group(layout.sandbox_id)
        return (
            layout.dir.exists()
            or layout.dir.is_symlink()
            or bool(cgroups.sandbox_dirs(group, self._cgroup_base))
            or bool(egress.link_slots(self._egress_slots_dir).owned_by(group))
            or egress.namespace_path(namespace_for(group)).exists()
        )

    def _group(self, sandbox_id: str) -> str:
        return resource_names.resource_name(sandbox_id, self._root_tag)

    @staticmethod
    def _uid_of(state: State) -> int:
        """The uid (and gid) a root-run sandbox's commands run as and its files belong to.
        Only one of the sandboxes' range (or 65534, before uids of their own): a record that
        said 0, edited by hand or corrupted, would run the sandbox's commands as root."""
        if state.uid is None:
            return sandbox_uids.NOBODY
        if state.uid != sandbox_uids.NOBODY and state.uid not in sandbox_uids.UIDS:
            raise ExtensionError(
                f"local sandbox {state.sandbox_id}: its state.json names uid {state.uid}, "
                f"outside the sandboxes' range {sandbox_uids.UIDS.start}-"
                f"{sandbox_uids.UIDS.stop - 1}; recreate the sandbox",
                sandbox_id=state.sandbox_id,
                extension="ext.local",
            )
        return state.uid

    def _keyring_warnings(self) -> list[str]:
        if not self._as_root or keyrings.AVAILABLE:
            return []
        return [
            "session keyring shared: ext.local knows no keyctl system call number for "
            f"{platform.machine()}, so the sandbox's commands keep the worker's session "
            "keyring (@s) and may reach keys other sandboxes' commands put there"
        ]

    def _group_of(self, sandbox_id: str, state: State | None) -> str:
        """The name of its cgroups and network: its pool member's when it was claimed."""
        member = state.pool_member if state is not None else None
        return self._group(member if member and is_valid_sandbox_id(member) else sandbox_id)

    def _freezer_of(self, state: State) -> Path:
        control = freezer.find_control(Path(path) for path in state.cgroups)
        if control is None:
            raise ExtensionError(
                f"local sandbox {state.sandbox_id} has no freezer cgroup, so it cannot be "
                "paused: it was made before ext.local could pause, or the freezer was "
                "unavailable (its warnings say why); recreate it to pause it",
                sandbox_id=state.sandbox_id,
                extension=self.id,
            )
        return control

    def _tool(self, name: str, package: str) -> str:
        """The tool's path, looked up once it is found (a missing one is looked for again
        next time, so installing it needs no restart)."""
        path = self._tools.get(name) or shutil.which(
            name, path="/usr/bin:/bin:/usr/sbin:/sbin:" + os.environ.get("PATH", "")
        )
        if path is not None:
            self._tools[name] = path
        else:
            raise ExtensionError(
                f"{name} is not installed; install the {package} package (apt install {package})",
                extension=self.id,
            )
        return path

    def _running_state(self, layout: Layout) -> State:
        state = workspace.read_state(layout)
        if state is None or not state.holder_alive():
            what = "does not exist" if state is None else "is not running (its holder exited)"
            raise SandboxNotFound(
                f"local sandbox {layout.sandbox_id} {what} under {self.root}; "
                "create it again or tear it down",
                sandbox_id=layout.sandbox_id,
                extension=self.id,
            )
        return state

    async def _run_inside(
        self, state: State, argv: Sequence[str], output: OutputSink, *, stdin: Stdin | None = None
    ) -> int:
        """Run ``argv`` in the sandbox, in its cgroups, streaming its output (and its input)."""
        assert state.holder_pid is not None
        nsenter = self._tool("nsenter", "util-linux")
        procs = cgroups.join_files(state.cgroups)
        network = egress.EgressState.from_dict(state.egress)
        if self._as_root:
            inner = enter_argv(
                child_pid=state.holder_pid,
                argv=argv,
                uid=self._uid_of(state),
                nsenter=nsenter,
                env=network.env if network else None,
            )
            return await run_streaming(
                launcher_argv(procs, inner), output, stdin=stdin, own_session_keyring=True
            )
        user_ns = owning_user_namespace(state.holder_pid)
        try:
            inner = enter_argv(
                child_pid=state.holder_pid,
                argv=argv,
                user_ns=f"/proc/self/fd/{user_ns}",
                nsenter=nsenter,
            )
            return await run_streaming(
                launcher_argv(procs, inner), output, pass_fds=[user_ns], stdin=stdin
            )
        finally:
            os.close(user_ns)

    async def _run_setup(
        self, request: ProvisionRequest, state: State, index: int, instruction: str
    ) -> None:
        capture = OutputCapture()
        code = await self._run_inside(state, ["/bin/sh", "-c", instruction], capture.keep)
        if code != 0:
            output = capture.tail(request.secrets) or "(no output)"
            raise ExtensionError(
                f"setup.instructions[{index}] ({instruction!r}) exited with code {code}; "
                f"last output:\n{output}",
                sandbox_id=request.sandbox_id,
                extension=self.id,
            )


def _network_summary(network: egress.EgressState | None) -> str:
    if network is None:
        return "loopback only"
    if network.allow_all:
        return f"everything but this host (address {network.address})"
    via = f", names through the proxy at {network.gateway}" if network.env else ""
    return f"egress allowlist (address {network.address}{via})"
