"""The control worker's snapshot commands: admit a snapshot, and turn a restore into a create.

A snapshot touches two aggregates, so it is two idempotent appends: the
sandbox records ``snapshot_started`` (which orders it against a destroy),
then the snapshot records ``requested`` in reaction. A redelivered command
finds the first done and completes the second. Whether the backend can take
snapshots is decided here, from its declaration, before anything is
appended.

A restore is a create whose directory input is the snapshot's object: the
worker of any backend fetches it and checks its digest on arrival, as it
does for an upload, so a snapshot restores on the same or another backend
that copies that input into its sandboxes (its class's ``directory_inputs``).
One that does not (the hosted ones, the stub) would make the sandbox ready
without the workspace: it is passed over by the restore's routing, and a
restore no candidate can receive is refused.
"""

from __future__ import annotations

import logging

from nats.js import JetStreamContext

from sandboxer.bus.event_store import EventStore, Loaded
from sandboxer.commands.types import (
    CreateSandbox,
    DeleteSnapshot,
    RestoreSnapshot,
    SnapshotSandbox,
)
from sandboxer.config.catalog import Catalog, known_extension_class
from sandboxer.config.profile import Profile
from sandboxer.domain.account_state import DEFAULT_PROJECT
from sandboxer.domain.bucket_objects import Stored
from sandboxer.domain.sandbox_snapshots import StartSnapshot
from sandboxer.domain.snapshot_decide import (
    DeleteSnapshotDecision,
    RequestSnapshot,
    snapshot_taken,
)
from sandboxer.errors import Rejected
from sandboxer.ids import derive_sandbox_id, derive_snapshot_id
from sandboxer.workers.deciding import apply, apply_snapshot
from sandboxer.workspaces.refs import object_ref
from sandboxer.workspaces.stored_objects import remove_unchanged, stored_object

__all__ = ["SnapshotCommands"]

log = logging.getLogger(__name__)


