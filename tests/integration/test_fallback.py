"""Fallback through the bus: a backend that refuses a sandbox hands it to the next candidate.

ext.saas-stub is the refusing provider (its declaration overridden to fail every
create, or to have no room); the sandbox lands on ext.local, and its events
say so. Nothing is left at the provider that refused.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sandboxer import subjects
from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.client import SandboxerClient
from sandboxer.clock import utc_now
from sandboxer.commands.types import ExtendTtl
from sandboxer.config.catalog import Catalog, packaged_dir
from sandboxer.errors import CommandFailed
from sandboxer.events.actor import Actor
from sandboxer.extensions.saas_stub.records import RecordStore
from sandboxer.extensions.saas_stub.rules import Price, Record
from sandboxer.workers.credit_reservation import reserve_for_extend
from tests.integration.conftest import (
    Service,
    consumer_idle,
    resend_provision_job,
    start_service,
)
from tests.integration.test_ext_saas_stub import write_override
from tests.integration.test_pause import events_of

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FALLBACK_PROFILE = """\
id: profile.fallback
route:
  strategy: explicit
  candidates: [ext.saas-stub, ext.local]
network: {default: allow}
"""
STUB_ONLY = """\
id: profile.stub-only
route:
  strategy: explicit
  candidates: [ext.saas-stub]
network: {default: allow}
"""
ROLES = ["control", "projector", "ext.saas-stub", "ext.local"]


def write_profiles(home: Path) -> None:
    (home / "profiles").mkdir(parents=True, exist_ok=True)
    (home / "profiles" / "profile.fallback.yaml").write_text(FALLBACK_PROFILE)
    (home / "profiles" / "profile.stub-only.yaml").write_text(STUB_ONLY)


def stub_records(home: Path) -> list[Path]:
    return sorted((home / "saas-stub").rglob("*.json"))


@pytest.mark.parametrize(
    ("override", "code"),
    [({"failure_rate": 1}, "provider_unavailable"), ({"max_live": 0}, "provider_quota")],
)
async def test_a_refused_sandbox_lands_on_the_next_candidate(
    nats_server: Any, home: Path, override: dict[str, Any], code: str
) -> None:
    write_profiles(home)
    write_override(home, latency_ms=1, per_second=0, per_create=0, **override)  # free: no credits
    service = await start_service(home, nats_server.url, ROLES)
    try:
        client = service.client
        seen: list[dict[str, Any]] = []
        ready = await client.create("profile.fallback", on_event=seen.append)
        sandbox_id = ready["sandbox_id"]
        assert ready["type"] == "ready"
        events = await events_of(client, sandbox_id)
        types = [e["type"] for e in events]
        assert types[:6] == [
            "requested",
            "routed",
            "provisioning",
            "rerouting",
            "routed",
            "provisioning",
        ], types
        refusal = events[3]
        assert (refusal["extension"], refusal["code"]) == ("ext.saas-stub", code)
        fallback = events[4]
        assert fallback["extension"] == "ext.local"
        assert "fallback" in fallback["reason"]
        assert "ext.saas-stub" in fallback["reason"]
        got = await client.get(sandbox_id)
        assert (got["extension"], got["generation"]) == ("ext.local", 1)
        assert stub_records(home) == []  # never on two backends: nothing left at the refuser
        await client.destroy(sandbox_id)
    finally:
        await service.client.close()
        await service.shutdown()


async def test_no_candidate_left_fails_with_every_refusal(nats_server: Any, home: Path) -> None:
    write_profiles(home)
    write_override(home, latency_ms=1, per_second=0, per_create=0, failure_rate=1)
    service = await start_service(home, nats_server.url, ROLES)
    try:
        with pytest.raises(CommandFailed) as failed:
            await service.client.create("profile.stub-only")
        event = failed.value.event
        # One candidate only: no reroute is even asked for; the failure is the provider's.
        assert (event["type"], event["retryable"], event["code"]) == (
            "failed",
            True,
            "provider_unavailable",
        )
    finally:
        await service.client.close()
        await service.shutdown()


async def test_a_refusal_whose_cleanup_failed_stays_on_its_backend(
    nats_server: Any, home: Path
) -> None:
    """The stub makes the sandbox, then goes down: readiness and the cleanup both fail.
    Rerouted, the sandbox would be ext.local's, and the stub's copy would be where no
    teardown looks; it fails on the stub instead, and the stub's worker removes the copy
    once the stub is back (at its next start)."""
    write_profiles(home)
    write_override(home, latency_ms=1, per_second=0, per_create=0, down_after_create=True)
    service = await start_service(home, nats_server.url, ROLES)
    try:
        with pytest.raises(CommandFailed) as failed:
            await service.client.create("profile.fallback")
        event = failed.value.event
        assert (event["type"], event["code"]) == ("failed", "provider_unavailable"), event
        assert "cleanup failed" in event["reason"]
        sandbox = await service.client.get(event["sandbox_id"])
        assert sandbox is not None
        assert (sandbox["status"], sandbox["extension"]) == ("failed", "ext.saas-stub")
        assert len(stub_records(home)) == 1  # the copy the stub still holds
    finally:
        await service.client.close()
        await service.shutdown()
    write_override(home, latency_ms=1, per_second=0, per_create=0)  # the stub is back
    service = await start_service(home, nats_server.url, ROLES)
    try:
        assert stub_records(home) == []  # reconcile tore the failed sandbox's copy down
    finally:
        await service.client.close()
        await service.shutdown()


async def rerouted_with_copies_left(home: Path, service: Service) -> tuple[str, str]:
    """Two sandboxes refused by the stub and rerouted to ext.local; then, as a create that
    landed after the stub gave it up would, a copy of each at the stub: one live, one
    ended (its provider-side timeout passed)."""
    live = (await service.client.create("profile.fallback"))["sandbox_id"]
    dead = (await service.client.create("profile.fallback"))["sandbox_id"]
    records = RecordStore(home / "saas-stub" / "ext.saas-stub")
    for sandbox_id, deadline in ((live, None), (dead, "2000-01-01T00:00:00.000Z")):
        copy = Record(
            sandbox_id=sandbox_id,
            profile="profile.fallback",
            created_at=utc_now(),
            price=Price(),
            deadline=deadline,
        )
        await records.write(copy)
    assert len(stub_records(home)) == 2
    return live, dead


async def on_local_untouched(service: Service, sandbox_ids: tuple[str, ...]) -> list[int]:
    """Each sandbox's event count, after checking it is still ready on ext.local."""
    counts = []
    for sandbox_id in sandbox_ids:
        got = await service.client.get(sandbox_id)
        assert got is not None
        assert (got["status"], got["extension"]) == ("ready", "ext.local"), got
        counts.append(len(await events_of(service.client, sandbox_id)))
    return counts


