"""The stub's adapter: the Extension protocol (and pause, timeout, metering, telemetry) over
records kept by :mod:`.records`, decided by the pure rules of :mod:`.rules`.

Every call waits ``settings.latency_ms`` first, as a call to a real provider's API would.
Creates are decided under one asyncio lock (read the records, count, write), so concurrent
creates in this process never exceed ``max_live``; two processes sharing one data directory
are not coordinated (docs/ext-saas-stub.md).
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sandboxer.clock import utc_now
from sandboxer.config.extension_decl import ExtensionDecl
from sandboxer.config.settings import Settings
from sandboxer.errors import (
    InvalidInput,
    ProviderQuota,
    ProviderUnavailable,
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
from sandboxer.extensions.saas_stub import rules
from sandboxer.extensions.saas_stub.records import RecordStore
from sandboxer.extensions.saas_stub.rules import Price, Record
from sandboxer.extensions.saas_stub.stub_settings import StubSettings, parse_stub_settings
from sandboxer.extensions.ssh_checks import check_sandbox_id

__all__ = ["SaasStubExtension"]

STUB_WARNING = (
    "ext.saas-stub is a stub: the sandbox is a record, nothing runs in it, and no isolation, "
    "network policy or resource limit is enforced"
)


class SaasStubExtension:
    """A metered pretend provider. ``root`` holds its records (``$SANDBOXER_HOME/saas-stub/<id>``)."""

    id = "ext.saas-stub"
    host_local = True
    """Its records live in this worker's data directory: only this worker sees them."""

    def __init__(
        self,
        root: Path,
        *,
        settings: StubSettings | None = None,
        price: Price | None = None,
        extension_id: str = "ext.saas-stub",
        clock: Callable[[], str] = utc_now,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.id = extension_id
        self.settings = settings or StubSettings()
        self.price = price or Price()
        self._store = RecordStore(root)
        self._clock = clock
        self._sleep = sleep
        self._lock = asyncio.Lock()
        self._attempts: dict[str, int] = {}
        self._rng = random.Random()  # only drawn from without a seed

    @classmethod
    def from_declaration(cls, decl: ExtensionDecl, settings: Settings) -> SaasStubExtension:
        """How the worker builds it: settings and price from the declaration, records under
        the data directory."""
        return cls(
            settings.home / "saas-stub" / decl.id,
            settings=parse_stub_settings(decl.settings, decl.id),
            price=Price(
                per_create=decl.pricing.per_create,
                per_second=decl.pricing.per_second,
                gpu_per_second=decl.pricing.gpu_per_second,
            ),
            extension_id=decl.id,
        )

    # -- the Extension protocol ------------------------------------------------------------

    async def provision(self, request: ProvisionRequest) -> None:
        sandbox_id = request.sandbox_id
        check_sandbox_id(sandbox_id, self.id)
        deadline = rules.deadline_for(
            self._timestamp(request.expires_at, "expires_at"), self.settings.timeout_margin_s
        )
        await self._latency()
        attempt = self._attempts[sandbox_id] = self._attempts.get(sandbox_id, 0) + 1
        async with self._lock:
            # A redelivered create starts clean: its earlier record goes whatever happens next.
            await self._store.delete(sandbox_id)
            if rules.fails(
                self.settings.failure_rate,
                seed=self.settings.seed,
                sandbox_id=sandbox_id,
                attempt=attempt,
                rng=self._rng,
            ):
                raise ProviderUnavailable(
                    f"{self.id} failed the create of {sandbox_id} on purpose "
                    f"(settings.failure_rate is {self.settings.failure_rate:g}); "
                    "try again, or set failure_rate to 0",
                    provider=self.id,
                    status=503,
                    sandbox_id=sandbox_id,
                )
            now = self._clock()
            live = rules.live_count((await self._store.read_all()).records, now)
            if rules.quota_full(live, self.settings.max_live):
                raise ProviderQuota(
                    f"{self.id} refused the create of {sandbox_id}: quota reached, {live} of "
                    f"{self.settings.max_live} live sandboxes (settings.max_live; paused ones "
                    "count); destroy one, or raise max_live in its declaration",
                    provider=self.id,
                    status=429,
                    sandbox_id=sandbox_id,
                )
            await self._store.write(
                Record(
                    sandbox_id=sandbox_id,
                    profile=request.profile.id,
                    created_at=now,
                    price=self.price,
                    gpu=rules.wants_gpu(request.profile.resources.model_dump()),
                    project=request.project,
                    image=request.profile.image,
                    deadline=deadline,
                )
            )

    async def wait_ready(self, request: ProvisionRequest) -> Readiness:
        check_sandbox_id(request.sandbox_id, self.id)
        await self._latency()
        self._check_up(request.sandbox_id)
        record = await self._alive(request.sandbox_id)
        return Readiness(
            descriptor={
                "kind": "saas-stub",
                **provider_access("saas-stub", request.sandbox_id, None),
                "extension": self.id,
                "node": socket.gethostname(),
                "created_at": record.created_at,
                "provider_deadline": record.deadline,
                "price": {
                    "per_create": record.price.per_create,
                    "per_second": record.price.per_second,
                    "gpu_per_second": record.price.gpu_per_second if record.gpu else 0.0,
                    "currency": "USD",
                },
            },
            warnings=[STUB_WARNING],
        )

    async def teardown(self, sandbox_id: str, *, host: str | None = None) -> None:
        del host  # no hosts: the records are this worker's
        check_sandbox_id(sandbox_id, self.id)
        await self._latency()
        self._check_up(sandbox_id)
        async with self._lock:
            await self._store.delete(sandbox_id)
        self._attempts.pop(sandbox_id, None)

    def _check_up(self, sandbox_id: str) -> None:
        if self.settings.down_after_create:
            raise ProviderUnavailable(
                f"{self.id} is down (settings.down_after_create is set); set it to false",
                provider=self.id,
                status=503,
                sandbox_id=sandbox_id,
            )

    async def list_sandboxes(self) -> Sequence[FoundSandbox]:
        await self._latency()
        listing = await self._store.read_all()
        now = self._clock()
        found = [
            FoundSandbox(
                sandbox_id=record.sandbox_id,
                alive=rules.is_alive(record, now),
                detail=self._detail(record, now),
                frozen="none" if record.paused_at is None else "all",
            )
            for record in listing.records
        ]
        found += [
            FoundSandbox(
                sandbox_id=sandbox_id,
                alive=False,
                detail={"dead": f"its record in {self.id} is unreadable", "unreadable": why},
            )
            for sandbox_id, why in listing.unreadable.items()
        ]
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
        raise Unsupported(
            f"{self.id} runs nothing: its sandboxes are records (its declaration says exec: "
            "false); use a profile of a backend with exec, such as profile.local",
            sandbox_id=sandbox_id,
            extension=self.id,
        )

    # -- Pausable ----------------------------------------------------------------------------

    async def pause(self, sandbox_id: str, *, host: str | None = None) -> None:
        """Stop the billing clock and the provider-side timeout; the record still counts
        against the quota."""
        del host
        await self._change(sandbox_id, rules.paused)

    async def resume(self, sandbox_id: str, *, host: str | None = None) -> None:
        del host
        await self._change(sandbox_id, rules.resumed)

    # -- TimeoutKeeper -----------------------------------------------------------------------

    async def set_timeout(
        self, sandbox_id: str, expires_at: str, *, host: str | None = None
    ) -> None:
        """Move the provider-side deadline to a margin past sandboxer's new expiry."""
        del host
        deadline = rules.deadline_for(
            self._timestamp(expires_at, "expires_at"), self.settings.timeout_margin_s
        )
        assert deadline is not None
        await self._change(sandbox_id, lambda record, _now: rules.with_deadline(record, deadline))

    # -- Metered -------------------------------------------------------------------------------

    def estimate_cost(self, ttl_seconds: float, resources: dict[str, Any]) -> float:
        """USD for a sandbox that lives ``ttl_seconds`` at the declaration's price."""
        return rules.estimate(self.price, ttl_seconds, resources)

    async def meter_actual(self, sandbox_id: str, *, host: str | None = None) -> dict[str, Any]:
        """Seconds billed so far (paused time excluded, none past the provider's deadline)
        and what they cost, at the price the sandbox was created under."""
        del host
        check_sandbox_id(sandbox_id, self.id)
        await self._latency()
        record = await self._existing(sandbox_id)
        now = self._clock()
        seconds = rules.billable_seconds(record, now)
        return {
            "sandbox_id": sandbox_id,
            "seconds": seconds,
            "cost": rules.cost(record.price, seconds, gpu=record.gpu),
            "currency": "USD",
            "paused": record.paused_at is not None,
            "alive": rules.is_alive(record, now),
            "at": now,
        }

    # -- HostInspector -----------------------------------------------------------------------

    async def inspect_host(self, host: str | None = None) -> dict[str, Any]:
        """What the stub holds and how it is set, for ``sandboxer inspect host``."""
        del host
        found = await self.list_sandboxes()
        return {
            "sandboxes": len(found),
            "alive": sum(1 for item in found if item.alive),
            "paused": sum(1 for item in found if item.detail.get("state") == "paused"),
            "max_live": self.settings.max_live,
            "latency_ms": self.settings.latency_ms,
            "failure_rate": self.settings.failure_rate,
        }

    # -- helpers -----------------------------------------------------------------------------

    async def _latency(self) -> None:
        if self.settings.latency_ms > 0:
            await self._sleep(self.settings.latency_ms / 1000)

    async def _existing(self, sandbox_id: str) -> Record:
        record = await self._store.read(sandbox_id)
        if record is None:
            raise SandboxNotFound(
                f"{self.id} has no sandbox {sandbox_id}: it was torn down, or never made by "
                "this worker",
                sandbox_id=sandbox_id,
                extension=self.id,
            )
        return record

    async def _alive(self, sandbox_id: str) -> Record:
        record = await self._existing(sandbox_id)
        if not rules.is_alive(record, self._clock()):
            raise SandboxNotFound(
                f"{self.id} ended sandbox {sandbox_id} at its provider-side timeout "
                f"({record.deadline}); recreate it",
                sandbox_id=sandbox_id,
                extension=self.id,
            )
        return record

    async def _change(self, sandbox_id: str, change: Callable[[Record, str], Record]) -> None:
        """Read, change and write one live record under the lock."""
        check_sandbox_id(sandbox_id, self.id)
        await self._latency()
        async with self._lock:
            record = await self._alive(sandbox_id)
            changed = change(record, self._clock())
            if changed != record:
                await self._store.write(changed)

    def _detail(self, record: Record, now: str) -> dict[str, Any]:
        dead: dict[str, str] = {}
        if record.paused_at is not None:
            state = "paused"
        elif rules.is_alive(record, now):
            state = "running"
        else:
            state = "ended by its provider-side timeout"
            dead = {"dead": f"{self.id} ended it at its provider-side timeout {record.deadline}"}
        return {
            **dead,
            "state": state,
            "profile": record.profile,
            "created_at": record.created_at,
            "provider_deadline": record.deadline,
            "project": record.project,
        }

    def _timestamp(self, value: str | None, name: str) -> str | None:
        """``value`` when it is an ISO 8601 time with a zone, checked before any I/O."""
        if value is None:
            return None
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            parsed = None
        if parsed is None or parsed.tzinfo is None:
            raise InvalidInput(
                f"{name} {value!r} is not an ISO 8601 UTC time such as 2026-12-02T10:00:00.000Z",
                extension=self.id,
            )
        return value
