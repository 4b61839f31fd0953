"""A host's places, pure: who holds the room its ``max_sandboxes`` gives, decided on the log.

The view's live counts lag the log, and each control worker adds only the
routes it made itself, so two control workers placing at once both saw a
host's last place free and both took it. A host with ``max_sandboxes`` is
therefore its own aggregate (:mod:`sandboxer.events.place_events`): a create
takes a place there (:class:`TakePlace`) before its sandbox is appended, under
the host's expected sequence, and a full host refuses it (``host_full``). A
recreate of a failed sandbox, which brings it back on its host, takes one the
same way before its ``recreating`` (``renew``).

A place is given back (:class:`FreePlace`) when a create finds the host full
and its holder's sandbox no longer holds it (:func:`place_given_up`):
destroyed, failed, rerouted, placed elsewhere, or its create given up
(``create_abandoned``). Each decision is on the host's own history, so a
place is freed once whoever finds it first, and a worker killed between any
two steps leaves nothing that the next look does not settle.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from sandboxer.domain.lost_creates import STRANDED_SECONDS, create_lost
from sandboxer.domain.route_signals import CAPACITY_STATUSES
from sandboxer.domain.sandbox_state import SandboxState
from sandboxer.domain.timestamps import seconds_between
from sandboxer.errors import Rejected
from sandboxer.events.actor import Actor
from sandboxer.events.place_events import PlaceEvent, PlaceFreed, PlaceTaken

__all__ = [
    "STRANDED_SECONDS",
    "FreePlace",
    "HostPlaces",
    "Place",
    "PlaceCommand",
    "TakePlace",
    "decide_places",
    "evolve_places",
    "may_hold_places",
    "place_given_up",
    "place_stranded",
]


@dataclass(frozen=True)
class Place:
    extension: str
    taken_by: str
    """The command that took it: a place freed is that one, not one taken again since."""
    at: str = ""
    """When it was taken (a place whose create never appended is given up after a while)."""
    project: str | None = None
    """The project of the command that took it: command ids are one namespace across
    projects, so a refused create gives up only a place its own project took."""


@dataclass(frozen=True)
class HostPlaces:
    host: str
    version: int = 0
    places: Mapping[str, Place] = field(default_factory=dict)
    """Sandbox id -> the place it holds (one per sandbox: taken again, it is replaced)."""

    def holders(self, extension: str) -> dict[str, Place]:
        """The places ``extension``'s sandboxes hold: the host's ``max_sandboxes`` caps
        each backend's on it, as the view counts them (docs/hosts.md)."""
        return {sid: p for sid, p in self.places.items() if p.extension == extension}


@dataclass(frozen=True, kw_only=True)
class TakePlace:
    command_id: str
    actor: Actor
    sandbox_id: str
    extension: str
    limit: int
    renew: bool = False
    """A recreate's: the place its sandbox holds already is taken again under this command.
    A look that judged the failed sandbox before the recreate's append then frees nothing
    (its :class:`FreePlace` names the old taker), and :func:`place_given_up` holds a failed
    sandbox's place while its taker is not yet in the sandbox's history."""


@dataclass(frozen=True, kw_only=True)
class FreePlace:
    command_id: str
    actor: Actor
    sandbox_id: str
    taken_by: str
    """The place's taker as the caller judged it: one taken again since is left alone."""
    reason: str


PlaceCommand = TakePlace | FreePlace


def evolve_places(state: HostPlaces, event: PlaceEvent) -> HostPlaces:
    places = dict(state.places)
    if isinstance(event, PlaceTaken):
        places[event.sandbox_id] = Place(
            event.extension, event.command_id, event.at, event.actor.project
        )
    else:
        places.pop(event.sandbox_id, None)
    return replace(state, version=state.version + 1, places=places)


def decide_places(state: HostPlaces, command: PlaceCommand, now: str) -> list[PlaceEvent]:
    held = state.places.get(command.sandbox_id)
    head: dict[str, Any] = {
        "host": state.host,
        "sandbox_id": command.sandbox_id,
        "command_id": command.command_id,
        "actor": command.actor,
        "at": now,
    }
    if isinstance(command, FreePlace):
        if held is None or held.taken_by != command.taken_by:
            return []  # freed already, or taken again since: once
        return [PlaceFreed(**head, reason=command.reason)]
    if held is not None and held.extension == command.extension:
        if command.renew and held.taken_by != command.command_id:
            return [PlaceTaken(**head, extension=command.extension, limit=command.limit)]
        return []  # its create sent again, or rerouted to the same host and backend
    others = len(state.holders(command.extension)) - (held is not None)
    if others >= command.limit:
        raise Rejected(
            "host_full",
            # Worded as the view's count words it, the log named after.
            f"{state.host} is full ({others} of its max_sandboxes {command.limit}), "
            "as its places in the log say",
        )
    return [PlaceTaken(**head, extension=command.extension, limit=command.limit)]


def place_given_up(host: str, place: Place, sandbox: SandboxState, now: str) -> str | None:
    """Why ``sandbox`` holds its ``place`` on ``host`` no longer (None: it still does).

    A sandbox with no events is a create between its place and its append (or cut off
    there, and sent again until it is appended or refused): it holds the place until a
    refusal gives its id up. One ``requested`` has its ``routed`` appended next; one
    ``rerouting`` may have just taken this place for its next route (or holds its old
    one until it is routed elsewhere): either way it is on its way, and holds it. A failed
    one whose place a command not in its history took is a recreate between its place
    and its ``recreating`` (:class:`TakePlace` ``renew``): it holds it for
    :data:`STRANDED_SECONDS`, after which a recreate refused after its place (rare: its
    sandbox changed in between) gives it back."""
    status = sandbox.status
    if status == "new":
        return None if sandbox.abandoned_by is None else "its create was given up"
    if status in ("requested", "rerouting"):
        return None
    if status == "failed" and _recreate_on_its_way(place, sandbox, now):
        return None
    if status not in CAPACITY_STATUSES:
        return f"the sandbox is {status}"
    if sandbox.host != host or sandbox.extension != place.extension:
        return f"the sandbox is on {sandbox.host or 'no host'} of {sandbox.extension} now"
    return None


def _recreate_on_its_way(place: Place, sandbox: SandboxState, now: str) -> bool:
    return (
        place.taken_by not in sandbox.handled
        and bool(place.at)
        and seconds_between(place.at, now) <= STRANDED_SECONDS
    )


def may_hold_places(sandbox: SandboxState) -> bool:
    """Whether a refused create of ``sandbox``'s id may hold a place it must give back.

    A create takes its place before its sandbox's ``requested``: an id with events (other
    than its own ``create_abandoned``, which a worker killed before the place was freed
    leaves) was appended, and its places are its sandbox's, held or given up by
    :func:`place_given_up` as any other, and freed by the next create that finds the host
    full. So the hosts' places are read only for a ``new`` sandbox. The control worker
    still reads the hosts file for every refused create while a backend on hosts runs, to
    know which hosts have places; it parses it again only when its text changed
    (config/hosts.load_hosts)."""
    return sandbox.status == "new"


def place_stranded(place: Place, sandbox: SandboxState, now: str) -> bool:
    """Whether ``place``'s create is taken for lost: its sandbox has no events, its id was
    not given up, and the place is older than :data:`STRANDED_SECONDS`. Its refusals give
    the id up and the place back (workers/host_places.py); one they missed (the place on
    a host since removed from the hosts file, then put back) would hold it for ever. The
    caller gives the id up (``create_abandoned``) before it frees the place, so a delivery
    still on its way is refused rather than appended on a place given back."""
    return create_lost(sandbox, place.at, now)
