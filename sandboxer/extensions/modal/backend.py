"""ext.modal: one Modal sandbox per sandbox, made through the pinned ``modal`` SDK.

Every Modal sandbox we make lives in one Modal app (``settings.app_name``,
default ``sandboxer``), is named ``sandboxer-<our id>`` (Modal refuses a second
running sandbox of that name in the app) and carries our tags
(``sandboxer_id``, ``sandboxer_project``), by which we find it again: a create
whose answer was lost, a redelivered job after a crash, and leaks. A tag
``sandboxer_extension`` names the declaration that made it: another declaration
on the same workspace and app (``ext.modal-eu`` with the same token) lists and
terminates only its own; one made before that tag is listed ``unmarked``, for
the log to say whose it is.

A tag ``sandboxer_attempt`` names the provisioning that made it: two attempts at one
sandbox may run at once (the job redelivered past ``ack_wait`` while the first worker is
frozen or cut off, not dead), and an attempt adopts only its own and terminates only its
own and earlier ones', never a later one's (:mod:`sandboxer.hosted.attempt_fence`); the
worker tears a failed attempt down through :meth:`ModalExtension.teardown_attempt`.

A worker without the ``modal`` extra stops at start with the install command (the
backend looks for the SDK when it is built); the SDK itself, about 15 MB of memory,
is imported at the first call that needs it, and the token is resolved then too, so
``sandboxer up`` starts without one and, with no token anywhere, never loads the SDK.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandboxer.config.extension_decl import ExtensionDecl
from sandboxer.config.settings import Settings
from sandboxer.domain.left_out import LeftOut
from sandboxer.errors import (
    ConfigError,
    ExtensionError,
    InvalidInput,
    ProviderError,
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
from sandboxer.extensions.modal.boundary import (
    ModalBoundary,
    import_modal,
    require_modal,
    sdk_config_file,
)
from sandboxer.extensions.modal.config import DEFAULT_SERVER_URL, EXTENSION_ID, ModalConfig
from sandboxer.extensions.modal.plan import (
    checked,
    image_of,
    network_options,
    network_warnings,
    provider_timeout,
)
from sandboxer.extensions.ssh_exec_stop import stoppable
from sandboxer.hosted.attempt_fence import MadeBy, holder_action, removable
from sandboxer.hosted.attempt_fence import made_by as labelled_attempt
from sandboxer.hosted.create_once import LateCreates, create_once
from sandboxer.hosted.keyed import KeyedCopies
from sandboxer.hosted.labels import (
    EXTENSION_LABEL,
    SANDBOX_LABEL,
    labels_for,
    made_elsewhere,
    maker,
    our_sandbox_id,
)
from sandboxer.hosted.provider_settings import ProviderValue, provider_value
from sandboxer.hosted.workspace_copy import too_large, unpack_tar_bytes
from sandboxer.ids import is_valid_sandbox_id
from sandboxer.workspaces.limits import ArchiveLimits

__all__ = ["ModalExtension"]

log = logging.getLogger(__name__)

OUTPUT_TAIL = 2000
KEEP_ALIVE = ("sleep", "infinity")
"""The sandbox's main process: it runs until we terminate it or its timeout ends it."""


@dataclass
class _Connection:
    client: Any
    app: Any


