"""Which provisioning made a sandbox, as a backend records it, and what a teardown may do (pure).

A worker frozen (SIGSTOP) or cut off from NATS past ``ack_wait`` goes on when it can,
after its job went to another worker: two provisionings of one sandbox may then act on it,
each tearing down what it takes for an earlier one's (a recreate's clean start, a failed
attempt's cleanup). A backend that records ``made_by``, the ``[generation, attempt]`` of the
provisioning that made the sandbox (ext.local in ``state.json``, ext.compose-ssh and
ext.vm-packer in the sandbox's marker on its host), lets the log's order decide, as
:mod:`sandboxer.hosted.attempt_fence` does with a hosted provider's labels:

- a provisioning removes only its own sandbox or an earlier one's (:func:`removable`),
  never a later one's, which the log's ``ready`` may name;
- it refuses to start clean over a later one's (:func:`made_later`);
- a sandbox without the record (made before it; a record edited by hand) counts as earlier
  than every provisioning.

One rule for every backend that records it: ext.local (:mod:`sandboxer.extensions.local.
attempt_record`) and the SSH backends (:mod:`sandboxer.extensions.ssh_workspace`) use these.
"""

from __future__ import annotations

from sandboxer.domain.found import MadeBy

__all__ = ["made_later", "recorded", "removable"]


def recorded(made_by: object) -> MadeBy | None:
    """A record's ``made_by`` (JSON's ``[generation, attempt]``) as (generation, attempt);
    None when it has none or it is not two counts (edited by hand, or corrupted): counted as
    made before the record."""
    if not isinstance(made_by, list | tuple) or len(made_by) != 2:
        return None
    generation, attempt = made_by
    # type() rather than isinstance: JSON's true is a bool, and a bool is an int.
    if type(generation) is not int or type(attempt) is not int or min(generation, attempt) < 0:
        return None
    return (generation, attempt)


def removable(made_by: object, mine: MadeBy) -> bool:
    """Whether provisioning ``mine`` may remove a sandbox whose record says ``made_by``: its
    own or an earlier provisioning's (or one made before the record), never a later one's."""
    made = recorded(made_by)
    return made is None or made <= mine


def made_later(made_by: object, mine: MadeBy) -> MadeBy | None:
    """The provisioning later than ``mine`` that made the sandbox, if one did (what a
    teardown or a clean start of ``mine`` must leave alone, and its message names)."""
    made = recorded(made_by)
    return made if made is not None and made > mine else None
