"""What a backend finds of a sandbox on its host: the value stale detection reasons about.

It lives in the pure domain because :mod:`sandboxer.domain.drift` compares it
with the log; backends build it from what they see and speak it back
(:mod:`sandboxer.extensions.base` re-exports it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["FoundSandbox"]


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