async def test_the_refuser_removes_its_late_copies_at_start_and_leaves_the_log_alone(
    nats_server: Any, home: Path
) -> None:
    """The stub's start finds copies of sandboxes that live on ext.local: they are removed,
    neither adopted (the live one ran, and cost, for ever), nor taken for ext.local's
    sandboxes (the dead copy marked the healthy sandbox failed)."""
    write_profiles(home)
    write_override(home, latency_ms=1, per_second=0, per_create=0, failure_rate=1)
    service = await start_service(home, nats_server.url, ROLES)
    try:
        sandboxes = await rerouted_with_copies_left(home, service)
        before = await on_local_untouched(service, sandboxes)
    finally:
        await service.client.close()
        await service.shutdown()
    service = await start_service(home, nats_server.url, ROLES)  # the stub's reconcile runs
    try:
        assert stub_records(home) == []
        assert await on_local_untouched(service, sandboxes) == before
    finally:
        await service.client.close()
        await service.shutdown()


async def test_stale_and_reap_see_the_refuser_s_late_copies_as_its_orphans(
    nats_server: Any, home: Path
) -> None:
    write_profiles(home)
    write_override(home, latency_ms=1, per_second=0, per_create=0, failure_rate=1)
    service = await start_service(home, nats_server.url, ROLES)
    try:
        sandboxes = await rerouted_with_copies_left(home, service)
        before = await on_local_untouched(service, sandboxes)
        [stale] = await service.client.inventory("stale", "ext.saas-stub", {})
        [drift] = stale["hosts"]
        orphans = {o["sandbox_id"]: o["placed_on"] for o in drift["orphans"]}
        assert orphans == dict.fromkeys(sandboxes, "ext.local")
        assert (drift["ghosts"], drift["corpses"]) == ([], [])
        [reaped] = await service.client.inventory("reap", "ext.saas-stub", {"apply": True})
        assert sorted(reaped["hosts"][0]["removed"]) == sorted(sandboxes)
        assert reaped["hosts"][0]["marked_failed"] == []
        assert stub_records(home) == []
        assert await on_local_untouched(service, sandboxes) == before
    finally:
        await service.client.close()
        await service.shutdown()


