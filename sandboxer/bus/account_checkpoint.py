"""An account book as a checkpoint: the bytes a fresh load of the account starts from.

A project's account gains an event for every sandbox reserved and metered, for ever, and a
store keeps only a few accounts folded in memory (``KNOWN_ACCOUNTS``). Folding a long one
from sequence 1 takes seconds (docs/performance.md, "Accounts"); a load that starts from a
checkpoint reads only the events after it.

A checkpoint is never the truth, only a fold of the log that a load may trust instead of
folding again, so it says what it is a fold of:

- ``fingerprint``: the code that folded it. It hashes the source of every module whose
  change may change an account's fold (its state, its events, the codec that decodes and
  upcasts them, this encoding): after any change to them, the old checkpoints are not read,
  and the next long load writes a new one.
- ``last_seq`` and ``last_message``: the stream sequence of the account's last event folded,
  and a digest of that message's subject and bytes. A reader checks the log still holds that
  message there (a stream made again from scratch, beside an old checkpoint, does not).

Pure: the bucket it is kept in is :mod:`sandboxer.bus.checkpoints`.
"""

from __future__ import annotations

import hashlib
import inspect
import sys
from dataclasses import dataclass
from functools import cache

import immutables
import msgspec

from sandboxer.bus.event_store import LoadedAccount
from sandboxer.domain.account_state import AccountBook, AccountState

__all__ = [
    "Checkpoint",
    "decode_checkpoint",
    "encode_checkpoint",
    "fingerprint",
    "message_digest",
]

FOLD_MODULES = (
    "sandboxer.domain.account_state",
    "sandboxer.events.account_events",
    "sandboxer.events.actor",
    "sandboxer.events.codec",
    __name__,
)
"""The modules whose source an account's fold depends on."""


class _Stored(msgspec.Struct, frozen=True, kw_only=True):
    fingerprint: str
    last_seq: int
    last_message: str
    state: AccountState
    handled: list[str]


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read back: the account's figures and decided command ids up to its
    event ``last_seq``, and the digest of that event's message."""

    state: AccountState
    handled: list[str]
    last_seq: int
    last_message: str

    def loaded(self, handled: immutables.Map[str, None]) -> LoadedAccount:
        """The load it stands for, given its ids as a map (made by the caller, which may
        let other work run while it makes one of millions)."""
        return LoadedAccount(AccountBook(self.state, handled), self.last_seq)


@cache
def fingerprint() -> str:
    """The digest of the fold's code (see the module); empty where a module's source cannot
    be read (a frozen build), and then no checkpoint is written or read."""
    digest = hashlib.sha256()
    for name in FOLD_MODULES:
        try:
            source = inspect.getsource(sys.modules[name])
        except (KeyError, OSError, TypeError):
            return ""
        digest.update(name.encode() + b"\0" + source.encode() + b"\0")
    return digest.hexdigest()


def message_digest(subject: str, data: bytes) -> str:
    """What a checkpoint records of its last message, to find it again in the log."""
    return hashlib.sha256(subject.encode() + b"\0" + data).hexdigest()


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(_Stored)


def encode_checkpoint(loaded: LoadedAccount, last_message: str) -> bytes:
    """``loaded`` (the fold up to its ``last_seq``, whose message has ``last_message`` as
    its digest) as a checkpoint's bytes."""
    return _ENCODER.encode(
        _Stored(
            fingerprint=fingerprint(),
            last_seq=loaded.last_seq,
            last_message=last_message,
            state=loaded.state,
            handled=list(loaded.book.handled.keys()),
        )
    )


def decode_checkpoint(data: bytes, project: str) -> Checkpoint | None:
    """The checkpoint of ``project`` in ``data``; None for one this code may not trust:
    unreadable, of another project, of none of its events, or folded by other code."""
    try:
        stored = _DECODER.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if (
        not stored.fingerprint
        or stored.fingerprint != fingerprint()
        or stored.state.project != project
        or stored.last_seq < 1
    ):
        return None
    return Checkpoint(stored.state, stored.handled, stored.last_seq, stored.last_message)
