"""A local stand-in for Modal's gRPC API, written here, for testing ext.modal.

Modal has no REST API: its SDK speaks gRPC (``modal_proto/api.proto``, kept in
``../shared/specs/modal-api.proto``). This double serves the RPCs the pinned SDK
calls for what ext.modal does, on loopback, and the SDK reaches it through
``MODAL_SERVER_URL`` (or the declaration's ``server_url``) exactly as it reaches
Modal. Nothing of the SDK or of ext.modal is patched.

Two services are served, as at Modal:

- ``modal.client.ModalClient`` (the API): apps, images from a registry,
  ephemeral secrets, sandboxes (create, wait, terminate, list, tags, task id),
  and the command-router access a client needs to exec;
- ``modal.task_command_router.TaskCommandRouter`` (what runs on a Modal worker
  next to each sandbox, reached at the URL the API hands out): exec start,
  stdio read, stdin write, poll and wait. Its proto is not in the shared spec; the pinned
  SDK's own descriptor is its reference (tests/unit/test_modal_double_conformance.py).

Every RPC the double does not implement answers UNIMPLEMENTED (grpclib does so
for any path missing from the mapping), so an SDK call we did not plan for
fails loudly. Requests are checked as Modal checks them: the token on every API
call, the router's bearer token on every router call, required fields, ids
that exist (NOT_FOUND otherwise), sandbox names unique among an app's running
sandboxes (ALREADY_EXISTS), a timeout of at most 24 hours.

A sandbox is a record and a directory; exec runs the command as a real local
subprocess in that directory, so exit codes and output are real.

Faults are injected per RPC (:class:`Fault`): latency, a status (RESOURCE_EXHAUSTED,
UNAVAILABLE, ...), a hang (a timeout at the client), "done but the answer was
lost" (the work happens, then the client gets UNAVAILABLE or nothing), and "done
late" (the work happens after the delay even when the client has given up and
cancelled the call, as a provider carries out a request already under way).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import secrets
import shutil
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
from google.protobuf import empty_pb2
from google.protobuf.message import Message
from grpclib import GRPCError, Status
from grpclib.const import Cardinality, Handler
from grpclib.server import Server, Stream
from modal_proto import api_pb2
from modal_proto import task_command_router_pb2 as router_pb2

from tests.doubles.network_check import is_cidr, is_domain

__all__ = [
    "API_SERVICE",
    "FIELDS_READ",
    "ROUTER_SERVICE",
    "Fault",
    "ModalDouble",
    "modal_double",
    "modal_extensions",
]

API_SERVICE = "modal.client.ModalClient"
ROUTER_SERVICE = "modal.task_command_router.TaskCommandRouter"
MAX_TIMEOUT_SECS = 24 * 60 * 60
"""Modal ends a sandbox after at most 24 hours; a longer timeout is refused."""
IMAGE_BUILDER_VERSION = "2025.06"
"""What the double's environment answers; one the pinned SDK supports."""
LIST_PAGE = 3
"""Sandboxes per SandboxList answer (small, so the SDK's paging by created_at is exercised)."""

FIELDS_READ: dict[str, frozenset[str]] = {
    "EnvironmentGetOrCreateRequest": frozenset({"deployment_name", "object_creation_type"}),
    "AppGetOrCreateRequest": frozenset({"app_name", "environment_name", "object_creation_type"}),
    "ImageGetOrCreateRequest": frozenset({"image", "app_id"}),
    "Image": frozenset({"dockerfile_commands", "base_images"}),
    "SecretGetOrCreateRequest": frozenset(
        {"deployment_name", "object_creation_type", "env_dict", "app_id"}
    ),
    "SandboxCreateRequest": frozenset({"app_id", "definition", "tags"}),
    "Sandbox": frozenset(
        {
            "entrypoint_args",
            "image_id",
            "secret_ids",
            "timeout_secs",
            "workdir",
            "resources",
            "name",
            "network_access",
        }
    ),
    "Resources": frozenset({"milli_cpu", "memory_mb", "gpu_config"}),
    "GPUConfig": frozenset({"gpu_type", "count"}),
    "NetworkAccess": frozenset({"network_access_type", "allowed_cidrs", "allowed_domains"}),
    "SandboxTag": frozenset({"tag_name", "tag_value"}),
    "SandboxWaitRequest": frozenset({"sandbox_id", "timeout"}),
    "SandboxTerminateRequest": frozenset({"sandbox_id"}),
    "SandboxListRequest": frozenset(
        {"app_id", "before_timestamp", "environment_name", "include_finished", "tags"}
    ),
    "SandboxTagsGetRequest": frozenset({"sandbox_id"}),
    "SandboxTagsSetRequest": frozenset({"sandbox_id", "tags"}),
    "SandboxGetTaskIdRequest": frozenset({"sandbox_id", "timeout"}),
    "TaskGetCommandRouterAccessRequest": frozenset({"task_id"}),
    # The command router (the SDK's task_command_router.proto).
    "TaskExecStartRequest": frozenset(
        {"task_id", "exec_id", "command_args", "workdir", "env", "timeout_secs"}
    ),
    "TaskExecStdioReadRequest": frozenset({"task_id", "exec_id", "offset", "file_descriptor"}),
    "TaskExecStdinWriteRequest": frozenset({"task_id", "exec_id", "offset", "data", "eof"}),
    "TaskExecWaitRequest": frozenset({"task_id", "exec_id"}),
    "TaskExecPollRequest": frozenset({"task_id", "exec_id"}),
}
"""Every request field the double reads, by message name; :func:`_read` refuses any other
and the conformance test holds each against the spec."""


