"""Optional capabilities of a backend, each a Protocol of its own.

Every backend implements :class:`~sandboxer.extensions.base.Extension`. What
only some backends can do has its own Protocol here, and what a backend's
declaration claims (``capabilities.snapshot: true``, ...) is checked at load
against what its class implements (:func:`check_claims`), so a declaration
cannot promise what the code does not do. Workers ask ``isinstance(ext,
HostInspector)`` instead of probing attributes by name.

Pause and metering are filled in by the lifecycle, hosted-backend and
routing work; their methods are named here so that a backend written today
declares them the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

from typing_extensions import Protocol, runtime_checkable

from sandboxer.config.extension_decl import ExtensionDecl
from sandboxer.config.settings import Settings
from sandboxer.domain.found import FoundSandbox
from sandboxer.domain.left_out import LeftOut
from sandboxer.errors import ConfigError

__all__ = [
    "AttemptScoped",
    "BuiltFromDeclaration",
    "BuiltFromSettings",
    "ClaimsAhead",
    "Closable",
    "HostInspector",
    "KeyedBackend",
    "LeftoverKeeper",
    "LogGuided",
    "Metered",
    "Pausable",
    "Snapshotter",
    "TimeoutKeeper",
    "TokenHolder",
    "check_claims",
]


@runtime_checkable
class BuiltFromSettings(Protocol):
    """A backend class that needs the process settings (paths, hosts file) to be built."""

    from_settings: Callable[[Settings], Any]


@runtime_checkable
class BuiltFromDeclaration(Protocol):
    """A backend class built from its own declaration (its ``settings`` section) and the
    process settings: hosted backends read their endpoint and key references there."""

    from_declaration: Callable[[ExtensionDecl, Settings], Any]


@runtime_checkable
class Closable(Protocol):
    """A backend holding connections (an HTTP client): the worker closes it on shutdown."""

    async def aclose(self) -> None: ...


@runtime_checkable
class HostInspector(Protocol):
    """Reads a host's telemetry (load, memory, disk, our objects) for ``inspect host``."""

    async def inspect_host(self, host: str | None = None) -> dict[str, Any]:
        """A JSON-able report; ``host`` is a hosts-file name, None for the worker's machine."""


@runtime_checkable
class HostLister(Protocol):
    """Lists what one host holds, and fails when the host does not answer (where
    ``list_sandboxes`` skips it): whoever judges a host's sandboxes by what it holds must
    not take a host that is down for an empty one."""

    async def list_host(self, host: str) -> Sequence[FoundSandbox]: ...


@runtime_checkable
class LeftoverKeeper(Protocol):
    """Takes host-wide resources for its sandboxes (ext.local's uids and link slots) that
    outlive a sandbox whose record of them was lost another way than its teardown (its
    directory removed by hand, a crash between steps): ``inspect stale`` reports them and
    ``reap-stale --apply`` frees them (:mod:`sandboxer.workers.inventory`)."""

    async def list_leftovers(self) -> Sequence[FoundSandbox]:
        """A sandbox of which only such resources are left, for each (``leftover`` set):
        only those provably this backend's and no live sandbox's."""

    async def free_leftovers(self, sandbox_ids: Collection[str]) -> Collection[str]:
        """Free what is left of each of ``sandbox_ids`` that is still left over; those
        freed. One call for all a reap found, so that the backend can look at the host
        once for them, not once per id."""


@runtime_checkable
class Snapshotter(Protocol):
    """Copies a sandbox's workspace out, for a snapshot (docs/snapshots.md).

    The worker packs the copy and stores it in the workspaces bucket. There is
    no restore method: a restore is a create whose directory input is the
    snapshot's object, which every backend already takes, so a snapshot
    restores on any backend.
    """

    async def snapshot_workspace(
        self, sandbox_id: str, destination: Path, *, host: str | None = None
    ) -> LeftOut | None:
        """Copy the workspace's tree into the existing local directory ``destination``; what
        the copy left out (FIFOs, sockets, devices), which the snapshot records as warnings
        for its user. None from a backend written before it was reported: nothing told."""


@runtime_checkable
class AttemptScoped(Protocol):
    """Labels each provider sandbox with the provisioning that made it, (generation, attempt)
    (E2B, Modal, Daytona: :mod:`sandboxer.hosted.attempt_fence`; ext.local records it in the
    sandbox's ``state.json``: :mod:`sandboxer.extensions.local.attempt_record`; ext.compose-ssh
    and ext.vm-packer in the sandbox's marker on its host, read and removed under the
    sandbox's lock there: :mod:`sandboxer.extensions.ssh_workspace`), so it can
    remove what one provisioning and those before it made and never a later one's. The worker
    tears down a failed or taken-over provisioning, and clears the way for a recreate, through
    it: by then the job may have gone to another worker (this one frozen or cut off past
    ``ack_wait``), whose sandbox the log's ``ready`` may name, and a plain teardown would
    remove that too."""

    async def teardown_attempt(
        self, sandbox_id: str, made_by: tuple[int, int], *, host: str | None = None
    ) -> None:
        """Remove the sandboxes of ``sandbox_id`` that provisioning ``made_by`` or an earlier
        one made (and, like :meth:`teardown`, those its creates given up on still make);
        gone is done."""


