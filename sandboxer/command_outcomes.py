"""Waiting for what a published command led to: its success event, a failure or a rejection.

A command's outcome is an event correlated to it by ``command_id``: on the
sandbox's subjects (``ready``, ``failed``, ``destroyed``) or on the command's
rejection subject. The watcher subscribes before the command is published, so
no event can slip past, and then reads what the log already holds, so a
re-sent command whose work is done still finds its outcome.

Command ids are one namespace, chosen by clients (an HTTP ``Idempotency-Key``), so
another caller may send a command under this one's id: a key of another project, say,
publishing it on its own subject, under a message id of its own. Its rejection lands on
the same rejection subject; it is this command's only when it is filed under this
command's actor (:meth:`OutcomeWatcher._own_rejection`), or the other caller could make
this one report a rejection for a command that was carried out (docs/security.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from typing import Any

import msgspec
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError
from nats.errors import Error as NatsError

from sandboxer import subjects
from sandboxer.bus import reconnects as connection_back
from sandboxer.bus.ask import RESTART_BUDGET, ask_json
from sandboxer.bus.direct_get import read_subject
from sandboxer.bus.event_reader import last_event
from sandboxer.cleanup_waits import cancel_until_done
from sandboxer.commands.parse import readable_actor
from sandboxer.errors import BusError, CommandFailed, OutcomePending

log = logging.getLogger(__name__)

__all__ = ["CommandFailed", "EventCallback", "KeyOutcomeWatcher", "OutcomeWatcher", "notify"]

EventCallback = Callable[[dict[str, Any]], Awaitable[None] | None]

CATCH_UP_EVERY = 1.0
"""Seconds between two looks, while a wait hears nothing, at whether its connection came back
from a lost server (then the log is read for what it missed meanwhile). A connection made by
bus/connect.py also says so at once (bus/reconnects.py); the looks are for one that does not,
and for a reading of the log that failed then (the server still recovering its store)."""

_BACK: dict[str, Any] = {}
"""Put in a wait's queue of events when its connection is back (compared by identity)."""

EXPIRIES = frozenset({"expired", "pause_limit_reached"})
"""Events by which a sandbox expires (the second: it stayed paused past ``ttl.max_pause``)."""


async def notify(callback: Callable[..., Awaitable[None] | None] | None, *args: Any) -> None:
    """Call a user's callback, which may be plain or async."""
    if callback is not None:
        result = callback(*args)
        if asyncio.iscoroutine(result):
            await result


