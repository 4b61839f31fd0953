"""The interface every backend implements, and the values that cross it.

Extension workers call these methods; nothing here touches NATS. A backend
raises :class:`~sandboxer.errors.ExtensionError` with a message a person can
act on; the worker records it in a ``failed`` event.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from typing_extensions import Protocol, runtime_checkable

from sandboxer.config.profile import Profile
from sandboxer.domain.found import FoundSandbox

if TYPE_CHECKING:
    from sandboxer.domain.sandbox_record import SandboxState

__all__ = [
    "ClaimedAhead",
    "Extension",
    "FoundSandbox",
    "OutputSink",
    "ProvisionRequest",
    "Readiness",
    "Stdin",
]


OutputSink = Callable[[Literal["stdout", "stderr"], bytes], Awaitable[None]]
"""Receives the output of :meth:`Extension.exec` as it is produced."""

Stdin = AsyncIterable[bytes]
"""What :meth:`Extension.exec` feeds the command's standard input, chunk by chunk; the end
of the iteration is the end of input. Iterating may raise (the client went away): the
backend then stops the command and lets the error propagate."""


@dataclass(frozen=True, kw_only=True)
class ProvisionRequest:
    """Everything a backend needs to establish one sandbox."""

    sandbox_id: str
    profile: Profile
    inputs: Mapping[str, str]
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    """Resolved secret values: deliver them to the sandbox, never log or return them."""
    host: str | None = None
    """The placement host (a name from the hosts file) for extensions that place on hosts."""
    expires_at: str | None = None
    """When the sandbox's TTL runs out (ISO 8601 UTC), for backends whose provider keeps
    its own timeout; sandboxer expires it itself, the provider's timeout is a backstop."""
    ttl_max_seconds: float | None = None
    """How long from its creation extensions may keep the sandbox: its profile's ``ttl.max``
    as its ``requested`` recorded it (a profile edited since changes no sandbox made
    before), for a backend whose provider's timeout cannot move later (Modal's). None when
    nothing was recorded (a pool member, a sandbox made before TTLs): the profile's then."""
    project: str | None = None
    """The project of the actor who asked, for backends that label what they make."""
    attempt: int = 1
    """This provisioning's attempt at the sandbox (its ``provisioning`` event's): only above
    1 can an earlier attempt have made something (a redelivered job, a worker's crash), so
    only then need a backend look for leftovers before it creates."""
    generation: int = 1
    """The sandbox's generation (a recreate makes the next). With ``attempt`` it orders
    provisionings: a backend that records them can refuse to unmake a later one's sandbox
    for an earlier one that was frozen meanwhile (ext.local does)."""
    staged: frozenset[str] = frozenset()
    """The directory inputs whose value is a copy the worker staged for this provisioning
    alone (an unpacked upload, a tree under an input root: :mod:`sandboxer.workspaces.materialize`),
    removed once it is over: a backend may move such a tree into place rather than copy it.
    ext.local's cold create does; its pool claim copies, since a claim of a member found
    dead is followed by a cold create from the same request."""

    @classmethod
    def of(
        cls,
        state: SandboxState,
        profile: Profile,
        inputs: Mapping[str, str],
        *,
        secrets: Mapping[str, str] | None = None,
        staged: frozenset[str] = frozenset(),
    ) -> ProvisionRequest:
        """The request that provisions the sandbox ``state`` holds (as its `provisioning`
        left it), of ``profile`` as in force."""
        return cls(
            sandbox_id=state.sandbox_id,
            profile=profile,
            inputs=inputs,
            secrets=secrets or {},
            host=state.host,
            expires_at=state.expires_at,
            ttl_max_seconds=state.ttl_max_seconds,
            project=state.actor.project if state.actor else None,
            attempt=max(state.attempt, 1),
            generation=state.generation,
            staged=staged,
        )

    @property
    def redelivered(self) -> bool:
        """An earlier attempt at this provisioning ran (``attempt`` above 1): it may have made
        something, or sent a create the provider carries out after this one. A create here
        counts as sent again, as one this worker retried itself does."""
        return self.attempt > 1

    @property
    def made_by(self) -> tuple[int, int]:
        """This provisioning in the log's order, (generation, attempt): a later delivery of
        the job (or a recreate) is a later one, even while this one still runs (frozen, or
        cut off from NATS past ``ack_wait``). Hosted backends label what they make with it
        (:mod:`sandboxer.hosted.attempt_fence`)."""
        return (self.generation, self.attempt)


@dataclass(frozen=True, kw_only=True)
class Readiness:
    """How to reach a ready sandbox, and what the backend could not enforce."""

    descriptor: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ClaimedAhead:
    """A pool member made a create's sandbox before its claim is on record
    (:class:`~sandboxer.extensions.capabilities.ClaimsAhead`)."""

    readiness: Readiness
    give_back: Callable[[], None]
    """Makes it a member of the pool again: its claim was refused. Only while the claim
    ahead is entered (its locks held)."""


@runtime_checkable
class Extension(Protocol):
    """A backend. ``id`` is its declaration id, e.g. ``ext.local``.

    ``host_local`` is true when a sandbox lives on the machine of the worker
    that made it (ext.local): only that worker can reach it. Remote backends
    (SSH hosts, SaaS) are reachable from any of their workers.
    """

    id: str
    host_local: bool

    async def provision(self, request: ProvisionRequest) -> None:
        """Create the sandbox's resources. May be called again after a crash: start clean."""

    async def wait_ready(self, request: ProvisionRequest) -> Readiness:
        """Return once the sandbox can be used, with its reachability descriptor."""

    async def teardown(self, sandbox_id: str, *, host: str | None = None) -> None:
        """Remove everything the sandbox owns. Idempotent: tearing down nothing succeeds."""

    async def list_sandboxes(self) -> Sequence[FoundSandbox]:
        """Every sandbox this backend finds it owns on its host."""

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
        """Run ``argv`` inside the sandbox, stream its output to ``output``, return its exit code.

        ``service`` names the part of a multi-part sandbox that runs it (a compose
        service); a backend without such parts raises
        :class:`~sandboxer.errors.Unsupported` when one is given.

        ``stdin``, when given, is streamed to the command's standard input (then closed);
        without it the command reads an empty input. A backend whose provider cannot
        stream input raises :class:`~sandboxer.errors.Unsupported` saying so. The
        working directory is the sandbox's workspace where the backend has one (files
        are copied relative to it, docs/protocol.md#files). A caller that gives up on
        the command cancels this call; the backend then stops the command.
        """