async def test_a_reroute_moves_the_reservation_to_the_new_backends_prices(
    nats_server: Any, home: Path
) -> None:
    """The paid stub refuses; ext.local (free) takes the sandbox: nothing stays reserved."""
    write_profiles(home)
    write_override(home, latency_ms=1, failure_rate=1)  # the packaged prices: a paid backend
    service = await start_service(home, nats_server.url, ROLES)
    try:
        await service.fund(amount=50_000_000)
        client = service.client
        ready = await client.create("profile.fallback", ttl="10m")
        [account] = await client.credits("default")
        assert account["reserved"] == 0, account  # replaced by the free backend's (nothing)
        assert account["balance"] == 50_000_000
        await client.destroy(ready["sandbox_id"])
    finally:
        await service.client.close()
        await service.shutdown()


async def test_a_reroute_to_a_free_backend_is_not_refused_for_a_budget_spent_past(
    nats_server: Any, home: Path
) -> None:
    """A project whose spending passed its budget (a sandbox billed past its hold, or a
    budget lowered under it) had its sandbox refused by the stub fail as unpaid for, though
    the fallback, ext.local, costs nothing: the reroute's hold of 0 was checked as a new
    spend. It lands on ext.local."""
    write_profiles(home)
    write_override(home, latency_ms=1)  # the packaged prices: a paid backend, working
    service = await start_service(home, nats_server.url, [*ROLES, "meter"])
    try:
        await service.fund(amount=50_000_000)
        client = service.client
        spent = await client.create("profile.stub-only", ttl="10m")
        await asyncio.sleep(1.1)
        await client.destroy(spent["sandbox_id"])
        async with asyncio.timeout(30):
            while not (await client.credits("default"))[0]["spent_today"]:
                await asyncio.sleep(0.1)
    finally:
        await service.client.close()
        await service.shutdown()
    write_override(home, latency_ms=2000, failure_rate=1)  # refuses, two seconds in
    service = await start_service(home, nats_server.url, ROLES)
    admin = await SandboxerClient.connect([nats_server.url], actor={"type": "adm", "id": "ops"})
    try:
        client = service.client
        create = asyncio.create_task(client.create("profile.fallback", ttl="10m"))
        async with asyncio.timeout(30):
            while not (await client.credits("default"))[0]["reserved"]:
                await asyncio.sleep(0.05)  # held at the stub's prices
        await admin.account_command("set_budget", "default", limit=1000, period="day")
        ready = await create
        assert ready["type"] == "ready", ready
        assert (await client.get(ready["sandbox_id"]))["extension"] == "ext.local"
        [account] = await client.credits("default")
        assert account["reserved"] == 0, account
        await client.destroy(ready["sandbox_id"])
    finally:
        await admin.close()
        await service.client.close()
        await service.shutdown()


async def until_event(
    client: SandboxerClient, sandbox_id: str, wanted: list[str]
) -> list[dict[str, Any]]:
    """The sandbox's events once their types begin with ``wanted``."""
    async with asyncio.timeout(60):
        while True:
            events = await events_of(client, sandbox_id)
            if [e["type"] for e in events][: len(wanted)] == wanted:
                return events
            await asyncio.sleep(0.05)


async def test_the_refuser_s_stale_job_provisions_nothing_after_the_reroute(
    nats_server: Any, home: Path
) -> None:
    """The stub refuses the sandbox (its quota is full) and the control worker reroutes it
    to ext.local. Then the stub has room, and its provision job comes again (a redelivery,
    or the same job sent again): the stub's worker drops it. It used to start a
    provisioning the log said was ext.local's, make the sandbox at the stub and record it
    ready: a sandbox that ran (and cost) at the stub while the log placed it on ext.local."""
    write_profiles(home)
    write_override(home, latency_ms=1, per_second=0, per_create=0, max_live=1)
    records = RecordStore(home / "saas-stub" / "ext.saas-stub")
    filler = Record(
        sandbox_id="fillerbox01", profile="profile.fallback", created_at=utc_now(), price=Price()
    )
    await records.write(filler)  # the stub's one live sandbox: the next create is refused
    # ext.local's worker starts later: the stale job meets the sandbox routed, not yet ready.
    service = await start_service(home, nats_server.url, ["control", "projector", "ext.saas-stub"])
    local: Service | None = None
    try:
        client = service.client
        sandbox_id = (await client.create("profile.fallback", wait=False))["sandbox_id"]
        routed = ["requested", "routed", "provisioning", "rerouting", "routed"]
        events = await until_event(client, sandbox_id, routed)
        assert (events[3]["extension"], events[3]["code"]) == ("ext.saas-stub", "provider_quota")
        assert events[4]["extension"] == "ext.local"
        await records.delete(filler.sandbox_id)  # the stub has room now

        await resend_provision_job(client, sandbox_id, "ext.saas-stub")
        durable = f"ext-{subjects.extension_token('ext.saas-stub')}"
        await consumer_idle(client, subjects.JOBS_STREAM, durable)
        assert stub_records(home) == []  # nothing made at the stub
        assert [e["type"] for e in await events_of(client, sandbox_id)] == routed  # nor recorded

        local = await start_service(home, nats_server.url, ["ext.local"])
        events = await until_event(client, sandbox_id, [*routed, "provisioning", "ready"])
        assert events[5]["extension"] == "ext.local"
        assert events[6]["reachability"]["kind"] == "local", events[6]
        async with asyncio.timeout(30):  # the projector's view follows the log
            while (got := await client.get(sandbox_id)) is None or got["status"] != "ready":
                await asyncio.sleep(0.05)
        assert got["extension"] == "ext.local", got
        assert stub_records(home) == []  # on ext.local only
        await client.destroy(sandbox_id)
    finally:
        for running in (local, service):
            if running is not None:
                await running.client.close()
                await running.shutdown()


