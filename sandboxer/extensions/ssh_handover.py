"""What a provision learnt that its wait_ready would otherwise ask the host again.

The worker calls ``provision`` then ``wait_ready`` on the same backend, and on
an SSH host each remote command costs a login shell there (on hosts whose
profile runs something slow, a quarter of a second or more). So a provision
hands over, by sandbox id, what it has just seen: the compose services it
listed, or a workspace it has just filled and the host key the connection was
verified against. A ``wait_ready`` that finds nothing here (another process
provisioned, or the worker restarted in between) asks the host as before, so
nothing depends on the handover being there. Bounded: a provision whose
``wait_ready`` never comes (it failed) cannot pile entries up.
"""

from __future__ import annotations

from typing import Generic, TypeVar

__all__ = ["HANDOVER_LIMIT", "Handover"]

HANDOVER_LIMIT = 1024
"""At most this many sandboxes' hand-overs are kept; the oldest goes first."""

T = TypeVar("T")


class Handover(Generic[T]):
    """A bounded map from sandbox id to what its provision saw; each entry is taken once."""

    def __init__(self, limit: int = HANDOVER_LIMIT) -> None:
        self._limit = limit
        self._entries: dict[str, T] = {}

    def give(self, sandbox_id: str, value: T) -> None:
        self._entries.pop(sandbox_id, None)
        while len(self._entries) >= self._limit:
            self._entries.pop(next(iter(self._entries)))
        self._entries[sandbox_id] = value

    def take(self, sandbox_id: str) -> T | None:
        """The entry, removed; None when there is none."""
        return self._entries.pop(sandbox_id, None)

    def drop(self, sandbox_id: str) -> None:
        self._entries.pop(sandbox_id, None)

    def __len__(self) -> int:
        return len(self._entries)
