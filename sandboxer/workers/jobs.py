"""Jobs: the control worker's instructions to an extension worker (``sandboxer.job.<ext>.<id>``)."""

from __future__ import annotations

import hashlib
from typing import Literal

import msgspec

from sandboxer.bus.event_store import Loaded
from sandboxer.domain.sandbox_state import SandboxState

__all__ = ["Job", "job_for", "with_known"]

Action = Literal["provision", "recreate", "teardown", "snapshot", "pause", "resume", "retime"]


class Job(msgspec.Struct, frozen=True, kw_only=True):
    job_id: str
    """Deterministic per (sandbox, version, action): the ``Nats-Msg-Id`` that deduplicates it."""
    sandbox_id: str
    action: Action
    version: int = 0
    """The sandbox's version when the job was made: a load that finds less read a lagging replica."""
    snapshot_id: str | None = None
    """For ``snapshot`` jobs: the snapshot to take."""
    for_command: str | None = None
    """For ``pause`` and ``resume`` jobs: the command they carry out (the sandbox's
    ``correlation`` when the job was made), so that a late outcome of an earlier pause or
    resume is not recorded against a later one. None in jobs made before it was carried."""
    known: msgspec.Raw = msgspec.Raw(b"null")
    """For ``provision`` jobs: the sandbox as the job's maker left it (:class:`Known`), which
    saves the extension worker a read of the log on the create path. Raw, so that a job whose
    ``known`` this version cannot use is still a job: the worker then loads the log."""

    def known_loaded(self) -> Loaded | None:
        """The carried state, or None when there is none or it was written by code whose
        :class:`SandboxState` has another shape (a rolling upgrade): then load the log."""
        try:
            known = msgspec.json.decode(self.known, type=Known | None)
        except (msgspec.DecodeError, RecursionError):
            return None
        if known is None or known.shape != STATE_SHAPE or known.state.sandbox_id != self.sandbox_id:
            return None
        return Loaded(known.state, known.last_seq, known.unconfirmed)


class Known(msgspec.Struct, frozen=True, kw_only=True):
    """A sandbox's state at the log position ``last_seq``, as a job carries it.

    Trusted as a guess only: the worker appends under ``last_seq`` as the expected
    sequence, so a state the log has moved past conflicts, and the worker reloads
    (workers/deciding.py). Only the service identity may publish jobs (docs/security.md).
    """

    shape: str
    last_seq: int
    state: SandboxState
    unconfirmed: str | None = None
    """For a job sent with its create's events before they were acknowledged: the id of
    the last of them (:attr:`~sandboxer.bus.event_store.Loaded.unconfirmed`)."""


STATE_SHAPE = hashlib.sha256(repr(msgspec.inspect.type_info(SandboxState)).encode()).hexdigest()[
    :16
]
"""A fingerprint of :class:`SandboxState`'s fields and types: a state written by code with
another shape is never decoded into this one (a renamed field would silently default)."""


_ACTIONS: dict[str, Action] = {
    "routed": "provision",
    "recreating": "recreate",
    "destroying": "teardown",
    "pausing": "pause",
    "resuming": "resume",
}


def with_known(job: Job, loaded: Loaded) -> Job:
    """``job``, carrying ``loaded`` when it is a ``provision`` (the create path)."""
    if job.action != "provision":
        return job
    known = Known(
        shape=STATE_SHAPE,
        last_seq=loaded.last_seq,
        state=loaded.state,
        unconfirmed=loaded.unconfirmed,
    )
    return msgspec.structs.replace(job, known=msgspec.Raw(msgspec.json.encode(known)))


def job_for(state: SandboxState, *, retime: bool = False) -> Job | None:
    """The job a sandbox in ``state`` is waiting for, if any.

    A snapshot under way comes first: a destroy decided meanwhile gets its
    teardown only once the snapshot finished (domain/sandbox_snapshots.py).
    A ``retime`` job follows a ``ttl_extended``; backends without a timeout of
    their own (:class:`~sandboxer.extensions.capabilities.TimeoutKeeper`) ack it.
    ``retime``: a ``retime`` of a ready or active sandbox whatever moved its version since
    (an ``extend_ttl`` sent again: see the control worker's ``_dispatch``).
    """
    if state.snapshotting is not None:
        return Job(
            job_id=f"{state.sandbox_id}-{state.snapshotting}-snapshot",
            sandbox_id=state.sandbox_id,
            action="snapshot",
            version=state.version,
            snapshot_id=state.snapshotting,
        )
    action = _ACTIONS.get(state.status)
    moved = retime or state.expiry_moved_at == state.version
    if state.status in {"ready", "active"} and moved:
        # The TTL just moved: a provider that keeps its own timeout must follow it. The
        # command that moved it dispatches this, or (``retime``) that command delivered again
        # after a later event changed the version.
        action = "retime"
    if action is None:
        return None
    return Job(
        job_id=f"{state.sandbox_id}-{state.version}-{action}",
        sandbox_id=state.sandbox_id,
        action=action,
        version=state.version,
        for_command=state.correlation if action in {"pause", "resume"} else None,
    )
