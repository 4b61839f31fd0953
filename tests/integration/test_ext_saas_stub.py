"""ext.saas-stub: the adapter over its records (lifecycle, quota, failures, latency, pause,
provider-side timeout, metering, restarts), and create/destroy through the real service."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.client import CommandFailed
from sandboxer.config.catalog import Catalog, packaged_dir
from sandboxer.config.settings import Settings
from sandboxer.domain.timestamps import shift
from sandboxer.errors import (
    InvalidInput,
    ProviderQuota,
    ProviderUnavailable,
    SandboxNotFound,
    Unsupported,
)
from sandboxer.extensions.base import ProvisionRequest
from sandboxer.extensions.capabilities import Metered, Pausable, TimeoutKeeper
from sandboxer.extensions.loading import build_extension
from sandboxer.extensions.saas_stub.backend import SaasStubExtension
from sandboxer.extensions.saas_stub.rules import Price
from sandboxer.extensions.saas_stub.stub_settings import StubSettings
from tests.integration.conftest import start_service

pytestmark = pytest.mark.integration

T0 = "2026-12-02T10:00:00.000Z"
PRICE = Price(per_create=0.001, per_second=0.0001, gpu_per_second=0.002)
ROLES = ["control", "projector", "ext.saas-stub"]
"""The service's roles for the end-to-end tests: only the backend under test."""


@dataclasses.dataclass
class FakeClock:
    now: str = T0

    def __call__(self) -> str:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now = shift(self.now, seconds)


def stub(root: Path, clock: FakeClock | None = None, **settings: Any) -> SaasStubExtension:
    settings.setdefault("latency_ms", 0)
    return SaasStubExtension(
        root,
        settings=StubSettings(**settings),
        price=PRICE,
        **({"clock": clock} if clock else {}),
    )


def request(
    sandbox_id: str, *, expires_at: str | None = None, profile: str = "profile.saas-stub"
) -> ProvisionRequest:
    return ProvisionRequest(
        sandbox_id=sandbox_id,
        profile=Catalog.load().profile(profile),
        inputs={},
        secrets={"TOKEN": "s3cr3t-value"},
        expires_at=expires_at,
        project="proj1",
    )


async def alive(extension: SaasStubExtension) -> dict[str, bool]:
    return {found.sandbox_id: found.alive for found in await extension.list_sandboxes()}


# -- the adapter ---------------------------------------------------------------------------------


async def test_lifecycle_pause_and_teardown(tmp_path: Path) -> None:
    extension = stub(tmp_path / "stub")
    assert isinstance(extension, Pausable)
    assert isinstance(extension, TimeoutKeeper)
    assert isinstance(extension, Metered)
    made = request("stub00000001")
    await extension.provision(made)
    readiness = await extension.wait_ready(made)
    assert readiness.descriptor["kind"] == "saas-stub"
    assert "s3cr3t-value" not in repr(readiness)
    assert b"s3cr3t-value" not in (tmp_path / "stub" / "stub00000001.json").read_bytes()
    assert any("stub" in warning for warning in readiness.warnings)
    assert await alive(extension) == {"stub00000001": True}

    await extension.pause("stub00000001")
    [found] = await extension.list_sandboxes()
    assert found.alive
    assert found.detail["state"] == "paused"
    await extension.resume("stub00000001")
    assert (await extension.list_sandboxes())[0].detail["state"] == "running"

    await extension.teardown("stub00000001")
    assert await alive(extension) == {}
    await extension.teardown("stub00000001")  # idempotent
    await extension.teardown("neverexisted")
    with pytest.raises(SandboxNotFound):
        await extension.pause("stub00000001")
    with pytest.raises(Unsupported, match="exec: false"):
        await extension.exec("stub00000001", ["true"], _discard)
    assert not list((tmp_path / "stub").glob(".*"))  # no temporary file left behind


async def test_hostile_ids_are_refused_before_any_io(tmp_path: Path) -> None:
    extension = stub(tmp_path / "stub")
    for bad in ("../../etc/passwd", "a/b", "UPPER1234"):
        with pytest.raises(InvalidInput):
            await extension.provision(request(bad))
        with pytest.raises(InvalidInput):
            await extension.teardown(bad)
    with pytest.raises(InvalidInput, match="expires_at"):
        await extension.provision(request("stub00000001", expires_at="tomorrow"))
    assert not (tmp_path / "stub").exists()


async def test_quota_refuses_the_next_create_and_a_teardown_makes_room(tmp_path: Path) -> None:
    extension = stub(tmp_path / "stub", max_live=2)
    await extension.provision(request("stub00000001"))
    await extension.provision(request("stub00000002"))
    with pytest.raises(ProviderQuota, match="quota reached, 2 of 2") as caught:
        await extension.provision(request("stub00000003"))
    assert caught.value.retryable
    assert caught.value.status == 429
    assert set(await alive(extension)) == {"stub00000001", "stub00000002"}

    await extension.provision(request("stub00000002"))  # redelivered: replaces, counts once
    assert set(await alive(extension)) == {"stub00000001", "stub00000002"}

    await extension.teardown("stub00000001")
    await extension.provision(request("stub00000003"))
    assert set(await alive(extension)) == {"stub00000002", "stub00000003"}


