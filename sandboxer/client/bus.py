"""The low-level bus client: what the CLI, the HTTP gateway and :class:`~sandboxer.client.Sandboxer`
over the bus use to talk to sandboxer (answers are the service's JSON as ``dict``).

It only speaks the public contract of ``docs/protocol.md``: publish commands
to the commands stream, watch events on core subjects, ask the projector over
request/reply. Finding the service is :mod:`sandboxer.service_discovery`;
waiting for a command's outcome is :mod:`sandboxer.command_outcomes`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import msgspec
from nats.aio.client import Client as Nats
from nats.errors import TimeoutError as NatsTimeout

from sandboxer import subjects
from sandboxer.bus.ask import (
    RATE_PATIENCE,
    RESTART_BUDGET,
    RateRefusal,
    ask_json,
    next_message,
    no_responders,
    paced,
    rate_refusal,
    refused_at_once,
)
from sandboxer.bus.connect import connect
from sandboxer.bus.event_reader import last_sequence, read_events
from sandboxer.bus.key_users import key_credentials
from sandboxer.bus.nats_auth import NatsCredentials
from sandboxer.bus.publish import publish_durably
from sandboxer.bus.streams import replicas_for
from sandboxer.cleanup_waits import cancel_until_done
from sandboxer.client.pages import page_of, paged_reply
from sandboxer.command_outcomes import (
    CommandFailed,
    EventCallback,
    KeyOutcomeWatcher,
    OutcomeWatcher,
    notify,
)
from sandboxer.config.settings import Settings
from sandboxer.domain.rate_limit import stated_wait
from sandboxer.domain.route_signals import RouteSignals
from sandboxer.errors import (
    BusError,
    InvalidInput,
    RateLimited,
    RequestError,
    SandboxerError,
    ViewBehind,
)
from sandboxer.exec_protocol.answer_codes import RATE_LIMITED, error_for
from sandboxer.exec_protocol.heartbeat import allowed_silence, next_answer
from sandboxer.exec_protocol.wire import EXEC_HEADER
from sandboxer.ids import derive_sandbox_id, is_valid_sandbox_id, new_command_id
from sandboxer.pagination import DEFAULT_LIMIT, Page
from sandboxer.service_discovery import client_credentials, find_service_urls
from sandboxer.transfer import (
    Copied,
    StdinSource,
    copy_in,
    copy_out,
    feed_stdin,
    first_answer,
    get_object,
)
from sandboxer.transfer import put_archive as _put_archive
from sandboxer.workspaces.limits import DEFAULT_MAX_MB, ArchiveLimits
from sandboxer.workspaces.upload import Uploaded, UploadProgress, upload_directory

__all__ = [
    "CommandFailed",
    "Copied",
    "EventCallback",
    "OutputCallback",
    "SandboxerClient",
    "UploadProgress",
    "Uploaded",
]

COMMAND_PUBLISH_BUDGET = 15.0
"""Seconds a command's publish waits out an unavailable commands stream (elections take 4-7 s)."""

SERVER_RESTART_BUDGET = 15.0
"""Seconds a connected client goes on reconnecting after losing its NATS server (a restart:
the embedded one is started again at once) before it closes, and its calls fail."""
VIEW_PATIENCE = 10.0
"""Seconds a query is asked again while the view answering it is behind the client's own
writes (each ask waits up to 2 s at the projector first): a projector folding at a tenth of
its usual pace on a loaded machine still shows them."""
REASK_PAUSE = 0.05
"""Seconds between such asks, for a responder that answers at once rather than waiting."""

OutputCallback = Callable[[str, bytes], Awaitable[None] | None]

DEFAULT_ACTOR = {"type": "adm", "id": os.environ.get("USER") or "cli"}


