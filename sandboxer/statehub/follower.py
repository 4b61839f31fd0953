"""The ``statehub`` role: lifecycle events POSTed to the State Hub, at least once, in order.

**Position: a JetStream durable consumer** (``statehub`` on the events stream,
filtered on the lifecycle subjects and the few the bodies' context comes
from). Chosen over a position file (the meter export's) or a KV key because
the server keeps it with the log: a restarted role, or one started on another
machine, resumes where the last one acknowledged; and the server counts what is
pending, so ``sandboxer statehub status`` shows the lag even while the role is
down. ``max_ack_pending`` is 1: one event is out at a time, so events reach the
hub in log order (in order per sandbox, and across sandboxes too), even with
two statehub processes on one durable. A bus client may redefine it (its filter, say)
through the bare consumer-create subject: it is guarded
(:mod:`sandboxer.bus.guarded_durable`), made again from the last event the hub took.

**Context kept in memory, and forgotten when another process took events.** A body's
context (:mod:`sandboxer.statehub.body`) is folded from earlier events and remembered
per sandbox. With two processes on the durable, the other one may have taken a
sandbox's ``routed`` in between, and what this one remembers lacks it. Deliveries are
numbered by the consumer (one after the other, redeliveries included), so a gap in the
numbers this process sees means another took deliveries meanwhile: it then forgets every
context and reads them back from the log.

**One event at a time.** Each fetched event is POSTed (``workers/http_delivery.py``:
retried with backoff while the hub is unreachable, slow or answers 5xx, 408,
429, 401, 403 or 404) and acknowledged only after a 2xx: a crash before the
acknowledgement sends it again, with the same event id for the hub to
deduplicate. While it is held the message is heartbeaten, so a hub down for
hours keeps it here rather than redelivering it; a stop gives it back at once.
Any other 4xx is a refusal of that body: retrying it cannot succeed and would
hold every later event back, so it is logged, kept in the status, and passed.

Nothing else waits for this role: it only reads the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from sandboxer import subjects
from sandboxer.bus.direct_get import read_subject
from sandboxer.bus.guarded_durable import CHECK_EVERY, GuardedDurable
from sandboxer.bus.pull_requests import PullRequests, connection_of
from sandboxer.bus.responder import Responder
from sandboxer.config.settings import Settings
from sandboxer.errors import ConfigError, DeliveryFailed, DeliveryRefused, SandboxerError
from sandboxer.events.codec import decode_event
from sandboxer.events.types import (
    NOT_SANDBOX_EVENTS,
    SandboxDestroyed,
    SnapshotCreated,
    SnapshotRequested,
    event_type,
)
from sandboxer.recent import Recent
from sandboxer.secrets import resolve_secrets
from sandboxer.statehub.body import (
    CONTEXT_TYPES,
    DELIVERED_TYPES,
    SandboxContext,
    fold_context,
    hub_body,
    snapshot_source,
)
from sandboxer.statehub.status import DeliveryStatus
from sandboxer.workers.http_delivery import RETRY_WAIT_MAX, HttpDelivery
from sandboxer.workers.pull_loop import fetch_one
from sandboxer.workers.restarting import keep_running

__all__ = [
    "DURABLE",
    "STATUS_SUBJECT",
    "StateHubFollower",
    "check_state_hub_settings",
    "consumer_lag",
    "filter_subjects",
    "refused_for_good",
    "run_state_hub",
    "status_file",
]

log = logging.getLogger(__name__)

DURABLE = "statehub"
"""The durable consumer on the events stream that holds the projection's position."""
STATUS_SUBJECT = "sandboxer.query.statehub.status"
"""Answered by the running role: what ``sandboxer statehub status`` shows."""
TOKEN_VARIABLE = "SANDBOXER_STATE_HUB_TOKEN"
MAX_REMEMBERED = 10_000
"""Sandboxes (and snapshots) whose context is kept in memory; others are read from the log."""
BEARER_TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")
"""What a bearer token is (RFC 6750's b64token)."""
RETRIED_4XX = frozenset({401, 403, 404, 408, 429})
"""4xx answers retried like a hub that is down: a timeout, a rate limit, and a wrong token
or URL, which an operator fixes (a file: token is read again for every attempt) without
losing the events meanwhile."""


