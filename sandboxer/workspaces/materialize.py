"""The worker's provision boundary for directory inputs: every value vetted before any copy.

A directory input's value is either an uploaded archive's reference
(``object:sha256:<hex>``), fetched, verified and unpacked into a staging
directory of this worker, or a path on this worker's machine, accepted only
under ``SANDBOXER_INPUT_ROOTS`` and copied into such a staging directory (its
writer may change it while it is read: :mod:`sandboxer.workspaces.roots`).
Either way the backend receives the inputs with that value replaced by a local
directory of the worker's own, and never reads a client's path itself. The
staging directories live until the sandbox is ready (backends read the tree while provisioning,
or move it into place: ``ProvisionRequest.staged``), then go.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from nats.js import JetStreamContext

from sandboxer.config.profile import Profile
from sandboxer.scratch import pid_scratch, sweep_dead
from sandboxer.tree_removal import remove_tree
from sandboxer.workspaces.extract import extract_archive
from sandboxer.workspaces.fetch import fetch_archive
from sandboxer.workspaces.limits import ArchiveLimits
from sandboxer.workspaces.refs import is_object_ref, parse_object_ref
from sandboxer.workspaces.roots import check_root_tree, resolve_under_roots, stage_root_tree

__all__ = ["DirectoryInputs", "directory_input_names", "staged_names"]


def directory_input_names(profile: Profile, backend_reads: Collection[str]) -> set[str]:
    """Inputs to vet: those the profile declares directories, and those the backend reads as one.

    The second set keeps an older profile that declares ``repo`` without a
    type from smuggling a raw path to a backend that copies ``repo``.
    """
    declared = {name for name, spec in profile.inputs.items() if spec.type == "directory"}
    return declared | set(backend_reads)


def staged_names(inputs: Mapping[str, str], names: Collection[str]) -> frozenset[str]:
    """The inputs :meth:`DirectoryInputs.prepared` replaces by a staged copy of the worker's
    own (every directory input given): the backend may move those into place
    (``ProvisionRequest.staged``)."""
    return frozenset(names) & frozenset(inputs)


@dataclass(frozen=True)
class DirectoryInputs:
    """How one worker vets directory inputs (from its settings)."""

    js: JetStreamContext
    roots: tuple[Path, ...]
    staging_root: Path
    limits: ArchiveLimits

    @contextlib.asynccontextmanager
    async def prepared(
        self, sandbox_id: str, inputs: Mapping[str, str], names: Collection[str]
    ) -> AsyncIterator[dict[str, str]]:
        """``inputs`` with every directory input replaced by a vetted local directory.

        Raises :class:`~sandboxer.errors.InputOutsideRoots` or
        :class:`~sandboxer.errors.WorkspaceRefused` before anything is copied.
        """
        vetted = dict(inputs)
        staged: list[Path] = []
        try:
            for name in sorted(staged_names(inputs, names)):
                value = inputs[name]
                if is_object_ref(value):
                    staging = await asyncio.to_thread(
                        _fresh_staging, self.staging_root, f"{sandbox_id}-{name}"
                    )
                    staged.append(staging)
                    await self._unpack(parse_object_ref(value), staging)
                else:
                    real = resolve_under_roots(name, value, self.roots)
                    # Names and sizes first: a tree past the limits is refused unread.
                    await asyncio.to_thread(check_root_tree, name, real, self.roots, self.limits)
                    staging = await asyncio.to_thread(
                        _fresh_staging, self.staging_root, f"{sandbox_id}-{name}"
                    )
                    staged.append(staging)
                    # Backends copy by path, and the root's writer may change the tree
                    # while they do: they copy the worker's own copy of it instead.
                    await asyncio.to_thread(
                        stage_root_tree,
                        name,
                        real,
                        self.roots,
                        staging / "tree",
                        self.limits,
                        staging_root=self.staging_root,
                    )
                vetted[name] = str(staging / "tree")
            yield vetted
        finally:
            for staging in staged:
                await asyncio.to_thread(remove_tree, staging, ignore_errors=True)

    async def _unpack(self, sha256_hex: str, staging: Path) -> None:
        archive = staging / "archive.tar"
        await fetch_archive(self.js, sha256_hex, archive, self.limits)
        await asyncio.to_thread(extract_archive, archive, staging / "tree", self.limits)
        await asyncio.to_thread(archive.unlink)


def _fresh_staging(root: Path, stem: str) -> Path:
    """An empty staging directory ``<stem>-<random>-<pid>-<incarnation>`` of this attempt's
    own, private to the worker (:func:`~sandboxer.scratch.pid_scratch`). Another
    attempt at the same sandbox on this machine (its job redelivered while this worker was
    frozen) stages beside it: under one name, the earlier attempt's start emptied the later
    one's tree and its end removed it while the later one copied it into the sandbox. What
    killed workers left goes now, for any sandbox (:func:`~sandboxer.scratch.sweep_dead`:
    swept for this input alone, a create given up or retried on another machine left its
    copy, up to the upload limit, for good), and so does a leftover under the bare name
    earlier versions used. An archive's tree is as deep as its names: removed at any depth."""
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    sweep_dead(root)
    remove_tree(root / stem, ignore_errors=True)
    staging = pid_scratch(root, f"{stem}-{secrets.token_hex(4)}")
    (staging / "tree").mkdir()
    return staging
