"""The control worker: admits commands, decides, appends, and hands jobs to extensions.

For every command it loads the sandbox, decides, appends under optimistic
concurrency (:func:`sandboxer.workers.deciding.apply`), then publishes the
job the new state waits for. Every step is idempotent, so a redelivered
command completes whatever a crash interrupted and duplicates nothing. A
command that cannot be read or accepted becomes a ``rejected`` event; a
command that was decided is never turned into a rejection afterwards: its
job is published again instead (one a key sent again past its rate, other
than a create or a restore, is settled with nothing recorded: its job went
out when it was decided, and a refusal there should cost little).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Collection, Mapping

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from sandboxer import subjects
from sandboxer.bus.event_store import Alongside, EventStore, Loaded
from sandboxer.bus.key_request_rate import KeyRequestRates, logged_keys
from sandboxer.clock import utc_now
from sandboxer.commands.parse import key_of, parse_command, verb_of
from sandboxer.commands.types import (
    AddCredits,
    Command,
    CreateKey,
    CreateSandbox,
    DeleteSnapshot,
    DestroySandbox,
    ExpireSandbox,
    ExtendTtl,
    PauseSandbox,
    RecreateSandbox,
    RerouteSandbox,
    RestoreSnapshot,
    ResumeSandbox,
    RevokeKey,
    SetBudget,
    SetByok,
    SnapshotSandbox,
    TouchSandbox,
    target_sandbox,
)
from sandboxer.config.catalog import Catalog
from sandboxer.config.hosts import HostConfig, hosts_path, load_hosts
from sandboxer.config.profile import Profile
from sandboxer.config.settings import Settings
from sandboxer.domain.admission import admit_create, requested_host
from sandboxer.domain.fallback import without_candidates
from sandboxer.domain.key_decide import key_id_of
from sandboxer.domain.route_signals import RouteSignals
from sandboxer.domain.sandbox_decide import AdmittedCreate, FinishTeardown, same_project
from sandboxer.domain.sandbox_state import SandboxState
from sandboxer.errors import InvalidCommand, Rejected, SandboxerError, UnknownProfile
from sandboxer.events.types import Actor, CommandRejected
from sandboxer.workers.bus_identity import bus_identity_refusal, vouches_for
from sandboxer.workers.credit_reservation import (
    decide_account_command,
    reserve_for_create,
    reserve_for_extend,
)
from sandboxer.workers.deciding import apply, apply_key
from sandboxer.workers.fallback_routing import next_route
from sandboxer.workers.hold_release import (
    give_up_refused_create,
    release_lost_reservation,
    release_refused_extension,
)
from sandboxer.workers.host_choice import choose_host
from sandboxer.workers.host_places import apply_recreate, give_up_places, take_place
from sandboxer.workers.job_dispatch import dispatch_job, job_message
from sandboxer.workers.key_limit import LiveLimit, check_live_limit, limiting_key
from sandboxer.workers.key_rate import KeyRates
from sandboxer.workers.pause_commands import decide_pause_step
from sandboxer.workers.pull_loop import ConsumerSpec, run_pull_consumer
from sandboxer.workers.route_lookup import RouteLookup
from sandboxer.workers.snapshot_commands import SnapshotCommands

__all__ = ["ControlWorker"]

log = logging.getLogger(__name__)


DomainCommand = (
    AdmittedCreate | DestroySandbox | RecreateSandbox | ExtendTtl | TouchSandbox | ExpireSandbox
)
"""A command about one sandbox as the sandbox's decide takes it (a create admitted)."""


