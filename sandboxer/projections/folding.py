"""Applying events to the sandbox view in batches: shared by live projection and replay."""

from __future__ import annotations

from sandboxer.domain.sandbox import SandboxState, evolve
from sandboxer.events.types import CommandRejected, decode_event
from sandboxer.projections.sandbox_view import SandboxView

__all__ = ["Batch"]


class Batch:
    """Events folded in memory since the last save; ``flush`` writes them in one transaction."""

    def __init__(self, view: SandboxView) -> None:
        self._view = view
        self._states: dict[str, tuple[SandboxState, int]] = {}
        self._rejections: list[tuple[CommandRejected, int]] = []
        self.position = 0
        self.size = 0

    async def apply(self, seq: int, data: bytes) -> None:
        event = decode_event(data)
        if isinstance(event, CommandRejected):
            self._rejections.append((event, seq))
        else:
            known = self._states.get(event.sandbox_id)
            if known is not None:
                state = known[0]
            else:
                state = await self._view.load_state(event.sandbox_id) or SandboxState(
                    sandbox_id=event.sandbox_id
                )
            self._states[event.sandbox_id] = (evolve(state, event), seq)
        self.position = seq
        self.size += 1

    async def flush(self) -> None:
        if not self.size:
            return
        await self._view.save(self._states.values(), self._rejections, self.position)
        self._states.clear()
        self._rejections.clear()
        self.size = 0