class ModalExtension:
    """Sandboxes on Modal (gVisor containers, GPUs), through the ``modal`` SDK."""

    host_local = False

    def __init__(
        self,
        config: ModalConfig | None = None,
        *,
        extension: str = EXTENSION_ID,
        sdk: Any = None,
        token: tuple[ProviderValue, ProviderValue] | None = None,
        late: LateCreates | None = None,
    ) -> None:
        self.id = extension
        """The declaration's id: each declaration tags, lists and terminates only its own."""
        self.config = config or ModalConfig()
        if sdk is None:
            require_modal()
        self._sdk = sdk
        self._boundary = ModalBoundary(provider=self.id, policy=self.config.policy)
        self._connection: _Connection | None = None
        self._lock = asyncio.Lock()
        self._token = token
        """A project's own token id and secret (BYOK) in place of the declaration's."""
        self._keyed: KeyedCopies[ModalExtension] = KeyedCopies(self._copy_with)
        self._late = late or LateCreates(self.config.create_settle)
        """Creates given up on that Modal may still carry out: teardown waits them out."""

    @classmethod
    def from_declaration(cls, decl: ExtensionDecl, settings: Settings) -> ModalExtension:
        extension = cls(ModalConfig.from_settings(decl.settings), extension=decl.id)
        extension.limits = ArchiveLimits.from_mb(settings.upload_max_mb)
        return extension

    def with_key(self, key: str, source: str) -> ModalExtension:
        """This backend speaking to Modal with a project's own token (:class:`KeyedBackend`).

        ``key`` is ``TOKEN_ID:TOKEN_SECRET`` (what ``modal token new`` writes as
        ``token_id`` and ``token_secret``, joined by a colon; neither holds one)."""
        return self._keyed.get(key, source)

    def _copy_with(self, key: str, source: str) -> ModalExtension:
        token_id, colon, token_secret = key.strip().partition(":")
        if not colon or not token_id or not token_secret:
            raise ConfigError(
                f"extension {self.id}: {source} must hold TOKEN_ID:TOKEN_SECRET (a Modal "
                "token id and its secret, joined by a colon)",
                extension=self.id,
            )
        copy = ModalExtension(
            self.config,
            extension=self.id,
            sdk=self._sdk,
            token=(ProviderValue(token_id, source), ProviderValue(token_secret, source)),
            late=self._late,
        )
        copy.limits = self.limits
        return copy

    async def aclose(self) -> None:
        """Close the SDK's connection (a later call opens a new one)."""
        await self._keyed.aclose()
        async with self._lock:
            connection, self._connection = self._connection, None
        if connection is not None:
            await connection.client.__aexit__(None, None, None)

    # -- the Extension protocol ---------------------------------------------------------------

    limits = ArchiveLimits()
    """How large a workspace a snapshot may copy out (SANDBOXER_UPLOAD_MAX_MB)."""

    async def snapshot_workspace(
        self, sandbox_id: str, destination: Path, *, host: str | None = None
    ) -> LeftOut:
        """Copy the working directory out as a tar through exec, for a snapshot that restores
        on any backend (Modal's own filesystem snapshot is an image inside Modal)."""
        del host
        archive = bytearray()
        errors = bytearray()

        async def collect(stream: str, data: bytes) -> None:
            if stream == "stderr":
                errors.extend(data)
                del errors[:-OUTPUT_TAIL]
                return
            archive.extend(data)
            if len(archive) > self.limits.max_bytes:
                raise too_large(self.limits)

        code = await self.exec(sandbox_id, ["tar", "-cf", "-", "."], collect)
        if code != 0:
            tail = errors.decode(errors="replace").strip()
            raise RemoteCommandFailed(
                f"{self.id}: packing the workspace of {sandbox_id} failed (exit {code}): {tail}",
                exit_status=code,
                output_tail=tail,
                sandbox_id=sandbox_id,
                extension=self.id,
            )
        return await asyncio.to_thread(unpack_tar_bytes, bytes(archive), destination, self.limits)

    async def provision(self, request: ProvisionRequest) -> None:
        sandbox_id = checked(request.sandbox_id)
        image = image_of(request.profile)
        mine = request.made_by
        # A redelivered job (a crash after the create, a create whose answer was lost) may
        # have left one: start clean, so that exactly one exists afterwards. A first attempt
        # had none before it (the listing would cost every create a call). Not a later
        # attempt's: this one may be the earlier, resumed past ack_wait.
        earlier_ones = await self._removable(sandbox_id, mine) if request.redelivered else []
        for earlier in earlier_ones:
            log.info("sandbox %s: removing what an earlier attempt made", sandbox_id)
            await self._terminate(earlier, sandbox_id)
        await create_once(
            lambda: self._create(request, image),
            lambda: self._find_own(sandbox_id, mine),
            sandbox_id=sandbox_id,
            late=self._late,
            redelivered=request.redelivered,
            attempts=self.config.policy.attempts,
            wait=self.config.policy.wait_initial,
        )

    async def wait_ready(self, request: ProvisionRequest) -> Readiness:
        sandbox_id = checked(request.sandbox_id)
        sandbox = await self._find_own(sandbox_id, request.made_by)
        if sandbox is None:  # terminated, or (this attempt was held up) a later one's since
            raise SandboxNotFound(
                f"the Modal sandbox this provisioning of {sandbox_id} made is not running",
                sandbox_id=sandbox_id,
                extension=self.id,
            )
        returncode = await self._boundary.call(
            "checking the sandbox", sandbox.poll.aio, sandbox_id=sandbox_id
        )
        if returncode is not None:
            raise ExtensionError(
                f"Modal sandbox {sandbox.object_id} of {sandbox_id} ended (exit {returncode}) "
                "before it was ready",
                sandbox_id=sandbox_id,
                extension=self.id,
            )
        code = await self.exec(sandbox_id, ["true"], _discard)
        if code != 0:
            raise ExtensionError(
                f"Modal sandbox {sandbox.object_id} of {sandbox_id} cannot run commands "
                f"(`true` exited {code})",
                sandbox_id=sandbox_id,
                extension=self.id,
            )
        timeout, warnings = provider_timeout(request, self.config.timeout_margin)
        profile = request.profile
        descriptor: dict[str, Any] = {
            "kind": "modal",
            "modal_sandbox_id": sandbox.object_id,
            "app": self.config.app_name,
            "image": image_of(profile),
            "gpu": profile.resources.gpu,
            "provider_timeout_seconds": timeout,
            "exec": f"sandboxer exec {sandbox_id} -- CMD",
            **provider_access("modal", sandbox_id, sandbox.object_id),
        }
        return Readiness(descriptor=descriptor, warnings=warnings + network_warnings(profile))

    async def teardown(self, sandbox_id: str, *, host: str | None = None) -> None:
        del host
        sandbox_id = checked(sandbox_id)

        async def terminate_ours() -> None:
            for sandbox in await self._find(sandbox_id):
                await self._terminate(sandbox, sandbox_id)

        # While a create of it we gave up on may still land, it is looked for again.
        await self._late.teardown(sandbox_id, terminate_ours)

    async def teardown_attempt(
        self, sandbox_id: str, made_by: MadeBy, *, host: str | None = None
    ) -> None:
        """Terminate the sandboxes tagged with our id that provisioning ``made_by`` or an
        earlier one made, never a later one's; looked for again while a create we gave up on
        may still land (:class:`~sandboxer.extensions.capabilities.AttemptScoped`)."""
        del host
        sandbox_id = checked(sandbox_id)

        async def terminate_this_attempts() -> None:
            for sandbox in await self._removable(sandbox_id, made_by):
                await self._terminate(sandbox, sandbox_id)

        await self._late.teardown(sandbox_id, terminate_this_attempts)

    async def list_sandboxes(self) -> Sequence[FoundSandbox]:
        connection = await self._connect()
        modal = self._modal

        async def everything() -> list[Any]:
            return [
                sandbox
                async for sandbox in modal.Sandbox.list.aio(
                    app_id=connection.app.app_id, client=connection.client
                )
            ]

        found = []
        for sandbox in await self._boundary.call("listing sandboxes", everything):
            tags = await self._tags(sandbox)
            ours = our_sandbox_id(tags)
            if tags is None or ours is None or not is_valid_sandbox_id(ours):
                # In our app but not made by us: anyone with the workspace's token can tag a
                # sandbox, and a tag that is no id of ours (`x.>`) must not reach the reaper.
                continue
            if made_elsewhere(tags, self.id):
                continue  # another declaration's, on the same workspace and app
            found.append(
                FoundSandbox(
                    sandbox_id=ours,
                    alive=True,
                    detail={"modal_sandbox_id": sandbox.object_id, "tags": dict(tags)},
                    unmarked=maker(tags) is None,
                    made_by=labelled_attempt(tags),
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
        del host
        sandbox_id = checked(sandbox_id)
        if service is not None:
            raise Unsupported(
                f"{self.id} sandboxes have no services; exec without a service",
                sandbox_id=sandbox_id,
                extension=self.id,
            )
        if not argv:
            raise InvalidInput("exec needs a command", sandbox_id=sandbox_id)
        sandbox = await self._require(sandbox_id)

        async def run(name: str, value: str) -> int:
            # The marker in the environment: everything the command starts inherits it.
            process = await sandbox.exec.aio(*argv, text=False, env={name: value})

            async def pump(stream: Any, name: Any) -> None:
                async for chunk in stream:
                    if chunk:
                        await output(name, bytes(chunk))

            async def feed() -> None:
                """The input, then its end (an exec's input stays open until then)."""
                try:
                    if stdin is not None:
                        async for chunk in stdin:
                            if chunk:
                                process.stdin.write(chunk)
                                await process.stdin.drain.aio()  # holds a fast client back
                    process.stdin.write_eof()
                    await process.stdin.drain.aio()
                except Exception:
                    if await process.poll.aio() is None:
                        raise
                    # The command is over: what it did not read is dropped, as with a pipe.

            await asyncio.gather(
                feed(), pump(process.stdout, "stdout"), pump(process.stderr, "stderr")
            )
            return int(await process.wait.aio())

        async def stop(kill: list[str]) -> object:
            process = await sandbox.exec.aio(*kill, text=False)
            return await process.wait.aio()

        # An exec is not repeated (the command may have run) and takes as long as it takes.
        # Given up (timeout, client gone), Modal would let the command run on: what it
        # started is killed in the sandbox (ssh_exec_stop's marker and kill script).
        try:
            return await stoppable(run, stop, what=f"exec in {sandbox_id}")
        except ExtensionError:
            raise
        except Exception as exc:
            raise self._boundary.error_for(
                f"exec in {sandbox.object_id}", exc, sandbox_id=sandbox_id
            ) from None
        finally:
            # Close the handle's connection to the sandbox's command router now, not at GC.
            with contextlib.suppress(Exception):
                await sandbox.detach.aio()

    # -- Modal operations ------------------------------------------------------------------------

    async def _connect(self) -> _Connection:
        async with self._lock:
            if self._connection is None:
                self._connection = await self._open()
            return self._connection

    @property
    def _modal(self) -> Any:
        """The SDK, imported at the first use."""
        if self._sdk is None:
            self._sdk = import_modal()
        return self._sdk

    async def _open(self) -> _Connection:
        server_url = self._value("server_url", "MODAL_SERVER_URL", secret=False)
        if self._token is not None:
            token_id, token_secret = self._token
            where = token_id.source
        else:
            token_id = self._value("token_id", "MODAL_TOKEN_ID", secret=True)
            token_secret = self._value("token_secret", "MODAL_TOKEN_SECRET", secret=True)
            where = f"{token_id.source} and {token_secret.source}"
        self._boundary.know_secrets([token_id.value, token_secret.value], where)
        modal = self._modal
        environment = self._environment(modal)
        api_pb2 = importlib.import_module("modal_proto.api_pb2")  # installed with modal

        async def connect() -> Any:
            # A client per attempt: the SDK opens it on a loop of its own, so an attempt our
            # timeout gave up on may still finish opening, and its client cannot be opened
            # again (the retry failed on the SDK's assertion). The abandoned one is closed, so
            # a channel it connected does not linger until garbage collection.
            client = modal.Client(
                server_url.value, api_pb2.CLIENT_TYPE_CLIENT, (token_id.value, token_secret.value)
            )
            try:
                await client.__aenter__()
            except BaseException:
                await _close_quietly(client)
                raise
            return client

        client = await self._boundary.call("connecting to Modal", connect)

        async def lookup() -> Any:
            return await modal.App.lookup.aio(
                self.config.app_name,
                create_if_missing=True,
                client=client,
                environment_name=environment,
            )

        try:
            app = await self._boundary.call(f"looking up the app {self.config.app_name!r}", lookup)
        except BaseException:
            await _close_quietly(client)
            raise
        return _Connection(client=client, app=app)

    def _environment(self, modal: Any) -> str | None:
        """The Modal environment the app is looked up in: ``settings.environment``, which must
        be the one the SDK lists sandboxes in. ``Sandbox.list`` takes no environment: it asks
        for the SDK's own (``MODAL_ENVIRONMENT``, else the config file's, else the workspace's
        default) with our app's id, so a sandbox made in another environment's app is found
        by no lookup, ``wait_ready`` or teardown, and runs, billed, until Modal's timeout.
        Refused before anything is made (ConfigError naming the fix)."""
        wanted = self.config.environment
        listed = modal.config.config.get("environment") or None
        if wanted is not None and wanted != listed:
            where = f"environment {listed!r}" if listed else "the workspace's default environment"
            raise ConfigError(
                f"extension {self.id}: settings.environment is {wanted!r}, but the modal SDK "
                f"lists sandboxes in {where} (MODAL_ENVIRONMENT, else the Modal config file), "
                "so no lookup or teardown would find the sandboxes made there; set "
                f"MODAL_ENVIRONMENT={wanted} in the worker's environment, or remove "
                "settings.environment",
                extension=self.id,
            )
        return wanted

    def _value(self, key: str, env: str, *, secret: bool) -> ProviderValue:
        """From the declaration, else the SDK's variable, else the SDK's own config file."""
        found = provider_value(self.config.settings, key, (env,), extension=self.id, required=False)
        if found is not None:
            return found
        # No config file and the SDK not loaded yet: it would find nothing there either.
        sdk_may_know = self._sdk is not None or sdk_config_file().exists()
        from_file = self._modal.config.config.get(key) if sdk_may_know else None
        if from_file:
            return ProviderValue(str(from_file), "the modal config file (~/.modal.toml)")
        if key == "server_url":
            return ProviderValue(DEFAULT_SERVER_URL, "the default")
        raise ConfigError(
            f"extension {self.id}: no Modal {'token' if secret else key}; set {env} in the "
            f"worker's environment, or settings.{key} in its declaration (a value, or env:NAME / "
            "file:PATH), or run `modal token new`",
            extension=self.id,
        )

    async def _create(self, request: ProvisionRequest, image: str) -> Any:
        connection = await self._connect()
        modal = self._modal
        profile = request.profile
        resources = profile.resources
        timeout, _warnings = provider_timeout(request, self.config.timeout_margin)
        network = network_options(profile)
        sandbox_id = request.sandbox_id

        async def create() -> Any:
            return await modal.Sandbox.create.aio(
                *KEEP_ALIVE,
                app=connection.app,
                name=f"sandboxer-{sandbox_id}",
                tags=labels_for(sandbox_id, request.project, self.id, request.made_by),
                image=modal.Image.from_registry(image),
                env=dict(request.secrets) or None,
                timeout=timeout,
                gpu=resources.gpu,
                cpu=resources.cpu,
                memory=resources.memory_mb,
                region=self.config.region,
                workdir=self.config.workdir,
                client=connection.client,
                **network,
            )

        creating = f"creating a sandbox from {image!r}"
        try:
            return await self._boundary.call(creating, create, sandbox_id=sandbox_id, retry=False)
        except ProviderError as exc:
            if exc.status != "ALREADY_EXISTS":
                raise
            # The name is taken (attempt_fence.holder_action): by this attempt's own create
            # whose answer was lost (the SDK retried it), adopted; by an earlier attempt's,
            # whose create landed after this one cleared the way, terminated and the create
            # sent once more; by a later attempt's, or by none of ours (another declaration's),
            # this one stops (the worker finds it taken over).
            held = [
                (sandbox, holder_action(tags, request.made_by))
                for sandbox, tags in await self._tagged_ours(sandbox_id)
            ]
            for sandbox, action in held:
                if action == "adopt":
                    return sandbox
            if not held or any(action == "stop" for _, action in held):
                raise
            for sandbox, _ in held:
                log.info(
                    "sandbox %s: removing an earlier attempt's, which has its name", sandbox_id
                )
                await self._terminate(sandbox, sandbox_id, wait=True)
            return await self._boundary.call(creating, create, sandbox_id=sandbox_id, retry=False)

    async def _tagged(self, sandbox_id: str, tags: dict[str, str]) -> list[Any]:
        """The app's running sandboxes carrying every one of ``tags`` (Modal matches them all)."""
        connection = await self._connect()
        modal = self._modal

        async def matching() -> list[Any]:
            return [
                sandbox
                async for sandbox in modal.Sandbox.list.aio(
                    app_id=connection.app.app_id, tags=tags, client=connection.client
                )
            ]

        looking = f"looking for the sandbox of {sandbox_id}"
        return await self._boundary.call(looking, matching, sandbox_id=sandbox_id)

    async def _find(self, sandbox_id: str) -> list[Any]:
        # Modal matches every tag given: the usual case (an exec, a copy) is one call.
        found = await self._tagged(
            sandbox_id, {SANDBOX_LABEL: sandbox_id, EXTENSION_LABEL: self.id}
        )
        if found:
            return found
        # Those made before the extension tag have none: listed by id, their tags read; a
        # sandbox of this id another declaration made (a copy, before a reroute) is not ours.
        tagged = await self._tagged(sandbox_id, {SANDBOX_LABEL: sandbox_id})
        ours = []
        for sandbox in tagged:
            tags = await self._tags(sandbox, sandbox_id)
            if tags is not None and not made_elsewhere(tags, self.id):
                ours.append(sandbox)
        return ours

    async def _tags(self, sandbox: Any, sandbox_id: str | None = None) -> dict[str, str] | None:
        """The sandbox's tags (the SDK's list does not carry them); None once it is gone."""
        try:
            tags = await self._boundary.call(
                "reading a sandbox's tags", sandbox.get_tags.aio, sandbox_id=sandbox_id
            )
        except ProviderError as exc:
            if exc.status == "NOT_FOUND":
                return None  # gone between the list and the look
            raise
        return dict(tags)

    async def _find_own(self, sandbox_id: str, mine: MadeBy) -> Any | None:
        """The running sandbox provisioning ``mine`` made, if there is one (one call: its
        tags are asked for; a sandbox's name lets Modal run one at a time)."""
        # Without a project, our labels are the id, the declaration and the attempt.
        found = await self._tagged(sandbox_id, labels_for(sandbox_id, None, self.id, mine))
        return found[0] if found else None

    async def _removable(self, sandbox_id: str, mine: MadeBy) -> list[Any]:
        """Our running sandboxes of ``sandbox_id`` that provisioning ``mine`` may terminate: its
        own and earlier attempts', never a later one's."""
        return [
            sandbox
            for sandbox, tags in await self._tagged_ours(sandbox_id)
            if removable(tags, mine)
        ]

    async def _tagged_ours(self, sandbox_id: str) -> list[tuple[Any, dict[str, str]]]:
        """Our running sandboxes of ``sandbox_id`` with their tags. Each one's are read (the
        SDK's list carries none): a call per sandbox, and there is seldom more than one."""
        found = []
        for sandbox in await self._find(sandbox_id):
            tags = await self._tags(sandbox, sandbox_id)
            if tags is not None:
                found.append((sandbox, tags))
        return found

    async def _find_one(self, sandbox_id: str) -> Any | None:
        found = await self._find(sandbox_id)
        for extra in found[1:]:  # never more than one: a second is removed at once
            await self._terminate(extra, sandbox_id)
        return found[0] if found else None

    async def _require(self, sandbox_id: str) -> Any:
        sandbox = await self._find_one(sandbox_id)
        if sandbox is None:
            raise SandboxNotFound(
                f"no running Modal sandbox is tagged {SANDBOX_LABEL}={sandbox_id}",
                sandbox_id=sandbox_id,
                extension=self.id,
            )
        return sandbox

    async def _terminate(self, sandbox: Any, sandbox_id: str, *, wait: bool = False) -> None:
        """Terminate it; with ``wait``, until it has ended (its name is free again then)."""
        try:
            await self._boundary.call(
                f"terminating {sandbox.object_id}",
                lambda: sandbox.terminate.aio(wait=wait),
                sandbox_id=sandbox_id,
            )
        except ProviderError as exc:
            if exc.status != "NOT_FOUND":
                raise


async def _discard(_stream: str, _data: bytes) -> None:
    return None


async def _close_quietly(client: Any) -> None:
    """Close a client that failed to open or to find the app. Its failure is the one to
    report, not the close's (a client whose opening was cut short may lack what closing
    expects)."""
    with contextlib.suppress(Exception):
        await client.__aexit__(None, None, None)