class ControlWorker:
    def __init__(
        self,
        js: JetStreamContext,
        store: EventStore,
        catalog: Catalog,
        settings: Settings,
        nc: Client | None = None,
        clock: Callable[[], float] = time.monotonic,
        request_rates: KeyRequestRates | None = None,
    ) -> None:
        """``clock``: what the keys' rates for commands on the bus are measured by
        (workers/key_rate.py); ``request_rates``: the process's for their requests, which
        hold a key's ``route.explain`` (bus/key_request_rate.py)."""
        self._js = js
        # Route signals and route explain need a connection; without one, routing goes blind.
        self._routing = (
            RouteLookup(nc, catalog, settings, keys=logged_keys(store), rates=request_rates)
            if nc is not None
            else None
        )
        self._settings = settings
        self._store = store
        self._catalog = catalog
        self._snapshots = SnapshotCommands(js, store, catalog)
        self._rates = KeyRates(store, clock)
        self.spec = ConsumerSpec(
            stream=subjects.COMMANDS_STREAM,
            durable="control",
            filter_subject=subjects.COMMANDS,
            ack_wait=settings.ack_wait,
        )

    async def run(self, stop: asyncio.Event) -> None:
        if self._routing is not None:
            await self._routing.start()
        try:
            await run_pull_consumer(self._js, self.spec, self.handle, self._on_poison, stop)
        finally:
            if self._routing is not None:
                await self._routing.stop()

    async def handle(self, msg: Msg) -> None:
        try:
            command = parse_command(msg.subject, msg.data)
        except InvalidCommand as invalid:
            await self._reject(msg, invalid.code, invalid.reason, invalid)
            return
        try:
            # A key's own command past its rate is turned away first, before it costs a
            # decision or a look at the view: a key flooding the bus (workers/key_rate.py).
            await self._rates.hold(msg.subject, msg.metadata.num_delivered)
        except Rejected as limited:
            refused_too = await bus_identity_refusal(self._store, msg.subject, command)
            if refused_too is not None:
                # Asked before anything is looked up by the command's ids: one a key may not
                # act on (another project's create sent with that project's command id, a
                # command on its sandbox) is refused as one never handled, with no job sent
                # again and nothing acked quietly, so the answer tells the key nothing of it.
                await self._reject(msg, limited.code, limited.reason, command, limited.retry_after)
                await self._give_up_create(msg, command, *refused_too)
                return
            if await self._resent_handled(command):
                return  # its outcome stands (the module's rule): nothing to record
            await self._refused(msg, command, limited)
            return
        refused = await bus_identity_refusal(self._store, msg.subject, command)
        if refused is not None:  # a key identity acting as another, or outside its project
            await self._reject(msg, *refused, command)
            await self._give_up_create(msg, command, *refused)
            return
        job = Alongside(job_message)  # a create's goes out with its events, when it can
        try:
            loaded = await self._decide_and_append(command, msg.subject, job)
        except (Rejected, UnknownProfile) as refusal:
            if self._routing is not None:
                self._routing.release_command(command)
            await self._refused(msg, command, refusal)
            return
        if not isinstance(command, TouchSandbox) and not job.sent:
            # A touch never makes a job (every exec sends one). Sent again, the job the sandbox
            # waits for would pass the jobs stream's two-minute window as a new message: a
            # second worker process would run it beside the first (a long snapshot copied
            # twice). The command that made a job sends it again if it is redelivered.
            await self._dispatch(loaded, retime=isinstance(command, ExtendTtl))

    async def _refused(
        self, msg: Msg, command: Command, refusal: Rejected | UnknownProfile
    ) -> None:
        """Record why ``command`` is refused; a create it had decided already
        (:meth:`_decided_create`) is not refused: its job is sent again instead."""
        loaded = await self._decided_create(command)
        if loaded is not None:
            await self._dispatch(loaded)
            return
        if isinstance(refusal, Rejected):
            code, reason = refusal.code, refusal.reason
            await self._reject(msg, code, reason, command, refusal.retry_after)
        else:
            code, reason = refusal.code, refusal.message
            await self._reject(msg, code, reason, command)
        # Before the ack: a crash in between is redelivered, refused again, and ends it.
        await self._give_up_create(msg, command, code, reason)

    async def _give_up_create(self, msg: Msg, command: Command, code: str, reason: str) -> None:
        """Give back what a refused create or restore held for its id (its credit hold, its
        host places; workers/credit_reservation.py, workers/host_places.py), if anything.

        The one rule of every refusal of one, whichever check refused it (its key's rate,
        its key's identity, deciding, its handling failing past its deliveries): what it
        held is given back under its actor only when its publisher may claim that actor
        (:func:`~sandboxer.workers.bus_identity.vouches_for`). A key's own create cut off
        after its hold and refused since (its key revoked, the id taken by another project,
        sent again past its rate) gives it back; until 2026-12-04 the identity refusals, and
        one past the rate, kept it for ever. One claiming another's actor gives back nothing
        of what that actor holds."""
        if not isinstance(command, CreateSandbox | RestoreSnapshot):
            return
        if not await vouches_for(self._store, msg.subject, command):
            return
        sandbox_id = target_sandbox(command)
        await give_up_refused_create(self._store, sandbox_id, command, code, reason)
        await self._give_up_places(sandbox_id, command, code, reason)

    async def _to_domain(
        self,
        command: CreateSandbox
        | DestroySandbox
        | RecreateSandbox
        | ExtendTtl
        | TouchSandbox
        | ExpireSandbox,
        *,
        refused_by: tuple[str, ...] = (),
        limit: LiveLimit | None = None,
    ) -> DomainCommand:
        """``limit``: the API key whose ``max_live`` the command is held to
        (workers/key_limit.py); None for a command no key made, or one that adds no live
        sandbox (a reroute: its sandbox counts already)."""
        if not isinstance(command, CreateSandbox):
            if limit is not None:  # a recreate of a failed sandbox adds one, as a create does
                await check_live_limit(
                    self._routing, self._js, limit, self._catalog.extensions_enabled()
                )
                recreated = limit.recreated
                if (
                    self._routing is not None
                    and recreated is not None
                    and isinstance(command, RecreateSandbox)
                ):
                    # Held as a create is once routed, nothing awaited since the count: a
                    # burst of a key's recreates counts each one before it.
                    self._routing.hold_recreate(command, recreated)
            return command
        profile = without_candidates(self._catalog.profile(command.profile), refused_by)
        enabled = self._catalog.extensions_enabled()
        # A profile that names its backend is not routed (docs/routing.md): nothing weighs
        # the view's signals, so the create does not wait for them (a key's create does, for
        # its project's live count, but routes as any other).
        routed = profile.extension is None
        counted = None  # the signals a key's live count came with
        if limit is not None:
            counted = await check_live_limit(self._routing, self._js, limit, enabled)
        signals = counted if routed else None
        if routed and signals is None and self._routing is not None:
            signals = await self._routing.signals(enabled)
        placing = signals if signals is not None else counted
        # Whether a host answers only placement's probe knows: a backend whose usable hosts
        # are all down is passed over for this create and routing asked again, as for one
        # without room (docs/routing.md#no-reachable-host). Each pass leaves one more
        # candidate out, so this ends; nothing is reserved or appended before it does.
        unplaced: dict[str, str] = {}
        while True:
            admitted = admit_create(command, profile, enabled, signals, utc_now(), unplaced)
            if self._routing is not None:
                self._routing.hold(admitted)  # counted as live until the view shows it
            if not enabled[admitted.extension].uses_hosts:
                return admitted
            if placing is None and self._routing is not None:
                # A fixed backend's create asks for the signals here (once: a key's count
                # brought them already): each host's live sandboxes, which its
                # max_sandboxes caps.
                placing = await self._routing.signals(enabled)
            try:
                return await self._place(command, profile, admitted, placing)
            except Rejected as nowhere:
                unplaced[admitted.extension] = nowhere.reason

    async def _place(
        self,
        command: CreateSandbox,
        profile: Profile,
        admitted: AdmittedCreate,
        signals: RouteSignals | None,
    ) -> AdmittedCreate:
        """``admitted`` on the first healthy host its placement allows; Rejected (``no_host``)
        with each host's reason when there is none."""
        # Counted when looked at, not when the signals came: other creates of a burst take
        # their hosts while this one probes.
        live = (
            functools.partial(self._routing.live_on_hosts, signals, admitted.extension)
            if self._routing is not None and signals is not None
            else None
        )
        host, why = await choose_host(
            profile.placement,
            requested_host(command, profile, admitted.inputs),
            load_hosts(self._settings),
            hosts_file=f"the hosts file {hosts_path(self._settings)}",
            live=live,
            # The log decides the last place: other control workers' routes are not in
            # ``live`` until the view shows them (workers/host_places.py).
            take=functools.partial(take_place, self._store, admitted=admitted),
        )
        placed = dataclasses.replace(
            admitted, host=host, route_reason=f"{admitted.route_reason}; {why}"
        )
        if self._routing is not None:
            # Held again, on its host now, and from now: probing the hosts may take longer
            # than a hold that was never appended lasts.
            self._routing.hold(placed)
        return placed

    def _hosts_of(self, extension: str | None) -> Mapping[str, HostConfig] | None:
        """The hosts file's hosts for a backend that places on hosts; None for any other."""
        decl = self._catalog.extensions_enabled().get(extension) if extension else None
        return load_hosts(self._settings) if decl is not None and decl.uses_hosts else None

    async def _decide_and_append(
        self, command: Command, subject: str, job: Alongside
    ) -> Loaded | None:
        """The sandbox the command changed (None: it changed only a snapshot); ``subject``:
        the one it came on (a key identity's names the key). ``job``: the job a create
        leads to, which the store may send with its events (then marked sent)."""
        if isinstance(command, SnapshotSandbox):
            return await self._snapshots.snapshot(command)
        if isinstance(command, DeleteSnapshot):
            await self._snapshots.delete(command)
            return None
        if isinstance(command, AddCredits | SetBudget | SetByok):
            await decide_account_command(self._store, self._catalog, command)  # docs/payments.md
            return None
        if isinstance(command, CreateKey | RevokeKey):
            await apply_key(self._store, command)  # docs/http-api.md#keys
            return None
        if isinstance(command, PauseSandbox | ResumeSandbox):
            return await decide_pause_step(self._store, self._catalog, command)
        if isinstance(command, RerouteSandbox):
            return await self._reroute(command)
        limit = await limiting_key(self._store, subject, command)
        restored_from = None
        passed_over: tuple[str, ...] = ()
        if isinstance(command, RestoreSnapshot):
            restored_from = command.snapshot_id
            command = await self._snapshots.restore_as_create(command)
            # A backend that ignores the workspace input would make it ready without the
            # snapshot's files: a restore routes only among those that copy it in.
            passed_over = self._snapshots.passed_over(command)
        domain_command = await self._to_domain(command, refused_by=passed_over, limit=limit)
        if restored_from is not None and isinstance(domain_command, AdmittedCreate):
            domain_command = dataclasses.replace(domain_command, restored_from=restored_from)
        try:
            domain_command = await self._reserve(domain_command)
            loaded = await self._append(domain_command, job)
        except Rejected as refusal:
            await self._give_back(domain_command, refusal)
            raise
        held = isinstance(domain_command, AdmittedCreate) or (
            limit is not None and limit.recreated is not None
        )
        if self._routing is not None and held:  # the view shows it once it passes this seq
            self._routing.appended(domain_command.sandbox_id, loaded.last_seq)
        if loaded.state.status == "destroying" and loaded.state.extension is None:
            # Never routed: nothing was made, so nothing to tear down.
            loaded, _ = await apply(
                self._store, loaded.state.sandbox_id, FinishTeardown(job_id="control"), loaded
            )
        return loaded

    async def _append(self, command: DomainCommand, job: Alongside) -> Loaded:
        """Decide ``command`` on its sandbox and append what it decides; a create's ``job``
        may go out with its events (one round trip less before its extension worker has it:
        docs/protocol.md#jobs)."""
        if isinstance(command, RecreateSandbox):
            # A failed sandbox's recreate adds one to its host, as a create does: it takes a
            # place there first when the host has max_sandboxes (workers/host_places.py).
            return await apply_recreate(self._store, command, self._hosts_of)
        # A create's sandbox almost never has a history yet: decide on an empty one first
        # and save the load. When it has one (a re-sent command), the append's expected
        # sequence (none) conflicts, and apply reloads and decides again on the real
        # history.
        if not isinstance(command, AdmittedCreate):
            return (await apply(self._store, command.sandbox_id, command))[0]
        guess = Loaded(SandboxState(sandbox_id=command.sandbox_id), 0)
        return (await apply(self._store, command.sandbox_id, command, guess, alongside=job))[0]

    async def _give_back(self, command: DomainCommand, refusal: Rejected) -> None:
        """Release what a refused command held that nothing will ever use: a create's hold
        for a sandbox another project took, an extension's that its sandbox refused for good
        (on the append, or, sent again, by the check before the hold)."""
        if isinstance(command, AdmittedCreate) and refusal.code == "sandbox_exists":
            await release_lost_reservation(self._store, command.sandbox_id, command.command)
        elif isinstance(command, ExtendTtl):
            await release_refused_extension(self._store, command, refusal.code)

    async def _decided_create(self, command: Command) -> Loaded | None:
        """The sandbox of a refused create it had already routed: one sent again (redelivered
        after a crash, re-sent past the duplicate window) and not admitted now (its hosts
        went down since, its profile changed). Its outcome stands, and its job is sent
        again: a decided command is never turned into a rejection (the module's rule).
        None: not such a create. A restore is a create (of its snapshot's workspace)."""
        if not isinstance(command, CreateSandbox | RestoreSnapshot):
            return None
        loaded = await self._store.load(target_sandbox(command))
        if not _decided(command, loaded.state) or loaded.state.status == "requested":
            return None  # undecided (or routed not yet appended): the refusal is its outcome
        return loaded

    async def _resent_handled(self, command: Command) -> bool:
        """Whether ``command``, past its key's rate, was handled already by the aggregate it is
        about: sent again past the commands stream's duplicate window, it is a first delivery
        and takes a token. A create or restore is not asked here: :meth:`_refused` sends its
        job again. Asked only on this refusal path, of the one aggregate the command names
        (the store keeps sandboxes and accounts folded, so a flood past the rate costs a
        read of what is new), and only once the key's identity may act on it (:meth:`handle`
        asks first): what another project's aggregate handled is never looked at for it."""
        if isinstance(command, CreateSandbox | RestoreSnapshot):
            return False
        if isinstance(command, DeleteSnapshot):
            handled: Collection[str] = (
                await self._store.load_snapshot(command.snapshot_id)
            ).state.handled
        elif isinstance(command, AddCredits | SetBudget | SetByok):
            handled = (await self._store.load_account(command.project)).book.handled
        elif isinstance(command, CreateKey | RevokeKey):
            handled = (await self._store.load_key(key_id_of(command))).state.handled
        else:
            handled = (await self._store.load(target_sandbox(command))).state.handled
        return command.command_id in handled

    async def _reserve(self, command: DomainCommand) -> DomainCommand:
        """Credits first: a metered create or extension the account cannot pay for is rejected
        before anything of it is appended (docs/payments.md). A create takes with it whose
        key its provider is to be called with (its ``routed``'s ``provider_key``)."""
        if isinstance(command, AdmittedCreate):
            key = await reserve_for_create(self._store, self._catalog, command)
            if key is not None:
                return dataclasses.replace(command, provider_key=key)
        elif isinstance(command, ExtendTtl):
            await reserve_for_extend(self._store, self._catalog, command)
        return command

    async def _reroute(self, command: RerouteSandbox) -> Loaded:
        """Fallback: route a sandbox its backend refused to the next candidate of its profile,
        through the same admission, routing and placement as a create (minus the refusers)."""
        loaded = await self._store.load(command.sandbox_id)

        async def admit(again: CreateSandbox, refused_by: tuple[str, ...]) -> AdmittedCreate:
            if loaded.state.restored_from is not None:  # its fallback passes over them too
                refused_by = (*refused_by, *self._snapshots.passed_over(again))
            admitted = await self._to_domain(again, refused_by=refused_by)
            assert isinstance(admitted, AdmittedCreate)
            return admitted

        decision = await next_route(self._store, self._catalog, loaded.state, command, admit)
        loaded, _ = await apply(self._store, command.sandbox_id, decision, loaded)
        if self._routing is not None:
            self._routing.appended(command.sandbox_id, loaded.last_seq)
        return loaded

    async def _dispatch(self, loaded: Loaded | None, *, retime: bool = False) -> None:
        """Publish the job the sandbox now waits for (deduplicated by its deterministic id).
        ``retime``: an extension's, which sends its ``retime`` even when a later event (a
        touch decided by another worker while this one was cut off before its job) moved
        the version past the extension's own: sent again, it would send nothing, and a
        provider keeping its own timeout would end the sandbox at its old expiry."""
        if loaded is not None:
            await dispatch_job(self._js, loaded, retime=retime)

    async def _reject(
        self,
        msg: Msg,
        code: str,
        reason: str,
        about: InvalidCommand | Command,
        retry_after: float | None = None,
    ) -> None:
        sandbox_id = about.sandbox_id if hasattr(about, "sandbox_id") else None
        actor = about.actor if isinstance(about.actor, Actor) else None
        key_id = key_of(msg.subject)
        if key_id is not None:
            # A key acts only as itself, whatever its command claims: its rejection is filed
            # under the key's own actor (None when revoked), so the key can read why, and a
            # forged actor does not put it in another project's history.
            actor = (await self._store.load_key(key_id)).state.actor
        rejection = CommandRejected(
            command_id=about.command_id,
            command=verb_of(msg.subject)[:64],
            code=code,
            reason=reason,
            sandbox_id=sandbox_id,
            stream_seq=msg.metadata.sequence.stream,
            actor=actor,
            at=utc_now(),
            retry_after=retry_after,
        )
        log.info("rejected %s %s: %s", rejection.command, rejection.command_id, reason)
        await self._store.record(rejection)

    async def _on_poison(self, msg: Msg, exc: BaseException) -> None:
        """The handler kept failing: finish a decided command's work, or reject it with why.

        A key's command is asked what :meth:`handle` asks first (bus_identity.py): one its
        key may not send is rejected for that, and nothing its actor names is acted on. Until
        2026-12-04 a command claiming another project's actor, once it had failed here, had
        that project's sandbox's job sent again (one decided under its command id), or its
        create in flight given up and its hold released (one under its command id)."""
        try:
            command: InvalidCommand | Command = parse_command(msg.subject, msg.data)
        except InvalidCommand as invalid:
            command = invalid
        code = "internal_error"
        reason = (
            f"the control worker failed {self.spec.max_failures} times on this command ({exc}); "
            "see the service log"
        )
        if not isinstance(command, InvalidCommand):
            refused = await bus_identity_refusal(self._store, msg.subject, command)
            if refused is not None:
                code, reason = refused
            else:
                loaded = await self._store.load(target_sandbox(command))
                if _decided(command, loaded.state):
                    # Decided: its outcome belongs to the sandbox now. Re-send its job.
                    await self._dispatch(loaded, retime=isinstance(command, ExtendTtl))
                    return
        await self._reject(msg, code, reason, command)
        if not isinstance(command, InvalidCommand):
            # A create cut off after its hold: no delivery of it is appended from now on, and
            # what it held is given back (the id given up first), by the rule of any refusal.
            await self._give_up_create(msg, command, code, reason)

    async def _give_up_places(
        self, sandbox_id: str, create: CreateSandbox | RestoreSnapshot, code: str, reason: str
    ) -> None:
        """Free the host places a refused create took (workers/host_places.py): asked only
        while a backend on hosts is enabled, since no other create takes one."""
        enabled = self._catalog.extensions_enabled().values()
        if not any(decl.uses_hosts for decl in enabled):
            return
        try:
            hosts = load_hosts(self._settings)
        except SandboxerError as unreadable:
            log.warning("hosts file unreadable, places of %s left: %s", sandbox_id, unreadable)
            return
        await give_up_places(self._store, hosts, sandbox_id, create, code, reason)


def _decided(command: Command, state: SandboxState) -> bool:
    """Whether the sandbox ``state`` decided ``command`` already: it is that command sent
    again, whose outcome stands (the module's rule). Command ids are the clients' and one
    namespace across projects, and a create's sandbox id may be derived from its command
    id: another project's create or restore under the id of the create that made the
    sandbox is not that create sent again (:func:`same_project`), and nothing of the
    sandbox is sent again for it."""
    if command.command_id not in state.handled or state.status == "new":
        return False  # a create that gave its id up (``create_abandoned``) decided nothing
    if isinstance(command, CreateSandbox | RestoreSnapshot):
        return same_project(state, command.actor)
    return True
