"""What a backend finds of a sandbox on its host: the value stale detection reasons about.

It lives in the pure domain because :mod:`sandboxer.domain.drift` compares it
with the log; backends build it from what they see and speak it back
(:mod:`sandboxer.extensions.base` re-exports it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["FoundSandbox", "Frozen", "MadeBy", "by_id"]

Frozen = Literal["all", "part", "none"]
"""How much of a sandbox a pause has frozen (:attr:`FoundSandbox.frozen`)."""

MadeBy = tuple[int, int]
"""A provisioning, as its ``provisioning`` event numbers it: (generation, attempt)."""


@dataclass(frozen=True, kw_only=True)
class FoundSandbox:
    """A sandbox a backend finds on its host (for adoption and stale detection)."""

    sandbox_id: str
    alive: bool
    """True when the sandbox can still be used; False for a corpse: what is left of one
    whose processes or containers are gone (a dead holder, exited or removed containers,
    a deleted workspace)."""
    host: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    """What the backend saw, for people (containers, directories, why it is not alive)."""
    leftover: bool = False
    """Nothing of the sandbox is left but host-wide slots its backend took for it (ext.local's
    uids and link slots, its directory gone): the backend frees them with
    :class:`~sandboxer.extensions.capabilities.LeftoverKeeper`'s ``free_leftovers``, not
    its teardown."""
    unmarked: bool = False
    """A hosted sandbox whose labels do not name the backend that made it (made before they
    did): on an account two declarations share it may be the other's, so it is this
    backend's only where the log places it here (:func:`~sandboxer.domain.drift.claimed`)."""
    made_by: MadeBy | None = None
    """The provisioning that made it, ``(generation, attempt)``, as its provider label says
    (E2B, Modal, Daytona) or its record (ext.local's ``state.json``, the SSH backends'
    marker): the backends that are
    :class:`~sandboxer.extensions.capabilities.AttemptScoped`; None when it does not say
    (made before the label, or a backend that does not label). A labelled one of an attempt
    earlier than the one the log's ``ready`` names is a stale copy beside the live sandbox
    (:func:`~sandboxer.domain.drift.earlier_attempt`)."""
    frozen: Frozen | None = None
    """How much of it is frozen by a pause: ``all``, ``none``, or ``part`` (a freeze under
    way or cut short: some processes or containers stopped, others not); None when the
    backend does not say. One not as the log says (paused: all; running: none) is frozen or
    thawed to match (:func:`~sandboxer.domain.drift.reconcile_step`)."""


def by_id(found: Iterable[FoundSandbox]) -> dict[str, list[FoundSandbox]]:
    """What was found, by sandbox id: a hosted provider may hold several sandboxes of one
    (an earlier attempt's copy beside the live one), each listed on its own."""
    grouped: dict[str, list[FoundSandbox]] = {}
    for item in found:
        grouped.setdefault(item.sandbox_id, []).append(item)
    return grouped
