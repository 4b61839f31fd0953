"""The control worker's pause and resume: the backend's declaration first, then the decision.

Whether a backend can pause is read from its declaration
(``capabilities.pause``), before anything is appended or any job is sent, so a
pause of a sandbox on a backend that cannot freeze one is refused with a
reason and leaves no trace on the sandbox. A paused sandbox can always be
resumed: its backend did pause it, and a declaration edited since must not
strand it frozen.
"""

from __future__ import annotations

from sandboxer.bus.event_store import EventStore, Loaded
from sandboxer.commands.types import PauseSandbox, ResumeSandbox
from sandboxer.config.catalog import Catalog
from sandboxer.errors import Rejected
from sandboxer.workers.deciding import apply

__all__ = ["decide_pause_step"]


async def decide_pause_step(
    store: EventStore, catalog: Catalog, command: PauseSandbox | ResumeSandbox
) -> Loaded:
    """Check the capability, then decide ``pausing`` or ``resuming``; returns the sandbox."""
    loaded = await store.load(command.sandbox_id)
    state = loaded.state
    thawing = isinstance(command, ResumeSandbox) and state.status == "paused"
    if state.extension is not None and command.command_id not in state.handled and not thawing:
        decl = catalog.extensions_enabled().get(state.extension)
        if decl is None or not decl.capabilities.pause:
            verb = "pause" if isinstance(command, PauseSandbox) else "resume"
            raise Rejected(
                "pause_unsupported",
                f"sandbox {command.sandbox_id} runs on {state.extension}, which cannot {verb} "
                "sandboxes (its declaration does not set capabilities.pause); "
                "'sandboxer extensions' shows which backends can",
            )
    loaded, _ = await apply(store, command.sandbox_id, command, loaded)
    return loaded
