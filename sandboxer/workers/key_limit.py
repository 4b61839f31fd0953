"""An API key's live-sandbox limit, held by the control worker (docs/http-api.md#limits).

A create, restore or recreate of a failed sandbox made by a key, whether the
key published it on its own subject (docs/security.md#keys-on-the-bus) or the
gateway forwarded it stamped with the key's actor, may not take the project
past the key's ``max_live``: it is rejected with ``live_limit`` (the rule:
:func:`sandboxer.domain.key_access.live_limit_refusal`).

The count is the one routing already asks the view for
(:meth:`RouteLookup.signals`, with the project named), plus what this worker
let through that the view does not show yet: the creates and restores it
routed, and the failed sandboxes it let a key's recreates bring back
(:meth:`RouteLookup.hold_recreate`). How exact that is:

- within one control worker, exact: nothing awaits between the answer and the
  command's hold (a create's and a restore's once routed, a recreate's at
  once), so a burst of a key's creates, restores and recreates counts each
  one before it;
- a count at the limit is asked again of the view once it has caught up with
  the log as it stands (it waits up to 2 s for that), so a destroy the view
  had not folded yet does not refuse the create that follows it; a count under
  the limit is taken as it is (the view's lag can only let a create through);
- a command of this worker being appended may count twice for a moment: the
  view counts a sandbox from the first of its events it folds (a create's or
  restore's ``requested``, stored one round trip before its ``routed``), the
  hold until the view passes the last (:meth:`RouteLookup.appended` names
  it). That can only raise a count, so only one at the limit can be wrong:
  before asking again, the worker waits until none of its holds in the
  project being appended when it came still is (:meth:`RouteLookup.settled`:
  an append's round trip, usually; at most the 5 s a hold whose append is
  never reported lasts, from its start: holds made meanwhile, under a steady
  stream of the project's creates, neither extend the wait nor are waited
  for), and the view caught up with the log then counts each once. What a
  command held during that wait or the second ask (a burst's next) may still
  count twice in it;
- two control workers racing may both pass, as two gateways may: each sees
  the other's creates only once the view does. A guard, not an exact quota.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial

from nats.js import JetStreamContext

from sandboxer.bus.event_reader import last_sequence
from sandboxer.bus.event_store import EventStore
from sandboxer.commands.parse import key_of
from sandboxer.commands.types import Command, CreateSandbox, RecreateSandbox, RestoreSnapshot
from sandboxer.config.extension_decl import ExtensionDecl
from sandboxer.domain.account_state import project_of
from sandboxer.domain.key_access import KEY_LIVE_STATUSES, live_limit_refusal
from sandboxer.domain.key_state import KeyState, is_valid_key_id
from sandboxer.domain.route_signals import RouteSignals
from sandboxer.domain.sandbox_state import SandboxState
from sandboxer.errors import Rejected, StreamUnavailable
from sandboxer.ids import derive_sandbox_id
from sandboxer.workers.route_lookup import RouteLookup

__all__ = ["LiveLimit", "check_live_limit", "limiting_key"]


async def _never() -> bool:
    return False


@dataclass(frozen=True)
class LiveLimit:
    """A command that would add a live sandbox to ``project``, held to ``key``'s limit.
    ``resent``: whether the command already made its sandbox (asked only of one at the
    limit, so a key's usual create reads nothing more). ``recreated``: the failed sandbox a
    recreate brings back (held as live once the recreate passes); None for a create or a
    restore (held once routed)."""

    key: KeyState
    project: str
    resent: Callable[[], Awaitable[bool]] = _never
    recreated: SandboxState | None = None


async def _made_already(store: EventStore, sandbox_id: str, command_id: str) -> bool:
    return command_id in (await store.load(sandbox_id)).state.handled


async def limiting_key(store: EventStore, subject: str, command: Command) -> LiveLimit | None:
    """The key whose ``max_live`` a command that adds a live sandbox is held to: the key
    identity that published it, or the key its actor names (the gateway publishes a key's
    commands on the plain subjects, as the key's actor). None for any other command or
    actor, and for a recreate of a sandbox that still counts (a failed one counts no more:
    recreating it adds one, as a create does). A create or restore sent again is not held
    by its own sandbox (:attr:`LiveLimit.resent`): one that crashed between its
    ``requested`` and ``routed`` would be refused by itself, and left ``requested`` for good,
    holding a place.
    """
    if not isinstance(command, CreateSandbox | RestoreSnapshot | RecreateSandbox):
        return None
    key_id = key_of(subject) or command.actor.id
    if not is_valid_key_id(key_id):
        return None
    recreated = None
    if isinstance(command, RecreateSandbox):
        recreated = (await store.load(command.sandbox_id)).state
        if recreated.status == "new" or recreated.status in KEY_LIVE_STATUSES:
            return None  # nothing to recreate (decide refuses it), or counted already
        project = project_of(recreated.actor)
        resent = _never
    else:
        sandbox_id = command.sandbox_id or derive_sandbox_id(command.command_id)
        resent = partial(_made_already, store, sandbox_id, command.command_id)
        project = project_of(command.actor)
    key = (await store.load_key(key_id)).state
    return LiveLimit(key, project, resent, recreated) if key.status != "none" else None


async def check_live_limit(
    routing: RouteLookup | None,
    js: JetStreamContext,
    limit: LiveLimit,
    enabled: Mapping[str, ExtensionDecl],
) -> RouteSignals | None:
    """The signals the count came with (routing may use them); Rejected (``live_limit``) when
    the command would take its project past the key's ``max_live``
    (``live_count_unavailable`` when the view answers without counting them: one older than
    this worker). StreamUnavailable while the view does not answer: the pull loop gives the
    command back until it does, as it does while the bus is away (workers/pull_loop.py)."""
    key, project = limit.key, limit.project
    signals = None if routing is None else await routing.signals(enabled, project)
    if signals is not None and not signals.known:
        # The view did not answer (a restart, the projector catching up): waited out as the
        # bus is, the command coming back until it does, not refused for the service's state.
        raise StreamUnavailable(
            f"the live sandboxes of project {project} cannot be counted yet ({signals.note}); "
            "the command waits for the view"
        )
    live = None if signals is None else signals.live_by_project.get(project)
    if routing is not None and live is not None and live >= key.max_live:
        # The view lags the log: ask again once it has folded everything appended so far,
        # this worker's commands of the project being appended included (until then they may
        # count twice: the module's docstring).
        await routing.settled(project)
        again = await routing.signals(enabled, project, min_seq=await last_sequence(js))
        if project in again.live_by_project:
            signals, live = again, again.live_by_project[project]
    refusal = live_limit_refusal(key.key_id, key.max_live, project, live)
    if refusal is not None and not (live is not None and await limit.resent()):
        raise Rejected(*refusal)
    return signals
