"""The stub's rules, pure: what a record is, whether it is alive, the quota decision, the
cost arithmetic and the failure draw. Times are ISO 8601 UTC strings given by the caller;
nothing here reads a clock, a file or a random source it was not handed.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from sandboxer.domain.timestamps import seconds_between, shift

__all__ = [
    "Price",
    "Record",
    "billable_seconds",
    "cost",
    "deadline_for",
    "estimate",
    "fails",
    "is_alive",
    "live_count",
    "paused",
    "quota_full",
    "resumed",
    "wants_gpu",
    "with_deadline",
]


class Price(msgspec.Struct, frozen=True, kw_only=True):
    """USD, as the declaration's ``pricing`` says at the time a sandbox is created."""

    per_create: float = 0.0
    per_second: float = 0.0
    gpu_per_second: float = 0.0


class Record(msgspec.Struct, frozen=True, kw_only=True):
    """One stub sandbox, as the stub "provider" keeps it (one JSON file each).

    The price is copied in at create time, as a provider bills at the rate a sandbox
    started under: editing the declaration does not reprice what already runs.
    """

    sandbox_id: str
    profile: str
    created_at: str
    price: Price
    gpu: bool = False
    project: str | None = None
    image: str | None = None
    deadline: str | None = None
    """The provider-side timeout: past it (while running) the stub has ended the sandbox."""
    paused_at: str | None = None
    paused_seconds: float = 0.0
    """Time spent paused in earlier pauses (not billed)."""


def _before(a: str, b: str) -> bool:
    return seconds_between(a, b) > 0


def is_alive(record: Record, now: str) -> bool:
    """A paused record is alive (its timeout stands still); a running one until its deadline."""
    if record.paused_at is not None or record.deadline is None:
        return True
    return _before(now, record.deadline)


def live_count(records: Iterable[Record], now: str, *, excluding: str | None = None) -> int:
    """How many records count against the quota: the alive ones, paused included, except
    ``excluding`` (a redelivered create replaces its own record, so one id never counts twice)."""
    return sum(1 for r in records if r.sandbox_id != excluding and is_alive(r, now))


def quota_full(live: int, max_live: int) -> bool:
    """True when one more sandbox would exceed ``max_live`` (0 refuses every create)."""
    return live >= max_live


def deadline_for(expires_at: str | None, margin_seconds: float) -> str | None:
    """The provider-side deadline: a margin past our own expiry, so the provider is only a
    backstop and never ends a sandbox before sandboxer expires it."""
    return None if expires_at is None else shift(expires_at, margin_seconds)


def with_deadline(record: Record, deadline: str) -> Record:
    return msgspec.structs.replace(record, deadline=deadline)


def paused(record: Record, now: str) -> Record:
    """Paused at ``now``; pausing a paused record changes nothing."""
    if record.paused_at is not None:
        return record
    return msgspec.structs.replace(record, paused_at=now)


def resumed(record: Record, now: str) -> Record:
    """Running again: the pause's length is added to the unbilled time and to the deadline
    (the provider's timeout stood still while paused); resuming a running record changes
    nothing."""
    if record.paused_at is None:
        return record
    pause = max(0.0, seconds_between(record.paused_at, now))
    deadline = None if record.deadline is None else shift(record.deadline, pause)
    return msgspec.structs.replace(
        record,
        paused_at=None,
        paused_seconds=record.paused_seconds + pause,
        deadline=deadline,
    )


def billable_seconds(record: Record, now: str) -> float:
    """Seconds the sandbox has been running: from its creation to now (or to its deadline, if
    the stub ended it, or to the start of the current pause), paused time excluded."""
    end = now
    if record.paused_at is not None:
        end = record.paused_at
    elif record.deadline is not None and _before(record.deadline, now):
        end = record.deadline
    return max(0.0, seconds_between(record.created_at, end) - record.paused_seconds)


def cost(price: Price, seconds: float, *, gpu: bool) -> float:
    """USD for one sandbox that ran ``seconds``: the create, then per second (plus the GPU's)."""
    rate = price.per_second + (price.gpu_per_second if gpu else 0.0)
    return price.per_create + rate * max(0.0, seconds)


def wants_gpu(resources: Mapping[str, Any]) -> bool:
    """A profile's resources ask for a GPU when they name one (``gpu: a10g``)."""
    return bool(resources.get("gpu"))


def estimate(price: Price, ttl_seconds: float, resources: Mapping[str, Any]) -> float:
    """What a sandbox that lives its whole TTL costs, before it is made."""
    return cost(price, ttl_seconds, gpu=wants_gpu(resources))


def fails(
    rate: float, *, seed: int | None, sandbox_id: str, attempt: int, rng: random.Random
) -> bool:
    """Whether this create attempt fails. Rates 0 and 1 are certain; with a seed the outcome
    is a function of (seed, sandbox id, attempt), whatever the order creates arrive in;
    without one it is drawn from ``rng``."""
    if rate <= 0:
        return False
    if rate >= 1:
        return True
    if seed is None:
        return rng.random() < rate
    digest = hashlib.sha256(f"{seed}:{sandbox_id}:{attempt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < rate