@contextlib.asynccontextmanager
async def provisioning_on_a_refusing_stub(
    nats_url: str, home: Path
) -> AsyncIterator[tuple[SandboxerClient, str]]:
    """A funded service whose paid stub refuses three seconds into provisioning, with
    ext.local priced at 50 credits a second as the fallback; yields its client and a
    10-minute sandbox of ``profile.fallback`` once the stub is provisioning it. On the way
    out the sandbox is ready on ext.local (then destroyed) and the service stopped."""
    write_profiles(home)
    write_override(home, latency_ms=3000, failure_rate=1)  # paid, refuses three seconds in
    local = yaml.safe_load((packaged_dir("extensions") / "ext.local.yaml").read_text())
    local["pricing"] = {"per_second": 0.00005, "per_create": 0.0}  # 50 credits a second
    (home / "extensions" / "ext.local.yaml").write_text(yaml.safe_dump(local))
    service = await start_service(home, nats_url, ROLES)
    try:
        await service.fund(amount=50_000_000)
        client = service.client
        sandbox_id = (await client.create("profile.fallback", ttl="10m", wait=False))["sandbox_id"]
        await until_event(client, sandbox_id, ["requested", "routed", "provisioning"])
        yield client, sandbox_id
        await client.destroy(sandbox_id)
    finally:
        await service.client.close()
        await service.shutdown()


async def rerouted_to_local(client: SandboxerClient, sandbox_id: str) -> None:
    async with asyncio.timeout(60):
        while (got := await client.get(sandbox_id)) is None or got["status"] != "ready":
            await asyncio.sleep(0.1)
    assert got["extension"] == "ext.local"


async def test_a_reroute_holds_the_hour_an_extension_added_while_provisioning(
    nats_server: Any, home: Path
) -> None:
    """An extend_ttl taken while the stub provisioned held its hour at the stub; the stub
    refused and the reroute to ext.local (priced here) held the create's 10 minutes there
    only: the hour the sandbox still had was held nowhere, and the project could spend
    past its balance. The reroute holds the TTL as extended."""
    async with provisioning_on_a_refusing_stub(nats_server.url, home) as (client, sandbox_id):
        await client.extend_ttl(sandbox_id, "1h")
        await rerouted_to_local(client, sandbox_id)
        [account] = await client.credits("default")
        assert account["reserved"] == 50 * 4200, account  # on the old code 50 * 600


async def test_a_reroute_keeps_the_hold_of_an_extension_still_in_flight(
    nats_server: Any, home: Path
) -> None:
    """An extend_ttl held its hour at the stub while the sandbox provisioned, and was cut off
    before its append; the stub refused and the reroute to ext.local replaced the sandbox's
    hold with an estimate of the TTL the sandbox had appended (the create's 10 minutes): the
    in-flight extension's hold was dropped. Its delivery then went on and appended its
    hour, held nowhere (its hold id decided, it holds nothing again). The reroute carries
    such a hold over, at the new backend's price."""
    async with provisioning_on_a_refusing_stub(nats_server.url, home) as (client, sandbox_id):
        in_flight = ExtendTtl(
            command_id="in-flight-ext",
            actor=Actor(**client.actor),
            sandbox_id=sandbox_id,
            duration="1h",
        )
        store = JetStreamEventStore(client.nc, client.js)
        await reserve_for_extend(store, Catalog.load(home), in_flight)  # held, not appended
        await rerouted_to_local(client, sandbox_id)
        # The cut-off delivery goes on: its hour is appended.
        extended = await client.extend_ttl(sandbox_id, "1h", command_id="in-flight-ext")
        assert extended["by_seconds"] == 3600
        [account] = await client.credits("default")
        assert account["reserved"] == 50 * 4200, account  # on the old code 50 * 600