class OutcomeWatcher:
    """Publishes commands and waits for their outcomes on one connection.

    ``seen_seq`` is the log position of the last outcome seen: queries made
    after it wait until the view includes it, so a client reads its own writes.
    An outcome is returned as soon as it arrives; its position is looked up
    meanwhile, and :meth:`position` waits for that lookup.
    """

    def __init__(self, nc: Nats) -> None:
        self.nc = nc
        self.seen_seq = 0
        self.unanswered: str | None = None
        """Why the service last did not answer while a wait asked it (None: it answered)."""
        self._noting: set[asyncio.Task[None]] = set()

    async def position(self) -> int:
        """``seen_seq`` once the positions of the outcomes seen so far are known."""
        while self._noting:
            await asyncio.gather(*self._noting, return_exceptions=True)
        return self.seen_seq

    async def run(
        self,
        verb: str,
        command: dict[str, Any],
        sandbox_id: str,
        success: Collection[str],
        publish: Callable[[], Awaitable[object]],
        on_event: EventCallback | None,
        timeout: float,
        *,
        scope: str | None = None,
        fresh: bool = False,
    ) -> dict[str, Any]:
        """``publish()`` the command, then return its success event or raise ``CommandFailed``.

        ``scope`` is the subject filter the outcome arrives on: the sandbox's events unless
        the command is about another aggregate (a snapshot delete: the snapshot's events).
        ``fresh``: the command id was just made here, so the log cannot hold anything of it
        yet and it is not read back (a re-sent command's outcome may already be there).
        Raises :class:`OutcomePending` when no outcome came within ``timeout`` seconds.
        """
        command_id = command["command_id"]
        scope = scope or subjects.sandbox_events_filter(sandbox_id)
        outcome: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        forget = connection_back.when_reconnected(self.nc, lambda: outcome.put_nowait(_BACK))
        try:
            async with self._outcomes(scope, command_id, publish, outcome, fresh):
                async with asyncio.timeout(timeout):
                    return await self._first_outcome(
                        verb, command, sandbox_id, success, outcome, on_event, scope
                    )
        except TimeoutError:
            why = f" (the service did not answer: {self.unanswered})" if self.unanswered else ""
            raise OutcomePending(
                f"no outcome for {verb} {command_id} within {timeout:g}s{why}. The command was "
                "accepted: it is on the commands stream, and the service carries it out when it "
                f"runs; {_where_to_look(scope)}",
                command_id=command_id,
            ) from None
        finally:
            forget()

    @contextlib.asynccontextmanager
    async def _outcomes(
        self,
        scope: str,
        command_id: str,
        publish: Callable[[], Awaitable[object]],
        outcome: asyncio.Queue[dict[str, Any]],
        fresh: bool,
    ) -> AsyncIterator[None]:
        """Publish, and queue the command's events as they come (what the log already holds
        first, unless ``fresh``): subscribed before the publish, so none slips past."""

        async def on_msg(msg: Msg) -> None:
            await outcome.put(msgspec.json.decode(msg.data))

        subs = [
            await self.nc.subscribe(scope, cb=on_msg),
            await self.nc.subscribe(subjects.rejection_subject(command_id), cb=on_msg),
        ]
        try:
            await publish()
            if not fresh:
                await self._catch_up(scope, command_id, outcome)
            yield
        finally:
            for sub in subs:
                with contextlib.suppress(ConnectionClosedError):  # closed: nothing to undo
                    await sub.unsubscribe()

    async def _first_outcome(
        self,
        verb: str,
        command: dict[str, Any],
        sandbox_id: str,
        success: Collection[str],
        outcome: asyncio.Queue[dict[str, Any]],
        on_event: EventCallback | None,
        scope: str,
    ) -> dict[str, Any]:
        command_id = command["command_id"]
        seen: set[str] = set()
        reconnects = self.nc.stats["reconnects"]
        while True:
            try:
                async with asyncio.timeout(CATCH_UP_EVERY):
                    event = await outcome.get()
            except TimeoutError:
                event = _BACK  # or not: look
            if event is _BACK:
                reconnects = await self._caught_up(scope, command_id, outcome, reconnects)
                continue
            finished = verb == "destroy" and event.get("type") == "destroyed"
            # An expiry, whoever sent it, ends the wait for any work on the sandbox.
            ended = event.get("type") in EXPIRIES and verb not in {"destroy", "expire"}
            if (event.get("command_id") != command_id and not (finished or ended)) or event.get(
                "event_id"
            ) in seen:
                # Another command's event, or one both caught up and delivered. A destroy
                # succeeds once the sandbox is destroyed, whichever destroy finished it.
                continue
            if event.get("type") == "rejected" and not self._own_rejection(event, command):
                # Another caller's command sent under this one's id (the module): its
                # rejection says nothing of this one, which goes on to its own outcome.
                continue
            seen.add(event.get("event_id", ""))
            await notify(on_event, event)
            kind = event.get("type")
            if kind in {*success, "failed", "destroyed"}:
                self._note_later(scope, event)
            if kind in success:
                return event
            if kind == "rejected":
                self._note_later(subjects.rejection_subject(command_id), event)
                raise CommandFailed(f"{verb} rejected: {event.get('reason')}", event)
            if kind == "failed":
                raise CommandFailed(f"sandbox {sandbox_id} failed: {event.get('reason')}", event)
            if kind == "pause_failed":
                raise CommandFailed(
                    f"{event.get('operation')} of {sandbox_id} failed: {event.get('reason')}", event
                )
            if kind == "destroyed" and verb != "destroy":
                raise CommandFailed(f"sandbox {sandbox_id} was destroyed", event)
            if ended:
                raise CommandFailed(
                    f"sandbox {sandbox_id} expired ({event.get('cause', 'pause_limit')}) before the {verb} "
                    "finished; a longer --ttl or extend-ttl keeps it",
                    event,
                )

    def _own_rejection(self, event: dict[str, Any], command: dict[str, Any]) -> bool:
        """Whether the rejection ``event`` carrying the command's id is the command's own: filed
        under the actor the control worker records for it, the command's actor as it reads
        one (None when it cannot). Compared by type, id and project, what an actor is."""
        expected = readable_actor(command.get("actor"))
        return _who(event.get("actor")) == _who(
            None if expected is None else msgspec.to_builtins(expected)
        )

    def _note_later(self, subject: str, event: dict[str, Any]) -> None:
        """Look the outcome's position up without holding up its caller (see :meth:`position`)."""
        task = asyncio.create_task(self._note_position(subject, event))
        self._noting.add(task)
        task.add_done_callback(self._noting.discard)

    async def _note_position(self, subject: str, event: dict[str, Any]) -> None:
        """Remember the stream sequence of an outcome just seen (for read-your-writes queries).

        In a cluster a core subscriber can see an event before the stream has stored
        it, so ask the stream leader (not a replica: direct gets may lag) until the
        last message on the subject is this event, for a moment at most.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.0
        with contextlib.suppress(Exception):
            while True:
                last = await last_event(self.nc, subject)  # None: nothing stored there yet
                if last is not None:
                    self.seen_seq = max(self.seen_seq, last.seq)
                    if last.event_id == event.get("event_id"):
                        return
                if loop.time() > deadline:  # a later event took its place: that is later still
                    return
                await asyncio.sleep(0.005)

    async def _caught_up(
        self, scope: str, command_id: str, outcome: asyncio.Queue[dict[str, Any]], seen: int
    ) -> int:
        """The connection's reconnects, once what the log holds of the command is queued, if
        the connection came back since ``seen`` of them: an event published while it was cut
        off from the server (a restart) reached no subscription. ``seen`` while it is not
        back, or the log could not be read yet (a later look tries again)."""
        back = self.nc.stats["reconnects"]
        if back == seen or not self.nc.is_connected:
            return seen
        try:
            await self._catch_up(scope, command_id, outcome)
        except (BusError, NatsError):
            return seen
        return back

    async def _catch_up(
        self, scope: str, command_id: str, outcome: asyncio.Queue[dict[str, Any]]
    ) -> None:
        """Queue the logged events of ``command_id`` in ``scope``, and its rejection: a re-sent
        command may be done, or may have been refused before (the bus drops the copy)."""
        for subject in (scope, subjects.rejection_subject(command_id)):
            async for _seq, data in read_subject(self.nc, subject):
                event = msgspec.json.decode(data)
                if event.get("command_id") == command_id:
                    await outcome.put(event)


def _who(actor: object) -> tuple[object, object, object] | None:
    """An actor (as JSON) by what makes it one: its type, id and project."""
    if not isinstance(actor, dict):
        return None
    return actor.get("type"), actor.get("id"), actor.get("project")


def _where_to_look(scope: str) -> str:
    """How to see a command's outcome later, by the aggregate it is about (``scope``)."""
    kind, _, rest = scope.removeprefix("sandboxer.evt.").partition(".")
    about = rest.partition(".")[0]
    if kind == "snapshot":
        return f"'sandboxer snapshots get {about}' shows it"
    if kind == "key":
        return f"'sandboxer keys list --revoked' shows key {about} once it is recorded"
    if kind == "account":
        return f"'sandboxer credits show {about}' shows the account"
    return f"'sandboxer events --sandbox {about}' shows what happened"


