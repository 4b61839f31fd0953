"""The HTTP transport of :class:`sandboxer.client.Sandboxer`: the gateway's ``/v1/`` API
(docs/http-api.md; docs/openapi.json is the contract), over ``httpx``.

It answers as the bus transport does. Commands carry an ``Idempotency-Key`` (the
command id, drawn here when the caller names none), so the sandbox id is known
at once and a retried request is the same command. A wait longer than the
gateway allows (``?wait=`` up to 300 s) goes on by polling the status URL.
Errors in the documented shape become errors of the one tree
(:mod:`sandboxer.client.http_errors`); a connection that fails is a
:class:`BusError` (:class:`ServiceNotRunning` when nothing listens).

What HTTP does not stream: an exec's output arrives once the command is over
(``on_output`` is called then), and its stdin travels in the request body (about
9 MiB at most: for more, copy a file in first). Events are Server-Sent Events,
resumed after the last sequence seen when the connection drops.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Collection, Mapping
from pathlib import Path
from typing import Any

import httpx

from sandboxer.client.http_errors import error_for
from sandboxer.client.pages import page_of, paged_reply
from sandboxer.client.sse import SseParser
from sandboxer.client.transport import OutputCallback, Row
from sandboxer.command_outcomes import notify
from sandboxer.errors import (
    BusError,
    CommandFailed,
    InvalidInput,
    NotFound,
    ServiceNotRunning,
    WorkspaceRefused,
)
from sandboxer.exec_protocol.wire import check_path
from sandboxer.ids import new_command_id
from sandboxer.pagination import DEFAULT_LIMIT, Page
from sandboxer.transfer import Copied, StdinSource, copy_target, place_copy
from sandboxer.workspaces.limits import ArchiveLimits
from sandboxer.workspaces.pack import pack_directory

__all__ = ["MAX_GATEWAY_WAIT", "HttpTransport"]

MAX_GATEWAY_WAIT = 300
"""The longest ``?wait=`` the gateway takes (docs/http-api.md#conventions)."""
MAX_STDIN_BYTES = 9 * 1024 * 1024
"""What fits an exec request's body (12 MiB of JSON, the input base64-encoded)."""
REQUEST_SLACK = 30.0
"""How much longer than what it waits for a request may take to answer."""
POLL_INTERVAL = 0.5
CHUNK = 1024 * 1024
EVENT_RECONNECTS = 5
"""Consecutive failed reconnections of an event stream before its error is raised."""
STREAM_SILENCE = 45.0
"""Seconds without a byte (the gateway pings every 15 s) after which a live stream is dead."""
TAR = "application/x-tar"
LIVE = frozenset({"ready", "active"})


def _base_url(url: str) -> str:
    """Without a trailing slash: the paths joined to it start with one."""
    return url.rstrip("/")


class HttpTransport:
    """Speaks the HTTP API with one key; the key decides the actor (docs/http-api.md#keys)."""

    name = "http"

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    @classmethod
    def open(
        cls,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> HttpTransport:
        """A client of the gateway at ``base_url`` (``http://127.0.0.1:8788``) bearing
        ``api_key``."""
        http = httpx.AsyncClient(
            base_url=_base_url(base_url),
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout,
            transport=transport,
        )
        return cls(http)

    async def close(self) -> None:
        await self.http.aclose()

    # -- requests ------------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        url: str,
        *,
        sandbox_id: str | None = None,
        wait: float | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """One request; an error answer raised as its error of the tree."""
        if wait is not None:
            kwargs["timeout"] = wait + REQUEST_SLACK
        try:
            response = await self.http.request(method, url, **kwargs)
        except httpx.ConnectError as exc:
            raise ServiceNotRunning(
                f"nothing answers at {self.http.base_url}: is the gateway running "
                f"('sandboxer up' serves it; SANDBOXER_HTTP_ADDR)? ({exc})"
            ) from exc
        except httpx.HTTPError as exc:
            raise BusError(f"{method} {url} failed: {exc!r}") from exc
        if response.status_code >= 400:
            raise error_for(
                response.status_code, _json(response), response.headers, sandbox_id=sandbox_id
            )
        return response

    async def _command(
        self,
        method: str,
        url: str,
        command_id: str | None,
        *,
        wait: bool,
        timeout: float,
        sandbox_id: str | None = None,
        **kwargs: Any,
    ) -> tuple[httpx.Response, str, float]:
        """Send a command with its ``Idempotency-Key``; the answer, the command id, and
        the deadline of the wait."""
        command_id = command_id or new_command_id()
        deadline = time.monotonic() + timeout
        seconds = max(1, min(int(timeout), MAX_GATEWAY_WAIT)) if wait else 0
        response = await self._call(
            method,
            url,
            sandbox_id=sandbox_id,
            params={"wait": f"{seconds}s"} if wait else None,
            headers={"Idempotency-Key": command_id},
            wait=float(seconds),
            **kwargs,
        )
        return response, command_id, deadline

    async def _until(
        self, status_url: str, done: Collection[str], deadline: float, *, failed: str = "failed"
    ) -> Row:
        """Poll a status URL until its resource reaches one of ``done`` (``failed``: raise)."""
        while True:
            response = await self._call("GET", status_url)
            row = _json(response)
            if response.status_code == 200 and isinstance(row, dict):
                status = row.get("status")
                if status in done:
                    return row
                if status == failed:
                    ident = row.get("sandbox_id") or row.get("snapshot_id")
                    reason = str(row.get("failure") or status)
                    event = {"type": "failed", "reason": reason, **_ids(row)}
                    raise CommandFailed(f"{ident} failed: {reason}", event)
            if time.monotonic() >= deadline:
                raise BusError(
                    f"no outcome at {status_url} within the wait; the command is accepted and "
                    "may still complete (poll the status URL)"
                )
            await asyncio.sleep(POLL_INTERVAL)

    async def _resource(
        self, response: httpx.Response, done: Collection[str], deadline: float
    ) -> Row:
        """The resource a waited command answered with, or (202: the gateway's wait ran
        out first) the one its status URL shows once it is done."""
        body = _json(response)
        if response.status_code in {200, 201} and isinstance(body, dict):
            return body
        if not isinstance(body, dict) or not isinstance(body.get("status_url"), str):
            raise BusError(f"the HTTP API answered {response.status_code} without a status URL")
        return await self._until(body["status_url"], done, deadline)

    # -- sandboxes -----------------------------------------------------------------------------

    async def create(
        self,
        profile: str,
        inputs: Mapping[str, str],
        *,
        sandbox_id: str | None,
        command_id: str | None,
        host: str | None,
        ttl: str | None,
        project: str | None,
        wait: bool,
        timeout: float,
        network: Mapping[str, Any] | None = None,
        consumer: Mapping[str, Any] | None = None,
    ) -> Row:
        body: dict[str, Any] = {"profile": profile, "inputs": dict(inputs)}
        optional = {
            "sandbox_id": sandbox_id,
            "host": host,
            "ttl": ttl,
            "project": project,
            "network": None if network is None else dict(network),
            "consumer": None if consumer is None else dict(consumer),
        }
        body |= {k: v for k, v in optional.items() if v is not None}
        response, command_id, deadline = await self._command(
            "POST", "/v1/sandboxes", command_id, wait=wait, timeout=timeout, json=body
        )
        if not wait:
            return {"command_id": command_id, **_ids(_json(response))}
        return await self._resource(response, LIVE, deadline)

    async def get(self, sandbox_id: str) -> Row | None:
        try:
            row = _json(await self._call("GET", f"/v1/sandboxes/{sandbox_id}"))
        except NotFound:
            return None
        return row if isinstance(row, dict) else None

    async def list_sandboxes(
        self,
        *,
        status: str | None,
        include_destroyed: bool,
        limit: int,
        consumer: Mapping[str, Any] | None = None,
        after: str | None = None,
    ) -> Page[Row]:
        params: dict[str, Any] = {"include_destroyed": include_destroyed, "limit": limit}
        if status is not None:
            params["status"] = status
        if after is not None:
            params["after"] = after
        wanted = dict(consumer or {})
        params |= {k: v for k, v in wanted.items() if k != "labels" and v is not None}
        labels = wanted.get("labels") or {}
        if labels:  # repeated: ?label=team=core&label=tier=gold
            params["label"] = [f"{key}={value}" for key, value in labels.items()]
        return page_of(
            _dict(await self._call("GET", "/v1/sandboxes", params=params)), "sandboxes", after
        )

    async def destroy(
        self, sandbox_id: str, *, command_id: str | None, wait: bool, timeout: float
    ) -> Row:
        response, command_id, deadline = await self._command(
            "DELETE",
            f"/v1/sandboxes/{sandbox_id}",
            command_id,
            wait=wait,
            timeout=timeout,
            sandbox_id=sandbox_id,
        )
        if not wait:
            return {"command_id": command_id, "sandbox_id": sandbox_id}
        return await self._resource(response, {"destroyed"}, deadline)

    async def extend_ttl(self, sandbox_id: str, duration: str, *, command_id: str | None) -> Row:
        response, _, _ = await self._command(
            "POST",
            f"/v1/sandboxes/{sandbox_id}/extend-ttl",
            command_id,
            wait=False,
            timeout=0,
            sandbox_id=sandbox_id,
            json={"duration": duration},
        )
        return _dict(response)

    async def pause_or_resume(
        self, verb: str, sandbox_id: str, *, command_id: str | None, timeout: float
    ) -> Row:
        response, _, deadline = await self._command(
            "POST",
            f"/v1/sandboxes/{sandbox_id}/{verb}",
            command_id,
            wait=True,
            timeout=timeout,
            sandbox_id=sandbox_id,
        )
        return await self._resource(response, {"paused"} if verb == "pause" else LIVE, deadline)

    # -- snapshots -----------------------------------------------------------------------------

    async def snapshot(
        self, sandbox_id: str, *, name: str | None, command_id: str | None, timeout: float
    ) -> Row:
        response, _, deadline = await self._command(
            "POST",
            f"/v1/sandboxes/{sandbox_id}/snapshot",
            command_id,
            wait=True,
            timeout=timeout,
            sandbox_id=sandbox_id,
            json={} if name is None else {"name": name},
        )
        return await self._resource(response, {"created"}, deadline)

    async def restore(
        self,
        snapshot_id: str,
        *,
        profile: str | None,
        sandbox_id: str | None,
        inputs: Mapping[str, str] | None,
        project: str | None,
        command_id: str | None,
        timeout: float,
        consumer: Mapping[str, Any] | None = None,
    ) -> Row:
        optional = {"profile": profile, "sandbox_id": sandbox_id, "project": project}
        body: dict[str, Any] = {k: v for k, v in optional.items() if v is not None}
        if inputs:
            body["inputs"] = dict(inputs)
        if consumer is not None:
            body["consumer"] = dict(consumer)
        response, _, deadline = await self._command(
            "POST",
            f"/v1/snapshots/{snapshot_id}/restore",
            command_id,
            wait=True,
            timeout=timeout,
            json=body,
        )
        return await self._resource(response, LIVE, deadline)

    async def snapshot_get(self, snapshot_id: str) -> Row | None:
        try:
            row = _json(await self._call("GET", f"/v1/snapshots/{snapshot_id}"))
        except NotFound:
            return None
        return row if isinstance(row, dict) else None

    async def snapshots(
        self,
        *,
        sandbox_id: str | None,
        include_deleted: bool,
        limit: int,
        after: str | None = None,
    ) -> Page[Row]:
        params: dict[str, Any] = {"include_deleted": include_deleted, "limit": limit}
        if sandbox_id is not None:
            params["sandbox_id"] = sandbox_id
        if after is not None:
            params["after"] = after
        body = _dict(await self._call("GET", "/v1/snapshots", params=params))
        return page_of(body, "snapshots", after)

    async def delete_snapshot(
        self, snapshot_id: str, *, command_id: str | None, timeout: float
    ) -> Row:
        response, _, deadline = await self._command(
            "DELETE", f"/v1/snapshots/{snapshot_id}", command_id, wait=True, timeout=timeout
        )
        return await self._resource(response, {"deleted"}, deadline)

    # -- exec and files ------------------------------------------------------------------------

    async def exec(
        self,
        sandbox_id: str,
        argv: list[str],
        *,
        stdin: StdinSource | None,
        timeout: float | None,
        service: str | None,
        on_output: OutputCallback,
    ) -> Row:
        body: dict[str, Any] = {"argv": argv}
        if stdin is not None:
            body["stdin"] = base64.b64encode(await _gather_stdin(stdin)).decode()
        if timeout is not None:
            body["timeout"] = timeout
        if service is not None:
            body["service"] = service
        response = await self._call(
            "POST",
            f"/v1/sandboxes/{sandbox_id}/exec",
            sandbox_id=sandbox_id,
            wait=(timeout or 3600.0) + REQUEST_SLACK,
            json=body,
        )
        answer = _dict(response)
        for stream in ("stdout", "stderr"):
            value = answer.get(stream)
            data = base64.b64decode(value) if isinstance(value, str) else b""
            if data:
                await notify(on_output, stream, data)
        return answer

    async def copy_in(
        self, sandbox_id: str, source: Path, path: str, *, service: str | None, max_mb: int
    ) -> Copied:
        if service is not None:
            raise InvalidInput("the HTTP API copies into a sandbox's first service only")
        limits = ArchiveLimits.from_mb(max_mb)
        with tempfile.TemporaryDirectory(prefix="sandboxer-cp-") as scratch:
            body, content_type = await asyncio.to_thread(
                _upload_body, source, path, Path(scratch), limits
            )
            response = await self._call(
                "PUT",
                f"/v1/sandboxes/{sandbox_id}/files",
                sandbox_id=sandbox_id,
                wait=3600.0,
                params={"path": path},
                headers={"Content-Type": content_type},
                content=_read_chunks(body),
            )
        answer = _dict(response)
        return Copied(
            kind=str(answer.get("kind")),
            path=str(answer.get("path")),
            size=int(answer.get("size") or 0),
            local=source,
        )

    async def copy_out(
        self, sandbox_id: str, path: str, destination: Path, *, service: str | None, max_mb: int
    ) -> Copied:
        if service is not None:
            raise InvalidInput("the HTTP API copies out of a sandbox's first service only")
        name = check_path(path, root_allowed=True).rsplit("/", 1)[-1]
        target = await asyncio.to_thread(copy_target, destination, name)
        limits = ArchiveLimits.from_mb(max_mb)
        url = f"/v1/sandboxes/{sandbox_id}/files"
        # Scratch beside the target: the final move is a rename on the same filesystem.
        scratch = await asyncio.to_thread(
            tempfile.mkdtemp, prefix=".sandboxer-cp-", dir=target.parent
        )
        try:
            fetched = Path(scratch) / "fetched"
            kind, size = await self._download(url, path, fetched, limits, sandbox_id)
            await asyncio.to_thread(place_copy, fetched, kind, target, limits)
        finally:
            await asyncio.to_thread(shutil.rmtree, scratch, True)
        return Copied(kind=kind, path=path, size=size, local=target)

    async def _download(
        self, url: str, path: str, fetched: Path, limits: ArchiveLimits, sandbox_id: str
    ) -> tuple[str, int]:
        try:
            async with self.http.stream(
                "GET", url, params={"path": path}, timeout=3600.0
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise error_for(
                        response.status_code,
                        _json(response),
                        response.headers,
                        sandbox_id=sandbox_id,
                    )
                kind = response.headers.get("x-sandboxer-kind", "")
                if kind not in {"file", "dir"}:
                    raise BusError(f"the HTTP API answered a copy of {path!r} with kind {kind!r}")
                size = 0
                with fetched.open("wb") as out:
                    async for chunk in response.aiter_bytes(CHUNK):
                        size += len(chunk)
                        if size > limits.max_bytes:
                            raise WorkspaceRefused(
                                f"{path} is larger than {limits.max_bytes // (1024 * 1024)} "
                                "MiB, the most a copy moves (max_mb)"
                            )
                        out.write(chunk)
        except httpx.HTTPError as exc:
            raise BusError(f"copying {path!r} out of {sandbox_id} failed: {exc!r}") from exc
        return kind, size

    # -- events --------------------------------------------------------------------------------

    async def events(
        self,
        *,
        sandbox_id: str | None,
        follow: bool,
        after: int,
        types: Collection[str],
    ) -> AsyncIterator[tuple[int, Row]]:
        # /v1/events?sandbox= rather than /v1/sandboxes/{id}/events: the latter is 404 until
        # the view knows the sandbox, and a client follows a create from its first event.
        url = "/v1/events"
        params: dict[str, Any] = {"follow": follow}
        if sandbox_id:
            params["sandbox"] = sandbox_id
        if types:
            params["type"] = ",".join(sorted(types))
        last, failures = after, 0
        while True:
            try:
                async for seq, event in self._event_stream(url, params, last):
                    last, failures = seq, 0
                    yield seq, event
                if not follow:
                    return  # the end of the log
                problem = "the gateway ended a live stream"  # it stopped: go on elsewhere
            except httpx.TransportError as exc:
                problem = repr(exc)
            failures += 1
            if failures > EVENT_RECONNECTS:
                raise BusError(f"the event stream {url} kept failing: {problem}")
            await asyncio.sleep(POLL_INTERVAL * failures)  # then resume after `last`

    async def _event_stream(
        self, url: str, params: dict[str, Any], after: int
    ) -> AsyncIterator[tuple[int, Row]]:
        headers = {"Last-Event-ID": str(after)} if after else {}
        # A live stream is quiet between events, but the gateway sends a keep-alive comment
        # every 15 s: silence for three of them is a connection that died without closing
        # (a NAT dropped it, the host went), and the stream resumes after the last event.
        timeout = httpx.Timeout(30.0, read=STREAM_SILENCE)
        async with self.http.stream(
            "GET", url, params=params, headers=headers, timeout=timeout
        ) as response:
            if response.status_code >= 400:
                await response.aread()
                raise error_for(response.status_code, _json(response), response.headers)
            parser = SseParser()
            async for line in response.aiter_lines():
                message = parser.feed(line)
                if message is None or message.id is None or not message.id.isdigit():
                    continue
                try:
                    event = json.loads(message.data)
                except ValueError:
                    raise BusError(f"the event stream {url} sent unreadable data") from None
                if isinstance(event, dict):
                    yield int(message.id), event

    # -- credits and routing -------------------------------------------------------------------

    async def credits(
        self, project: str | None, *, limit: int = DEFAULT_LIMIT, after: str | None = None
    ) -> Page[Row]:
        if project is None:
            params: dict[str, Any] = {"limit": limit}
            if after is not None:
                params["after"] = after
            body = _dict(await self._call("GET", "/v1/credits", params=params))
            return page_of(body, "accounts", after)
        try:
            return Page([_dict(await self._call("GET", f"/v1/credits/{project}"))])
        except NotFound:
            return Page()

    async def usage(
        self,
        *,
        project: str | None,
        since: str | None,
        until: str | None,
        limit: int,
        by: str | None = None,
        after: str | None = None,
    ) -> Row:
        window = {"project": project, "since": since, "until": until, "limit": limit, "by": by}
        params = {k: v for k, v in {**window, "after": after}.items() if v is not None}
        return dict(paged_reply(_dict(await self._call("GET", "/v1/usage", params=params)), after))

    async def route_explain(self, profile: str, ttl: str | None) -> Row:
        params = {"profile": profile, **({} if ttl is None else {"ttl": ttl})}
        return _dict(await self._call("GET", "/v1/route/explain", params=params))


# -- helpers ---------------------------------------------------------------------------------


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _dict(response: httpx.Response) -> Row:
    body = _json(response)
    if not isinstance(body, dict):
        raise BusError(f"the HTTP API answered {response.status_code} with no JSON object")
    return body


def _ids(body: Any) -> Row:
    if not isinstance(body, dict):
        return {}
    return {k: body[k] for k in ("sandbox_id", "snapshot_id") if isinstance(body.get(k), str)}


async def _gather_stdin(stdin: StdinSource) -> bytes:
    """Over HTTP the input travels in the request: read it whole, within the limit."""
    if isinstance(stdin, bytes | bytearray | memoryview):
        data = bytes(stdin)
    else:
        parts = bytearray()
        async for block in stdin:
            parts.extend(block)
            if len(parts) > MAX_STDIN_BYTES:
                break
        data = bytes(parts)
    if len(data) > MAX_STDIN_BYTES:
        raise InvalidInput(
            f"stdin over HTTP is at most {MAX_STDIN_BYTES // (1024 * 1024)} MiB (it travels in "
            "the request); copy a file in and read it, or use the bus"
        )
    return data


def _upload_body(source: Path, path: str, scratch: Path, limits: ArchiveLimits) -> tuple[Path, str]:
    """What a copy in sends, and its type: a file's own bytes, or a tar of a directory.
    The path is checked first, so a refused one uploads nothing."""
    is_dir = source.is_dir()
    check_path(path, root_allowed=is_dir)
    if is_dir:
        archive = scratch / "copy.tar"
        pack_directory(source, archive, limits=limits)
        return archive, TAR
    if not source.is_file():
        if not source.exists():
            raise InvalidInput(f"{source} does not exist")
        raise InvalidInput(f"{source} is neither a regular file nor a directory")
    if source.stat().st_size > limits.max_bytes:
        raise WorkspaceRefused(
            f"{source} is larger than {limits.max_bytes // (1024 * 1024)} MiB, the most a copy "
            "moves (SANDBOXER_UPLOAD_MAX_MB)"
        )
    return source, "application/octet-stream"


async def _read_chunks(path: Path) -> AsyncIterator[bytes]:
    handle = await asyncio.to_thread(path.open, "rb")
    try:
        while block := await asyncio.to_thread(handle.read, CHUNK):
            yield block
    finally:
        handle.close()
