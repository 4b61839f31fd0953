"""The control worker's side of routing: fetching signals, counting its own routes, explaining.

Before it routes a create, the control worker asks the view for the route
signals (``sandboxer.query.route.signals``) with a short timeout; without an
answer it routes without them, and the ``routed`` reason says so. The view
lags the log a little, so the worker adds the creates it routed that the
view's answer cannot include yet (held until the view's position passes
them): a burst of creates handled at once by one control worker fills a
backend's capacity exactly, rather than each create seeing the same count.

Asked with a ``project``, the view also counts that project's live sandboxes,
and the worker adds its unseen routes for the project in the same way, and the
failed sandboxes it let a key's recreates bring back (:meth:`RouteLookup.hold_recreate`):
what an API key's ``max_live`` is checked against (:mod:`sandboxer.workers.key_limit`).

It also answers ``sandboxer.query.route.explain``: the same ranking a create
would get now, from the same catalog, hosts file and signals, without
creating anything (docs/routing.md#route-explain).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from sandboxer import subjects
from sandboxer.bus.key_request_rate import KeyLoader, KeyRequestRates
from sandboxer.bus.responder import Responder
from sandboxer.clock import utc_now
from sandboxer.commands.types import CreateSandbox, RecreateSandbox, RestoreSnapshot
from sandboxer.config.catalog import Catalog
from sandboxer.config.extension_decl import ExtensionDecl
from sandboxer.config.hosts import load_hosts
from sandboxer.config.settings import Settings
from sandboxer.domain.account_state import project_of
from sandboxer.domain.route_signals import RouteSignals
from sandboxer.domain.routing import rank
from sandboxer.domain.sandbox_decide import AdmittedCreate
from sandboxer.domain.sandbox_state import SandboxState
from sandboxer.durations import format_duration, parse_duration
from sandboxer.errors import InvalidInput, RequestError, SandboxerError, UnknownProfile, ViewBehind
from sandboxer.ids import derive_sandbox_id

__all__ = ["CONTROL_QUEUE", "SIGNALS_TIMEOUT", "RouteLookup"]

log = logging.getLogger(__name__)

SIGNALS_TIMEOUT = 1.0
"""How long a create waits for the view's signals before routing without them (seconds)."""
COUNT_TIMEOUT = 5.0
"""How long a key's create waits for the signals with its project's live count: without
them the key's limit cannot be checked and the create is refused, so it waits as long as a
client's query would (seconds)."""
HOLD_SECONDS = 30.0
"""A route this worker made counts toward live sandboxes until the view shows it, or this long."""
UNAPPENDED_SECONDS = 5.0
"""A held route whose append was never reported (a rerouting decided elsewhere, a crash)
stops counting after this long."""
CONTROL_QUEUE = "sandboxer-control"
_PROFILE_ID = re.compile(r"^profile\.[a-z0-9][a-z0-9-]{0,62}$")
SWEEP_EVERY = 1.0
"""Seconds between sweeps of expired holds when creates come without a signals query."""


@dataclass
class _Held:
    command_id: str
    """The command that holds the place (a release by another leaves it)."""
    extension: str | None
    host: str | None
    project: str
    seq: int | None
    since: float