@runtime_checkable
class LogGuided(Protocol):
    """A backend whose provider may hold two sandboxes of one id at once (E2B: nothing makes
    a name unique, so an earlier attempt's create landing late runs beside the live one until
    teardown or reconcile removes it). Before each call for a sandbox the worker tells it what
    the log says (workers/backend_for.py), so it acts on the sandbox the log's ``ready``
    names, never on such a copy, whose setup never ran."""

    def follow_log(
        self, sandbox_id: str, made_by: tuple[int, int] | None, provider_id: str | None
    ) -> None:
        """``made_by``: the provisioning the log is at (None: none yet); ``provider_id``: the
        provider's id its ``ready`` recorded (None: no ``ready``, or none recorded)."""


@runtime_checkable
class Pausable(Protocol):
    """Stops a sandbox's processes without losing its state, and starts them again."""

    async def pause(self, sandbox_id: str, *, host: str | None = None) -> None: ...

    async def resume(self, sandbox_id: str, *, host: str | None = None) -> None: ...


@runtime_checkable
class TimeoutKeeper(Protocol):
    """A backend whose provider ends sandboxes on a timeout of its own (E2B, Modal).

    sandboxer expires sandboxes itself; the provider's timeout is set a little
    past ``expires_at`` as a backstop against leaks, and moved whenever the TTL
    moves (``ttl_extended``, a resume), so the provider never ends a sandbox early.
    """

    async def set_timeout(
        self, sandbox_id: str, expires_at: str, *, host: str | None = None
    ) -> None: ...


@runtime_checkable
class TokenHolder(Protocol):
    """A backend whose provider issues tokens per sandbox (to reach the sandbox's own
    endpoint). It keeps them out of every event and descriptor; the worker hands them to
    the sandbox's own actor or project on request (workers/token_service.py)."""

    async def sandbox_tokens(self, sandbox_id: str) -> dict[str, str]: ...


@runtime_checkable
class KeyedBackend(Protocol):
    """A hosted backend that can speak to its provider with another key: a project's own
    (BYOK, docs/payments.md). The worker asks for the copy on every call for a sandbox of a
    project that has a key for this backend (workers/backend_for.py)."""

    id: str

    def with_key(self, key: str, source: str) -> Any:
        """This backend, same settings, authenticated with ``key`` (a secret value: never in
        a message). ``source`` names where the key came from, for messages (a refused key is
        a ProviderAuth naming it). Copies are kept per source, so a worker opens one client
        per key, not one per call; they close with this backend."""


@runtime_checkable
class Pooling(Protocol):
    """Keeps warm pools (its declaration says ``capabilities.pool: true``; docs/pools.md).
    The pool keeper makes members through :meth:`pool_members` (the same backend, in a
    place no listing of its sandboxes sees) and a create claims one with :meth:`claim`."""

    id: str

    @property
    def pool_node(self) -> str:
        """Where members live: a claim only takes members of this node."""

    def pool_members(self) -> Any:
        """This backend over its members: provision, wait_ready, list and teardown them
        there as sandboxes (their ids are member ids)."""

    def member_profile(self, profile: Any) -> Any:
        """What a member of ``profile`` is made from (what waits for the claim left out)."""

    async def claim(self, member_id: str, request: Any) -> Any:
        """Make member ``member_id`` the sandbox ``request.sandbox_id`` with this create's
        inputs and secrets; return its Readiness. Idempotent; SandboxNotFound when the
        member is gone or dead (the create is then made cold); any other error fails the
        create as on a cold create."""


@runtime_checkable
class ClaimsAhead(Protocol):
    """Can make a pool member a create's sandbox before the claim is on record, and undo it
    should the claim be refused: the extension worker then sends the sandbox's `provisioning`,
    the member's `claimed` and the sandbox's `ready` in one write (docs/pools.md)."""

    def claim_ahead(self, member_id: str, request: Any) -> Any:
        """An async context manager: member ``member_id`` becomes the sandbox
        ``request.sandbox_id`` as it is entered, and stays it (it yields a ClaimedAhead,
        whose ``give_back`` makes it a member again while the manager is entered). Only for
        a create with nothing to apply at the claim. SandboxNotFound, on entering, when the
        member is gone or dead."""


@runtime_checkable
class Metered(Protocol):
    """Knows what a sandbox costs before (estimate) and after (actual use)."""

    def estimate_cost(self, ttl_seconds: float, resources: dict[str, Any]) -> float: ...

    async def meter_actual(self, sandbox_id: str, *, host: str | None = None) -> dict[str, Any]: ...


_CLAIMS: dict[str, type[Any]] = {"snapshot": Snapshotter, "pause": Pausable, "pool": Pooling}
"""Declaration capability -> the Protocol a backend claiming it must implement."""


def check_claims(decl: ExtensionDecl, extension: object) -> None:
    """ConfigError naming each capability the declaration claims and the class lacks."""
    missing = [
        f"capabilities.{claim}: true needs {protocol.__name__} "
        f"({', '.join(sorted(_methods(protocol)))})"
        for claim, protocol in _CLAIMS.items()
        if getattr(decl.capabilities, claim) and not isinstance(extension, protocol)
    ]
    if missing:
        raise ConfigError(
            f"extension {decl.id}: its declaration claims what {type(extension).__name__} does "
            f"not implement: {'; '.join(missing)}. Implement it, or set the capability to false.",
            extension=decl.id,
        )


def _methods(protocol: type[Any]) -> set[str]:
    return {name for name in vars(protocol) if not name.startswith("_")}
