"""ext.e2b: one of our sandboxes is one E2B sandbox, labelled with our id in its metadata.

The metadata also names the declaration that made it (``sandboxer_extension``): another
declaration on the same E2B team (``ext.e2b-eu`` with the same key) lists and kills only
its own. A sandbox made before that label is listed as ``unmarked``, for the log to say
whose it is, and a teardown of its sandbox id removes it (ours or the other's: that id
was made once, before either labelled its backend).

The label is the source of truth for which E2B sandbox is ours: the in-memory
map from our id to E2B's is only a cache, and a restarted worker finds every
sandbox again by its ``sandboxer_id`` metadata; a cached id E2B no longer knows
(another worker process made the sandbox again) is looked up again by label.
A redelivered provision kills what an earlier attempt made before creating, and
a create whose answer was lost is looked for by label before it is sent again
(:mod:`sandboxer.hosted.create_once`). E2B lists only running and paused
sandboxes, so a create still booting is not found then, and the create sent
again makes a second: the lost one's retry, or a redelivered job's create while
its killed worker's is still on its way. After either, ``wait_ready`` kills every
labelled sandbox but ours, so one that has landed by then does not run on beside
it. For the same reason a failed create's teardown finds nothing while a create
we gave up on still boots: it looks again until that create can no longer land
(``create_settle``, shared :class:`~sandboxer.hosted.create_once.LateCreates`).

Two attempts at one provisioning may run at once (the job redelivered past ``ack_wait``
while the first worker is frozen or cut off, not dead): each E2B sandbox is labelled with
the attempt that made it, and an attempt adopts only its own and kills only its own and
earlier ones', never a later one's (:mod:`sandboxer.hosted.attempt_fence`); the worker
tears a failed attempt down through :meth:`E2bExtension.teardown_attempt`. An earlier
attempt's create that lands after the later one's ``ready`` runs beside it until a
teardown, a reap or the worker's start removes it: meanwhile every call for the sandbox
(tokens, pause, resume, timeout) takes the one the log's ``ready`` names, which the worker
tells it (:meth:`E2bExtension.follow_log`), never the copy.

Our TTL ends the sandbox; E2B's own timeout is set a margin past it as a
backstop and moved whenever the TTL moves (:class:`TimeoutKeeper`). Commands
run through envd inside the sandbox, which the control-plane API does not
cover, so this backend has no exec; its snapshots make E2B templates, not the
workspace copy sandboxer's snapshots store, so it has no snapshot either
(docs/ext-e2b.md).

The envd access token E2B issues per sandbox goes from the answer straight into
the token store (``$SANDBOXER_HOME/tokens``), which the token service hands to
the sandbox's own actor or project (:class:`TokenHolder`); it is never in a
descriptor, an event or a log line.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from sandboxer.clock import utc_now
from sandboxer.config.extension_decl import ExtensionDecl
from sandboxer.config.settings import Settings
from sandboxer.domain.found import Frozen
from sandboxer.errors import ExtensionError, SandboxNotFound, Unsupported
from sandboxer.events.reachability import provider_access
from sandboxer.extensions.base import (
    FoundSandbox,
    OutputSink,
    ProvisionRequest,
    Readiness,
    Stdin,
)
from sandboxer.extensions.e2b.api import E2bApi
from sandboxer.extensions.e2b.config import parse_settings, resolve_endpoint
from sandboxer.extensions.e2b.wire import (
    Created,
    Listed,
    create_body,
    descriptor,
    resource_warnings,
    template_of,
    timeout_for,
    ttl_seconds,
)
from sandboxer.extensions.ssh_checks import check_sandbox_id
from sandboxer.hosted.attempt_fence import MadeBy, live_one, own, removable
from sandboxer.hosted.attempt_fence import made_by as labelled_attempt
from sandboxer.hosted.create_once import LateCreates, create_once
from sandboxer.hosted.keyed import KeyedCopies
from sandboxer.hosted.labels import SANDBOX_LABEL, made_elsewhere
from sandboxer.hosted.provider_settings import ProviderValue
from sandboxer.hosted.tokens import SandboxTokens
from sandboxer.ids import is_valid_sandbox_id
from sandboxer.recent import Recent

__all__ = ["E2bExtension"]

FROZEN_BY_STATE: dict[str, Frozen] = {"running": "none", "paused": "all"}
"""How much of a listed sandbox E2B's pause holds, by its state."""

