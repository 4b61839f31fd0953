"""Whose provider sandboxes a provisioning attempt may adopt or remove (pure).

JetStream gives a job to another worker when its own says nothing for ``ack_wait``: the
first may be dead (kill -9), or only frozen (SIGSTOP) or cut off from NATS, and then it
goes on when it can. So two attempts at one sandbox's provisioning can act on the provider
at once, each creating, and each removing what it takes for an earlier attempt's leftovers
(a redelivered job's clean start, a twin after a create sent again, the teardown of a
failed create and its look for late creates). Counting deliveries cannot tell them apart;
the provider sandboxes can: each carries the ``(generation, attempt)`` of the
``provisioning`` event that made it (:data:`~.labels.ATTEMPT_LABEL`). The log orders
attempts, and only the latest one's ``ready`` is recorded (the others' are refused), so:

- an attempt adopts only a sandbox it made itself (:func:`own`);
- it removes only its own and earlier attempts' (:func:`removable`), never a later one's,
  which the log's ``ready`` may name. One whose label does not say (made before the label)
  counts as earlier, as every sandbox did before.
- a create refused because one of ours holds the sandbox's name (Modal, Daytona) adopts the
  holder, replaces it or stops, by the same two rules (:func:`holder_action`).

What a later attempt removes an earlier one may still be creating: that copy, landing
late, carries the earlier label, so the later attempt's ``wait_ready`` (or the earlier
attempt itself, once the log tells it it was taken over) removes it. Until something does,
a call for the sandbox (a token, a pause, a retime) takes the one the log's ``ready`` names
(:func:`live_one`), never the copy, whose setup never ran.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Literal, TypeVar

from sandboxer.domain import attempt_order
from sandboxer.domain.found import MadeBy
from sandboxer.hosted.labels import ATTEMPT_LABEL

__all__ = ["HolderAction", "MadeBy", "holder_action", "live_one", "made_by", "own", "removable"]

T = TypeVar("T")

HolderAction = Literal["adopt", "replace", "stop"]

_LABEL = re.compile(r"([0-9]{1,9})\.([0-9]{1,9})")


def made_by(labels: Mapping[str, str] | None) -> MadeBy | None:
    """The provisioning that made the sandbox; None when its labels do not say (made before
    the label, or a value that is not ours)."""
    found = _LABEL.fullmatch((labels or {}).get(ATTEMPT_LABEL, ""))
    return None if found is None else (int(found[1]), int(found[2]))


def own(labels: Mapping[str, str] | None, mine: MadeBy) -> bool:
    """Whether provisioning ``mine`` made the sandbox: the only kind it may adopt."""
    return made_by(labels) == mine


def removable(labels: Mapping[str, str] | None, mine: MadeBy) -> bool:
    """Whether provisioning ``mine`` may remove the sandbox: its own or an earlier
    attempt's, never a later one's (the rule every backend that records attempts shares:
    :func:`sandboxer.domain.attempt_order.removable`)."""
    return attempt_order.removable(made_by(labels), mine)


def holder_action(labels: Mapping[str, str] | None, mine: MadeBy) -> HolderAction:
    """A create of provisioning ``mine`` was refused because a sandbox of ours (this
    declaration's) holds the name: what to do with that holder, from its ``labels``.

    - ``adopt``: this attempt made it (its create's answer was lost, or the SDK retried it);
    - ``replace``: an earlier attempt made it, or it was made before the label (its create
      landed after this attempt cleared the way): remove it, wait for the name to be free,
      create once more;
    - ``stop``: a later attempt made it (the job went to another worker while this one was
      held up): the log's ``ready`` may name it, so this attempt fails and the worker,
      finding it taken over, records nothing."""
    if own(labels, mine):
        return "adopt"
    return "replace" if removable(labels, mine) else "stop"


def live_one(
    found: Sequence[T], labels_of: Callable[[T], Mapping[str, str] | None], live: MadeBy | None
) -> T | None:
    """Of one sandbox id's provider sandboxes (``found``, as listed), the one the log's
    ``ready`` names, whatever order the provider lists them in; None when none may be it.

    ``live``: the provisioning the log is at, (generation, attempt). Its own is the live one;
    else one made before the attempt label (it may be the live one); never another attempt's
    (an earlier one's is a stale copy, a later one's not what the log names). Without
    ``live`` (a caller that did not read the log): the latest attempt's, as the log records
    only the latest attempt's ``ready``; else one made before the label."""
    unlabelled = [item for item in found if made_by(labels_of(item)) is None]
    if live is not None:
        mine = [item for item in found if made_by(labels_of(item)) == live]
        return next(iter(mine or unlabelled), None)
    labelled = [(made, item) for item in found if (made := made_by(labels_of(item))) is not None]
    if labelled:
        return max(labelled, key=lambda pair: pair[0])[1]
    return next(iter(unlabelled), None)