async def test_a_paused_sandbox_still_counts_against_the_quota(tmp_path: Path) -> None:
    extension = stub(tmp_path / "stub", max_live=1)
    await extension.provision(request("stub00000001"))
    await extension.pause("stub00000001")
    with pytest.raises(ProviderQuota):
        await extension.provision(request("stub00000002"))


async def test_concurrent_creates_never_exceed_the_quota(tmp_path: Path) -> None:
    extension = stub(tmp_path / "stub", max_live=3, latency_ms=5)
    ids = [f"stub{n:08d}" for n in range(8)]
    results = await asyncio.gather(
        *(extension.provision(request(i)) for i in ids), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, ProviderQuota)]
    assert len(refused) == 5, results
    assert len(await alive(extension)) == 3


async def test_records_outlive_a_restart(tmp_path: Path) -> None:
    first = stub(tmp_path / "stub", max_live=1)
    await first.provision(request("stub00000001"))
    again = stub(tmp_path / "stub", max_live=1)
    assert await alive(again) == {"stub00000001": True}
    with pytest.raises(ProviderQuota):
        await again.provision(request("stub00000002"))
    await again.wait_ready(request("stub00000001"))  # adopted as it is


async def test_failure_rate_one_fails_after_the_latency_and_leaves_nothing(tmp_path: Path) -> None:
    root = tmp_path / "stub"
    await stub(root).provision(request("stub00000001"))  # an earlier attempt's record
    failing = stub(root, failure_rate=1, latency_ms=200)
    started = time.monotonic()
    with pytest.raises(ProviderUnavailable, match="failure_rate") as caught:
        await failing.provision(request("stub00000001"))
    assert time.monotonic() - started >= 0.2
    assert caught.value.retryable
    assert await alive(failing) == {}
    assert not list(root.iterdir())


async def test_every_call_waits_the_latency(tmp_path: Path) -> None:
    extension = stub(tmp_path / "stub", latency_ms=150)
    for call in (
        lambda: extension.provision(request("stub00000001")),
        lambda: extension.wait_ready(request("stub00000001")),
        extension.list_sandboxes,
        lambda: extension.teardown("stub00000001"),
    ):
        started = time.monotonic()
        await call()
        assert time.monotonic() - started >= 0.15


async def test_a_seeded_failure_rate_repeats_itself(tmp_path: Path) -> None:
    async def outcomes(root: Path) -> list[bool]:
        extension = stub(root, failure_rate=0.5, seed=7, max_live=100)
        made = []
        for n in range(20):
            try:
                await extension.provision(request(f"stub{n:08d}"))
            except ProviderUnavailable:
                made.append(False)
            else:
                made.append(True)
        return made

    first = await outcomes(tmp_path / "a")
    assert await outcomes(tmp_path / "b") == first
    assert 0 < sum(first) < 20