def refused_for_good(status: int) -> bool:
    """A 4xx the body itself caused (400, 409, 413, 422 ...): the delivery is passed."""
    return 400 <= status < 500 and status not in RETRIED_4XX


def filter_subjects() -> list[str]:
    sandbox_types = sorted({*DELIVERED_TYPES, *CONTEXT_TYPES} - {"snapshot_created"})
    return [
        *(subjects.sandbox_event_subject("*", kind) for kind in sandbox_types),
        subjects.snapshot_event_subject("*", "snapshot_requested"),
        subjects.snapshot_event_subject("*", "snapshot_created"),
    ]


def status_file(home: Path) -> Path:
    return home / "statehub" / "status.json"


def bearer_auth(token_ref: str | None) -> Callable[[], Mapping[str, str]] | None:
    """The ``Authorization`` header from the token reference, read again for every attempt
    (a rotated file is picked up); the value goes into the header and nowhere else."""
    if token_ref is None:
        return None

    def auth() -> Mapping[str, str]:
        token = resolve_secrets({TOKEN_VARIABLE: token_ref})[TOKEN_VARIABLE].strip()
        # Checked before it reaches a header: the HTTP client's error for a byte a header
        # cannot hold (a line break) quotes the whole value, token included, into the log
        # and the status; a non-ASCII one escaped the delivery's retries and crashed the role.
        if not BEARER_TOKEN.fullmatch(token):
            raise ConfigError(
                f"the State Hub token in {token_ref} ({TOKEN_VARIABLE}) is not one bearer token:"
                " it may hold only letters, digits and - . _ ~ + / (then = padding), on one"
                " line; write the token alone into it"
            )
        return {"Authorization": f"Bearer {token}"}

    return auth


async def consumer_lag(js: JetStreamContext) -> dict[str, Any]:
    """``events_behind`` (events the projection has yet to take, the one in hand included)
    and ``position`` (the stream sequence it has acknowledged), from the server."""
    try:
        info = await js.consumer_info(subjects.EVENTS_STREAM, DURABLE)
    except NotFoundError:
        return {"events_behind": None, "position": None, "consumer": "missing"}
    return {
        "events_behind": int(info.num_pending or 0) + int(info.num_ack_pending or 0),
        "position": info.ack_floor.stream_seq if info.ack_floor else 0,
        "consumer": DURABLE,
    }


