"""An API key's live-sandbox limit, held by the control worker (docs/http-api.md#limits).

A create or restore made by a key, whether the key published it on its own
subject (docs/security.md#keys-on-the-bus) or the gateway forwarded it
stamped with the key's actor, may not take the project past the key's
``max_live``: it is rejected with ``live_limit`` (the rule:
:func:`sandboxer.domain.key_access.live_limit_refusal`).

The count is the one routing already asks the view for
(:meth:`RouteLookup.signals`, with the project named), plus the creates this
worker routed that the view does not show yet. How exact that is:

- within one control worker, exact: nothing awaits between the answer and the
  create's hold, so a burst of a key's creates counts each one before it;
- a count at the limit is asked again of the view once it has caught up with
  the log as it stands (it waits up to 2 s for that), so a destroy the view
  had not folded yet does not refuse the create that follows it; a count under
  the limit is taken as it is (the view's lag can only let a create through);
- two control workers racing may both pass, as two gateways may: each sees
  the other's creates only once the view does. A guard, not an exact quota.
"""

from __future__ import annotations

from collections.abc import Mapping

from nats.js import JetStreamContext

from sandboxer.bus.event_reader import last_sequence
from sandboxer.bus.event_store import EventStore
from sandboxer.commands.parse import key_of
from sandboxer.commands.types import Command, CreateSandbox, RestoreSnapshot
from sandboxer.config.extension_decl import ExtensionDecl
from sandboxer.domain.account_state import project_of
from sandboxer.domain.key_access import live_limit_refusal
from sandboxer.domain.key_state import KeyState, is_valid_key_id
from sandboxer.domain.route_signals import RouteSignals
from sandboxer.errors import Rejected
from sandboxer.workers.route_lookup import RouteLookup

__all__ = ["check_live_limit", "limiting_key"]


async def limiting_key(store: EventStore, subject: str, command: Command) -> KeyState | None:
    """The key whose ``max_live`` a create or restore is held to: the key identity that
    published it, or the key its actor names (the gateway publishes a key's commands on the
    plain subjects, as the key's actor). None for any other command or actor."""
    if not isinstance(command, CreateSandbox | RestoreSnapshot):
        return None
    key_id = key_of(subject) or command.actor.id
    if not is_valid_key_id(key_id):
        return None
    key = (await store.load_key(key_id)).state
    return key if key.status != "none" else None


async def check_live_limit(
    routing: RouteLookup | None,
    js: JetStreamContext,
    key: KeyState,
    command: CreateSandbox,
    enabled: Mapping[str, ExtensionDecl],
) -> RouteSignals | None:
    """The signals the count came with (routing may use them); Rejected (``live_limit``) when
    the create would take its project past the key's ``max_live``, or the project's live
    sandboxes could not be counted."""
    project = project_of(command.actor)
    signals = None if routing is None else await routing.signals(enabled, project)
    live = None if signals is None else signals.live_by_project.get(project)
    if routing is not None and live is not None and live >= key.max_live:
        # The view lags the log: ask again once it has folded everything appended so far.
        again = await routing.signals(enabled, project, min_seq=await last_sequence(js))
        if project in again.live_by_project:
            signals, live = again, again.live_by_project[project]
    refusal = live_limit_refusal(key.key_id, key.max_live, project, live)
    if refusal is not None:
        raise Rejected(*refusal)
    return signals