def _read(message: Message, name: str) -> Any:
    """``message.name``, after checking the double declared it reads that field."""
    type_name = message.DESCRIPTOR.name
    if name not in FIELDS_READ.get(type_name, frozenset()):
        raise AssertionError(f"the double reads {type_name}.{name} without declaring it")
    return getattr(message, name)


def _has(message: Message, name: str) -> bool:
    _read(message, name)
    return message.HasField(name)


FaultKind = Literal["latency", "status", "hang", "lost_answer", "lost_hang", "done_late"]


_caller: ContextVar[str] = ContextVar("modal_double_caller", default="")
"""The token id of the API call being served."""


@dataclass
class Fault:
    """What to do to the next ``times`` calls of ``rpc`` (a method name such as SandboxCreate)."""

    rpc: str
    kind: FaultKind
    status: Status = Status.UNAVAILABLE
    message: str = "injected by the double"
    delay: float = 0.0
    times: int = 1


@dataclass
class _Exec:
    process: asyncio.subprocess.Process
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    code: int | None = None
    signal: int | None = None
    stdin_offset: int = 0
    """Bytes of input the command was given so far (a write names where its data starts)."""
    stdin_closed: bool = False


@dataclass
class SandboxRecord:
    """One sandbox as the double keeps it."""

    sandbox_id: str
    app_id: str
    environment: str
    name: str
    tags: dict[str, str]
    definition: api_pb2.Sandbox
    created_at: float
    task_id: str
    directory: Path
    timeout_secs: int
    image: str
    gpu: str
    milli_cpu: int
    memory_mb: int
    env: dict[str, str]
    network: str = "open"
    """``open``, ``blocked`` or the allowed domains joined by commas."""
    network_access: dict[str, Any] = field(default_factory=dict)
    """Exactly the ``NetworkAccess`` its create carried: ``type`` (OPEN, BLOCKED, ALLOWLIST)
    and, for an allowlist, ``allowed_cidrs`` and ``allowed_domains``."""
    result: api_pb2.GenericResult | None = None
    execs: dict[str, _Exec] = field(default_factory=dict)
    owner: str = ""
    """The token id (workspace) that made it; another token does not see it."""
    keys: list[str] = field(default_factory=list)
    """The token id of every API call that reached it (its create, and each naming it)."""

    def finished(self) -> bool:
        return self.result is not None