class StateHubFollower:
    """Follows the durable consumer and delivers each lifecycle event to the hub."""

    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        *,
        url: str,
        token_ref: str | None,
        home: Path,
        ack_wait: float = 5.0,
        client: httpx.AsyncClient | None = None,
        wait_max: float = RETRY_WAIT_MAX,
        check_every: float = CHECK_EVERY,
    ) -> None:
        self._nc = nc
        self._js = js
        self._ack_wait = ack_wait
        self._status_path = status_file(home)
        self.status = DeliveryStatus.load(self._status_path)
        self._contexts: Recent[str, Any] = Recent(MAX_REMEMBERED)
        self._snapshots: Recent[str, Any] = Recent(
            MAX_REMEMBERED
        )  # snapshot id -> the sandbox it was taken of
        self._in_hand: dict[str, Any] = {}
        self._durable = GuardedDurable(
            nc,
            subjects.EVENTS_STREAM,
            ConsumerConfig(
                durable_name=DURABLE,
                name=DURABLE,
                filter_subjects=filter_subjects(),
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,  # a new hub is told the whole history
                ack_wait=ack_wait,
                max_deliver=-1,
                max_ack_pending=1,  # one out at a time: log order
            ),
            home=home,  # where a remake keeps its floor (bus/remake_marker.py)
            check_every=check_every,
        )
        self._last_delivery: int | None = None
        """The consumer's sequence of the last delivery this process took."""
        self.delivery = HttpDelivery(
            url,
            label="state hub",
            client=client,
            wait_max=wait_max,
            refuses=refused_for_good,
            on_failure=self._failed,
            auth=bearer_auth(token_ref),
        )

    async def aclose(self) -> None:
        await self.delivery.aclose()

    async def ensure_consumer(self) -> None:
        """Make the durable, or bring it to this process's settings (a restart with another
        ``ack_wait``); made again when a client redefined it (bus/guarded_durable.py)."""
        await self._durable.ensure()

    async def status_reply(self) -> dict[str, Any]:
        return {
            "hub_url": self.delivery.shown_url,
            "running": True,
            **await consumer_lag(self._js),
            **self.status.as_dict(),
        }

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver events until ``stop``; the event in hand then goes back to the server."""
        await self.ensure_consumer()
        requests = PullRequests(connection_of(self._js), subjects.EVENTS_STREAM, DURABLE)
        await requests.open()
        log.info("state hub projection to %s started", self.delivery.shown_url)
        try:
            # The guard looks in a task of its own: no fetch waits for a look, and a remake
            # racing a fetch or an ack loses nothing (bus/guarded_durable.py says why).
            async with self._durable.watching(), requests.withdrawn_on(stop):
                while not stop.is_set():
                    msg = await fetch_one(requests, DURABLE)
                    if isinstance(msg, Msg):
                        await self._hold(msg, stop)
        finally:
            await requests.close()

    async def _hold(self, msg: Msg, stop: asyncio.Event) -> None:
        """Handle ``msg`` under heartbeats, then acknowledge it; on ``stop`` give it back."""
        handling = asyncio.create_task(self._handle(msg))
        stopping = asyncio.create_task(stop.wait())
        try:
            while not handling.done():
                await asyncio.wait(
                    {handling, stopping},
                    timeout=max(0.1, self._ack_wait / 3),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if handling.done():
                    break
                if stopping.done():
                    handling.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await handling
                    with contextlib.suppress(NatsError):
                        await msg.nak()  # the next run takes it at once
                    return
                with contextlib.suppress(NatsError):
                    await msg.in_progress()  # the hub is slow or down: keep it here
            handling.result()
            try:
                await msg.ack_sync()
            except NatsError as exc:
                # Between a remake's delete and its create no consumer takes the ack ("no
                # responders"), or the bus is away a moment: the event comes again, and the
                # hub takes it once (its Idempotency-Key). Not the end of the role.
                log.info(
                    "state hub: the ack of event %d was not taken (%r); it comes again",
                    msg.metadata.sequence.stream,
                    exc,
                )
        finally:
            stopping.cancel()
            if not handling.done():
                handling.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await handling

    def _check_delivery(self, msg: Msg) -> None:
        """Forget the remembered contexts when another process took deliveries since the
        last one here (see the module docstring); they are read back from the log."""
        delivery = msg.metadata.sequence.consumer
        if self._last_delivery is not None and delivery != self._last_delivery + 1:
            self._contexts.clear()  # not _snapshots: the sandbox a snapshot is of never changes
        self._last_delivery = delivery

    async def _handle(self, msg: Msg) -> None:
        self._check_delivery(msg)
        seq = msg.metadata.sequence.stream
        try:
            event = decode_event(msg.data)
        except (SandboxerError, msgspec.DecodeError, msgspec.ValidationError) as unreadable:
            log.warning("state hub: skipping event %d: %s", seq, unreadable)
            return
        if isinstance(event, SnapshotRequested):
            self._snapshots.put(event.snapshot_id, event.sandbox_id)
            return
        if isinstance(event, SnapshotCreated):
            source = self._snapshots.pop(event.snapshot_id, None)
            if source is None:
                source = await self._snapshot_source(event.snapshot_id)
            context = await self._context(source or "", seq)
            await self._deliver(hub_body(event, context, seq))
            return
        if isinstance(event, NOT_SANDBOX_EVENTS):
            return  # the filter lets none through; a later filter change might
        context = fold_context(await self._context(event.sandbox_id, seq), event)
        self._contexts.put(event.sandbox_id, context)
        if event_type(event) in DELIVERED_TYPES:
            await self._deliver(hub_body(event, context, seq))
        if isinstance(event, SandboxDestroyed):
            self._contexts.pop(event.sandbox_id, None)

    async def _read(self, filter_subject: str, before_seq: int) -> AsyncIterator[Any]:
        """The readable events on ``filter_subject`` stored before ``before_seq``."""
        # Read to the end (one aggregate: a handful of events), so the direct get's own
        # subscription always ends with it.
        async for seq, data in read_subject(self._nc, filter_subject):
            if seq >= before_seq:
                continue
            try:
                yield decode_event(data)
            except (SandboxerError, msgspec.DecodeError, msgspec.ValidationError):
                continue

    async def _context(self, sandbox_id: str, before_seq: int) -> SandboxContext:
        """The sandbox's context before ``before_seq``: remembered, or (after a restart, or
        once forgotten) folded from its events in the log."""
        known = self._contexts.get(sandbox_id)
        if isinstance(known, SandboxContext):
            return known
        context = SandboxContext(sandbox_id=sandbox_id)
        if sandbox_id:
            filter_subject = subjects.sandbox_events_filter(sandbox_id)
            async for event in self._read(filter_subject, before_seq):
                context = fold_context(context, event)
        return context

    async def _snapshot_source(self, snapshot_id: str) -> str | None:
        filter_subject = subjects.snapshot_events_filter(snapshot_id)
        source = None
        async for event in self._read(filter_subject, before_seq=2**63):
            source = snapshot_source(event) or source
        return source

    async def _deliver(self, body: dict[str, Any]) -> None:
        self._in_hand = body
        what = f"{body['type']} {body['event_id']} of {body['sandbox_id']}"
        try:
            await self.delivery.post(
                msgspec.json.encode(body), {"Idempotency-Key": str(body["event_id"])}, what=what
            )
        except DeliveryRefused as refused:
            log.error("state hub: %s; passing %s (kept in the status)", refused.message, what)
            self.status.on_refused(body, refused.message, refused.status)
        else:
            self.status.on_delivered(body)
        self._save_status()

    def _failed(self, failed: DeliveryFailed) -> None:
        self.status.on_failure(self._in_hand, failed.message, failed.status)
        self._save_status()

    def _save_status(self) -> None:
        try:
            self.status.save(self._status_path)
        except OSError as exc:  # the status is a convenience: delivery goes on
            log.warning("state hub: cannot write %s: %s", self._status_path, exc)


def check_state_hub_settings(settings: Settings) -> str:
    """The hub's URL; a :class:`ConfigError` when it is not set or the token reference cannot
    be read now (the message names the reference, never the token)."""
    if settings.state_hub_url is None:
        raise ConfigError(
            "the statehub role needs SANDBOXER_STATE_HUB_URL, the State Hub's endpoint "
            "(docs/integrations/state-hub.md)"
        )
    auth = bearer_auth(settings.state_hub_token)
    if auth is not None:
        auth()
    return settings.state_hub_url


async def run_state_hub(
    nc: Client, js: JetStreamContext, settings: Settings, stop: asyncio.Event
) -> None:
    """The ``statehub`` role until ``stop``; restarts its follower after an error (the bus
    went away) without losing its place: the position is the durable consumer's."""
    follower = StateHubFollower(
        nc,
        js,
        url=check_state_hub_settings(settings),
        token_ref=settings.state_hub_token,
        home=settings.home,
        ack_wait=settings.ack_wait,
    )
    responder = Responder(nc)

    async def status(_request: dict[str, Any]) -> dict[str, Any]:
        return await follower.status_reply()

    await responder.serve({STATUS_SUBJECT: status})
    try:
        await keep_running("state hub projection", lambda: follower.run(stop), stop)
    finally:
        await responder.stop()
        await follower.aclose()