log = logging.getLogger(__name__)

EXTENSION_ID = "ext.e2b"

REMEMBERED = 10_000
"""Sandboxes whose E2B id and log position a worker keeps in memory: every call is told the
log's again (:meth:`E2bExtension.follow_log`) and one forgotten is looked up by label, so
the bound costs a lookup, never a wrong answer; without it, every sandbox a long-running
worker ever served (destroyed by another worker, expired at E2B) stayed."""

R = TypeVar("R")


class E2bExtension:
    """Sandboxes in E2B microVMs, through E2B's control-plane API."""

    host_local = False

    def __init__(
        self,
        settings: Mapping[str, Any] | None = None,
        *,
        extension: str = EXTENSION_ID,
        tokens: SandboxTokens | None = None,
        key: ProviderValue | None = None,
        late: LateCreates | None = None,
    ) -> None:
        self.id = extension
        self._raw_settings = dict(settings or {})
        self._settings = parse_settings(self._raw_settings, extension)
        self._key = key
        """A project's own key (BYOK) in place of the declaration's; None for the operator's."""
        self._keyed: KeyedCopies[E2bExtension] = KeyedCopies(self._copy_with)
        self._tokens = tokens
        """Where E2B's per-sandbox tokens are kept; without one they are asked of E2B."""
        self._api: E2bApi | None = None
        self._known: Recent[str, str] = Recent(REMEMBERED)
        """Our sandbox id -> E2B's, a cache of what the labels (or the log's ``ready``) say."""
        self._live: Recent[str, MadeBy] = Recent(REMEMBERED)
        """Our sandbox id -> the provisioning the log is at, as the worker last told it
        (:meth:`follow_log`): whose sandbox a call takes when several carry our id."""
        self._retried: set[str] = set()
        """Sandboxes whose create this process sent again: with a redelivered job's, the only
        ones that can have a second E2B sandbox (:attr:`ProvisionRequest.redelivered`)."""
        self._late = late or LateCreates(self._settings.create_settle)
        """Creates given up on that E2B may still carry out: teardown waits them out."""

    @classmethod
    def from_declaration(cls, decl: ExtensionDecl, settings: Settings) -> E2bExtension:
        return cls(decl.settings, extension=decl.id, tokens=SandboxTokens(settings.home / "tokens"))

    def with_key(self, key: str, source: str) -> E2bExtension:
        """This backend speaking to E2B with a project's own key (:class:`KeyedBackend`)."""
        return self._keyed.get(key, source)

    def _copy_with(self, key: str, source: str) -> E2bExtension:
        return E2bExtension(
            self._raw_settings,
            extension=self.id,
            tokens=self._tokens,
            key=ProviderValue(key, source),
            late=self._late,
        )

    async def aclose(self) -> None:
        await self._keyed.aclose()
        if self._api is not None:
            await self._api.aclose()
            self._api = None

    def follow_log(self, sandbox_id: str, made_by: MadeBy | None, provider_id: str | None) -> None:
        """What the log says of the sandbox, told before each call for it
        (:class:`~sandboxer.extensions.capabilities.LogGuided`): the E2B id its ``ready``
        recorded is the one calls take (looked up again by label only if E2B no longer knows
        it), and a lookup by label takes the sandbox of the provisioning ``made_by``, not an
        earlier attempt's copy that E2B may list first."""
        if made_by is None:
            self._live.pop(sandbox_id, None)
        else:
            self._live.put(sandbox_id, made_by)
        if provider_id is not None:
            self._known.put(sandbox_id, provider_id)

    # -- the Extension protocol ----------------------------------------------------------------

    async def provision(self, request: ProvisionRequest) -> None:
        sandbox_id = request.sandbox_id
        check_sandbox_id(sandbox_id, self.id)
        template = template_of(request.profile)
        api = self._client()
        mine = request.made_by
        # A redelivered job: what an earlier attempt made is removed, and we start clean. (A
        # first attempt had none before it: the listing would cost every create a request.)
        # Not a later attempt's: this one may be the earlier, resumed past ack_wait.
        leftovers = (
            await self._labelled(sandbox_id, removable_by=mine) if request.redelivered else []
        )
        for leftover in leftovers:
            log.info("%s: killing %s left by an earlier attempt", sandbox_id, leftover.provider_id)
            await api.kill(leftover.provider_id, sandbox_id=sandbox_id)
        self._known.pop(sandbox_id, None)
        timeout = timeout_for(
            request.expires_at,
            utc_now(),
            self._settings,
            ttl_fallback=ttl_seconds(request.profile),
        )
        body, _warnings = create_body(request, template, timeout.seconds, self.id)

        async def find() -> tuple[Created, dict[str, str]] | None:
            self._retried.add(sandbox_id)  # asked before a create is sent again
            # Only this attempt's create is ours to adopt: another attempt's sandbox is its
            # own to keep (a later one's) or to be killed once ours is ready (an earlier one's).
            found = await self._labelled(sandbox_id, made_by=mine)
            for extra in found[1:]:  # never two: keep the first, kill the rest
                await api.kill(extra.provider_id, sandbox_id=sandbox_id)
            if not found:
                return None
            tokens = await api.tokens(found[0].provider_id, sandbox_id=sandbox_id)
            return found[0].as_created(), tokens or {}

        try:
            created, tokens = await create_once(
                lambda: api.create(body, sandbox_id=sandbox_id),
                find,
                sandbox_id=sandbox_id,
                late=self._late,
                redelivered=request.redelivered,
            )
            self._known.put(sandbox_id, created.provider_id)
            await self._keep_tokens(sandbox_id, tokens)
        except BaseException:
            # No wait_ready follows to take the mark: the failed attempt is torn down, and
            # its job, if it comes again, comes redelivered (a higher attempt, which lists
            # twins anyway). Left, the mark stayed for the worker's life.
            self._retried.discard(sandbox_id)
            raise
        log.info(
            "%s: E2B sandbox %s from template %s, timeout %d s",
            sandbox_id,
            created.provider_id,
            template,
            timeout.seconds,
        )

    async def wait_ready(self, request: ProvisionRequest) -> Readiness:
        """E2B answers a create once the microVM runs: confirm it, and say how to reach it."""
        sandbox_id = request.sandbox_id
        check_sandbox_id(sandbox_id, self.id)
        api = self._client()
        # Taken at once, whatever follows: a later try of this provisioning is a redelivered
        # job's (a higher attempt), which lists twins anyway.
        retried = sandbox_id in self._retried
        self._retried.discard(sandbox_id)
        provider_id, sandbox = await self._on_sandbox(
            sandbox_id,
            lambda provider_id: api.get(provider_id, sandbox_id=sandbox_id),
            gone=lambda found: found is None,
            made_by=request.made_by,
        )
        if sandbox is None:
            self._known.pop(sandbox_id, None)
            raise ExtensionError(
                f"E2B sandbox {provider_id} (ours: {sandbox_id}) is gone before it was ready: "
                "it was killed, or its timeout ran out; create it again",
                sandbox_id=sandbox_id,
                extension=self.id,
            )
        # A create sent once made one sandbox: no listing. One sent again, by this process
        # or by the killed worker of a redelivered job, may have a twin that landed since.
        if request.redelivered or retried:
            await self._kill_others(sandbox_id, provider_id, request.made_by)
        if sandbox.state != "running":
            raise ExtensionError(
                f"E2B sandbox {provider_id} (ours: {sandbox_id}) is {sandbox.state!r}, not "
                "running, right after its create",
                sandbox_id=sandbox_id,
                extension=self.id,
            )
        _body, warnings = create_body(request, template_of(request.profile), 0, self.id)
        warnings += resource_warnings(request.profile, sandbox)
        timeout = timeout_for(
            request.expires_at,
            utc_now(),
            self._settings,
            ttl_fallback=ttl_seconds(request.profile),
        )
        if timeout.warning:
            warnings.append(timeout.warning)
        found = descriptor(sandbox, api.endpoint.domain)
        found.update(
            provider_access("e2b", sandbox_id, sandbox.provider_id, url=found.get("port_url"))
        )
        return Readiness(descriptor=found, warnings=warnings)

    async def teardown(self, sandbox_id: str, *, host: str | None = None) -> None:
        """Kill every E2B sandbox labelled with our id (and the cached one); gone is done.
        While a create of it we gave up on may still land, it is looked for again."""
        del host
        check_sandbox_id(sandbox_id, self.id)
        api = self._client()

        async def kill_ours() -> None:
            targets = {found.provider_id for found in await self._labelled(sandbox_id)}
            cached = self._known.pop(sandbox_id, None)
            if cached is not None:
                targets.add(cached)
            for provider_id in sorted(targets):
                if await api.kill(provider_id, sandbox_id=sandbox_id):
                    log.info("%s: killed E2B sandbox %s", sandbox_id, provider_id)

        await self._late.teardown(sandbox_id, kill_ours)
        self._live.pop(sandbox_id, None)
        await self._forget_tokens(sandbox_id)

    async def teardown_attempt(
        self, sandbox_id: str, made_by: MadeBy, *, host: str | None = None
    ) -> None:
        """Kill the E2B sandboxes labelled with our id that provisioning ``made_by`` or an
        earlier one made, never a later one's; looked for again while a create we gave up on
        may still land (:class:`~sandboxer.extensions.capabilities.AttemptScoped`)."""
        del host
        check_sandbox_id(sandbox_id, self.id)
        api = self._client()
        self._known.pop(sandbox_id, None)  # it may name a later attempt's: looked up again

        async def kill_this_attempts() -> None:
            for found in await self._labelled(sandbox_id, removable_by=made_by):
                if await api.kill(found.provider_id, sandbox_id=sandbox_id):
                    log.info("%s: killed E2B sandbox %s", sandbox_id, found.provider_id)

        await self._late.teardown(sandbox_id, kill_this_attempts)
        # A later attempt's token may go too: one missing is asked of E2B again, while one
        # kept for a sandbox killed here would be handed out.
        await self._forget_tokens(sandbox_id)

    async def list_sandboxes(self) -> Sequence[FoundSandbox]:
        """Every running or paused E2B sandbox of the team that carries our label and was
        made by this declaration, or before the label said which (``unmarked``); a paused
        one is frozen, a running one is not (``frozen``: one not as the log says is paused
        or resumed by the worker's next sweep)."""
        return [
            FoundSandbox(
                sandbox_id=ours,
                alive=True,
                detail=_detail(sandbox),
                unmarked=sandbox.maker is None,
                made_by=labelled_attempt(sandbox.metadata),
                frozen=FROZEN_BY_STATE.get(sandbox.state),
            )
            for sandbox in await self._client().list_live()
            if (ours := self._ours(sandbox)) is not None
        ]

    async def exec(
        self,
        sandbox_id: str,
        argv: Sequence[str],
        output: OutputSink,
        *,
        host: str | None = None,
        service: str | None = None,
        stdin: Stdin | None = None,
    ) -> int:
        raise Unsupported(
            "ext.e2b does not run commands: E2B runs them through envd inside the sandbox, "
            "which its control-plane API does not cover. Use the E2B SDK "
            "(Sandbox.connect(<sandbox_id from the ready descriptor>)) with your own key, "
            "or a backend whose declaration has exec: true",
            sandbox_id=sandbox_id,
            extension=self.id,
        )

    # -- capabilities -------------------------------------------------------------------------

    async def pause(self, sandbox_id: str, *, host: str | None = None) -> None:
        """Pause the microVM (E2B keeps its memory and disk, and stops billing it)."""
        del host
        check_sandbox_id(sandbox_id, self.id)
        api = self._client()
        provider_id, status = await self._on_sandbox(
            sandbox_id,
            lambda provider_id: api.pause(provider_id, sandbox_id=sandbox_id),
            gone=lambda status: status == 404,
        )
        if status == 409:
            await self._expect_state(sandbox_id, provider_id, "paused", "pause")
        elif status == 404:
            raise self._gone(sandbox_id, provider_id)

    async def resume(self, sandbox_id: str, *, host: str | None = None) -> None:
        """Resume it for ``resume_timeout`` seconds; the worker then moves the timeout to
        the new TTL (``set_timeout``)."""
        del host
        check_sandbox_id(sandbox_id, self.id)
        api = self._client()
        seconds = self._settings.resume_timeout
        provider_id, (status, tokens) = await self._on_sandbox(
            sandbox_id,
            lambda provider_id: api.resume(provider_id, seconds, sandbox_id=sandbox_id),
            gone=lambda answer: answer[0] == 404,
        )
        if tokens:
            await self._keep_tokens(sandbox_id, tokens)
        if status == 409:
            await self._expect_state(sandbox_id, provider_id, "running", "resume")
        elif status == 404:
            raise self._gone(sandbox_id, provider_id)

    async def set_timeout(
        self, sandbox_id: str, expires_at: str, *, host: str | None = None
    ) -> None:
        """Move E2B's timeout to ``timeout_margin`` past our new expiry."""
        del host
        check_sandbox_id(sandbox_id, self.id)
        timeout = timeout_for(expires_at, utc_now(), self._settings, ttl_fallback=0)
        if timeout.warning:
            log.warning("%s: %s", sandbox_id, timeout.warning)
        api = self._client()
        provider_id, moved = await self._on_sandbox(
            sandbox_id,
            lambda provider_id: api.set_timeout(
                provider_id, timeout.seconds, sandbox_id=sandbox_id
            ),
            gone=lambda moved: not moved,
        )
        if not moved:
            raise self._gone(sandbox_id, provider_id)

    async def sandbox_tokens(self, sandbox_id: str) -> dict[str, str]:
        """The tokens E2B issued for the sandbox (its envd access token), for the token
        service only: from the store, else asked of E2B (a sandbox adopted after a lost
        create answer, or made before the store existed)."""
        check_sandbox_id(sandbox_id, self.id)
        if self._tokens is not None:
            kept = await asyncio.to_thread(self._tokens.read, sandbox_id)
            if kept:
                return kept
        api = self._client()
        provider_id, tokens = await self._on_sandbox(
            sandbox_id,
            lambda provider_id: api.tokens(provider_id, sandbox_id=sandbox_id),
            gone=lambda tokens: tokens is None,
        )
        if tokens is None:
            raise self._gone(sandbox_id, provider_id)
        await self._keep_tokens(sandbox_id, tokens)
        return tokens

    async def inspect_host(self, host: str | None = None) -> dict[str, Any]:
        """What the team runs at E2B: our sandboxes by state, and how many are not ours."""
        del host  # E2B has no hosts of ours
        api = self._client()
        everything = await api.list_live()
        ours = [s for s in everything if self._ours(s)]
        return {
            "provider": "e2b",
            "api_url": api.endpoint.base_url,
            "reachable": True,
            "sandboxes": len(ours),
            "alive": len(ours),
            "running": sum(1 for s in ours if s.state == "running"),
            "paused": sum(1 for s in ours if s.state == "paused"),
            "not_ours": len(everything) - len(ours),
            "workspaces": sorted({s.ours for s in ours if s.ours}),
        }

    # -- helpers -----------------------------------------------------------------------------

    def _client(self) -> E2bApi:
        """The API client, built on first use (a missing key is a ConfigError then, not at start)."""
        if self._api is None:
            self._api = E2bApi(
                resolve_endpoint(self._settings, self.id, self._key),
                self._settings,
                provider=self.id,
            )
        return self._api

    async def _keep_tokens(self, sandbox_id: str, tokens: dict[str, str]) -> None:
        if self._tokens is not None and tokens:
            await asyncio.to_thread(self._tokens.keep, sandbox_id, tokens)

    async def _forget_tokens(self, sandbox_id: str) -> None:
        if self._tokens is not None:
            await asyncio.to_thread(self._tokens.forget, sandbox_id)

    async def _labelled(
        self,
        sandbox_id: str,
        *,
        made_by: MadeBy | None = None,
        removable_by: MadeBy | None = None,
    ) -> list[Listed]:
        """E2B's sandboxes of ours for ``sandbox_id``; not another declaration's on the same
        team (a copy it made before the sandbox was rerouted here, or the other way round).
        Not filtered by E2B on our extension label: those made before it have none.
        ``made_by``: only that provisioning's; ``removable_by``: only those that
        provisioning may kill (its own and earlier ones')."""
        return [
            found
            for found in await self._client().list_live({SANDBOX_LABEL: sandbox_id})
            if not made_elsewhere(found.metadata, self.id)
            and (made_by is None or own(found.metadata, made_by))
            and (removable_by is None or removable(found.metadata, removable_by))
        ]

    def _ours(self, sandbox: Listed) -> str | None:
        """Our id when the sandbox carries our label with a valid id (a hostile label is not
        ours) and no other declaration's name."""
        ours = sandbox.ours
        if (
            ours is None
            or not is_valid_sandbox_id(ours)
            or made_elsewhere(sandbox.metadata, self.id)
        ):
            return None
        return ours

    async def _provider_id(self, sandbox_id: str, made_by: MadeBy | None = None) -> str:
        """E2B's id for ours: from the cache, else by our label (a restarted worker), and
        then only ``made_by``'s when given (a provisioning confirms its own create), else the
        one the log names (:func:`~sandboxer.hosted.attempt_fence.live_one`): two may carry
        our id while an earlier attempt's late create runs beside the live one."""
        cached = self._known.get(sandbox_id)
        if cached is not None:
            return cached
        found = await self._labelled(sandbox_id, made_by=made_by)
        chosen = (
            (found[0] if found else None)
            if made_by is not None
            else live_one(found, lambda item: item.metadata, self._live.get(sandbox_id))
        )
        if chosen is None:
            raise SandboxNotFound(
                f"no E2B sandbox carries {SANDBOX_LABEL}={sandbox_id}: it was killed, or its "
                "timeout ran out",
                sandbox_id=sandbox_id,
                extension=self.id,
            )
        self._known.put(sandbox_id, chosen.provider_id)
        return chosen.provider_id

    async def _on_sandbox(
        self,
        sandbox_id: str,
        act: Callable[[str], Awaitable[R]],
        *,
        gone: Callable[[R], bool],
        made_by: MadeBy | None = None,
    ) -> tuple[str, R]:
        """``act`` on E2B's sandbox for ours: (its E2B id, what ``act`` answered).

        The cached id may be stale: another worker process may have made the sandbox again
        since (a recreate, a redelivered provision). When E2B no longer knows a cached id,
        the cache is dropped and the sandbox looked up by its label, once; an id just read
        from the label is the truth, and its answer stands. ``made_by``: the label looked up
        is that provisioning's (see :meth:`_provider_id`)."""
        cached = sandbox_id in self._known
        provider_id = await self._provider_id(sandbox_id, made_by)
        answer = await act(provider_id)
        if cached and gone(answer):
            log.info("%s: E2B no longer knows %s; looking it up by label", sandbox_id, provider_id)
            self._known.pop(sandbox_id, None)
            provider_id = await self._provider_id(sandbox_id, made_by)
            answer = await act(provider_id)
        return provider_id, answer

    async def _kill_others(self, sandbox_id: str, keep: str, mine: MadeBy) -> None:
        """Kill every E2B sandbox labelled with our id but ``keep`` that provisioning
        ``mine`` or an earlier one made.

        A create that outlived its request timeout, or whose worker was killed waiting for
        it (the job then redelivered), may finish after the create sent again made another:
        E2B's list shows only running and paused sandboxes, so while it booted the second
        could not see it. Once ours is ready, any other of ours or earlier is such a one. A
        later attempt's is not: the log's ``ready`` may name it."""
        for other in await self._labelled(sandbox_id, removable_by=mine):
            if other.provider_id != keep:
                log.info(
                    "%s: killing %s, a second E2B sandbox of it", sandbox_id, other.provider_id
                )
                await self._client().kill(other.provider_id, sandbox_id=sandbox_id)

    async def _expect_state(
        self, sandbox_id: str, provider_id: str, wanted: str, operation: str
    ) -> None:
        """After a 409: done already if the sandbox is in ``wanted``; else say what it is."""
        sandbox = await self._client().get(provider_id, sandbox_id=sandbox_id)
        if sandbox is None:
            raise self._gone(sandbox_id, provider_id)
        if sandbox.state != wanted:
            raise ExtensionError(
                f"E2B refused to {operation} sandbox {provider_id} (ours: {sandbox_id}): it is "
                f"{sandbox.state!r}",
                sandbox_id=sandbox_id,
                extension=self.id,
            )

    def _gone(self, sandbox_id: str, provider_id: str) -> SandboxNotFound:
        self._known.pop(sandbox_id, None)
        return SandboxNotFound(
            f"E2B sandbox {provider_id} (ours: {sandbox_id}) is gone: it was killed, or its "
            "timeout ran out",
            sandbox_id=sandbox_id,
            extension=self.id,
        )


def _detail(sandbox: Listed) -> dict[str, Any]:
    detail: dict[str, Any] = {
        "provider_id": sandbox.provider_id,
        "state": sandbox.state,
        "template": sandbox.alias or sandbox.template,
    }
    if sandbox.end_at:
        detail["provider_end_at"] = sandbox.end_at
    return detail