class ModalDouble:
    """The API and the command router on loopback; ``url`` is the ``MODAL_SERVER_URL``."""

    def __init__(self, root: Path, *, token_id: str, token_secret: str) -> None:
        self.root = root
        self.token_id = token_id
        self.token_secret = token_secret
        self._tokens = {token_id: token_secret}
        """Every token the double accepts: each is a workspace of its own (``accept_token``)."""
        self.environments: set[str] = {"main"}
        """The workspace's environments (``main``, and those a test or a create-if-missing
        lookup adds); another name is NOT_FOUND, as at Modal."""
        self.apps: dict[tuple[str, str], str] = {}
        self.images: dict[str, list[str]] = {}
        self.secrets: dict[str, dict[str, str]] = {}
        self.sandboxes: dict[str, SandboxRecord] = {}
        self.faults: list[Fault] = []
        self.calls: list[str] = []
        """Every RPC that reached the double, in order (faulted ones too)."""
        self._late: set[asyncio.Task[Any]] = set()
        """Work of ``done_late`` faults still under way (its caller may have gone)."""
        self._jwt = ""
        self._ids = itertools.count(1)
        self._clock = 0.0
        self._api: _Server | None = None
        self._router: _Server | None = None
        self.url = ""
        self.router_url = ""

    # -- running --------------------------------------------------------------------------

    async def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._jwt = _fake_jwt()
        self._api, self.url = await _serve(_Service(API_SERVICE, api_pb2, self._api_handlers()))
        self._router, self.router_url = await _serve(
            _Service(ROUTER_SERVICE, router_pb2, self._router_handlers())
        )

    async def stop(self) -> None:
        for work in list(self._late):
            work.cancel()
        for record in self.sandboxes.values():
            await self._kill_execs(record)
        for server in (self._api, self._router):
            if server is not None:
                await server.stop()

    def accept_token(self, token_id: str, token_secret: str) -> None:
        """Accept this token too, as another workspace's: it sees and reaches only its own."""
        self._tokens[token_id] = token_secret

    def inject(self, fault: Fault) -> None:
        self.faults.append(fault)

    def running(self) -> list[SandboxRecord]:
        return [r for r in self.sandboxes.values() if not self._expire(r).finished()]

    def running_for(self, sandboxer_id: str) -> list[SandboxRecord]:
        return [r for r in self.running() if r.tags.get("sandboxer_id") == sandboxer_id]

    # -- the API ----------------------------------------------------------------------------

    def _api_handlers(self) -> dict[str, Callable[..., Any]]:
        return {
            "ClientHello": self.ClientHello,
            "EnvironmentGetOrCreate": self.EnvironmentGetOrCreate,
            "AppGetOrCreate": self.AppGetOrCreate,
            "ImageGetOrCreate": self.ImageGetOrCreate,
            "SecretGetOrCreate": self.SecretGetOrCreate,
            "SandboxCreate": self.SandboxCreate,
            "SandboxWait": self.SandboxWait,
            "SandboxTerminate": self.SandboxTerminate,
            "SandboxList": self.SandboxList,
            "SandboxTagsGet": self.SandboxTagsGet,
            "SandboxTagsSet": self.SandboxTagsSet,
            "SandboxGetTaskId": self.SandboxGetTaskId,
            "TaskGetCommandRouterAccess": self.TaskGetCommandRouterAccess,
        }

    def _router_handlers(self) -> dict[str, Callable[..., Any]]:
        return {
            "TaskExecStart": self.TaskExecStart,
            "TaskExecStdioRead": self.TaskExecStdioRead,
            "TaskExecStdinWrite": self.TaskExecStdinWrite,
            "TaskExecWait": self.TaskExecWait,
            "TaskExecPoll": self.TaskExecPoll,
        }

    def check_api_auth(self, metadata: Any) -> None:
        token_id = metadata.get("x-modal-token-id")
        token_secret = metadata.get("x-modal-token-secret")
        if not token_id or not token_secret:
            raise GRPCError(Status.UNAUTHENTICATED, "Token missing. Could not authenticate client.")
        if self._tokens.get(token_id) != token_secret:
            raise GRPCError(Status.UNAUTHENTICATED, "Invalid token id or secret.")
        _caller.set(token_id)

    def check_router_auth(self, metadata: Any) -> None:
        if metadata.get("authorization") != f"Bearer {self._jwt}":
            raise GRPCError(Status.UNAUTHENTICATED, "invalid or missing JWT")

    async def ClientHello(self, _request: empty_pb2.Empty) -> api_pb2.ClientHelloResponse:
        return api_pb2.ClientHelloResponse()

    async def EnvironmentGetOrCreate(
        self, request: api_pb2.EnvironmentGetOrCreateRequest
    ) -> api_pb2.EnvironmentGetOrCreateResponse:
        name = _read(request, "deployment_name") or "main"
        creation = _read(request, "object_creation_type")
        if name not in self.environments:
            if creation != api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING:
                raise GRPCError(Status.NOT_FOUND, f"Environment '{name}' not found")
            self.environments.add(name)
        settings = api_pb2.EnvironmentSettings(image_builder_version=IMAGE_BUILDER_VERSION)
        return api_pb2.EnvironmentGetOrCreateResponse(
            environment_id=f"en-{name}",
            metadata=api_pb2.EnvironmentMetadata(name=name, settings=settings),
        )

    async def AppGetOrCreate(
        self, request: api_pb2.AppGetOrCreateRequest
    ) -> api_pb2.AppGetOrCreateResponse:
        name = _read(request, "app_name")
        if not name:
            raise GRPCError(Status.INVALID_ARGUMENT, "app_name is required")
        key = (_read(request, "environment_name") or "main", name)
        creation = _read(request, "object_creation_type")
        if key not in self.apps:
            if creation != api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING:
                raise GRPCError(Status.NOT_FOUND, f"App '{name}' not found")
            self.apps[key] = self._new_id("ap")
        return api_pb2.AppGetOrCreateResponse(app_id=self.apps[key])

    async def ImageGetOrCreate(
        self, request: api_pb2.ImageGetOrCreateRequest
    ) -> api_pb2.ImageGetOrCreateResponse:
        self._app(_read(request, "app_id"))
        if not _has(request, "image"):
            raise GRPCError(Status.INVALID_ARGUMENT, "image is required")
        commands = list(_read(request.image, "dockerfile_commands"))
        bases = list(_read(request.image, "base_images"))
        if not bases and not any(c.strip().upper().startswith("FROM ") for c in commands):
            raise GRPCError(Status.INVALID_ARGUMENT, "an image needs a FROM line or a base image")
        known = [known for known, recipe in self.images.items() if recipe == commands]
        image_id = known[0] if known else self._new_id("im")
        self.images[image_id] = commands
        return api_pb2.ImageGetOrCreateResponse(
            image_id=image_id,
            result=api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_SUCCESS),
            metadata=api_pb2.ImageMetadata(),
        )

    async def SecretGetOrCreate(
        self, request: api_pb2.SecretGetOrCreateRequest
    ) -> api_pb2.SecretGetOrCreateResponse:
        creation = _read(request, "object_creation_type")
        if creation not in (
            api_pb2.OBJECT_CREATION_TYPE_EPHEMERAL,
            api_pb2.OBJECT_CREATION_TYPE_ANONYMOUS_OWNED_BY_APP,
        ):
            name = _read(request, "deployment_name")
            raise GRPCError(Status.NOT_FOUND, f"Secret '{name}' not found")
        if creation == api_pb2.OBJECT_CREATION_TYPE_ANONYMOUS_OWNED_BY_APP:
            self._app(_read(request, "app_id"))
        secret_id = self._new_id("st")
        self.secrets[secret_id] = dict(_read(request, "env_dict"))
        return api_pb2.SecretGetOrCreateResponse(secret_id=secret_id)

    async def SandboxCreate(
        self, request: api_pb2.SandboxCreateRequest
    ) -> api_pb2.SandboxCreateResponse:
        app_id = _read(request, "app_id")
        environment = self._app(app_id)
        if not _has(request, "definition"):
            raise GRPCError(Status.INVALID_ARGUMENT, "definition is required")
        definition = request.definition
        image_id = _read(definition, "image_id")
        if image_id not in self.images:
            raise GRPCError(Status.NOT_FOUND, f"Image {image_id!r} not found")
        env: dict[str, str] = {}
        for secret_id in _read(definition, "secret_ids"):
            if secret_id not in self.secrets:
                raise GRPCError(Status.NOT_FOUND, f"Secret {secret_id!r} not found")
            env.update(self.secrets[secret_id])
        timeout = _read(definition, "timeout_secs") or 300
        if timeout > MAX_TIMEOUT_SECS:
            raise GRPCError(
                Status.INVALID_ARGUMENT, "timeout must be at most 86400 seconds (24 hours)"
            )
        workdir = _read(definition, "workdir")
        if workdir and not workdir.startswith("/"):
            raise GRPCError(Status.INVALID_ARGUMENT, "workdir must be an absolute path")
        tags = {}
        for tag in _read(request, "tags"):
            tag_name = _read(tag, "tag_name")
            if not tag_name:
                raise GRPCError(Status.INVALID_ARGUMENT, "a tag needs a name")
            tags[tag_name] = _read(tag, "tag_value")
        name = _read(definition, "name")
        if name and any(
            r.name == name and r.app_id == app_id and not r.finished() for r in self.running()
        ):
            raise GRPCError(
                Status.ALREADY_EXISTS, f"Sandbox with name '{name}' already exists in this app"
            )
        resources = _read(definition, "resources")
        gpu_config = _read(resources, "gpu_config")
        gpu = _read(gpu_config, "gpu_type")
        if gpu and _read(gpu_config, "count") > 1:
            gpu = f"{gpu}:{_read(gpu_config, 'count')}"
        access = _read(definition, "network_access")
        network = "open"
        kind = _read(access, "network_access_type")
        if kind == api_pb2.NetworkAccess.NetworkAccessType.BLOCKED:
            network = "blocked"
        elif kind == api_pb2.NetworkAccess.NetworkAccessType.ALLOWLIST:
            network = ",".join(_read(access, "allowed_domains"))
        network_access = _network_access(access)
        sandbox_id = self._new_id("sb")
        directory = self.root / sandbox_id
        directory.mkdir()
        self.sandboxes[sandbox_id] = SandboxRecord(
            sandbox_id=sandbox_id,
            app_id=app_id,
            environment=environment,
            name=name,
            tags=tags,
            definition=definition,
            created_at=self._now(),
            task_id=self._new_id("ta"),
            directory=directory,
            timeout_secs=timeout,
            image=self.images[image_id][0].removeprefix("FROM ").strip(),
            gpu=gpu,
            milli_cpu=_read(resources, "milli_cpu"),
            memory_mb=_read(resources, "memory_mb"),
            env=env,
            network=network,
            network_access=network_access,
            owner=_caller.get(),
            keys=[_caller.get()],
        )
        return api_pb2.SandboxCreateResponse(
            sandbox_id=sandbox_id, metadata=api_pb2.SandboxHandleMetadata(app_id=app_id)
        )

    async def SandboxWait(self, request: api_pb2.SandboxWaitRequest) -> api_pb2.SandboxWaitResponse:
        record = self._sandbox(_read(request, "sandbox_id"))
        deadline = time.monotonic() + max(0.0, _read(request, "timeout"))
        while not self._expire(record).finished() and time.monotonic() < deadline:
            await asyncio.sleep(min(0.05, deadline - time.monotonic()))
        metadata = api_pb2.SandboxHandleMetadata(app_id=record.app_id)
        if record.result is None:
            return api_pb2.SandboxWaitResponse(metadata=metadata)
        metadata.result.CopyFrom(record.result)
        return api_pb2.SandboxWaitResponse(result=record.result, metadata=metadata)

    async def SandboxTerminate(
        self, request: api_pb2.SandboxTerminateRequest
    ) -> api_pb2.SandboxTerminateResponse:
        record = self._sandbox(_read(request, "sandbox_id"))
        if not self._expire(record).finished():
            await self._finish(record, api_pb2.GenericResult.GENERIC_STATUS_TERMINATED)
        return api_pb2.SandboxTerminateResponse()

    async def SandboxList(self, request: api_pb2.SandboxListRequest) -> api_pb2.SandboxListResponse:
        app_id = _read(request, "app_id")
        if app_id:
            self._app(app_id)
        environment = _read(request, "environment_name") or "main"
        wanted = {_read(t, "tag_name"): _read(t, "tag_value") for t in _read(request, "tags")}
        before = _read(request, "before_timestamp")
        include_finished = _read(request, "include_finished")
        chosen = sorted(
            (
                r
                for r in self.sandboxes.values()
                if (not app_id or r.app_id == app_id)
                and r.environment == environment
                and (include_finished or not self._expire(r).finished())
                and all(r.tags.get(k) == v for k, v in wanted.items())
                and r.owner == _caller.get()
                and (not before or r.created_at < before)
            ),
            key=lambda r: r.created_at,
            reverse=True,
        )[:LIST_PAGE]
        return api_pb2.SandboxListResponse(sandboxes=[self._info(r) for r in chosen])

    async def SandboxTagsGet(
        self, request: api_pb2.SandboxTagsGetRequest
    ) -> api_pb2.SandboxTagsGetResponse:
        record = self._sandbox(_read(request, "sandbox_id"))
        return api_pb2.SandboxTagsGetResponse(tags=_tags(record.tags))

    async def SandboxTagsSet(self, request: api_pb2.SandboxTagsSetRequest) -> empty_pb2.Empty:
        record = self._sandbox(_read(request, "sandbox_id"))
        for tag in _read(request, "tags"):
            if not _read(tag, "tag_name"):
                raise GRPCError(Status.INVALID_ARGUMENT, "a tag needs a name")
            record.tags[tag.tag_name] = _read(tag, "tag_value")
        return empty_pb2.Empty()

    async def SandboxGetTaskId(
        self, request: api_pb2.SandboxGetTaskIdRequest
    ) -> api_pb2.SandboxGetTaskIdResponse:
        _read(request, "timeout")
        record = self._expire(self._sandbox(_read(request, "sandbox_id")))
        if record.result is not None:
            return api_pb2.SandboxGetTaskIdResponse(task_result=record.result)
        return api_pb2.SandboxGetTaskIdResponse(task_id=record.task_id)

    async def TaskGetCommandRouterAccess(
        self, request: api_pb2.TaskGetCommandRouterAccessRequest
    ) -> api_pb2.TaskGetCommandRouterAccessResponse:
        self._task(_read(request, "task_id"))
        return api_pb2.TaskGetCommandRouterAccessResponse(jwt=self._jwt, url=self.router_url)

    # -- the command router -----------------------------------------------------------------

    async def TaskExecStart(
        self, request: router_pb2.TaskExecStartRequest
    ) -> router_pb2.TaskExecStartResponse:
        record = self._task(_read(request, "task_id"))
        exec_id = _read(request, "exec_id")
        argv = list(_read(request, "command_args"))
        if not exec_id or not argv:
            raise GRPCError(Status.INVALID_ARGUMENT, "exec_id and command_args are required")
        if exec_id in record.execs:
            return router_pb2.TaskExecStartResponse()  # the exec id is the idempotency key
        # Paths inside the sandbox live under the record's directory; an exec starts in the
        # sandbox's workdir (its definition's) unless it names another.
        workdir = record.directory
        requested = _read(request, "workdir") if _has(request, "workdir") else ""
        requested = requested or _read(record.definition, "workdir")
        if requested:
            workdir = record.directory / requested.lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(record.directory)}
        env |= record.env | dict(_read(request, "env"))
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                cwd=workdir,
                env=env,
                stdin=asyncio.subprocess.PIPE,  # open until the client writes its EOF
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            raise GRPCError(
                Status.FAILED_PRECONDITION, f"cannot start {argv[0]!r}: {exc}"
            ) from None
        running = _Exec(process)
        record.execs[exec_id] = running
        if _has(request, "timeout_secs"):
            asyncio.get_running_loop().call_later(
                _read(request, "timeout_secs"), _kill_group, process
            )
        asyncio.get_running_loop().create_task(_pump(running))
        return router_pb2.TaskExecStartResponse()

    async def TaskExecStdioRead(
        self, request: router_pb2.TaskExecStdioReadRequest
    ) -> AsyncIterator[router_pb2.TaskExecStdioReadResponse]:
        running = self._exec(_read(request, "task_id"), _read(request, "exec_id"))
        offset = _read(request, "offset")
        fd = _read(request, "file_descriptor")
        if fd == router_pb2.TASK_EXEC_STDIO_FILE_DESCRIPTOR_STDOUT:
            buffer = running.stdout
        elif fd == router_pb2.TASK_EXEC_STDIO_FILE_DESCRIPTOR_STDERR:
            buffer = running.stderr
        else:
            raise GRPCError(Status.INVALID_ARGUMENT, "file_descriptor must be stdout or stderr")
        while True:
            running.changed.clear()
            if offset < len(buffer):
                chunk = bytes(buffer[offset:])
                offset += len(chunk)
                yield router_pb2.TaskExecStdioReadResponse(data=chunk)
                continue
            if running.done.is_set():
                return
            await running.changed.wait()

    async def TaskExecStdinWrite(
        self, request: router_pb2.TaskExecStdinWriteRequest
    ) -> router_pb2.TaskExecStdinWriteResponse:
        """Input at ``offset``: a retried write (an offset already passed) gives only what is
        new; one past the end is refused; after EOF, writes are ignored as the router does."""
        running = self._exec(_read(request, "task_id"), _read(request, "exec_id"))
        offset, data = _read(request, "offset"), bytes(_read(request, "data"))
        if running.stdin_closed:
            return router_pb2.TaskExecStdinWriteResponse()
        if offset > running.stdin_offset:
            raise GRPCError(
                Status.OUT_OF_RANGE,
                f"stdin offset {offset} is past the {running.stdin_offset} bytes written",
            )
        fresh = data[running.stdin_offset - offset :]
        stdin = running.process.stdin
        assert stdin is not None
        try:
            if fresh:
                stdin.write(fresh)
                await stdin.drain()  # a command that reads slowly holds the writer back
            if _read(request, "eof"):
                stdin.close()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the command exited or closed its input: the rest is dropped, as a pipe does
        running.stdin_offset += len(fresh)
        running.stdin_closed = bool(_read(request, "eof"))
        return router_pb2.TaskExecStdinWriteResponse()

    async def TaskExecWait(
        self, request: router_pb2.TaskExecWaitRequest
    ) -> router_pb2.TaskExecWaitResponse:
        running = self._exec(_read(request, "task_id"), _read(request, "exec_id"))
        await running.done.wait()
        return _exit_status(router_pb2.TaskExecWaitResponse(), running)

    async def TaskExecPoll(
        self, request: router_pb2.TaskExecPollRequest
    ) -> router_pb2.TaskExecPollResponse:
        running = self._exec(_read(request, "task_id"), _read(request, "exec_id"))
        if not running.done.is_set():
            return router_pb2.TaskExecPollResponse()
        return _exit_status(router_pb2.TaskExecPollResponse(), running)

    # -- helpers ----------------------------------------------------------------------------

    def _new_id(self, prefix: str) -> str:
        alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
        return f"{prefix}-" + "".join(secrets.choice(alphabet) for _ in range(22))

    def _now(self) -> float:
        """Strictly increasing, so paging by ``created_at`` never skips a sandbox."""
        self._clock = max(time.time(), self._clock + 1e-3)
        return self._clock

    def _app(self, app_id: str) -> str:
        """The app's environment; INVALID_ARGUMENT without an id, NOT_FOUND for an unknown one."""
        if not app_id:
            raise GRPCError(Status.INVALID_ARGUMENT, "app_id is required")
        for (environment, _name), known in self.apps.items():
            if known == app_id:
                return environment
        raise GRPCError(Status.NOT_FOUND, f"App {app_id!r} not found")

    def _sandbox(self, sandbox_id: str) -> SandboxRecord:
        if not sandbox_id:
            raise GRPCError(Status.INVALID_ARGUMENT, "sandbox_id is required")
        record = self.sandboxes.get(sandbox_id)
        if record is None or record.owner != _caller.get():
            raise GRPCError(Status.NOT_FOUND, f"Sandbox {sandbox_id!r} not found")
        record.keys.append(_caller.get())
        return record

    def _task(self, task_id: str) -> SandboxRecord:
        for record in self.sandboxes.values():
            if record.task_id == task_id and task_id:
                if self._expire(record).finished():
                    raise GRPCError(Status.NOT_FOUND, f"Task {task_id!r} has finished")
                return record
        raise GRPCError(Status.NOT_FOUND, f"Task {task_id!r} not found")

    def _exec(self, task_id: str, exec_id: str) -> _Exec:
        record = self._task(task_id)
        running = record.execs.get(exec_id)
        if running is None:
            raise GRPCError(Status.NOT_FOUND, f"Exec {exec_id!r} not found")
        return running

    def _expire(self, record: SandboxRecord) -> SandboxRecord:
        if record.result is None and time.time() > record.created_at + record.timeout_secs:
            record.result = api_pb2.GenericResult(
                status=api_pb2.GenericResult.GENERIC_STATUS_TIMEOUT
            )
            for running in record.execs.values():
                _kill_group(running.process)
        return record

    async def _finish(self, record: SandboxRecord, status: int) -> None:
        record.result = api_pb2.GenericResult(status=status)  # type: ignore[arg-type]
        await self._kill_execs(record)
        shutil.rmtree(record.directory, ignore_errors=True)

    async def _kill_execs(self, record: SandboxRecord) -> None:
        for running in record.execs.values():
            _kill_group(running.process)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(running.done.wait(), 5)

    def _info(self, record: SandboxRecord) -> api_pb2.SandboxInfo:
        task = api_pb2.TaskInfo(id=record.task_id, sandbox_id=record.sandbox_id)
        if record.result is not None:
            task.result.CopyFrom(record.result)
        return api_pb2.SandboxInfo(
            id=record.sandbox_id,
            created_at=record.created_at,
            task_info=task,
            app_id=record.app_id,
            tags=_tags(record.tags),
            name=record.name,
            timeout_secs=record.timeout_secs,
            metadata=api_pb2.SandboxHandleMetadata(app_id=record.app_id),
        )

    async def apply_faults(self, rpc: str) -> Fault | None:
        """Delay, fail or hang per the first fault for ``rpc``; the fault to apply after the work."""
        for fault in self.faults:
            if fault.rpc != rpc or fault.times <= 0:
                continue
            fault.times -= 1
            if fault.kind == "latency":
                await asyncio.sleep(fault.delay)
                return None
            if fault.kind == "status":
                raise GRPCError(fault.status, fault.message)
            if fault.kind == "hang":
                await asyncio.Event().wait()
            return fault  # lost_answer, lost_hang: done first, then lost; done_late: see late
        return None

    async def late(self, fault: Fault, work: Callable[[], Awaitable[Any]]) -> Any:
        """``work()`` after ``fault.delay``, carried out even if the caller cancels meanwhile
        (grpclib cancels a handler whose client went away; Modal's servers go on)."""

        async def delayed() -> Any:
            await asyncio.sleep(fault.delay)
            return await work()

        task = asyncio.ensure_future(delayed())
        self._late.add(task)
        task.add_done_callback(self._late.discard)
        return await asyncio.shield(task)