class KeyOutcomeWatcher(OutcomeWatcher):
    """The watcher of a key identity (docs/security.md#keys-on-the-bus), which may not read
    the events stream: it asks the projector for the command's events a page at a time
    (``sandbox.events`` on its own subject, narrowed to its project) until one ends it. A
    projector that is briefly absent (a restart) is asked again, with backoff, until the
    command's wait runs out.

    Each ask is a request the key's rate counts (bus/key_request_rate.py), with its queries
    and execs: so the polls come quickly at first, then every :data:`POLL_MAX_SECONDS`
    (about two requests a second, a fifth of the default rate); the command's rejection is
    no longer asked for once one of its events is in the log (a command carried out is not
    rejected after); and a poll refused for the rate waits as long as the answer says."""

    POLL_SECONDS = 0.05
    """The first wait between two polls; each next one is twice as long, up to ..."""
    POLL_MAX_SECONDS = 0.5
    UNANSWERED_SECONDS = 1.0
    """How long one poll asks an absent projector again before it notes that nothing answers
    (then it polls on: the wait's own timeout ends it)."""

    def __init__(self, nc: Nats, key_id: str) -> None:
        super().__init__(nc)
        self.key_id = key_id

    async def page(
        self, about: dict[str, Any], after: int, budget: float = RESTART_BUDGET
    ) -> list[tuple[int, dict[str, Any]]]:
        """The events of ``about`` (``sandbox_id``, ``snapshot_id`` or ``command_id``) after
        stream sequence ``after``; an absent projector is asked again for ``budget`` seconds
        (then :class:`ServiceNotRunning`)."""
        request = msgspec.json.encode({**about, "after": after})
        subject = subjects.stamped(subjects.QUERY_SANDBOX_EVENTS, self.key_id)
        # Refused for the key's rate (its other requests count too): asked again when the
        # refusal says, for as long as the caller waits.
        answer = await ask_json(
            self.nc, subject, request, timeout=5.0, budget=budget, patience=math.inf
        )
        if not answer.get("ok"):
            raise BusError(f"reading events as key {self.key_id}: {answer.get('error')}")
        return [(int(seq), event) for seq, event in answer["events"]]

    @contextlib.asynccontextmanager
    async def _outcomes(
        self,
        scope: str,
        command_id: str,
        publish: Callable[[], Awaitable[object]],
        outcome: asyncio.Queue[dict[str, Any]],
        fresh: bool,
    ) -> AsyncIterator[None]:
        del fresh  # the poll reads the log from its start either way
        kind, _, rest = scope.removeprefix("sandboxer.evt.").partition(".")
        about = {f"{kind}_id": rest.partition(".")[0]}
        await publish()

        async def poll() -> None:
            after = {"scope": 0, "rejection": 0}
            asks = {"scope": about, "rejection": {"command_id": command_id}}
            pause = self.POLL_SECONDS
            while True:
                for name, asked in list(asks.items()):
                    try:
                        found = await self.page(asked, after[name], self.UNANSWERED_SECONDS)
                    except BusError as exc:  # a projector restarting, or failing: ask again
                        log.debug("polling %s: %s", asked, exc)
                        self.unanswered = exc.message
                        continue
                    self.unanswered = None
                    for seq, event in found:
                        after[name] = seq
                        self.seen_seq = max(self.seen_seq, seq)
                        if name == "scope" and event.get("command_id") == command_id:
                            asks.pop("rejection", None)  # carried out: it is not rejected
                        await outcome.put(event)
                await asyncio.sleep(pause)
                pause = min(pause * 2, self.POLL_MAX_SECONDS)

        poller = asyncio.create_task(poll())
        try:
            yield
        finally:
            await cancel_until_done(poller)

    async def _catch_up(
        self, scope: str, command_id: str, outcome: asyncio.Queue[dict[str, Any]]
    ) -> None:
        """Nothing: the poll reads the log (as a key may), so a reconnect misses nothing."""
        del scope, command_id, outcome

    async def _note_position(self, subject: str, event: dict[str, Any]) -> None:
        """The poller already noted each event's sequence."""

    def _own_rejection(self, event: dict[str, Any], command: dict[str, Any]) -> bool:
        """A key identity's command is rejected under the key's own actor, whatever the
        command claims (None once the key is revoked): another key's rejection under this
        command's id is not this one's. (The projector shows the key only its project's.)"""
        actor = event.get("actor")
        return actor is None or (isinstance(actor, dict) and actor.get("id") == self.key_id)