class SnapshotCommands:
    def __init__(self, js: JetStreamContext, store: EventStore, catalog: Catalog) -> None:
        self._js = js
        self._store = store
        self._catalog = catalog

    async def delete(self, command: DeleteSnapshot) -> None:
        """Record ``deleted``, then remove the object unless another snapshot still holds it.

        The removal reacts to the event, so a redelivered command (which decides
        nothing new) removes an object a crash left behind.
        """
        snapshot_id = command.snapshot_id
        state = (await self._store.load_snapshot(snapshot_id)).state
        # The object's metadata, read before the log: the removal writes only over this
        # message (as the collection's does), so whoever touches or stores the object after
        # this read, between the decision and the removal, keeps it: a client's upload of the
        # same tree, a snapshot's job that finds it there or stores it again, a restore.
        found: Stored | None = None
        if state.object is not None and (state.status != "deleted" or state.object_removed):
            found = await stored_object(self._js, state.object)
        holders: list[str] = []
        if state.object is not None and state.sha256 is not None:
            holders = [
                s for s in await self._store.snapshots_holding(state.object) if s != snapshot_id
            ]
            holders += await self._store.sandboxes_using(object_ref(state.sha256))
            if found is not None and found.owner != snapshot_id:
                # Not this snapshot's mark any more (a touch drops it): someone found the
                # object before the read above. A snapshot being taken may be about to record
                # it, so the collection takes it once none is (domain/snapshot_objects.py).
                holders += [
                    s.snapshot_id
                    for s in await self._store.snapshot_states()
                    if s.status == "requested"
                ]
        decision = DeleteSnapshotDecision(
            command_id=command.command_id,
            actor=command.actor,
            object_shared=bool(holders),
        )
        loaded, _ = await apply_snapshot(self._store, snapshot_id, decision)
        state = loaded.state
        # ``object_removed`` was decided when the delete was first handled. A delete handled
        # again (redelivered after a crash, re-sent later) may find a snapshot taken since
        # that holds the same object: it is theirs now, whatever was decided then.
        if state.status != "deleted" or not state.object_removed or holders:
            return
        if found is None:
            log.info("snapshot %s: object %s was already gone", snapshot_id, state.object)
        elif not await remove_unchanged(self._js, found):
            log.info(
                "snapshot %s: object %s was stored or touched again since the delete read it: "
                "kept for whoever did (the collection removes it once nothing holds it)",
                snapshot_id,
                state.object,
            )

    async def snapshot(self, command: SnapshotSandbox) -> Loaded:
        """Decide the snapshot on the sandbox, then open the snapshot; returns the sandbox."""
        snapshot_id = derive_snapshot_id(command.command_id)
        # Before the sandbox records anything: a command id naming another sandbox's
        # snapshot is not this one sent again (domain/snapshot_decide.snapshot_taken).
        taken = snapshot_taken(
            (await self._store.load_snapshot(snapshot_id)).state, command.sandbox_id
        )
        if taken is not None:
            raise taken
        loaded = await self._store.load(command.sandbox_id)
        extension = loaded.state.extension
        if extension is not None and command.command_id not in loaded.state.handled:
            self._check_capability(extension, command.sandbox_id)
        start = StartSnapshot(
            command_id=command.command_id,
            actor=command.actor,
            sandbox_id=command.sandbox_id,
            snapshot_id=snapshot_id,
        )
        loaded, _ = await apply(self._store, command.sandbox_id, start, loaded)
        state = loaded.state
        assert state.extension is not None  # a snapshottable sandbox was routed
        await apply_snapshot(
            self._store,
            snapshot_id,
            RequestSnapshot(
                command_id=command.command_id,
                actor=command.actor,
                sandbox_id=command.sandbox_id,
                extension=state.extension,
                host=state.host,
                profile=state.profile,
                name=command.name,
                project=None if state.actor is None else state.actor.project or DEFAULT_PROJECT,
            ),
        )
        return loaded

    def passed_over(self, create: CreateSandbox) -> tuple[str, ...]:
        """The candidates of a restore's profile that would not copy the snapshot's workspace
        in (its routing leaves them out): the input receiving it is the one naming an
        object (the profile's first directory input)."""
        profile = self._catalog.profile(create.profile)
        target = receiving_input(profile)
        if target is None:
            return ()
        return self._not_receiving(profile.candidates(), target)

    def _not_receiving(self, candidates: list[str], name: str) -> tuple[str, ...]:
        """Of ``candidates``, those whose backend does not read the input ``name`` as a
        directory to copy in (it ignores it). One whose class cannot be imported here, or
        not enabled, is left to routing and its worker."""
        enabled = self._catalog.extensions_enabled()
        ignoring = []
        for extension in candidates:
            decl = enabled.get(extension)
            if decl is None:
                continue
            cls = known_extension_class(decl)
            if cls is None:
                continue
            if name not in getattr(cls, "directory_inputs", ()):
                ignoring.append(extension)
        return tuple(ignoring)

    def _check_capability(self, extension: str, sandbox_id: str) -> None:
        decl = self._catalog.extensions_enabled().get(extension)
        if decl is None or not decl.capabilities.snapshot:
            raise Rejected(
                "snapshot_unsupported",
                f"sandbox {sandbox_id} runs on {extension}, which does not take snapshots "
                f"(its declaration does not set capabilities.snapshot); "
                "'sandboxer extensions' shows which backends do",
            )

    async def restore_as_create(self, command: RestoreSnapshot) -> CreateSandbox:
        """The create a restore stands for: the snapshot's object as the profile's directory input."""
        target = command.sandbox_id or derive_sandbox_id(command.command_id)
        decided = (await self._store.load(target)).state
        if command.command_id in decided.handled and decided.profile is not None:
            # Decided before a crash: complete it as it was decided, whatever became of the
            # snapshot since (a decided command never turns into a rejection).
            return CreateSandbox(
                command_id=command.command_id,
                actor=command.actor,
                profile=decided.profile,
                inputs=decided.inputs,
                sandbox_id=target,
                consumer=command.consumer,
            )
        snapshot = (await self._store.load_snapshot(command.snapshot_id)).state
        if snapshot.status != "created" or snapshot.sha256 is None:
            why = {
                "new": "there is no such snapshot; 'sandboxer snapshots list' shows them",
                "requested": "it is still being taken; try again once it is created",
                "failed": f"it failed ({snapshot.failure})",
                "deleted": "it was deleted",
            }.get(snapshot.status, snapshot.status)
            raise Rejected(
                "not_restorable", f"snapshot {command.snapshot_id} cannot be restored: {why}"
            )
        profile_id = command.profile or snapshot.profile
        if profile_id is None:
            raise Rejected(
                "not_restorable",
                f"snapshot {command.snapshot_id} names no profile; pass one with --profile",
            )
        profile = self._catalog.profile(profile_id)
        receiving = receiving_input(profile)
        if receiving is None:
            raise Rejected(
                "not_restorable",
                f"{profile_id} has no directory input to restore a workspace into; choose a "
                "profile with an input of type: directory (such as profile.local's repo)",
            )
        if receiving in command.inputs:
            raise Rejected(
                "invalid_input",
                f"input {receiving!r} of {profile_id} receives the snapshot's workspace; "
                "leave it out of the restore's inputs",
            )
        passed_over = self._not_receiving(profile.candidates(), receiving)
        if len(passed_over) == len(profile.candidates()):
            raise Rejected(
                "not_restorable",
                f"{profile_id} runs on {', '.join(passed_over)}, which does not copy its "
                f"input {receiving!r} into a sandbox: the restored sandbox would lack the "
                "snapshot's workspace; choose a profile on a backend that does (ext.local, "
                "ext.compose-ssh, ext.vm-packer) with --profile",
            )
        return CreateSandbox(
            command_id=command.command_id,
            actor=command.actor,
            profile=profile_id,
            inputs={**command.inputs, receiving: object_ref(snapshot.sha256)},
            sandbox_id=command.sandbox_id,
            consumer=command.consumer,
        )


def receiving_input(profile: Profile) -> str | None:
    """The input of ``profile`` a restore puts the snapshot's workspace in: its first
    directory input in name order (None when it has none)."""
    directories = sorted(n for n, spec in profile.inputs.items() if spec.type == "directory")
    return directories[0] if directories else None
