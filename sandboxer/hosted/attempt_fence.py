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

What a later attempt removes an earlier one may still be creating: that copy, landing
late, carries the earlier label, so the later attempt's ``wait_ready`` (or the earlier
attempt itself, once the log tells it it was taken over) removes it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from sandboxer.domain.found import MadeBy
from sandboxer.hosted.labels import ATTEMPT_LABEL

__all__ = ["MadeBy", "made_by", "own", "removable"]

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
    attempt's, never a later one's."""
    made = made_by(labels)
    return made is None or made <= mine
