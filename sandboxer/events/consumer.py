"""Who a sandbox is for beyond the actor: the consuming service and its session, run and job.

An optional ``consumer`` rides on a create or restore and is recorded in the
``requested`` event it leads to (docs/protocol.md#consumer-attribution), so
that listing and usage can be filtered and grouped by the calling service.
The checks a command's consumer must pass are in :mod:`sandboxer.commands.parse`.
"""

from __future__ import annotations

import msgspec

__all__ = ["ConsumerRecord", "SetupRecord"]


class ConsumerRecord(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The calling service (``harness``), its ``session_id``, ``run_id`` and ``job_id``, and
    free ``labels``. Every part is optional. Inside events it tolerates fields it does not
    know (a later version may add some); commands check it strictly. Parts left out are
    left out of the encoding too."""

    harness: str | None = None
    session_id: str | None = None
    run_id: str | None = None
    job_id: str | None = None
    labels: dict[str, str] = {}


class SetupRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One of a profile's ``setup.commands`` run inside the sandbox before ``ready``: its
    place in the list, its exit code and the last lines of its output, every resolved secret
    value replaced by ``[redacted]``."""

    index: int
    exit_code: int
    output_tail: str = ""