def _tags(tags: dict[str, str]) -> list[api_pb2.SandboxTag]:
    return [api_pb2.SandboxTag(tag_name=k, tag_value=v) for k, v in sorted(tags.items())]


def _exit_status(response: Any, running: _Exec) -> Any:
    if running.signal is not None:
        response.signal = running.signal
    else:
        response.code = running.code if running.code is not None else -1
    return response


async def _pump(running: _Exec) -> None:
    async def copy(reader: asyncio.StreamReader | None, into: bytearray) -> None:
        assert reader is not None
        while chunk := await reader.read(65536):
            into.extend(chunk)
            running.changed.set()

    await asyncio.gather(
        copy(running.process.stdout, running.stdout), copy(running.process.stderr, running.stderr)
    )
    code = await running.process.wait()
    if code < 0:
        running.signal = -code
    else:
        running.code = code
    running.done.set()
    running.changed.set()


def _kill_group(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def _fake_jwt() -> str:
    """A token shaped like the JWT Modal issues (the SDK reads its ``exp``), signed by nothing."""

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    claims = {"exp": int(time.time()) + 3600, "sub": secrets.token_hex(8)}
    return f"{part({'alg': 'none'})}.{part(claims)}.{secrets.token_hex(16)}"


class _Service:
    """A grpclib handler object serving only the methods the double implements.

    Each is looked up in the proto's own descriptor, so its path, request and
    response types and streaming are those of the proto (the conformance test
    checks the same names against the shared spec).
    """

    def __init__(
        self, full_name: str, module: Any, handlers: dict[str, Callable[..., Any]]
    ) -> None:
        self.full_name = full_name
        self.service = module.DESCRIPTOR.services_by_name[full_name.rsplit(".", 1)[1]]
        self.handlers = handlers
        self.double: ModalDouble = handlers[next(iter(handlers))].__self__  # type: ignore[attr-defined]

    def __mapping__(self) -> dict[str, Handler]:
        from google.protobuf import message_factory

        mapping = {}
        for name, handler in self.handlers.items():
            method = self.service.methods_by_name[name]
            request = message_factory.GetMessageClass(method.input_type)
            response = message_factory.GetMessageClass(method.output_type)
            streaming = method.server_streaming
            cardinality = Cardinality.UNARY_STREAM if streaming else Cardinality.UNARY_UNARY
            mapping[f"/{self.full_name}/{name}"] = Handler(
                self._wrap(name, handler, streaming), cardinality, request, response
            )
        return mapping

    def _wrap(
        self, name: str, handler: Callable[..., Any], streaming: bool
    ) -> Callable[[Stream[Any, Any]], Awaitable[None]]:
        double = self.double
        is_router = self.full_name == ROUTER_SERVICE

        async def serve(stream: Stream[Any, Any]) -> None:
            double.calls.append(name)
            if is_router:
                double.check_router_auth(stream.metadata)
            else:
                double.check_api_auth(stream.metadata)
            request = await stream.recv_message()
            assert request is not None
            fault = await double.apply_faults(name)
            if streaming:
                async for item in handler(request):
                    await stream.send_message(item)
                return
            if fault is not None and fault.kind == "done_late":
                response = await double.late(fault, lambda: handler(request))
            else:
                response = await handler(request)
            if fault is not None and fault.kind == "lost_answer":
                raise GRPCError(fault.status, fault.message)
            if fault is not None and fault.kind == "lost_hang":
                await asyncio.Event().wait()
            await stream.send_message(response)

        return serve


class _Server(Server):
    """A grpclib server that also closes its clients' connections when it stops (grpclib
    only cancels their requests, and a connection the client keeps open would linger)."""

    def __init__(self, handlers: list[Any]) -> None:
        super().__init__(handlers)
        self.transports: list[asyncio.BaseTransport] = []

    def _protocol_factory(self) -> Any:
        protocol = super()._protocol_factory()
        made = protocol.connection_made

        def connection_made(transport: asyncio.BaseTransport) -> None:
            self.transports.append(transport)
            made(transport)

        protocol.connection_made = connection_made  # type: ignore[method-assign]
        return protocol

    async def stop(self) -> None:
        self.close()
        await self.wait_closed()
        for transport in self.transports:
            transport.close()
        await asyncio.sleep(0)


async def _serve(service: _Service) -> tuple[_Server, str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = _Server([service])
    await server.start(sock=sock)
    return server, f"http://127.0.0.1:{sock.getsockname()[1]}"


@contextlib.contextmanager
def _env(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture
async def modal_double(tmp_path: Path) -> AsyncIterator[ModalDouble]:
    """A running double, with ``MODAL_SERVER_URL``, ``MODAL_TOKEN_ID`` and ``MODAL_TOKEN_SECRET``
    pointing at it for the test (and ``MODAL_CONFIG_PATH`` at a file that does not exist, so no
    ``~/.modal.toml`` of the machine is read)."""
    double = ModalDouble(
        tmp_path / "modal-double",
        token_id=f"ak-{secrets.token_hex(8)}",
        token_secret=f"as-{secrets.token_hex(16)}",
    )
    await double.start()
    values = {
        "MODAL_SERVER_URL": double.url,
        "MODAL_TOKEN_ID": double.token_id,
        "MODAL_TOKEN_SECRET": double.token_secret,
    }
    try:
        with _env(values):
            yield double
    finally:
        await double.stop()


QUICK_RETRIES = {"retry_wait": 0.01, "retry_attempts": 4, "call_timeout": 2, "retry_budget": 10}
"""Declaration settings that keep retries short against the double."""


@pytest.fixture
async def modal_extensions(modal_double: ModalDouble) -> AsyncIterator[Callable[..., Any]]:
    """Builds ext.modal from its packaged declaration (quick retries, ``**settings`` over it)
    against the double, and closes each one's SDK connection after the test."""
    from sandboxer.config.catalog import Catalog
    from sandboxer.config.extension_decl import ExtensionDecl
    from sandboxer.config.settings import Settings
    from sandboxer.extensions.modal.backend import ModalExtension

    del modal_double
    built: list[ModalExtension] = []

    def make(**settings: Any) -> ModalExtension:
        decl = Catalog.load().extensions_enabled()["ext.modal"]
        merged = decl.settings | QUICK_RETRIES | settings
        decl = ExtensionDecl.model_validate(decl.model_dump() | {"settings": merged})
        built.append(ModalExtension.from_declaration(decl, Settings.from_env()))
        return built[-1]

    yield make
    for extension in built:
        await extension.aclose()


def _network_access(access: Any) -> dict[str, Any]:
    """A create's NetworkAccess as its fields, refused as Modal's server would: an allowlist
    names at least one CIDR or domain, each valid (domains may start with ``*.``)."""
    kind = api_pb2.NetworkAccess.NetworkAccessType.Name(_read(access, "network_access_type"))
    if kind != "ALLOWLIST":
        return {"type": kind}
    cidrs = list(_read(access, "allowed_cidrs"))
    domains = list(_read(access, "allowed_domains"))
    if not cidrs and not domains:
        raise GRPCError(Status.INVALID_ARGUMENT, "an ALLOWLIST network access allows nothing")
    for cidr in cidrs:
        if not is_cidr(cidr):
            raise GRPCError(Status.INVALID_ARGUMENT, f"invalid CIDR {cidr!r} in allowed_cidrs")
    for domain in domains:
        if not is_domain(domain):
            raise GRPCError(Status.INVALID_ARGUMENT, f"invalid domain {domain!r}")
    return {"type": kind, "allowed_cidrs": cidrs, "allowed_domains": domains}
