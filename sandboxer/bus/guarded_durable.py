"""A service durable on the events stream, kept as the service defined it.

**The hole.** Clients may create consumers on the events stream through the bare
``$JS.API.CONSUMER.CREATE.SANDBOXER_EVENTS`` subject (nats-py's ordered consumers
use it). Such a request may carry ``name: "meter"``, and nats-server then updates
the service's durable in place: a narrowed filter makes it skip, for good, what the
filter leaves out while the service keeps fetching from it (its position moves on).
Permissions see subjects, not payloads, so they cannot refuse it
(docs/security.md#durables-clients-could-redefine).

**What gives it away.** That request cannot carry ``durable_name`` (the server
refuses a durable name there), and an update replaces the whole definition, so a
durable a client has written has lost its ``durable_name``, and no client can put it
back: only the named subjects, which clients are denied, set it. A durable that
still has it has been written by the service alone since the service made it,
however often a client changed and restored its other settings meanwhile.

**What is done.** The owner looks at its durable at start and every
``check_every`` seconds:

- intact: its ack floor is remembered. Every event up to it that the service's
  filter takes was delivered under the service's definition and acknowledged.
- redefined, or gone: it is deleted and made again from the remembered floor + 1,
  so nothing a redefinition skipped is lost. What comes again had been handled, so
  the handler must be idempotent (the meter: ``meter-<sandbox>`` is handled once by
  the account; the State Hub: the same event id, which the hub deduplicates). A
  process that starts to find it redefined remembers no floor: it is made from the
  start of the log.

The service never updates it in place. A changed setting (a new ``ack_wait``) makes
it again from the ack floor of the same look that found it intact, and it is made
only with ``action: create``, which fails rather than take over a consumer of that
name that a client made meanwhile: an update would put ``durable_name`` back, and
hide a redefinition another of the service's processes had not noticed yet.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Sequence

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, ConsumerInfo, DeliverPolicy
from nats.js.errors import APIError, NotFoundError

from sandboxer.bus.publish import is_transient
from sandboxer.errors import BusError

__all__ = ["CHECK_EVERY", "GuardedDurable", "made_from", "redefined", "same_settings"]

log = logging.getLogger(__name__)

CHECK_EVERY = 5.0
"""Seconds between looks at a guarded durable: how long a redefinition can hold its
events back (they are metered or delivered late, never lost)."""

ROUNDS = 5
"""Looks at start before giving up on a durable that keeps changing under the service."""


def redefined(current: ConsumerConfig, durable: str) -> bool:
    """Whether someone other than the service has written the durable (see the docstring)."""
    return current.durable_name != durable


def _filters(config: ConsumerConfig) -> Sequence[str]:
    return sorted(config.filter_subjects or ([config.filter_subject or ""]))


def same_settings(current: ConsumerConfig, wanted: ConsumerConfig) -> bool:
    """Whether an intact durable has the settings the service now wants (where it starts
    is not a setting: it is made again from its floor)."""
    return (
        _filters(current) == _filters(wanted)
        and current.ack_policy == wanted.ack_policy
        and current.ack_wait == wanted.ack_wait
        and current.max_deliver == wanted.max_deliver
        and current.max_ack_pending == wanted.max_ack_pending
    )


def made_from(wanted: ConsumerConfig, floor: int | None) -> ConsumerConfig:
    """``wanted``, starting after ``floor`` (from the start of the log when none is known)."""
    if not floor:
        return wanted.evolve(deliver_policy=DeliverPolicy.ALL, opt_start_seq=None)
    return wanted.evolve(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=floor + 1)


class GuardedDurable:
    """One service durable on the events stream: made, looked at, and made again."""

    def __init__(
        self,
        js: JetStreamContext,
        stream: str,
        wanted: ConsumerConfig,
        *,
        check_every: float = CHECK_EVERY,
    ) -> None:
        assert wanted.durable_name, "a guarded consumer is a durable"
        assert wanted.name == wanted.durable_name
        self._js = js
        self._stream = stream
        self.wanted = wanted
        self.name: str = wanted.durable_name
        self.check_every = check_every
        self.floor: int | None = None
        """The highest ack floor seen while intact: everything up to it was handled."""
        self._next_check = 0.0

    async def ensure(self) -> None:
        """At start (and when the durable is gone): make it, or bring it to the wanted
        settings, or make it again when it was redefined. Bus errors propagate (the caller
        waits out the transient ones)."""
        for _ in range(ROUNDS):
            if await self._look(settings_matter=True):
                self._next_check = time.monotonic() + self.check_every
                return
        raise BusError(f"consumer {self.name} keeps changing under the service; see the log")

    async def check_due(self) -> None:
        """Look at the durable when ``check_every`` has passed since the last look. A bus
        that does not answer is left to the next look: nothing is lost meanwhile."""
        if time.monotonic() < self._next_check:
            return
        self._next_check = time.monotonic() + self.check_every
        try:
            await self._look(settings_matter=False)
        except (APIError, NatsError) as exc:
            if not is_transient(exc):
                log.warning("%s: looking at its consumer failed: %r", self.name, exc)

    async def _look(self, *, settings_matter: bool) -> bool:
        """One look, and what it calls for; True when the durable is as the service made it.
        (Settings are compared at start only: processes with other settings, say during an
        upgrade, would otherwise make it again in turns.)"""
        try:
            info: ConsumerInfo | None = await self._js.consumer_info(self._stream, self.name)
        except NotFoundError:
            info = None
        if info is None:  # not made yet; or deleted, once this process had seen it
            level = logging.INFO if self.floor is None else logging.WARNING
            log.log(level, "%s: its consumer is missing; making it", self.name)
            return await self._make(self.floor)
        if redefined(info.config, self.name):
            log.warning(
                "%s: its consumer was redefined by a client (filter now %s); making it again "
                "from event %d, after the last it is known to have handled",
                self.name,
                _filters(info.config),
                (self.floor or 0) + 1,
            )
            await self._delete()
            return await self._make(self.floor)
        acked = info.ack_floor.stream_seq if info.ack_floor else 0
        self.floor = max(self.floor or 0, acked or 0)
        if settings_matter and not same_settings(info.config, self.wanted):
            log.info("%s: its consumer's settings changed; making it again", self.name)
            await self._delete()
            return await self._make(self.floor)
        return True

    async def _delete(self) -> None:
        with contextlib.suppress(NotFoundError):  # another of the service's processes was first
            await self._js.delete_consumer(self._stream, self.name)

    async def _make(self, floor: int | None) -> bool:
        """Create it from ``floor``; False when one of that name appeared meanwhile (the next
        look decides about it). nats-py's ``add_consumer`` cannot say ``action: create``."""
        config = made_from(self.wanted, floor)
        request = {"stream_name": self._stream, "config": config.as_dict(), "action": "create"}
        subject = f"{self._js._prefix}.CONSUMER.CREATE.{self._stream}.{self.name}"
        try:
            await self._js._api_request(
                subject, json.dumps(request).encode(), timeout=self._js._timeout
            )
        except APIError as exc:
            if is_transient(exc):
                raise
            log.warning("%s: making its consumer was refused (%s); looking again", self.name, exc)
            return False
        return True