class RouteLookup:
    def __init__(
        self,
        nc: Client,
        catalog: Catalog,
        settings: Settings,
        *,
        timeout: float = SIGNALS_TIMEOUT,
        keys: KeyLoader | None = None,
        rates: KeyRequestRates | None = None,
    ) -> None:
        """``keys``: where a key's rate is read, to hold its ``route.explain`` requests to
        it with ``rates`` (the process's, bus/key_request_rate.py; a bucket of its own
        without); without ``keys`` they are not held."""
        self._nc = nc
        self._catalog = catalog
        self._settings = settings
        self._timeout = timeout
        self._held: dict[str, _Held] = {}
        self._newest: tuple[int, RouteSignals] | None = None
        """The view's answer at the furthest position this worker has had, and that position:
        what :meth:`live_on_hosts` counts from."""
        self._swept = 0.0
        self._settling = asyncio.Event()
        """Set (and replaced) whenever a held route is appended or released: wakes
        :meth:`settled`."""
        self._responder = Responder(nc)
        self._keys = keys
        self._rates = rates if rates is not None else KeyRequestRates()

    async def start(self) -> None:
        # A key identity may ask too: how a profile routes reveals nothing of any project.
        await self._responder.serve(
            {subjects.QUERY_ROUTE_EXPLAIN: self._explain},
            queue=CONTROL_QUEUE,
            scoped={subjects.QUERY_ROUTE_EXPLAIN: self._explain_for_key},
            resolve=self._key,
        )

    async def _key(self, key_id: str) -> dict[str, Any]:
        """Route explain answers every key alike (nats-server already authenticated it),
        within its rate: each asks the view for signals."""
        if self._keys is not None:
            await self._rates.hold(key_id, self._keys)
        return {"id": key_id}

    async def _explain_for_key(
        self, request: dict[str, Any], _actor: dict[str, Any]
    ) -> dict[str, Any]:
        return await self._explain(request)

    async def stop(self) -> None:
        await self._responder.stop()

    async def signals(
        self, enabled: Mapping[str, ExtensionDecl], project: str | None = None, min_seq: int = 0
    ) -> RouteSignals:
        """The view's signals plus this worker's unseen routes and the hosts file's limits;
        with ``project``, its live count too (``live_by_project``), the view's once it has
        folded the log up to ``min_seq`` (or waited its while for it).

        Nothing awaits after the answer arrives, so a caller that ranks right away sees
        every route this worker held until then."""
        request: dict[str, Any] = {}
        if project is not None:
            request["project"] = project
        if min_seq:
            request["min_seq"] = min_seq
        timeout = self._timeout if project is None else max(self._timeout, COUNT_TIMEOUT)
        try:
            reply = await self._nc.request(
                subjects.QUERY_ROUTE_SIGNALS, msgspec.json.encode(request), timeout=timeout
            )
            answer = msgspec.json.decode(reply.data)
            if isinstance(answer, dict) and answer.get("code") == ViewBehind.code:
                return self._with_hosts(
                    RouteSignals.unknown("the view is still catching up with the log"), enabled
                )
            if not isinstance(answer, dict) or not answer.get("ok"):
                raise ValueError(str(answer.get("error")) if isinstance(answer, dict) else "?")
            viewed = RouteSignals.from_dict(answer["signals"])
            position = int(answer.get("position", 0))
            if self._newest is None or position >= self._newest[0]:
                self._newest = (position, viewed)
        except (NoRespondersError, NatsTimeout, TimeoutError):
            return self._with_hosts(
                RouteSignals.unknown(f"the view did not answer within {timeout:g} s"), enabled
            )
        except (ValueError, KeyError, TypeError, msgspec.DecodeError) as bad:
            log.warning("route signals unreadable, routing without them: %s", bad)
            return self._with_hosts(
                RouteSignals.unknown(f"the view's answer was unreadable ({bad})"), enabled
            )
        return self._with_hosts(self._with_held(viewed, position, project), enabled)

    def live_on_hosts(self, signals: RouteSignals, extension: str) -> Mapping[str, int]:
        """``extension``'s live sandboxes on each host now: the newest view's count plus the
        routes this worker holds that it does not show (``signals``' own count when they are
        not known: capacity is then not enforced).

        Read again by placement after its probe, with no await between this and the hold of
        the host it chooses: ``signals`` were fetched before the probe, and every create of a
        burst fetched them while the others probed, so each saw the same free place."""
        if not signals.known or self._newest is None:
            return signals.live_by_host.get(extension, {})
        position, viewed = self._newest
        return self._with_held(viewed, position, None).live_by_host.get(extension, {})

    def _forget(self, position: int | None = None) -> None:
        """Stop holding the routes the view shows (at ``position``) or held past their time."""
        now = time.monotonic()
        for sandbox_id, held in list(self._held.items()):
            limit = HOLD_SECONDS if held.seq is not None else UNAPPENDED_SECONDS
            shown = position is not None and held.seq is not None and held.seq <= position
            if shown or now - held.since > limit:
                del self._held[sandbox_id]

    def _with_held(self, signals: RouteSignals, position: int, project: str | None) -> RouteSignals:
        self._forget(position)
        live = dict(signals.live)
        by_host = {ext: dict(hosts) for ext, hosts in signals.live_by_host.items()}
        # Only the project asked about, and only when the view counted it: an older view that
        # does not count leaves the count unknown, never the held routes alone.
        by_project = {k: v for k, v in signals.live_by_project.items() if k == project}
        for held in self._held.values():
            if held.extension is not None:  # None: a recreate of a sandbox never routed
                live[held.extension] = live.get(held.extension, 0) + 1
                if held.host is not None:
                    hosts = by_host.setdefault(held.extension, {})
                    hosts[held.host] = hosts.get(held.host, 0) + 1
            if held.project in by_project:
                by_project[held.project] += 1
        return replace(signals, live=live, live_by_host=by_host, live_by_project=by_project)

    def _with_hosts(
        self, signals: RouteSignals, enabled: Mapping[str, ExtensionDecl]
    ) -> RouteSignals:
        """The hosts file's ``max_sandboxes`` per host, for backends on hosts: routing counts
        only the hosts a profile's placement could use (docs/routing.md#capacity)."""
        if not any(decl.uses_hosts for decl in enabled.values()):
            return signals
        try:
            hosts = load_hosts(self._settings)
        except SandboxerError as unreadable:
            log.warning("hosts file unreadable for capacity: %s", unreadable)
            return signals
        return replace(
            signals, host_limits={name: host.max_sandboxes for name, host in hosts.items()}
        )

    def hold(self, admitted: AdmittedCreate) -> None:
        """Count a route this worker just made until the view shows it."""
        self._hold(
            admitted.sandbox_id,
            _Held(
                admitted.command.command_id,
                admitted.extension,
                admitted.host,
                project_of(admitted.command.actor),
                None,
                time.monotonic(),
            ),
        )

    def hold_recreate(self, command: RecreateSandbox, sandbox: SandboxState) -> None:
        """Count a failed ``sandbox`` a key's recreate brings back (on its backend and host, in
        its project) until the view shows its ``recreating``, as a route is counted."""
        self._hold(
            command.sandbox_id,
            _Held(
                command.command_id,
                sandbox.extension,
                sandbox.host,
                project_of(sandbox.actor),
                None,
                time.monotonic(),
            ),
        )

    def _hold(self, sandbox_id: str, held: _Held) -> None:
        now = held.since
        if now - self._swept > SWEEP_EVERY:
            # Creates that ask for no signals (a fixed backend) come here too: swept now and
            # then, not per create, which made a burst of N creates cost N * N steps.
            self._swept = now
            self._forget()
        self._held[sandbox_id] = held

    def appended(self, sandbox_id: str, seq: int) -> None:
        """The held route's events are in the log, the last at ``seq``: held until the view
        passes it."""
        held = self._held.get(sandbox_id)
        if held is not None:
            held.seq = seq
        self._settle()

    def release(self, sandbox_id: str, command_id: str) -> None:
        """Command ``command_id`` was not appended (rejected): it holds no place in the sandbox
        (another command's hold there stays)."""
        held = self._held.get(sandbox_id)
        if held is not None and held.command_id == command_id:
            del self._held[sandbox_id]
        self._settle()

    def release_command(self, command: object) -> None:
        """A rejected command: if it was a create, a restore or a recreate this worker held,
        it holds no place."""
        if isinstance(command, CreateSandbox | RestoreSnapshot):
            sandbox_id = command.sandbox_id or derive_sandbox_id(command.command_id)
            self.release(sandbox_id, command.command_id)
        elif isinstance(command, RecreateSandbox):
            self.release(command.sandbox_id, command.command_id)

    def _settle(self) -> None:
        self._settling.set()
        self._settling = asyncio.Event()

    async def settled(self, project: str) -> None:
        """Return once none of this worker's held routes in ``project`` that were being
        appended on entry (held but not yet :meth:`appended` or released) still is, or each
        has held past its time.

        Such a route may be counted twice meanwhile: its ``requested`` is in the log before
        its ``routed``, and the view counts a sandbox from its ``requested``, while the hold
        counts it until the view passes the seq :meth:`appended` gives. Once it has one, a
        count from a view caught up with the log counts it once."""
        self._forget()
        # Only the holds there on entry, and a deadline fixed now: under a steady stream of the
        # project's creates (an admin's, another key's) new holds keep arriving, and waiting
        # for them too would keep this create (and a slot of the worker) waiting for ever.
        waited = [
            (sandbox_id, held)
            for sandbox_id, held in self._held.items()
            if held.project == project and held.seq is None
        ]
        if not waited:
            return
        # A hold whose append is never reported stops counting after UNAPPENDED_SECONDS.
        left = max(held.since for _, held in waited) + UNAPPENDED_SECONDS - time.monotonic()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(left, 0.0) + 0.01):
                while any(
                    self._held.get(sandbox_id) is held and held.seq is None
                    for sandbox_id, held in waited
                ):
                    await self._settling.wait()

    async def _explain(self, request: dict[str, Any]) -> dict[str, Any]:
        profile_id = request.get("profile")
        if not isinstance(profile_id, str) or not _PROFILE_ID.fullmatch(profile_id):
            raise RequestError(
                "field 'profile' must be a profile id such as profile.local "
                "(lowercase letters, digits and '-')"
            )
        ttl_text = request.get("ttl")
        if ttl_text is not None and (not isinstance(ttl_text, str) or len(ttl_text) > 32):
            raise RequestError("field 'ttl' must be a duration such as 30m")
        try:
            profile = self._catalog.profile(profile_id)
            ttl = parse_duration(ttl_text or profile.ttl.default)
        except (UnknownProfile, InvalidInput) as bad:
            raise RequestError(bad.message) from None
        ttl_max = parse_duration(profile.ttl.max)
        if ttl > ttl_max:
            raise RequestError(
                f"ttl {ttl_text} is longer than {profile.id}'s ttl.max ({format_duration(ttl_max)})"
            )
        enabled = self._catalog.extensions_enabled()
        signals = await self.signals(enabled)
        now = utc_now()
        decision = rank(profile, enabled, ttl_seconds=ttl, signals=signals, now=now)
        return {"decision": decision.to_dict(), "signals": signals.to_dict(), "at": now}