async def test_the_provider_side_timeout_ends_a_sandbox_and_set_timeout_moves_it(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    extension = stub(tmp_path / "stub", clock, max_live=1, timeout_margin_s=60)
    await extension.provision(request("stub00000001", expires_at=shift(T0, 600)))
    clock.advance(650)
    assert await alive(extension) == {"stub00000001": True}  # within the margin
    await extension.set_timeout("stub00000001", shift(T0, 1200))
    clock.advance(600)  # T0 + 1250: the moved deadline is T0 + 1260
    assert await alive(extension) == {"stub00000001": True}
    clock.advance(20)
    assert await alive(extension) == {"stub00000001": False}
    [found] = await extension.list_sandboxes()
    assert found.detail["state"] == "ended by its provider-side timeout"
    with pytest.raises(SandboxNotFound, match="timeout"):
        await extension.wait_ready(request("stub00000001"))
    meter = await extension.meter_actual("stub00000001")
    assert meter["seconds"] == 1260  # none billed past the deadline
    await extension.provision(request("stub00000002"))  # an ended one holds no quota


async def test_a_pause_stops_the_timeout_and_the_meter(tmp_path: Path) -> None:
    clock = FakeClock()
    extension = stub(tmp_path / "stub", clock, timeout_margin_s=0)
    await extension.provision(request("stub00000001", expires_at=shift(T0, 100)))
    clock.advance(40)
    await extension.pause("stub00000001")
    clock.advance(1000)
    assert await alive(extension) == {"stub00000001": True}
    meter = await extension.meter_actual("stub00000001")
    assert meter["seconds"] == 40
    assert meter["paused"]
    await extension.resume("stub00000001")  # the deadline moved by the pause: T0 + 1100
    clock.advance(50)
    assert await alive(extension) == {"stub00000001": True}
    meter = await extension.meter_actual("stub00000001")
    assert meter["seconds"] == 90
    assert meter["cost"] == pytest.approx(0.001 + 90 * 0.0001)
    assert meter["currency"] == "USD"


def test_the_estimate_follows_the_declaration_s_pricing(tmp_path: Path) -> None:
    extension = stub(tmp_path / "stub")
    assert extension.estimate_cost(1800, {}) == pytest.approx(0.001 + 1800 * 0.0001)
    assert extension.estimate_cost(10, {"gpu": "a10g"}) == pytest.approx(0.001 + 10 * 0.0021)


async def test_the_worker_builds_it_from_its_declaration_under_the_data_directory(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    write_override(home, max_live=3, latency_ms=1, per_second=0.5)
    settings = Settings(home=home, nats_urls=(), nats_server=None, ack_wait=5)
    built = build_extension("ext.saas-stub", Catalog.load(home), settings)
    assert isinstance(built, SaasStubExtension)
    assert built.settings.max_live == 3
    assert built.price.per_second == 0.5
    await built.provision(request("stub00000001"))
    assert (home / "saas-stub" / "ext.saas-stub" / "stub00000001.json").is_file()


# -- through the service -------------------------------------------------------------------------


def write_override(
    home: Path,
    *,
    per_second: float | None = None,
    per_create: float | None = None,
    **settings: Any,
) -> None:
    """$SANDBOXER_HOME/extensions/ext.saas-stub.yaml: the packaged declaration, changed."""
    decl = yaml.safe_load((packaged_dir("extensions") / "ext.saas-stub.yaml").read_text())
    decl["settings"].update(settings)
    if per_second is not None:
        decl["pricing"]["per_second"] = per_second
    if per_create is not None:
        decl["pricing"]["per_create"] = per_create
    (home / "extensions").mkdir(parents=True, exist_ok=True)
    (home / "extensions" / "ext.saas-stub.yaml").write_text(yaml.safe_dump(decl))


async def test_create_and_destroy_through_the_service(
    nats_server: NatsServerProcess, home: Path
) -> None:
    service = await start_service(home, nats_server.url, ROLES)
    try:
        await service.fund()  # the stub is a paid backend
        ready = await service.client.create(profile="profile.saas-stub")
        sandbox_id = ready["sandbox_id"]
        assert ready["reachability"]["kind"] == "saas-stub"
        records = home / "saas-stub" / "ext.saas-stub"
        assert (records / f"{sandbox_id}.json").is_file()
        await service.client.destroy(sandbox_id)
        assert (await service.client.get(sandbox_id))["status"] == "destroyed"  # type: ignore[index]
        assert not (records / f"{sandbox_id}.json").exists()
    finally:
        await service.client.close()
        await service.shutdown()


async def test_a_create_past_the_quota_fails_naming_the_quota(
    nats_server: NatsServerProcess, home: Path
) -> None:
    write_override(home, max_live=1)
    service = await start_service(home, nats_server.url, ROLES)
    try:
        await service.fund()  # the stub is a paid backend
        first = await service.client.create(profile="profile.saas-stub")
        with pytest.raises(CommandFailed, match="quota reached, 1 of 1") as caught:
            await service.client.create(profile="profile.saas-stub")
        second = caught.value.event["sandbox_id"]
        assert (await service.client.get(second))["status"] == "failed"  # type: ignore[index]
        await service.client.destroy(first["sandbox_id"])
        again = await service.client.create(profile="profile.saas-stub")  # room again
        await service.client.destroy(again["sandbox_id"])
    finally:
        await service.client.close()
        await service.shutdown()


async def test_stale_finds_orphans_ghosts_and_ended_ones_and_reap_cleans_them(
    nats_server: NatsServerProcess, home: Path
) -> None:
    service = await start_service(home, nats_server.url, ROLES)
    client = service.client
    try:
        await service.fund()  # the stub is a paid backend
        behind = stub(home / "saas-stub" / "ext.saas-stub")  # the same records, off the bus
        await behind.provision(request("orphan000001"))  # made behind the log's back
        ghost = (await client.create(profile="profile.saas-stub"))["sandbox_id"]
        await behind.teardown(ghost)  # gone behind the log's back
        ended = (await client.create(profile="profile.saas-stub"))["sandbox_id"]
        await behind.set_timeout(ended, "2000-01-01T00:00:00.000Z")  # its provider ended it
        healthy = (await client.create(profile="profile.saas-stub"))["sandbox_id"]

        [stale] = await client.inventory("stale", "ext.saas-stub", {})
        drift = stale["hosts"][0]
        assert [o["sandbox_id"] for o in drift["orphans"]] == ["orphan000001"]
        assert drift["ghosts"] == [ghost]
        [corpse] = drift["corpses"]
        assert corpse["sandbox_id"] == ended
        assert "provider-side timeout" in corpse["reason"]

        await client.inventory("reap", "ext.saas-stub", {"apply": True})
        assert await alive(behind) == {healthy: True}
        for gone in (ghost, ended):
            assert (await client.get(gone))["status"] == "failed"  # type: ignore[index]
        assert (await client.get(healthy))["status"] == "ready"  # type: ignore[index]
    finally:
        await client.close()
        await service.shutdown()


async def _discard(_stream: str, _data: bytes) -> None:
    return None
