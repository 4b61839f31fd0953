"""``ext.daytona``: sandboxes at Daytona, through its REST API as the v0.190.0 spec describes it.

A sandbox of ours is the Daytona sandbox named ``sandboxer-<id>`` and labelled
with our id (:mod:`.plan`). The name makes every lookup immediate (Daytona's
list is only eventually consistent) and a second create with it is refused,
so a create whose answer was lost is found and adopted, never repeated, and
a redelivered job's create never makes a second beside its dead worker's.
Pause and resume are Daytona's stop and start; exec and snapshots go through
the toolbox's execute. Daytona's own idle stop and delete intervals are set
just past our TTL, so a sandbox sandboxer lost track of ends soon after.

Its labels also name the declaration that made it (:func:`.plan.maker`), so two
declarations on one Daytona organization (``ext.daytona`` and an
``ext.daytona-eu`` with the same key) each list, adopt, delete and reap only
their own: a sandbox of the name ``sandboxer-<id>`` that the other made is,
to this one, not there. A sandbox made before the labels said which is listed
``unmarked``, for the log to say whose, and a teardown of its id deletes it.

Two attempts at one provisioning may run at once (the job redelivered past ``ack_wait``
while the first worker is frozen or cut off from NATS, not dead). Each sandbox is labelled
with the attempt that made it, and an attempt adopts only its own and deletes only its own
and earlier ones', never a later one's (:mod:`sandboxer.hosted.attempt_fence`): a create
refused because the name is taken adopts the holder only when it is this attempt's, deletes
an earlier attempt's and creates again, and stops for a later one's. The worker tears a
failed or taken-over attempt down through :meth:`DaytonaExtension.teardown_attempt`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sandboxer.config.extension_decl import ExtensionDecl
from sandboxer.config.settings import Settings
from sandboxer.domain.left_out import LeftOut
from sandboxer.errors import (
    ExtensionError,
    InvalidInput,
    ProviderError,
    ProviderUnavailable,
    RemoteCommandFailed,
    SandboxNotFound,
    Unsupported,
)
from sandboxer.events.reachability import provider_access
from sandboxer.extensions.base import (
    FoundSandbox,
    OutputSink,
    ProvisionRequest,
    Readiness,
    Stdin,
)
from sandboxer.extensions.daytona import plan
from sandboxer.extensions.daytona.api import DaytonaApi, ProviderSandbox
from sandboxer.extensions.daytona.config import EXTENSION_ID, DaytonaConfig
from sandboxer.extensions.daytona.exec_wire import (
    CONTROL_ANSWER_BYTES,
    INPUT_CHUNK,
    MAKE_INPUT,
    MAX_OUTPUT,
    answer_bytes,
    append_command,
    parse_output,
    wrapped_command,
)
from sandboxer.extensions.daytona.workspace_copy import (
    TOO_LARGE,
    TOO_LARGE_EXIT,
    answer_limit,
    pack_command,
    unpack_answer,
)
from sandboxer.extensions.ssh_checks import check_argv, check_sandbox_id
from sandboxer.extensions.ssh_exec_stop import stoppable
from sandboxer.hosted.attempt_fence import MadeBy, holder_action, own, removable
from sandboxer.hosted.attempt_fence import made_by as labelled_attempt
from sandboxer.hosted.create_once import LateCreates, create_once
from sandboxer.hosted.http import ProviderHttp
from sandboxer.hosted.keyed import KeyedCopies
from sandboxer.hosted.labels import ATTEMPT_LABEL, SANDBOX_LABEL, our_sandbox_id
from sandboxer.hosted.provider_settings import ProviderValue
from sandboxer.hosted.workspace_copy import too_large
from sandboxer.ids import is_valid_sandbox_id
from sandboxer.workspaces.limits import ArchiveLimits

__all__ = ["DaytonaExtension"]

log = logging.getLogger(__name__)

STOPPED_STATES = frozenset({"stopped", "stopping", "archived", "archiving"})
"""Daytona's states of a sandbox that is stopped or on its way there (the spec's
SandboxState): a paused one of ours is one of them."""

OUTPUT_TAIL = 2000

SETTLED_STATES = frozenset({"started", "stopped", "archived"})
"""Daytona's states with nothing under way."""

FIT_ROUNDS = 3
"""Writes of the auto-delete a failed pause makes while the state keeps changing under it
(each change is another attempt's stop or start landing): past that, it logs and gives up."""


