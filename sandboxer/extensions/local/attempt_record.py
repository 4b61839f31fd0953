"""Which provisioning made an ext.local sandbox, and what that lets a teardown do (pure).

A worker frozen (SIGSTOP) or cut off from NATS past ``ack_wait`` goes on when it can,
after its job went to another worker: two provisionings of one sandbox may then act on its
directory, each tearing down what it takes for an earlier one's (a recreate's clean start,
a failed attempt's cleanup). ``state.json`` records ``made_by``, the ``[generation,
attempt]`` of the provisioning that made the sandbox (or claimed the pool member it is),
and the log orders provisionings, so, as :mod:`sandboxer.hosted.attempt_fence` does with a
hosted provider's labels, by the rules of :mod:`sandboxer.domain.attempt_order` (shared
with ext.compose-ssh and ext.vm-packer, re-exported here):

- a provisioning removes only its own sandbox or an earlier one's (:func:`removable`),
  never a later one's, which the log's ``ready`` may name;
- it refuses to start clean over a later one's (:func:`made_later`);
- a sandbox without the record (made before it; a provision that died before its first
  write) counts as earlier than every provisioning.

ext.local holds at most one sandbox per id under a root, so there is never an earlier
attempt's copy beside the live one to tell apart; what is listed (:func:`listed`) says who
made it all the same, except for a claimed pool member, whose record may be its member's
own (see there).
"""

from __future__ import annotations

from sandboxer.domain.attempt_order import made_later, recorded, removable
from sandboxer.domain.found import MadeBy

# The rules themselves are shared with the SSH backends (sandboxer.domain.attempt_order):
# one rule, re-exported here for ext.local's callers.
__all__ = ["listed", "made_later", "recorded", "removable"]


def listed(made_by: object, pool_member: str | None, sandbox_id: str) -> MadeBy | None:
    """What ``list_sandboxes`` reports as the sandbox's ``made_by``.

    None for a claimed pool member (``pool_member`` names another id than the directory's):
    until 2026-12-04 a claim left the member's own ``[1, 1]`` in place when a recreate
    (generation 2 or later) or a retried claim of a moved member took it, and the drift would
    judge such a live sandbox an earlier attempt's copy and remove it. Without the record it
    is never judged so (:func:`sandboxer.domain.drift.live_attempt`), which costs nothing
    here: one id holds one sandbox, never a copy beside it."""
    if pool_member is not None and pool_member != sandbox_id:
        return None
    return recorded(made_by)
