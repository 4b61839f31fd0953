"""Publishing to JetStream so that an election or a reconnect never loses a write.

A stream whose leader died answers "no responders" (503) until a new leader
is elected, which takes about 4-7 s here; a publish in flight when the leader
died times out, and may have landed all the same; a client whose server died
is reconnecting. None of these means the write was refused, so the same bytes
are sent again with the same ``Nats-Msg-Id`` (the stream's duplicate window
keeps a second copy out) until a budget measured in time, not in attempts,
runs out. Everything else the server answers is the caller's to handle.

An expected-sequence failure is raised as :class:`PublishConflict`, which says
whether an earlier attempt was sent: after a retry the "conflict" may be our
own write, landed by the attempt that timed out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeGuard

import stamina
from nats import errors as nats_errors
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import APIError, NoStreamResponseError

from sandboxer.bus.ack_inbox import publish_for_ack
from sandboxer.bus.pull_requests import connection_of
from sandboxer.errors import BusError, InvalidInput, PublishConflict, StreamUnavailable

__all__ = [
    "EXPECTATION_CODES",
    "PUBLISH_BUDGET",
    "PublishConflict",
    "Published",
    "is_expectation_failure",
    "is_transient",
    "is_unavailability",
    "publish_durably",
]

PUBLISH_BUDGET = 30.0
"""Seconds a publish keeps retrying: several elections' worth, short enough to surface a dead cluster."""

ATTEMPT_TIMEOUT = 5.0
"""Seconds one attempt waits for its ack; a stream without a leader answers 503 much sooner."""

EXPECTATION_CODES = frozenset({10063, 10070, 10071, 10164})
"""The stream's last sequence or message id is not the one the publish expected.

10071 and 10164 are the per-subject and wildcard-subject "wrong last sequence";
10063 and 10070 their stream-wide and message-id siblings. 10063 comes with
status 503, so it must be checked before the 503 rule of :func:`is_transient`.
"""

log = logging.getLogger(__name__)

TRANSIENT_CODES = frozenset({10004, 10008, 10009})
"""Incomplete results, JetStream temporarily unavailable, not the leader (mid-election)."""

_TRANSIENT_TYPES: tuple[type[Exception], ...] = (
    TimeoutError,  # nats.errors.TimeoutError and FlushTimeoutError derive from it
    nats_errors.NoRespondersError,
    NoStreamResponseError,
    nats_errors.ConnectionReconnectingError,
    nats_errors.StaleConnectionError,
    nats_errors.OutboundBufferLimitError,
)


@dataclass(frozen=True)
class Published:
    """The stream's ack, and whether an earlier attempt was sent (and so may have landed)."""

    ack: PubAck
    retried: bool


def is_expectation_failure(exc: BaseException) -> TypeGuard[APIError]:
    """Whether ``exc`` is the stream's refusal of a publish whose expectation (a last sequence,
    a last message id) no longer holds: a conflict, not a failure."""
    return isinstance(exc, APIError) and exc.err_code in EXPECTATION_CODES


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` says "not now" (no leader, timeout, reconnecting) rather than "no"."""
    if is_expectation_failure(exc):
        return False
    if isinstance(exc, APIError):
        return exc.err_code in TRANSIENT_CODES or exc.code == 503
    return isinstance(exc, _TRANSIENT_TYPES)


def is_unavailability(exc: BaseException) -> bool:
    """Whether ``exc``, or an error it was raised *from*, means the bus was unavailable.

    Workers wait such failures out instead of counting them against a message.
    Only explicit causes (``raise ... from``, as the bus boundary maps errors)
    are followed: an unrelated error raised while handling a timeout is a
    failure of its own, and must still reach the poison path.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, StreamUnavailable) or is_transient(current):
            return True
        seen.add(id(current))
        current = current.__cause__
    return False


async def publish_durably(
    js: JetStreamContext,
    subject: str,
    data: bytes,
    *,
    headers: Mapping[str, str],
    budget_seconds: float = PUBLISH_BUDGET,
    attempt_timeout: float = ATTEMPT_TIMEOUT,
) -> Published:
    """Publish until the stream acks, retrying unavailability for ``budget_seconds``.

    ``headers`` must carry ``Nats-Msg-Id``: it is what makes a re-send safe.
    Raises :class:`PublishConflict` on an expected-sequence failure,
    :class:`StreamUnavailable` once the budget is spent, and :class:`BusError`
    for any other refusal (the server's :class:`APIError` is its cause).
    """
    if not headers.get("Nats-Msg-Id"):
        raise InvalidInput(f"publishing {subject}: a durable publish needs a Nats-Msg-Id header")
    nc = connection_of(js)
    try:  # the common case, without the cost of a retry context (a third of a publish)
        ack = await publish_for_ack(
            nc, subject, data, headers=dict(headers), timeout=attempt_timeout
        )
    except Exception as exc:
        if not is_transient(exc):
            refusal = _refusal(subject, exc, retried=False)
            if refusal is exc:
                raise
            raise refusal from exc
        log.warning(
            "publishing %s: %r; retrying for up to %g s with the same Nats-Msg-Id",
            subject,
            exc,
            budget_seconds,
        )
    else:
        return Published(ack, retried=False)
    started = time.monotonic()
    try:
        async for attempt in stamina.retry_context(
            on=is_transient,
            attempts=None,
            timeout=budget_seconds,
            wait_initial=0.1,
            wait_max=1.0,  # a new leader is used within a second of its election
            wait_jitter=0.1,
        ):
            with attempt:
                ack = await publish_for_ack(
                    nc, subject, data, headers=dict(headers), timeout=attempt_timeout
                )
    except Exception as exc:
        if is_transient(exc):
            raise _unavailable(subject, budget_seconds, exc) from exc
        refusal = _refusal(subject, exc, retried=True)
        if refusal is exc:
            raise
        raise refusal from exc
    log.info(
        "published %s after %d attempts in %.1f s",
        subject,
        attempt.num + 1,
        time.monotonic() - started,
    )
    return Published(ack, retried=True)


def _refusal(subject: str, exc: Exception, *, retried: bool) -> Exception:
    """What a publish the stream refused (rather than could not take) raises."""
    if is_expectation_failure(exc):
        return PublishConflict(subject, exc.err_code or 0, retried=retried)
    if isinstance(exc, APIError):
        return BusError(f"publishing {subject} was refused: {exc}")
    if isinstance(exc, nats_errors.Error):
        return BusError(f"publishing {subject} failed: {exc!r}")
    return exc


def _unavailable(subject: str, budget: float, exc: BaseException) -> StreamUnavailable:
    return StreamUnavailable(
        f"publishing {subject}: the stream was unavailable for {budget:g} s "
        f"(last error: {type(exc).__name__}: {exc}); check the NATS cluster's health"
    )