class SandboxerClient:
    """The low-level bus client of sandboxer: async, answering with ``dict``s (the public,
    typed API over it is :class:`sandboxer.client.Sandboxer`, docs/python-client.md).

    Get one with :meth:`from_env` (found as the CLI finds the service) or :meth:`connect`
    (given NATS URLs), and :meth:`close` it when done. Every command method publishes a
    command as ``actor`` and, when it waits, returns the event that ended it (a ``dict``
    as docs/protocol.md#events shows it); queries return the view's rows as ``dict``.
    Every error is a :class:`sandboxer.errors.SandboxerError`: a refused or failed command
    raises :class:`CommandFailed` (its ``event`` says why), a bad id :class:`InvalidInput`,
    an unreachable service :class:`ServiceNotRunning` or another :class:`BusError`.
    """

    def __init__(
        self, nc: Nats, *, actor: Mapping[str, Any] | None = None, key_id: str | None = None
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.actor = dict(actor or DEFAULT_ACTOR)
        self.key_id = key_id
        """Set when connected as an API key (docs/security.md#keys-on-the-bus): every subject
        this client publishes on then ends in it, and it reads events through queries."""
        self.rate_patience = RATE_PATIENCE
        """Seconds a request refused for the key's rate (a query, an exec, a copy, a token
        request) is sent again as the refusal says, before :class:`RateLimited` is raised;
        0: raised at once."""
        self.view_patience = VIEW_PATIENCE
        """Seconds a query is asked again while its answer comes from a view that has not
        folded what this client saw finish (its ``position`` short of the query's
        ``min_seq``); past them, that answer is returned."""
        self.outcomes: OutcomeWatcher = (
            OutcomeWatcher(nc) if key_id is None else KeyOutcomeWatcher(nc, key_id)
        )

    @property
    def seen_seq(self) -> int:
        """The log position of the last outcome this client saw: its queries wait
        until the view includes it, so a client reads its own writes."""
        return self.outcomes.seen_seq

    @seen_seq.setter
    def seen_seq(self, value: int) -> None:
        self.outcomes.seen_seq = value

    @classmethod
    async def connect(
        cls,
        urls: list[str],
        *,
        credentials: NatsCredentials | None = None,
        api_key: str | None = None,
        **kwargs: Any,
    ) -> SandboxerClient:
        """Connect to ``urls``; ``credentials``: the client identity's (docs/security.md); or
        ``api_key``: log in as that key, which then decides the actor (keys on the bus)."""
        if api_key is not None:
            credentials = key_credentials(api_key)
        nc = await connect(
            urls,
            name="sandboxer-client",
            long_lived=False,
            credentials=credentials,
            outlast=SERVER_RESTART_BUDGET,
        )
        if api_key is None:
            return cls(nc, **kwargs)
        client = cls(nc, key_id=credentials.user if credentials else None)
        try:
            client.actor = dict((await client.query(subjects.QUERY_KEY_WHOAMI, {}))["actor"])
        except BaseException:
            await nc.close()
            raise
        return client

    @classmethod
    async def from_env(
        cls, *, actor: Mapping[str, Any] | None = None, settings: Settings | None = None
    ) -> SandboxerClient:
        """Connect as the CLI does: ``SANDBOXER_NATS_URL``, else the service that
        ``sandboxer up`` runs for ``SANDBOXER_HOME`` (its ``service.json``), with the client
        identity's NATS credentials when the server wants them (raises
        :class:`ServiceNotRunning` when there is none). ``actor`` is who the commands are
        from (``{"type": "agt", "id": ..., "project": ...}``; an ``adm`` named after
        ``$USER`` by default)."""
        settings = settings or Settings.from_env()
        urls = find_service_urls(settings)
        return await cls.connect(urls, credentials=client_credentials(settings), actor=actor)

    async def close(self) -> None:
        """Finish what is in flight and disconnect (nothing to do once the connection closed,
        its server gone for longer than :data:`SERVER_RESTART_BUDGET`)."""
        if self.nc.is_closed:
            return
        await self.outcomes.position()
        await self.nc.drain()

    async def _stored(self) -> None:
        """Wait until the stream holds every outcome this client has seen (read your writes).

        An outcome can reach this client's subscription before the stream has stored it (in
        a cluster, before a quorum of nodes has). The log read by :meth:`events`, and the
        sandbox state a worker loads to answer an exec, a file copy or a token request, are
        the stream's: a request sent as soon as a ``ready`` came could find the sandbox still
        provisioning (on a 3-node cluster, 8 of 540 execs sent right after their create's
        ``ready`` had no answer; ``test_cluster.py``).
        """
        await self.outcomes.position()

    # -- queries -------------------------------------------------------------------------------

    def _subject(self, subject: str) -> str:
        """``subject`` as this client publishes it: a key's ends in its key id."""
        return subject if self.key_id is None else subjects.stamped(subject, self.key_id)

    async def query(
        self,
        subject: str,
        request: Mapping[str, Any],
        timeout: float = 5.0,
        budget: float = 0.0,
        *,
        patience: float | None = None,
    ) -> Any:
        """The service's answer to ``request``; ``budget`` seconds: how long a responder that is
        absent (restarting) is waited for (:func:`sandboxer.bus.ask.ask`). A key's request
        refused for its rate is asked again when the refusal says, for ``patience`` seconds
        (by default :attr:`rate_patience`; or ``budget``, the longer); past them,
        :class:`RateLimited`. An answer from a view short of this client's own writes is
        asked for again, for :attr:`view_patience` seconds."""
        min_seq = 0
        if "min_seq" in request:  # read your writes: include the outcomes just returned
            position = await self.outcomes.position()
            min_seq = max(int(request["min_seq"] or 0), position)
            request = {**request, "min_seq": min_seq}
        subject = self._subject(subject)
        payload = msgspec.json.encode(request)
        patience = max(self.rate_patience if patience is None else patience, budget)
        loop = asyncio.get_running_loop()
        behind_until: float | None = None
        while True:
            reply = await ask_json(
                self.nc, subject, payload, timeout=timeout, budget=budget, patience=patience
            )
            if not _short_of(reply, min_seq):
                break
            # A projector waits a while for the asker's writes, then answers from where it
            # is (Projector.caught_up): a loaded machine's, or another projector of a scaled
            # out service. Its answer lacks what this client saw finish: ask again, a while.
            behind_until = behind_until or loop.time() + self.view_patience
            if loop.time() >= behind_until:
                break  # the answer as the view has it; its position says how far that is
            await asyncio.sleep(REASK_PAUSE)
        if not reply.get("ok"):
            error = str(reply.get("error"))
            if reply.get("code") == RATE_LIMITED:  # a key past its rate: wait and ask again
                raise RateLimited(f"{subject}: {error}", retry_after=stated_wait(reply))
            if reply.get("code") == ViewBehind.code:  # a projector that just started
                raise ViewBehind(f"{subject}: {error}")
            # The responder answers a bad request with its reason and its own failures
            # as "internal error: ...": only the latter is the service's fault.
            kind = BusError if error.startswith("internal error") else RequestError
            raise kind(f"{subject}: {error}")
        return reply

    async def get(self, sandbox_id: str, min_seq: int | None = None) -> dict[str, Any] | None:
        """The sandbox's row in the view (``status``, ``profile``, ``extension``,
        ``expires_at``, ...: docs/protocol.md#queries), or None when there is no such
        sandbox. It includes every command this client saw finish (read your writes)."""
        _check_id(sandbox_id)
        request: dict[str, Any] = {
            "sandbox_id": sandbox_id,
            "min_seq": max(min_seq or 0, self.seen_seq),
        }
        sandbox: dict[str, Any] | None = (await self.query(subjects.QUERY_GET, request))["sandbox"]
        return sandbox

    async def list_sandboxes(
        self,
        *,
        status: str | None = None,
        include_destroyed: bool = False,
        due_before: str | None = None,
        limit: int = DEFAULT_LIMIT,
        consumer: Mapping[str, Any] | None = None,
        project: str | None = None,
        after: str | None = None,
    ) -> Page[dict[str, Any]]:
        """A page of the view's sandboxes, oldest first (``status`` filters; destroyed ones
        only with ``include_destroyed``); ``due_before`` (a UTC time like events carry) keeps
        those whose TTL or idle deadline is at or before it, earliest first; ``project``,
        that project's only. ``after``: the ``next`` of the page before (pages.py)."""
        request: dict[str, Any] = {
            "include_destroyed": include_destroyed,
            "limit": limit,
            "min_seq": self.seen_seq,
        }
        if project is not None:
            request["project"] = project
        if status:
            request["status"] = status
        if due_before is not None:
            request["due_before"] = due_before
        if after is not None:
            request["after"] = after
        # harness, session_id, run_id, job_id, labels (docs/protocol.md#consumer-attribution)
        request |= {k: v for k, v in (consumer or {}).items() if v}
        return page_of(await self.query(subjects.QUERY_LIST, request), "sandboxes", after)

    async def live_count(self, project: str) -> int | None:
        """How many of ``project``'s sandboxes count against an API key's ``max_live``
        (neither destroyed nor failed): the count the view gives the control worker (route
        signals' ``live_by_project``), one count however many the project has. It includes
        every command this client saw finish. None from a view too old to count them."""
        request = {"project": project, "min_seq": self.seen_seq}
        reply = await self.query(subjects.QUERY_ROUTE_SIGNALS, request)
        try:
            signals = RouteSignals.from_dict(reply["signals"])
        except (KeyError, TypeError, ValueError) as bad:
            raise BusError(f"{subjects.QUERY_ROUTE_SIGNALS}: unreadable answer ({bad})") from None
        return signals.live_by_project.get(project)

    async def route_explain(self, profile: str, ttl: str | None = None) -> dict[str, Any]:
        """How a create of ``profile`` would be routed now (the control worker answers;
        nothing is created): ``decision``, ``signals``, ``at`` (docs/routing.md)."""
        request = {"profile": profile, **({} if ttl is None else {"ttl": ttl})}
        reply: dict[str, Any] = await self.query(subjects.QUERY_ROUTE_EXPLAIN, request, 10.0)
        return reply

    async def health(self) -> dict[str, Any]:
        """The service's answer (``position``: its view's place in the log); raises
        :class:`ServiceNotRunning` when nothing answers within 2 s."""
        reply: dict[str, Any] = await self.query(subjects.QUERY_HEALTH, {}, timeout=2.0)
        return reply

    async def replay(self, *, verify: bool) -> dict[str, Any]:
        reply: dict[str, Any] = await self.query(
            subjects.ADMIN_REPLAY, {"verify": verify}, timeout=600
        )
        return reply

    async def hosts(self) -> list[dict[str, Any]]:
        """The hosts view: the latest telemetry and reaping per host."""
        hosts: list[dict[str, Any]] = (
            await self.query(subjects.QUERY_HOSTS, {"min_seq": self.seen_seq})
        )["hosts"]
        return hosts

    async def pools(self) -> list[dict[str, Any]]:
        """Every warm pool, as its keepers see it (docs/pools.md): ``pool``, ``profile``,
        ``extension``, ``node``, ``min_ready``, ``max``, ``ready``, ``provisioning``. Empty
        when no worker keeps a pool."""
        replies = await self.gather(subjects.QUERY_POOL_LIST, {}, timeout=2.0, settle=0.2)
        pools = {
            pool["pool"]: pool
            for reply in replies
            if reply.get("ok")
            for pool in reply.get("pools", [])
        }
        return sorted(pools.values(), key=lambda pool: str(pool["pool"]))

    async def gather(
        self,
        subject: str,
        request: Mapping[str, Any],
        *,
        timeout: float = 60.0,
        settle: float = 0.5,
    ) -> list[dict[str, Any]]:
        """Every reply to one request: the first within ``timeout``, others until ``settle``
        seconds pass without one (several workers may answer)."""
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox)
        replies: list[dict[str, Any]] = []
        try:
            await self.nc.publish(subject, msgspec.json.encode(request), reply=inbox)
            wait = timeout
            while True:
                try:
                    msg = await next_message(sub, wait)
                except NatsTimeout:
                    return replies
                if no_responders(msg):
                    return replies  # the server says no one listens on that subject
                replies.append(msgspec.json.decode(msg.data))
                wait = settle
        finally:
            await sub.unsubscribe()

    async def inventory(
        self, action: str, extension_id: str, request: Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        """Ask ``extension_id``'s workers to inspect, list drift, or reap (see docs/hosts.md)."""
        replies = await self.gather(subjects.admin_subject(action, extension_id), request)
        if replies:
            self.seen_seq = max(self.seen_seq, await last_sequence(self.js))
        return replies

    # -- credits (docs/payments.md) ---------------------------------------------------------------

    async def account_command(
        self,
        verb: str,
        project: str,
        *,
        command_id: str | None = None,
        timeout: float = 30.0,
        **fields: Any,
    ) -> dict[str, Any]:
        """``add_credits`` (``amount``), ``set_budget`` (``limit``, ``period``) or ``set_byok``
        (``extension``, ``key_ref``) on ``project``'s account; returns the event it recorded
        (raises CommandFailed with the reason when rejected)."""
        success = {
            "add_credits": "credits_added",
            "set_budget": "budget_set",
            "set_byok": "byok_set",
        }
        command = {
            "command_id": command_id or new_command_id(),
            "actor": self.actor,
            "project": project,
            **fields,
        }
        return await self.outcomes.run(
            verb,
            command,
            project,
            {success[verb]},
            lambda: self.publish_command(verb, command),
            None,
            timeout,
            scope=subjects.account_events_filter(project),
        )

    async def credits(
        self, project: str | None = None, *, limit: int = DEFAULT_LIMIT, after: str | None = None
    ) -> Page[dict[str, Any]]:
        """A page of the accounts by project (or ``project``'s alone, when it has one):
        balance, reserved, budget. ``after``: the ``next`` of the page before."""
        if project is None:
            request: dict[str, Any] = {"limit": limit, "min_seq": self.seen_seq}
            if after is not None:
                request["after"] = after
            reply = await self.query(subjects.QUERY_CREDITS_LIST, request)
            return page_of(reply, "accounts", after)
        request = {"project": project, "min_seq": self.seen_seq}
        account = (await self.query(subjects.QUERY_CREDITS_GET, request))["account"]
        return Page([] if account is None else [account])

    async def usage(self, **window: Any) -> dict[str, Any]:
        """Metered sandboxes (a page of them, with ``next``) and spend by project, profile and
        backend (``project``, ``since``, ``until``, ``limit``, ``after``: all optional)."""
        request = {k: v for k, v in window.items() if v is not None}
        reply: dict[str, Any] = await self.query(
            subjects.QUERY_USAGE_LIST, {**request, "min_seq": self.seen_seq}
        )
        paged_reply(reply, request.get("after"))
        return reply

    # -- uploads -------------------------------------------------------------------------------

    async def upload_directory(
        self,
        directory: str | os.PathLike[str],
        *,
        exclude: Collection[str] = (),
        max_mb: int = DEFAULT_MAX_MB,
        progress: UploadProgress | None = None,
    ) -> Uploaded:
        """Pack a local directory into the workspaces bucket, once per content.

        Pass ``uploaded.ref`` (``object:sha256:<hex>``) as the value of a
        directory input: any worker, on any machine, fetches it from there.
        ``exclude`` names files and directories left out at any depth. An API key may not
        write the bucket (docs/security.md#keys-on-the-bus): create, then :meth:`copy_in`.
        """
        if self.key_id is not None:
            raise InvalidInput(
                "an API key cannot upload a directory input over the bus (the workspaces bucket "
                "is shared by every project); create the sandbox, then copy the directory in "
                "with copy_in or 'sandboxer cp'"
            )
        return await upload_directory(
            self.js,
            Path(directory),
            replicas=replicas_for(self.nc._server_info),  # like the streams: 3 in a cluster
            exclude=exclude,
            limits=ArchiveLimits.from_mb(max_mb),
            progress=progress,
        )

    # -- commands ------------------------------------------------------------------------------

    async def create(
        self,
        profile: str = "profile.local",
        inputs: Mapping[str, str] | None = None,
        *,
        sandbox_id: str | None = None,
        command_id: str | None = None,
        host: str | None = None,
        ttl: str | None = None,
        network: Mapping[str, Any] | None = None,
        consumer: Mapping[str, Any] | None = None,
        wait: bool = True,
        on_event: EventCallback | None = None,
        timeout: float = 300.0,
    ) -> dict[str, Any]:
        """Create a sandbox; with ``wait``, return its ``ready`` event (raise
        :class:`CommandFailed` when it is rejected or fails); without, return
        ``{"command_id", "sandbox_id"}`` once the command is published.

        The same ``command_id`` twice is one command (and one sandbox, its id derived
        from the command id unless ``sandbox_id`` names it). ``on_event`` is called with
        each of the sandbox's events until the outcome.

        ``host`` overrides the profile's placement (for backends that place on hosts);
        ``ttl`` (``90s``, ``2h``) the profile's ``ttl.default``, within its ``ttl.max``.
        ``network`` (``{"default": "deny", "egress": ["pypi.org:443"]}``) narrows the
        profile's network policy; a widening is rejected unless the actor is ``adm``
        (docs/network.md).
        """
        if sandbox_id is not None:
            _check_id(sandbox_id)
        fresh = command_id is None  # made here: the log holds nothing of it to read back
        command_id = command_id or new_command_id()
        command: dict[str, Any] = {
            "command_id": command_id,
            "profile": profile,
            "inputs": dict(inputs or {}),
            "actor": self.actor,
        }
        if sandbox_id is not None:
            command["sandbox_id"] = sandbox_id
        if host is not None:
            command["host"] = host
        if ttl is not None:  # only when asked: older services do not know the field
            command["ttl"] = ttl
        if network is not None:  # likewise
            command["network"] = dict(network)
        if consumer is not None:  # likewise (docs/protocol.md#consumer-attribution)
            command["consumer"] = dict(consumer)
        target = sandbox_id or derive_sandbox_id(command_id)
        return await self._run(
            "create", command, target, {"ready"}, wait, on_event, timeout, fresh=fresh
        )

    async def destroy(
        self,
        sandbox_id: str,
        *,
        command_id: str | None = None,
        wait: bool = True,
        on_event: EventCallback | None = None,
        timeout: float = 120.0,
    ) -> dict[str, Any]:
        """Tear the sandbox down (its history stays); with ``wait``, return its
        ``destroyed`` event, else ``{"command_id", "sandbox_id"}`` once published."""
        _check_id(sandbox_id)
        command = {
            "command_id": command_id or new_command_id(),
            "sandbox_id": sandbox_id,
            "actor": self.actor,
        }
        return await self._run(
            "destroy", command, sandbox_id, {"destroyed"}, wait, on_event, timeout
        )

    async def recreate(
        self,
        sandbox_id: str,
        *,
        command_id: str | None = None,
        wait: bool = True,
        on_event: EventCallback | None = None,
        timeout: float = 300.0,
    ) -> dict[str, Any]:
        """Tear the sandbox down and provision it again with the same id (``generation``
        + 1); with ``wait``, return its new ``ready`` event."""
        _check_id(sandbox_id)
        command = {
            "command_id": command_id or new_command_id(),
            "sandbox_id": sandbox_id,
            "actor": self.actor,
        }
        return await self._run("recreate", command, sandbox_id, {"ready"}, wait, on_event, timeout)

    async def extend_ttl(
        self,
        sandbox_id: str,
        duration: str,
        *,
        command_id: str | None = None,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """Push the sandbox's expiry later by ``duration``; returns the ``ttl_extended`` event
        (raises CommandFailed, naming the limit, past the profile's ``ttl.max``)."""
        return await self._run(
            "extend_ttl",
            self._about(sandbox_id, command_id, duration=duration),
            sandbox_id,
            {"ttl_extended"},
            True,
            None,
            timeout,
        )

    async def touch(self, sandbox_id: str, *, command_id: str | None = None) -> dict[str, Any]:
        """Record activity on the sandbox (holds off idle reaping). Returns once the command is
        accepted: a touch soon after another records nothing, so there is no event to await."""
        command = self._about(sandbox_id, command_id)
        return await self._run("touch", command, sandbox_id, set(), False, None, 0)

    async def expire(
        self,
        sandbox_id: str,
        *,
        reason: str | None = None,
        command_id: str | None = None,
        wait: bool = True,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """Expire the sandbox (an ``adm`` actor may do so before it is due); with ``wait``,
        returns its ``destroying`` event, which follows ``expired``."""
        extra = {} if reason is None else {"reason": reason}
        command = self._about(sandbox_id, command_id, **extra)
        return await self._run("expire", command, sandbox_id, {"destroying"}, wait, None, timeout)

    async def pause(
        self, sandbox_id: str, *, command_id: str | None = None, timeout: float = 60.0
    ) -> dict[str, Any]:
        """Freeze the sandbox's processes (its TTL clock stops); returns the ``paused`` event
        (raises CommandFailed when refused, or with the backend's reason when it failed)."""
        command = self._about(sandbox_id, command_id)
        return await self._run("pause", command, sandbox_id, {"paused"}, True, None, timeout)

    async def resume(
        self, sandbox_id: str, *, command_id: str | None = None, timeout: float = 60.0
    ) -> dict[str, Any]:
        """Thaw a paused sandbox (its TTL clock runs again); returns the ``resumed`` event."""
        command = self._about(sandbox_id, command_id)
        return await self._run("resume", command, sandbox_id, {"resumed"}, True, None, timeout)

    # -- snapshots (docs/snapshots.md) ------------------------------------------------------------

    async def snapshot(
        self,
        sandbox_id: str,
        *,
        name: str | None = None,
        command_id: str | None = None,
        timeout: float = 600.0,
    ) -> dict[str, Any]:
        """Snapshot the sandbox's workspace; returns the snapshot (``created``) or raises
        CommandFailed with the reason it was refused or failed."""
        command = self._about(sandbox_id, command_id, **({} if name is None else {"name": name}))
        finished = await self._run(
            "snapshot", command, sandbox_id, {"snapshot_finished"}, True, None, timeout
        )
        snapshot_id = finished["snapshot_id"]
        # The outcome came: a projector restarting meanwhile is waited for, not reported.
        snapshot = await self.snapshot_get(snapshot_id, budget=RESTART_BUDGET)
        if snapshot is None:
            # The view had not folded the outcome after the query's re-asks (view_patience):
            # say so, not that the snapshot failed.
            raise CommandFailed(
                f"snapshot {snapshot_id} of {sandbox_id} finished {finished.get('outcome')}, but "
                f"the view does not show it yet (its projector is behind the log); see "
                f"'sandboxer snapshots get {snapshot_id}' in a moment",
                finished,
            )
        if finished.get("outcome") != "created":
            reason = snapshot.get("failure") or f"see 'sandboxer snapshots get {snapshot_id}'"
            raise CommandFailed(f"snapshot of {sandbox_id} failed: {reason}", finished)
        return snapshot

    async def restore(
        self,
        snapshot_id: str,
        *,
        profile: str | None = None,
        sandbox_id: str | None = None,
        inputs: Mapping[str, str] | None = None,
        command_id: str | None = None,
        on_event: EventCallback | None = None,
        timeout: float = 300.0,
        consumer: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Create a new sandbox from the snapshot (its profile, or ``profile``: any backend);
        ``inputs`` are the profile's other inputs, ``consumer`` as in :meth:`create`. Returns
        the new sandbox's ``ready`` event."""
        _check_id(snapshot_id)
        if sandbox_id is not None:
            _check_id(sandbox_id)
        command_id = command_id or new_command_id()
        command: dict[str, Any] = {
            "command_id": command_id,
            "snapshot_id": snapshot_id,
            "actor": self.actor,
        }
        if profile is not None:
            command["profile"] = profile
        if sandbox_id is not None:
            command["sandbox_id"] = sandbox_id
        if inputs:
            command["inputs"] = dict(inputs)
        if consumer is not None:  # only when asked: older services do not know the field
            command["consumer"] = dict(consumer)
        target = sandbox_id or derive_sandbox_id(command_id)
        return await self._run("restore", command, target, {"ready"}, True, on_event, timeout)

    async def delete_snapshot(
        self, snapshot_id: str, *, command_id: str | None = None, timeout: float = 60.0
    ) -> dict[str, Any]:
        """Delete the snapshot's data (its history stays); returns the ``snapshot_deleted`` event."""
        _check_id(snapshot_id)
        command = {
            "command_id": command_id or new_command_id(),
            "snapshot_id": snapshot_id,
            "actor": self.actor,
        }
        return await self.outcomes.run(
            "delete_snapshot",
            command,
            snapshot_id,
            {"snapshot_deleted"},
            lambda: self.publish_command("delete_snapshot", command),
            None,
            timeout,
            scope=subjects.snapshot_events_filter(snapshot_id),
        )

    async def snapshot_get(
        self, snapshot_id: str, min_seq: int | None = None, *, budget: float = 0.0
    ) -> dict[str, Any] | None:
        """The snapshot's row (``status``: ``created``, ``failed``, ``deleted``, ...), or None.
        It includes every command this client saw finish, and the log up to ``min_seq``;
        ``budget``: as :meth:`query`'s."""
        _check_id(snapshot_id)
        request = {"snapshot_id": snapshot_id, "min_seq": max(min_seq or 0, self.seen_seq)}
        found = await self.query(subjects.QUERY_SNAPSHOT_GET, request, budget=budget)
        snapshot: dict[str, Any] | None = found["snapshot"]
        return snapshot

    async def snapshots(
        self,
        *,
        sandbox_id: str | None = None,
        include_deleted: bool = False,
        limit: int = DEFAULT_LIMIT,
        project: str | None = None,
        after: str | None = None,
    ) -> Page[dict[str, Any]]:
        """A page of snapshots in the order they were requested (of one sandbox with
        ``sandbox_id``; with ``project``, that project's only: its sandboxes', whoever took
        them). ``after``: the ``next`` of the page before."""
        request: dict[str, Any] = {
            "include_deleted": include_deleted,
            "limit": limit,
            "min_seq": self.seen_seq,
        }
        if project is not None:
            request["project"] = project
        if sandbox_id is not None:
            request["sandbox_id"] = sandbox_id
        if after is not None:
            request["after"] = after
        return page_of(await self.query(subjects.QUERY_SNAPSHOT_LIST, request), "snapshots", after)

    def _about(self, sandbox_id: str, command_id: str | None, **fields: str) -> dict[str, Any]:
        """A command about one sandbox, from this client's actor."""
        _check_id(sandbox_id)
        return {
            "command_id": command_id or new_command_id(),
            "sandbox_id": sandbox_id,
            "actor": self.actor,
            **fields,
        }

    async def publish_command(self, verb: str, command: Mapping[str, Any]) -> bool:
        """Publish one command; returns False when JetStream saw this command id before.

        A commands stream without a leader (an election) is waited out for a while: the
        command id is the message id, so a re-send is never a second command.
        """
        published = await publish_durably(
            self.js,
            self._subject(subjects.command_subject(verb)),
            msgspec.json.encode(command),
            headers={"Nats-Msg-Id": str(command["command_id"])},
            budget_seconds=COMMAND_PUBLISH_BUDGET,
        )
        return not published.ack.duplicate

    async def _run(
        self,
        verb: str,
        command: dict[str, Any],
        sandbox_id: str,
        success: set[str],
        wait: bool,
        on_event: EventCallback | None,
        timeout: float,
        *,
        fresh: bool = False,
    ) -> dict[str, Any]:
        if not wait:
            await self.publish_command(verb, command)
            return {"command_id": command["command_id"], "sandbox_id": sandbox_id}
        return await self.outcomes.run(
            verb,
            command,
            sandbox_id,
            success,
            lambda: self.publish_command(verb, command),
            on_event,
            timeout,
            fresh=fresh,
        )

    # -- exec and events -----------------------------------------------------------------------

    async def tokens(self, sandbox_id: str) -> dict[str, str]:
        """The tokens the sandbox's provider issued for it (to reach its own endpoint).

        Only the sandbox's project (its creator's, ``default`` when it names none) or an
        administrator gets them; they never appear in an event or a ``get``.
        """
        _check_id(sandbox_id)
        await self._stored()
        return await paced(lambda: self._tokens_once(sandbox_id), self.rate_patience)

    async def _tokens_once(self, sandbox_id: str) -> dict[str, str] | RateRefusal:
        try:
            reply = await self.nc.request(
                self._subject(subjects.token_subject(sandbox_id)),
                msgspec.json.encode({"actor": self.actor}),
                timeout=5.0,
            )
        except NatsTimeout:
            raise BusError(
                f"no worker holds tokens for sandbox {sandbox_id}: its backend issues none, "
                "it is not ready, or its extension worker is not running"
            ) from None
        answer = msgspec.json.decode(reply.data)
        refused = rate_refusal(answer)
        if refused is not None:
            return refused
        if not answer.get("ok"):
            raise error_for(answer, sandbox_id) or CommandFailed(
                str(answer.get("error")), {"sandbox_id": sandbox_id}
            )
        return dict(answer["tokens"])

    async def exec(
        self,
        sandbox_id: str,
        argv: list[str],
        on_output: OutputCallback,
        *,
        service: str | None = None,
        timeout: float = 3600.0,
        stdin: StdinSource | None = None,
        command_timeout: float | None = None,
    ) -> int:
        """Run ``argv`` in the sandbox, streaming its output; return its exit code.

        ``service`` names the compose service whose container runs it (compose
        sandboxes only; the first service by default). ``stdin`` (bytes, or an
        async iterable of bytes) is streamed to the command's input; without it
        the input is empty. ``command_timeout`` seconds: the worker kills the
        command past it and this raises :class:`CommandFailed` whose ``event``
        has ``timed_out``. ``timeout`` is how long this call waits for the command at
        most (a refusal for the key's rate adds its waits, ``rate_patience`` at most). A worker
        that stops answering mid-way (killed, its host lost) raises :class:`WorkerLost`
        once its heartbeats stop (docs/protocol.md#exec). An exec refused for the key's rate
        (before anything runs) is sent again as the refusal says, for ``rate_patience`` seconds.
        """
        _check_id(sandbox_id)
        await self._stored()
        return await paced(
            lambda: self._exec_once(
                sandbox_id, argv, on_output, service, timeout, stdin, command_timeout
            ),
            self.rate_patience,
        )

    async def _exec_once(
        self,
        sandbox_id: str,
        argv: list[str],
        on_output: OutputCallback,
        service: str | None,
        timeout: float,
        stdin: StdinSource | None,
        command_timeout: float | None,
    ) -> int | RateRefusal:
        request: dict[str, Any] = {"argv": argv}
        if service is not None:  # only when asked: older workers do not know the fields
            request["service"] = service
        if stdin is not None:
            request["stdin"] = True
        if command_timeout is not None:
            request["timeout"] = command_timeout
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox)
        feeder: asyncio.Task[None] | None = None
        subject = self._subject(subjects.exec_subject(sandbox_id))
        try:
            await self.nc.publish(subject, msgspec.json.encode(request), reply=inbox)
            msg = await first_answer(
                sub,
                sandbox_id,
                serves=f"exec ({subject})",
                silent=f"no worker runs sandbox {sandbox_id}: it may not be ready, or its "
                "extension worker is not running ('sandboxer get' shows its state)",
            )
            refused = refused_at_once(msg, EXEC_HEADER, "exit")
            if refused is not None:
                return refused
            silence: float | None = None  # no limit until the worker promises heartbeats
            async with asyncio.timeout(timeout):
                while True:
                    kind = (msg.headers or {}).get(EXEC_HEADER)
                    if kind == "started":
                        silence = allowed_silence(msg.headers)
                        if stdin is not None and msg.data:
                            inbox_subject = str(msgspec.json.decode(msg.data)["stdin"])
                            feeder = asyncio.create_task(feed_stdin(self.nc, inbox_subject, stdin))
                    elif kind in {"stdout", "stderr"}:
                        await notify(on_output, kind, msg.data)
                    elif kind == "exit":
                        result = msgspec.json.decode(msg.data)
                        if "error" in result:
                            raise _exec_error(result, sandbox_id)
                        return int(result["exit_code"])
                    # Other kinds are ignored: ``alive`` is the worker checking that this
                    # inbox is still subscribed, and needs no answer (docs/protocol.md#exec);
                    # like any message, it shows the worker is still there.
                    msg = await next_answer(
                        sub,
                        silence,
                        sandbox_id=sandbox_id,
                        doing="running the command",
                        unknown="The command may still be running, or not; no exit code will come",
                    )
        finally:
            if feeder is not None:
                await cancel_until_done(feeder)
            await sub.unsubscribe()

    # -- files ---------------------------------------------------------------------------------

    async def copy_in(
        self,
        sandbox_id: str,
        source: str | os.PathLike[str],
        path: str,
        *,
        service: str | None = None,
        max_mb: int = DEFAULT_MAX_MB,
    ) -> Copied:
        """Copy a local file (written at ``path``) or directory (its contents into the
        directory ``path``) into the sandbox's workspace; ``path`` is relative to it."""
        _check_id(sandbox_id)
        await self._stored()
        limits = ArchiveLimits.from_mb(max_mb)
        return await copy_in(
            self.nc,
            sandbox_id,
            Path(source),
            path,
            limits=limits,
            service=service,
            key_id=self.key_id,
            patience=self.rate_patience,
        )

    async def copy_out(
        self,
        sandbox_id: str,
        path: str,
        destination: str | os.PathLike[str],
        *,
        service: str | None = None,
        max_mb: int = DEFAULT_MAX_MB,
    ) -> Copied:
        """Copy ``path`` of the sandbox's workspace (a file or a directory) to
        ``destination``, into it when it is an existing directory (as ``cp -r``)."""
        _check_id(sandbox_id)
        await self._stored()
        limits = ArchiveLimits.from_mb(max_mb)
        return await copy_out(
            self.nc,
            sandbox_id,
            path,
            Path(destination),
            limits=limits,
            service=service,
            key_id=self.key_id,
            patience=self.rate_patience,
        )

    async def put_archive(
        self, sandbox_id: str, archive: str | os.PathLike[str], path: str, kind: str
    ) -> Copied:
        """Unpack a tar already on disk at ``path`` (``kind`` dir), or write its one file
        there (``kind`` file): what the HTTP gateway's upload uses. Inline, as a key's own
        copies are: the bucket keeps what is put in it for a day (``SANDBOXER_OBJECT_GRACE``),
        and an HTTP caller's uploads must not grow it."""
        _check_id(sandbox_id)
        await self._stored()
        return await _put_archive(
            self.nc,
            sandbox_id,
            Path(archive),
            path,
            kind,
            key_id=self.key_id,
            patience=self.rate_patience,
            inline=True,
        )

    async def get_files(
        self,
        sandbox_id: str,
        path: str,
        destination: str | os.PathLike[str],
        *,
        max_mb: int = DEFAULT_MAX_MB,
    ) -> Copied:
        """Write what ``path`` holds to the file ``destination``: the file's bytes, or a
        tar of the directory (``kind`` says which): what the gateway's download uses.
        Inline, as a key's own copies are: the bytes never pass through the bucket."""
        _check_id(sandbox_id)
        await self._stored()
        limits = ArchiveLimits.from_mb(max_mb)
        return await get_object(
            self.nc,
            sandbox_id,
            path,
            Path(destination),
            limits=limits,
            key_id=self.key_id,
            patience=self.rate_patience,
            inline=True,
        )

    async def events(
        self, *, sandbox_id: str | None = None, follow: bool = False, start_seq: int = 1
    ) -> AsyncIterator[tuple[int, dict[str, Any]]]:
        """The log's events (one sandbox's with ``sandbox_id``) as ``(sequence, event)``
        from ``start_seq`` on. Without ``follow`` it ends at the end of the log; with it,
        it waits for new events for ever (break out of the loop). A later call with
        ``start_seq`` = the last sequence + 1 goes on where this one stopped.

        The outcomes this client has seen are in what it reads (:meth:`_stored`)."""
        await self._stored()
        if isinstance(self.outcomes, KeyOutcomeWatcher):
            async for found in self._key_events(self.outcomes, sandbox_id, follow, start_seq):
                yield found
            return
        filter_subject = (
            subjects.sandbox_events_filter(sandbox_id) if sandbox_id else subjects.EVENTS
        )
        async for seq, _subject, data, _pending in read_events(
            self.js,
            start_seq=start_seq,
            filter_subject=filter_subject,
            follow=follow,
            idle_timeout=0.3,
        ):
            yield seq, msgspec.json.decode(data)

    async def _key_events(
        self, watcher: KeyOutcomeWatcher, sandbox_id: str | None, follow: bool, start_seq: int
    ) -> AsyncIterator[tuple[int, dict[str, Any]]]:
        """A key identity reads one of its sandboxes' events a page at a time (it may not
        read the events stream: docs/security.md#keys-on-the-bus)."""
        if sandbox_id is None:
            raise InvalidInput(
                "an API key reads one sandbox's events over the bus (give sandbox_id); its "
                "whole project's are on the gateway's GET /v1/events"
            )
        _check_id(sandbox_id)
        after = start_seq - 1
        while True:
            page = await watcher.page({"sandbox_id": sandbox_id}, after)
            for seq, event in page:
                after = seq
                yield seq, event
            if not page:
                if not follow:
                    return
                await asyncio.sleep(watcher.POLL_MAX_SECONDS)


def _check_id(sandbox_id: str) -> None:
    if not is_valid_sandbox_id(sandbox_id):
        raise InvalidInput(
            f"invalid sandbox id {sandbox_id!r}: use lowercase letters and digits, 8 to 32 "
            "characters",
            sandbox_id=None,
        )


def _exec_error(result: dict[str, Any], sandbox_id: str) -> SandboxerError:
    """An exec's ``exit`` with an ``error``: the error its ``code`` names (a paused sandbox, a
    worker that stopped, a backend that takes no input; docs/protocol.md#exec), else
    CommandFailed: the command was stopped, ran past its timeout, or could not run."""
    named = error_for(result, sandbox_id)
    if named is not None:
        return named
    message = str(result["error"])
    details = {"sandbox_id": sandbox_id, "timed_out": bool(result.get("timed_out"))}
    return CommandFailed(message, details)


def _short_of(reply: Mapping[str, Any], min_seq: int) -> bool:
    """Whether ``reply`` answers from a view that has not folded the log up to ``min_seq``."""
    position = reply.get("position")
    return bool(min_seq and reply.get("ok") and isinstance(position, int) and position < min_seq)