def _stopped_or_stopping(found: ProviderSandbox) -> bool:
    """Stopped, on its way there, or with a stop Daytona took but has not begun: its
    desiredState says so at once, while its state still says ``started``."""
    return found.state in STOPPED_STATES or found.desired_state in STOPPED_STATES


def _settled(found: ProviderSandbox) -> bool:
    """Nothing under way: a state at rest, and the one Daytona wants (when it says which)."""
    return found.state in SETTLED_STATES and found.desired_state in {None, found.state}


class DaytonaExtension:
    """The Daytona backend; its endpoint and key are resolved on first use."""

    host_local = False

    def __init__(
        self,
        config: DaytonaConfig,
        *,
        extension: str = EXTENSION_ID,
        limits: ArchiveLimits | None = None,
        key: ProviderValue | None = None,
        late: LateCreates | None = None,
    ) -> None:
        self.id = extension
        """The declaration's id: each declaration labels, lists and deletes only its own."""
        self._config = config
        self._limits = limits or ArchiveLimits()
        self._key = key
        """A project's own key (BYOK) in place of the declaration's; None for the operator's."""
        self._late = late or LateCreates(config.create_settle)
        """Creates given up on that Daytona may still carry out: teardown waits them out."""
        self._keyed: KeyedCopies[DaytonaExtension] = KeyedCopies(
            lambda value, source: DaytonaExtension(
                config,
                extension=self.id,
                limits=self._limits,
                key=ProviderValue(value, source),
                late=self._late,
            )
        )
        self._api: DaytonaApi | None = None
        self._target: str | None = None

    @classmethod
    def from_declaration(cls, decl: ExtensionDecl, settings: Settings) -> DaytonaExtension:
        return cls(
            DaytonaConfig.from_settings(decl.settings, decl.id),
            extension=decl.id,
            limits=ArchiveLimits.from_mb(settings.upload_max_mb),
        )

    def with_key(self, key: str, source: str) -> DaytonaExtension:
        """This backend speaking to Daytona with a project's own key (:class:`KeyedBackend`)."""
        return self._keyed.get(key, source)

    async def aclose(self) -> None:
        await self._keyed.aclose()
        if self._api is not None:
            await self._api.aclose()
            self._api = None

    def _client(self) -> DaytonaApi:
        """The API client, built on first use (a missing key fails here, naming where to set it)."""
        if self._api is None:
            endpoint = self._config.endpoint(self._key)
            auth = {"Authorization": f"Bearer {endpoint.key.value}"}
            url = endpoint.api_url.value
            timeout = self._config.request_timeout
            self._api = DaytonaApi(
                ProviderHttp(
                    provider=self.id,
                    base_url=url,
                    auth_headers=auth,
                    key_source=endpoint.key.source,
                    timeout=timeout,
                ),
                ProviderHttp(
                    provider=self.id,
                    base_url=url,
                    auth_headers=auth,
                    key_source=endpoint.key.source,
                    timeout=self._config.exec_timeout + timeout,
                ),
            )
            self._target = endpoint.target.value if endpoint.target else None
        return self._api

    # -- the Extension protocol ------------------------------------------------------------

    async def provision(self, request: ProvisionRequest) -> None:
        sandbox_id = request.sandbox_id
        check_sandbox_id(sandbox_id, self.id)
        api = self._client()
        body = self._plan(request).body  # every check before the first request
        mine = request.made_by
        name = plan.provider_name(sandbox_id)
        # A redelivered job: what an earlier attempt made is deleted, and we start clean. A
        # first attempt needs no look: the name is free, or the create's 409 says who holds
        # it. Never a later attempt's: this one may be the earlier, resumed past ack_wait.
        if request.redelivered:
            await self._remove_ours(api, sandbox_id, wait=True, removable_by=mine)

        async def create() -> ProviderSandbox:
            try:
                return await api.create(body, sandbox_id)
            except ProviderError as exc:
                if exc.status != 409:
                    raise
                holder = await self._name_holder(api, name, sandbox_id, mine, exc)
                if holder is not None:  # this attempt's own create, whose answer was lost
                    return holder
                # An earlier attempt's held it, deleted now: the name is free again.
                return await api.create(body, sandbox_id)

        made = await create_once(
            create,
            lambda: self._get_own(api, name, sandbox_id, mine),
            sandbox_id=sandbox_id,
            late=self._late,
            redelivered=request.redelivered,
        )
        log.info("%s: Daytona sandbox %s created for %s", self.id, made.id, sandbox_id)

    async def wait_ready(self, request: ProvisionRequest) -> Readiness:
        sandbox_id = request.sandbox_id
        check_sandbox_id(sandbox_id, self.id)
        warnings = self._plan(request).warnings
        # Only the sandbox this attempt made: a later attempt's may hold the name by now.
        ready = await self._wait_for(sandbox_id, {"started"}, "start", made_by=request.made_by)
        descriptor: dict[str, Any] = {
            "kind": "daytona",
            "sandbox_id": ready.id,
            "name": ready.name,
            "state": ready.state,
            **provider_access("daytona", sandbox_id, ready.id),
        }
        if ready.target:
            descriptor["target"] = ready.target
        return Readiness(descriptor=descriptor, warnings=warnings)

    async def teardown(self, sandbox_id: str, *, host: str | None = None) -> None:
        check_sandbox_id(sandbox_id, self.id)
        api = self._client()
        # While a create of it we gave up on may still land, it is looked for again.
        await self._late.teardown(
            sandbox_id, lambda: self._remove_ours(api, sandbox_id, wait=False)
        )

    async def teardown_attempt(
        self, sandbox_id: str, made_by: MadeBy, *, host: str | None = None
    ) -> None:
        """Delete our Daytona sandboxes of ``sandbox_id`` that provisioning ``made_by`` or an
        earlier one made, never a later one's; looked for again while a create we gave up on
        may still land (:class:`~sandboxer.extensions.capabilities.AttemptScoped`)."""
        del host
        check_sandbox_id(sandbox_id, self.id)
        api = self._client()
        await self._late.teardown(
            sandbox_id,
            lambda: self._remove_ours(api, sandbox_id, wait=False, removable_by=made_by),
        )

    async def list_sandboxes(self) -> Sequence[FoundSandbox]:
        """This declaration's sandboxes at Daytona, and those made before the labels said
        which declaration made them (``unmarked``: the log says whose); stopped (paused)
        ones are alive, failed ones are not, and those being deleted are left out (Daytona
        is ending them). A started one is not frozen, a stopped or archived one is
        (``frozen``): a stop that landed after its pause gave up, on a sandbox the log calls
        ready, is started again by the worker's next sweep."""
        api = self._client()
        listed = await api.list({plan.BACKEND_LABEL: self.id})
        if self.id != plan.OLD_MAKER:
            # Those older ones were all labelled ext.daytona, whichever declaration made them.
            listed += await api.list({plan.BACKEND_LABEL: plan.OLD_MAKER})
        found = []
        seen: set[str] = set()
        for item in listed:
            ours = our_sandbox_id(item.labels)
            if (
                ours is None
                or not is_valid_sandbox_id(ours)
                or item.state in plan.GONE_STATES
                or not self._mine(item)
                or item.id in seen
            ):
                continue
            seen.add(item.id)
            detail: dict[str, Any] = {"provider_id": item.id, "state": item.state}
            if item.error_reason:
                detail["error_reason"] = item.error_reason
            found.append(
                FoundSandbox(
                    sandbox_id=ours,
                    alive=plan.is_alive(item.state),
                    detail=detail,
                    unmarked=plan.maker(item.labels) is None,
                    made_by=labelled_attempt(item.labels),
                    frozen=plan.FROZEN_BY_STATE.get(item.state or ""),
                )
            )
        return found

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
        check_sandbox_id(sandbox_id, self.id)
        check_argv(argv, sandbox_id, self.id)
        if service is not None:
            raise Unsupported(
                f"{self.id} sandboxes have no services; run the command without --service",
                sandbox_id=sandbox_id,
                extension=self.id,
            )
        found = await self._started(sandbox_id, "run a command")
        api = self._client()
        # The toolbox answers the whole output at once and we hold it: each stream is cut
        # at the cap, never above the copy limit the operator set for what we hold.
        cap = min(MAX_OUTPUT, self._limits.max_bytes)

        async def execute(command: str, max_bytes: int = CONTROL_ANSWER_BYTES) -> tuple[int, str]:
            return await api.execute(
                found.id,
                command,
                cwd=self._config.workdir,
                timeout=self._config.exec_timeout,
                sandbox_id=sandbox_id,
                max_bytes=max_bytes,
            )

        async def run(name: str, value: str) -> int:
            input_file = await self._send_input(execute, sandbox_id, stdin)
            # The toolbox takes one command string: each argument is quoted, never joined raw.
            command = wrapped_command(argv, (name, value), input_file, max_output=cap)
            code, result = await execute(command, answer_bytes(cap + 1, cap + 1))
            out, err = parse_output(result)
            cut = [stream for stream, data in (("stdout", out), ("stderr", err)) if len(data) > cap]
            if out:
                await output("stdout", out[:cap])
            if err:
                await output("stderr", err[:cap])
            if cut:
                note = (
                    f"\nsandboxer: {self.id} delivers at most {cap} bytes of each stream (the "
                    f"toolbox answers output whole); the rest of {' and '.join(cut)} was "
                    "dropped: write large output to a file instead\n"
                )
                await output("stderr", note.encode())
            return code

        async def stop(kill: list[str]) -> object:
            return await execute(shlex.join(kill))

        # Given up (timeout, client gone), the command would run on until the toolbox's
        # exec_timeout: what it started is killed in the sandbox.
        return await stoppable(run, stop, what=f"exec in {sandbox_id}")

    async def _send_input(
        self,
        execute: Callable[[str], Awaitable[tuple[int, str]]],
        sandbox_id: str,
        stdin: Stdin | None,
    ) -> str:
        """Put ``stdin`` in a fresh file of the sandbox (:mod:`.exec_wire`); its path, or ""
        without input."""
        if stdin is None:
            return ""
        code, made = await execute(MAKE_INPUT)
        input_file = made.strip()
        if code != 0 or not input_file.startswith("/") or "\n" in input_file:
            raise RemoteCommandFailed(
                f"{self.id}: could not make a file for the command's input in {sandbox_id} "
                f"(mktemp exit {code}): {made[-OUTPUT_TAIL:].strip()}",
                exit_status=code,
                sandbox_id=sandbox_id,
                extension=self.id,
            )
        try:
            await self._fill(execute, sandbox_id, input_file, stdin)
        except BaseException:
            with contextlib.suppress(Exception):  # best effort: the sandbox's /tmp otherwise
                await execute(shlex.join(["rm", "-f", "--", input_file]))
            raise
        return input_file

    async def _fill(
        self,
        execute: Callable[[str], Awaitable[tuple[int, str]]],
        sandbox_id: str,
        input_file: str,
        stdin: Stdin,
    ) -> None:
        held = 0
        pending = bytearray()
        async for chunk in stdin:
            held += len(chunk)
            if held > self._limits.max_bytes:
                raise InvalidInput(
                    f"{self.id} holds a command's standard input whole before it runs, at most "
                    f"{self._limits.max_bytes // (1024 * 1024)} MiB (SANDBOXER_UPLOAD_MAX_MB)",
                    sandbox_id=sandbox_id,
                    extension=self.id,
                )
            pending.extend(chunk)
            while len(pending) >= INPUT_CHUNK:
                await self._append(execute, sandbox_id, input_file, bytes(pending[:INPUT_CHUNK]))
                del pending[:INPUT_CHUNK]
        if pending:
            await self._append(execute, sandbox_id, input_file, bytes(pending))

    async def _append(
        self,
        execute: Callable[[str], Awaitable[tuple[int, str]]],
        sandbox_id: str,
        input_file: str,
        chunk: bytes,
    ) -> None:
        code, result = await execute(append_command(input_file, chunk))
        if code != 0:
            raise RemoteCommandFailed(
                f"{self.id}: writing the command's input in {sandbox_id} failed (exit {code}; "
                f"the sandbox needs sh and base64): {result[-OUTPUT_TAIL:].strip()}",
                exit_status=code,
                sandbox_id=sandbox_id,
                extension=self.id,
            )

    # -- Snapshotter -----------------------------------------------------------------------

    async def snapshot_workspace(
        self, sandbox_id: str, destination: Path, *, host: str | None = None
    ) -> LeftOut:
        """Copy the workspace (``workdir``, else the sandbox user's home) into ``destination``."""
        check_sandbox_id(sandbox_id, self.id)
        found = await self._started(sandbox_id, "copy its workspace")
        code, result = await self._client().execute(
            found.id,
            pack_command(self._limits),
            cwd=self._config.workdir,
            timeout=self._config.exec_timeout,
            sandbox_id=sandbox_id,
            max_bytes=answer_limit(self._limits),
        )
        if code == TOO_LARGE_EXIT and result.strip() == TOO_LARGE:
            raise too_large(self._limits)  # the sandbox cut it: nothing crossed the network
        if code != 0:
            raise RemoteCommandFailed(
                f"{self.id}: packing the workspace of {sandbox_id} failed (exit {code}): "
                f"{result[-OUTPUT_TAIL:].strip()}",
                exit_status=code,
                output_tail=result[-OUTPUT_TAIL:],
                sandbox_id=sandbox_id,
                extension=self.id,
            )
        return await asyncio.to_thread(unpack_answer, result, destination, self._limits)

    # -- Pausable --------------------------------------------------------------------------

    async def pause(self, sandbox_id: str, *, host: str | None = None) -> None:
        """Stop it (its disk stays). While paused Daytona must not delete it: a pause may
        last as long as the profile's ``max_pause``, so the auto-delete is lifted before the
        stop, and lifted once more once the sandbox is seen stopped: a failed attempt at this
        pause beside this one may have put it back in between (:meth:`_unlift_auto_delete`).
        A pause that fails leaves the sandbox running, as the log keeps it ``ready``: when
        it asked for the stop, the stop may land later, and it is started again
        (:meth:`_running_again`)."""
        await self._stop(sandbox_id, start_again=True)

    async def _stop(self, sandbox_id: str, *, start_again: bool) -> None:
        """The pause; ``start_again`` when the log keeps the sandbox running if it fails (a
        pause), not when it keeps it paused (a failed resume stopping it again)."""
        check_sandbox_id(sandbox_id, self.id)
        api = self._client()
        found = await self._existing(sandbox_id)
        asks_for_stop = not _stopped_or_stopping(found)
        try:
            await api.set_auto_delete(found.id, -1, sandbox_id)
            if asks_for_stop:
                await api.stop(found.id, sandbox_id)
            await self._wait_for(sandbox_id, {"stopped"}, "stop")
            await api.set_auto_delete(found.id, -1, sandbox_id)
        except SandboxNotFound:
            raise  # gone: no auto-delete to fit
        except Exception as exc:
            if not (start_again and asks_for_stop):
                await self._unlift_auto_delete(api, found.id, sandbox_id)
                raise
            told = await self._running_again(api, found.id, sandbox_id, exc)
            if told is None:
                raise
            raise told from exc

    async def _running_again(
        self, api: DaytonaApi, provider_id: str, sandbox_id: str, failed: Exception
    ) -> ProviderError | None:
        """A pause that asked for the stop failed, so the log keeps the sandbox ``ready``: it
        must run, with its auto-delete. Daytona may have taken that stop and carry it out
        after our last look (the sandbox then stopped, with the auto-delete set, while the
        log says ``ready``), and it refuses a start while a stop is under way. So wait, up
        to ``ready_timeout``, for the sandbox to settle (its state its desiredState), start
        it again if it stopped, then fit its auto-delete (:meth:`_unlift_auto_delete`). The
        error the pause raises instead of ``failed`` when the sandbox did not simply run on;
        None when it did (the stop refused, or never taken)."""
        outcome: str | None = None  # it runs on: the stop refused, or never taken
        try:
            seen = await self._once_settled(api, provider_id, sandbox_id)
        except Exception as exc:  # Daytona unreachable: the auto-delete's fit says so too
            log.warning(
                "%s: a pause of %s failed and no look followed: %s", self.id, sandbox_id, exc
            )
            seen = None
        if seen is not None and seen.state not in plan.FAILED_STATES | plan.GONE_STATES:
            if not _settled(seen):
                outcome = (
                    f"Daytona has not carried out its stop yet (still {seen.state}), so it may "
                    "stop it while sandboxer has it ready: pause it again"
                )
            elif seen.state in STOPPED_STATES:
                outcome = await self._started_again(api, provider_id, sandbox_id)
        await self._unlift_auto_delete(api, provider_id, sandbox_id)
        if outcome is None:
            return None
        log.warning("%s: a pause of %s failed (%s): %s", self.id, sandbox_id, failed, outcome)
        return self._failure(
            failed, sandbox_id, f"pausing {sandbox_id} failed ({failed}); {outcome}"
        )

    async def _started_again(self, api: DaytonaApi, provider_id: str, sandbox_id: str) -> str:
        """Start the sandbox a failed pause's stop stopped after all; what became of it."""
        try:
            await api.start(provider_id, sandbox_id)
            await self._wait_for(sandbox_id, {"started"}, "start")
        except Exception as exc:
            return (
                f"its stop landed after all, and starting it again failed ({exc}): unless "
                "that start lands late, Daytona keeps it stopped while sandboxer has it ready; "
                "pause and resume it, or destroy it"
            )
        return "its stop landed after all, and it was started again: pause it again"

    async def _once_settled(
        self, api: DaytonaApi, provider_id: str, sandbox_id: str
    ) -> ProviderSandbox | None:
        """The sandbox once Daytona has carried out what it took, or gone, or ended in an
        error; as last seen when ``ready_timeout`` runs out first."""
        deadline = time.monotonic() + self._config.ready_timeout
        while True:
            seen = await api.get(provider_id, sandbox_id)
            if (
                seen is None
                or seen.state in plan.FAILED_STATES | plan.GONE_STATES
                or _settled(seen)
                or time.monotonic() > deadline
            ):
                return seen
            await asyncio.sleep(self._config.poll_interval)

    async def _unlift_auto_delete(self, api: DaytonaApi, provider_id: str, sandbox_id: str) -> None:
        """A pause failed: give the sandbox back the auto-delete it had while it runs, or a
        sandbox sandboxer then lost track of would never be deleted at Daytona (auto-stopped
        a grace past our TTL, it would sit there, billed for its disk). One stopped, stopping
        or with a stop pending (its desiredState) keeps it lifted: that stop lands, or an
        attempt of the same pause held up beside this one made it, and the log may say
        ``paused``; Daytona must not delete a paused sandbox.

        Another attempt's stop (or a resume's start) may land between our look and our write:
        so every write is followed by another look, and the interval written again while
        the state it fits has changed. With pause and resume each writing it once more after
        seeing the state they made, whoever writes last, the interval fits the state.
        Idempotent, so a retried pause does no harm; a failure here is logged and the
        pause's own error is the one raised."""
        try:
            seen = await api.get(provider_id, sandbox_id)
            for _ in range(FIT_ROUNDS):
                if seen is None or seen.state in plan.GONE_STATES:
                    return
                stopped = _stopped_or_stopping(seen)
                minutes = -1 if stopped else self._grace()
                await api.set_auto_delete(provider_id, minutes, sandbox_id)
                seen = await api.get(provider_id, sandbox_id)
                if seen is None or _stopped_or_stopping(seen) == stopped:
                    return
            problem = f"its state kept changing (last {seen.state if seen else 'gone'})"
        except Exception as exc:
            problem = str(exc)
        log.warning(
            "%s: a pause of %s failed and its auto-delete may not fit its state: %s",
            self.id,
            sandbox_id,
            problem,
        )

    async def resume(self, sandbox_id: str, *, host: str | None = None) -> None:
        """Start it and give it back its auto-delete. A resume that fails once its start may
        have been taken (the start unanswered, the sandbox not started in time, the
        auto-delete not set) stops it again: the log keeps it ``paused``, and Daytona would
        otherwise run it, billed, with no auto-delete (:meth:`_paused_again`)."""
        check_sandbox_id(sandbox_id, self.id)
        api = self._client()
        found = await self._existing(sandbox_id)
        try:
            if found.state not in {"started", "starting"}:
                await api.start(found.id, sandbox_id)
            await self._wait_for(sandbox_id, {"started"}, "start")
            await api.set_auto_delete(found.id, self._grace(), sandbox_id)
        except SandboxNotFound:
            raise  # gone: nothing to stop
        except Exception as exc:
            raise await self._paused_again(sandbox_id, exc) from exc

    async def _paused_again(self, sandbox_id: str, failed: Exception) -> ProviderError:
        """Pause the sandbox whose resume ``failed`` again, and the error the resume raises:
        of ``failed``'s kind (a retryable one stays retryable), saying what became of it."""
        try:
            await self._stop(sandbox_id, start_again=False)
        except Exception as exc:
            return self._failure(
                failed,
                sandbox_id,
                f"resuming {sandbox_id} failed ({failed}), and stopping it again failed too "
                f"({exc}): Daytona may run it, billed, while sandboxer has it paused; resume "
                "it again, or destroy it",
            )
        return self._failure(
            failed,
            sandbox_id,
            f"resuming {sandbox_id} failed ({failed}); it was stopped again and stays paused: "
            "resume it again",
        )

    def _failure(self, failed: Exception, sandbox_id: str, what_became_of_it: str) -> ProviderError:
        """The error a pause or resume that ``failed`` raises once it put the sandbox back: of
        ``failed``'s kind (a retryable one stays retryable), saying what became of it."""
        kind = type(failed) if isinstance(failed, ProviderError) else ProviderError
        status = failed.status if isinstance(failed, ProviderError) else None
        message = f"{self.id}: {what_became_of_it}"
        return kind(message, provider=self.id, status=status, sandbox_id=sandbox_id)

    # -- TimeoutKeeper ---------------------------------------------------------------------

    async def set_timeout(
        self, sandbox_id: str, expires_at: str, *, host: str | None = None
    ) -> None:
        """Move Daytona's idle auto-stop to just past the new end of our TTL."""
        check_sandbox_id(sandbox_id, self.id)
        minutes = plan.auto_stop_minutes(
            expires_at, 0.0, self._config.leak_grace_minutes, datetime.now(UTC)
        )
        found = await self._existing(sandbox_id)
        await self._client().set_auto_stop(found.id, minutes, sandbox_id)

    # -- helpers ---------------------------------------------------------------------------

    def _plan(self, request: ProvisionRequest) -> plan.CreatePlan:
        self._client()  # resolves the target setting with the rest
        return plan.plan_create(
            sandbox_id=request.sandbox_id,
            extension=self.id,
            profile=request.profile,
            project=request.project,
            expires_at=request.expires_at,
            env=request.secrets,
            target=self._target,
            grace_minutes=self._config.leak_grace_minutes,
            now=datetime.now(UTC),
            made_by=request.made_by,
        )

    def _grace(self) -> int:
        return max(1, round(self._config.leak_grace_minutes))

    def _mine(self, found: ProviderSandbox) -> bool:
        """Not another declaration's: made by this one, or before the labels said which (a
        sandbox of one of our ids made then is that id's, on whichever declaration)."""
        made_by = plan.maker(found.labels)
        return made_by is None or made_by == self.id

    async def _get_mine(
        self, api: DaytonaApi, name: str, sandbox_id: str
    ) -> ProviderSandbox | None:
        """The sandbox of that name unless another declaration on the organization made it."""
        found = await api.get(name, sandbox_id)
        return found if found is not None and self._mine(found) else None

    async def _get_own(
        self, api: DaytonaApi, name: str, sandbox_id: str, mine: MadeBy
    ) -> ProviderSandbox | None:
        """The sandbox of that name if provisioning ``mine`` made it: the only one it adopts."""
        found = await self._get_mine(api, name, sandbox_id)
        return found if found is not None and own(found.labels, mine) else None

    async def _name_holder(
        self,
        api: DaytonaApi,
        name: str,
        sandbox_id: str,
        mine: MadeBy,
        refused: ProviderError,
    ) -> ProviderSandbox | None:
        """A create of provisioning ``mine`` was refused because ``name`` is taken: the holder
        when it is this attempt's own (its answer was lost: adopted); None when it was an
        earlier attempt's (or made before the attempt label), deleted now and its name free
        again. Raises ``refused`` when nothing holds it any more, and a ProviderError when
        another declaration or a later attempt holds it: neither is this attempt's to take."""
        found = await api.get(name, sandbox_id)
        if found is None:
            raise refused
        if not self._mine(found):
            raise ProviderError(
                f"{self.id}: the Daytona name {name} is taken by a sandbox of "
                f"{plan.maker(found.labels)}, another declaration on this Daytona "
                "organization; it is not taken over",
                provider=self.id,
                status=409,
                sandbox_id=sandbox_id,
            ) from refused
        action = holder_action(found.labels, mine)
        if action == "adopt":
            return found
        if action == "stop":
            # The job went to another worker while this one was held up (frozen, cut off
            # from NATS): the log's `ready` may name that sandbox. This attempt stops, and
            # the worker, finding it taken over, records nothing.
            raise ProviderError(
                f"{self.id}: the Daytona name {name} is held by a later provisioning "
                f"({found.labels[ATTEMPT_LABEL]}) of {sandbox_id} than this one "
                f"({mine[0]}.{mine[1]}); it is left to that one",
                provider=self.id,
                status=409,
                sandbox_id=sandbox_id,
            ) from refused
        # An earlier attempt's create landed after this one's look (or this is a first
        # attempt, which does not look): deleted, and the create sent once more.
        log.info("%s: deleting %s of %s, an earlier attempt's", self.id, found.id, sandbox_id)
        if found.state not in plan.GONE_STATES:
            await api.delete(found.id, sandbox_id)
        await self._wait_gone(api, name, sandbox_id)
        return None

    async def _existing(self, sandbox_id: str) -> ProviderSandbox:
        found = await self._get_mine(self._client(), plan.provider_name(sandbox_id), sandbox_id)
        if found is None or found.state in plan.GONE_STATES:
            raise SandboxNotFound(
                f"{self.id} has no sandbox {sandbox_id} (no Daytona sandbox named "
                f"{plan.provider_name(sandbox_id)}); create it again",
                sandbox_id=sandbox_id,
                extension=self.id,
            )
        return found

    async def _started(self, sandbox_id: str, purpose: str) -> ProviderSandbox:
        found = await self._existing(sandbox_id)
        if found.state != "started":
            hint = (
                "resume it first"
                if found.state in {"stopped", "archived"}
                else "wait or recreate it"
            )
            raise ExtensionError(
                f"cannot {purpose} in {self.id} sandbox {sandbox_id}: Daytona reports it "
                f"{found.state}; {hint}",
                sandbox_id=sandbox_id,
                extension=self.id,
            )
        return found

    async def _remove_ours(
        self,
        api: DaytonaApi,
        sandbox_id: str,
        *,
        wait: bool,
        removable_by: MadeBy | None = None,
    ) -> None:
        """Delete every Daytona sandbox of ours for ``sandbox_id`` (by name and by label),
        never another declaration's (:meth:`_mine`); with ``removable_by``, only those that
        provisioning and earlier ones made, never a later one's; with ``wait``, until the
        name is free for a new create (unless a later attempt's holds it)."""

        def doomed_one(item: ProviderSandbox) -> bool:
            return self._mine(item) and (
                removable_by is None or removable(item.labels, removable_by)
            )

        name = plan.provider_name(sandbox_id)
        doomed: dict[str, ProviderSandbox] = {}
        by_name = await api.get(name, sandbox_id)
        if by_name is not None and doomed_one(by_name):
            doomed[by_name.id] = by_name
        # Not filtered by Daytona on our extension label: sandboxes made before it said
        # which declaration made them are labelled ext.daytona whatever made them.
        for item in await api.list({SANDBOX_LABEL: sandbox_id}):
            if doomed_one(item):
                doomed.setdefault(item.id, item)
        for item in doomed.values():
            if item.state not in plan.GONE_STATES:
                await api.delete(item.id, sandbox_id)
                log.info("%s: deleted Daytona sandbox %s of %s", self.id, item.id, sandbox_id)
        if wait and by_name is not None and by_name.id in doomed:
            await self._wait_gone(api, name, sandbox_id)

    async def _wait_gone(self, api: DaytonaApi, name: str, sandbox_id: str) -> None:
        deadline = time.monotonic() + self._config.ready_timeout
        while (found := await api.get(name, sandbox_id)) is not None:
            if found.state == "destroyed":
                return
            if time.monotonic() > deadline:
                raise ProviderUnavailable(
                    f"{self.id}: Daytona sandbox {name} was still {found.state} "
                    f"{self._config.ready_timeout:g}s after its delete; try again later",
                    provider=self.id,
                    sandbox_id=sandbox_id,
                )
            await asyncio.sleep(self._config.poll_interval)

    async def _wait_for(
        self,
        sandbox_id: str,
        wanted: set[str],
        action: str,
        *,
        made_by: MadeBy | None = None,
    ) -> ProviderSandbox:
        """Poll until the sandbox reaches a ``wanted`` state; fail on error, loss or deadline.
        With ``made_by``, the sandbox must be the one that provisioning made: another one
        holding the name (a later attempt's) is not it."""
        api = self._client()
        name = plan.provider_name(sandbox_id)
        deadline = time.monotonic() + self._config.ready_timeout
        while True:
            found = await self._get_mine(api, name, sandbox_id)
            if found is None or found.state in plan.GONE_STATES:
                raise SandboxNotFound(
                    f"{self.id}: Daytona sandbox {name} disappeared while waiting for it to "
                    f"{action}",
                    sandbox_id=sandbox_id,
                    extension=self.id,
                )
            if made_by is not None and not own(found.labels, made_by):
                raise SandboxNotFound(
                    f"{self.id}: Daytona sandbox {name} is not the one provisioning "
                    f"{made_by[0]}.{made_by[1]} of {sandbox_id} made (another attempt's "
                    "holds the name)",
                    sandbox_id=sandbox_id,
                    extension=self.id,
                )
            if found.state in wanted:
                return found
            if found.state in plan.FAILED_STATES:
                raise ProviderError(
                    f"{self.id}: Daytona sandbox {name} did not {action}: it is "
                    f"{found.state}: {found.error_reason or 'Daytona gave no reason'}",
                    provider=self.id,
                    status=found.state,
                    sandbox_id=sandbox_id,
                )
            if time.monotonic() > deadline:
                raise ProviderUnavailable(
                    f"{self.id}: Daytona sandbox {name} did not {action} within "
                    f"{self._config.ready_timeout:g}s (still {found.state}); raise "
                    "settings.ready_timeout or try again later",
                    provider=self.id,
                    sandbox_id=sandbox_id,
                )
            await asyncio.sleep(self._config.poll_interval)
