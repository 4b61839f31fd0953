"""Hosted backends (E2B, Daytona, Modal) through the bus: the real service and workers
against provider doubles.

The doubles (tests/doubles/) enforce each provider's published spec. These
tests hold what the adapters' own tests cannot: a sandbox made through the
bus is exactly one provider sandbox even when its worker is killed (-9)
between the provider's create and our ``ready``; a provider sandbox that
carries our label but that the log does not know is listed by ``inspect
stale`` and removed by ``reap-stale --apply``; an extension of the TTL moves
the provider's own timeout; and no key or provider-issued token reaches the
log.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from grpclib import Status

from sandboxer.bus.event_reader import read_events
from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.config.catalog import Catalog, packaged_dir
from sandboxer.errors import CommandFailed
from sandboxer.extensions.base import ProvisionRequest
from sandboxer.extensions.daytona.plan import our_labels
from sandboxer.extensions.loading import build_extension
from sandboxer.extensions.modal.backend import ModalExtension
from sandboxer.hosted.labels import labels_for
from sandboxer.workers.extension_worker import ExtensionWorker
from sandboxer.workers.jobs import Job
from sandboxer.workers.pause_job import PauseJob
from tests.doubles.daytona_double import DaytonaServed
from tests.doubles.e2b_double import ServedE2b
from tests.doubles.modal_double import Fault as ModalFault
from tests.doubles.modal_double import ModalDouble
from tests.integration.conftest import Service, serving, start_service, start_worker
from tests.integration.test_lifecycle import wait_status
from tests.waiting import logged

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@dataclass
class Provider:
    """A hosted backend under test: its double, and how to read what the double holds."""

    extension: str
    profile: str
    env: dict[str, str]
    ours: Callable[[], list[str]]
    """Our sandbox ids of the provider sandboxes that exist now (one per provider sandbox)."""
    plant_orphan: Callable[[str], Awaitable[object]]
    """Make a provider sandbox labelled as ours that the log does not know (a leak)."""
    secrets: Callable[[], list[str]]
    """The key and every token the provider issued so far."""
    timeout_end: Callable[[str], float | None]
    """When (or after how long) the provider ends our sandbox by its own timeout."""
    create_path: str
    """The spec's path of the provider's create, for injecting faults into it."""
    fault: Callable[..., None]


def e2b(served: ServedE2b) -> Provider:
    double = served.double

    def ours() -> list[str]:
        return [r.metadata["sandboxer_id"] for r in double.live() if "sandboxer_id" in r.metadata]

    def end(sandbox_id: str) -> float | None:
        found = [r for r in double.live() if r.metadata.get("sandboxer_id") == sandbox_id]
        return found[0].end_at.timestamp() if found else None

    return Provider(
        extension="ext.e2b",
        profile="profile.e2b-burst",
        env={"E2B_API_URL": served.url, "E2B_API_KEY": served.api_key},
        ours=ours,
        plant_orphan=lambda sandbox_id: _now(
            double.plant_orphan(labels_for(sandbox_id, None, "ext.e2b"))
        ),
        secrets=lambda: [served.api_key, *double.issued_tokens()],
        timeout_end=end,
        create_path="/sandboxes",
        fault=double.app.faults.add,
    )


def daytona(served: DaytonaServed) -> Provider:
    double = served.double

    def mine(sandbox_id: str) -> list[Any]:
        return [r for r in double.live() if r.labels.get("sandboxer_id") == sandbox_id]

    def end(sandbox_id: str) -> float | None:
        found = mine(sandbox_id)
        return float(found[0].auto_stop) if found else None

    return Provider(
        extension="ext.daytona",
        profile="profile.daytona",
        env={"DAYTONA_API_URL": served.api_url, "DAYTONA_API_KEY": served.key},
        ours=lambda: [
            r.labels["sandboxer_id"] for r in double.live() if "sandboxer_id" in r.labels
        ],
        plant_orphan=lambda sandbox_id: _now(
            double.plant_orphan(our_labels(sandbox_id, None, "ext.daytona"))
        ),
        secrets=lambda: [served.key],
        timeout_end=end,
        create_path="/sandbox",
        fault=double.app.faults.add,
    )


def modal(double: ModalDouble, make: Callable[..., ModalExtension]) -> Provider:
    async def plant(sandbox_id: str) -> None:
        leaked = make()  # a provider sandbox made behind the log's back, as a crash would
        request = ProvisionRequest(
            sandbox_id=sandbox_id,
            profile=Catalog.load().profile("profile.modal-gpu"),
            inputs={},
        )
        await leaked.provision(request)

    def fault(kind: str, *, status: int = 500, **_where: object) -> None:
        rpc = "SandboxCreate"
        if kind == "lost":  # made, and the answer never comes
            double.inject(ModalFault(rpc=rpc, kind="lost_hang"))
        else:
            code = Status.RESOURCE_EXHAUSTED if status == 429 else Status.UNAVAILABLE
            double.inject(ModalFault(rpc=rpc, kind="status", status=code))

    return Provider(
        extension="ext.modal",
        profile="profile.modal-gpu",
        env={},  # the double's fixture points MODAL_SERVER_URL and the token at it
        ours=lambda: [r.tags["sandboxer_id"] for r in double.running() if "sandboxer_id" in r.tags],
        plant_orphan=plant,
        secrets=lambda: [double.token_secret],
        timeout_end=lambda _sandbox_id: None,  # Modal cannot move a sandbox's timeout
        create_path="SandboxCreate",
        fault=fault,
    )


async def _now(value: object) -> object:
    return value


PROVIDERS: dict[str, tuple[str, Callable[..., Provider]]] = {
    "ext.e2b": ("e2b_double", e2b),
    "ext.daytona": ("daytona_double", daytona),
}


@pytest.fixture(params=[*sorted(PROVIDERS), "ext.modal"])
def provider(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Provider:
    if request.param == "ext.modal":
        chosen = modal(
            request.getfixturevalue("modal_double"), request.getfixturevalue("modal_extensions")
        )
    else:
        fixture, make = PROVIDERS[request.param]
        chosen = make(request.getfixturevalue(fixture))
    for name, value in chosen.env.items():
        monkeypatch.setenv(name, value)
    return chosen


async def all_events(service: Service) -> list[bytes]:
    return [data async for _seq, _subject, data, _pending in read_events(service.client.js)]


async def no_secret_in_the_log(service: Service, provider: Provider, home: Path) -> None:
    events = await all_events(service)
    for secret in provider.secrets():
        assert not any(secret.encode() in data for data in events), "a secret reached the log"
        for log in home.glob("*.log"):
            assert secret not in log.read_text(errors="replace"), f"a secret reached {log.name}"


async def test_create_extend_destroy_through_the_bus(
    nats_server: Any, home: Path, provider: Provider
) -> None:
    service = await start_service(
        home, nats_server.url, roles=["control", "projector", provider.extension]
    )
    try:
        await service.fund()
        client = service.client
        ready = await client.create(provider.profile, ttl="10m")
        sandbox_id = ready["sandbox_id"]
        assert provider.ours() == [sandbox_id]
        before = provider.timeout_end(sandbox_id)
        await client.extend_ttl(sandbox_id, "20m")
        if before is not None:  # the retime job moves the provider's own timeout
            async with asyncio.timeout(20):
                while (provider.timeout_end(sandbox_id) or before) <= before:
                    await asyncio.sleep(0.1)
        if provider.extension == "ext.e2b":  # the one whose provider issues tokens
            tokens = await client.tokens(sandbox_id)
            assert all(value in provider.secrets() for value in tokens.values())
        await client.destroy(sandbox_id)
        assert provider.ours() == []
        await no_secret_in_the_log(service, provider, home)
    finally:
        await service.client.close()
        await service.shutdown()


async def served_e2b(
    nats_server: Any, home: Path, e2b_double: ServedE2b, monkeypatch: pytest.MonkeyPatch
) -> tuple[Provider, Service]:
    """The service, with its E2B worker against the double, and a funded account."""
    provider = e2b(e2b_double)
    for name, value in provider.env.items():
        monkeypatch.setenv(name, value)
    service = await start_service(
        home, nats_server.url, roles=["control", "projector", provider.extension]
    )
    await service.fund()
    return provider, service


async def test_an_extension_while_provisioning_reaches_the_providers_timeout(
    nats_server: Any, home: Path, e2b_double: ServedE2b, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The provider is given the expiry the sandbox had when its provisioning started. An
    extension decided while it provisions sends no retime (it is not ready yet): the worker
    that records ``ready`` moves the provider's timeout, or E2B ends the sandbox early."""
    provider, service = await served_e2b(nats_server, home, e2b_double, monkeypatch)
    provider.fault("latency", method="POST", pattern=provider.create_path, seconds=2)
    try:
        client = service.client
        created = await client.create(provider.profile, ttl="10m", wait=False)
        sandbox_id = created["sandbox_id"]
        await wait_status(client, sandbox_id, {"provisioning"}, timeout=30)
        extended = await client.extend_ttl(sandbox_id, "30m")
        await wait_status(client, sandbox_id, {"ready"}, timeout=30)
        wanted = datetime.fromisoformat(extended["expires_at"]).timestamp()
        async with asyncio.timeout(20):
            while (provider.timeout_end(sandbox_id) or 0) < wanted:
                await asyncio.sleep(0.1)
        await client.destroy(sandbox_id)
    finally:
        await service.client.close()
        await service.shutdown()


async def test_a_resume_job_delivered_again_moves_the_providers_timeout(
    nats_server: Any, home: Path, e2b_double: ServedE2b, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker died after recording ``resumed`` and before moving E2B's timeout (which
    E2B's resume set to an hour). The job delivered again finds the sandbox running: it
    still moves the timeout to the sandbox's expiry."""
    provider, service = await served_e2b(nats_server, home, e2b_double, monkeypatch)
    try:
        client = service.client
        sandbox_id = (await client.create(provider.profile, ttl="3h"))["sandbox_id"]
        await client.pause(sandbox_id)
        await client.resume(sandbox_id)
        (record,) = [
            r for r in e2b_double.double.live() if r.metadata.get("sandboxer_id") == sandbox_id
        ]
        store = JetStreamEventStore(client.nc, client.js)
        # Read once the log has `resumed`: still `resuming`, the redelivered job below would
        # resume it again, and move nothing.
        loaded = await logged(
            lambda: store.load(sandbox_id), lambda got: got.state.status != "resuming"
        )
        state = loaded.state
        assert state.expires_at is not None
        expires_at = datetime.fromisoformat(state.expires_at)
        async with asyncio.timeout(20):  # the first delivery's worker moves it after `resumed`
            while record.end_at < expires_at:
                await asyncio.sleep(0.05)
        record.end_at = datetime.now(UTC) + timedelta(minutes=60)  # as E2B's resume left it
        redelivered = Job(job_id="again", sandbox_id=sandbox_id, action="resume", version=1)
        worker_side = build_extension(provider.extension, Catalog.load(home), service.settings)
        try:
            await PauseJob(store, worker_side, explain=str).run(redelivered, state)
        finally:
            await worker_side.aclose()  # type: ignore[attr-defined]
        assert record.end_at >= expires_at
        await client.destroy(sandbox_id)
    finally:
        await service.client.close()
        await service.shutdown()


async def test_an_extension_while_a_pause_fails_reaches_the_providers_timeout(
    nats_server: Any, home: Path, e2b_double: ServedE2b, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An extension decided while the sandbox is pausing sends no retime (the job it waits
    for is the pause). The pause then fails (E2B says 409 and the sandbox still runs), and
    the worker that records ``pause_failed`` moves E2B's timeout to the new expiry."""
    provider, service = await served_e2b(nats_server, home, e2b_double, monkeypatch)
    try:
        client = service.client
        sandbox_id = (await client.create(provider.profile, ttl="10m"))["sandbox_id"]
        provider.fault("status", method="POST", pattern="/sandboxes/{sandboxID}/pause", status=409)
        # The worker then asks whether it is paused after all: slowly, while the TTL grows.
        provider.fault("latency", method="GET", pattern="/sandboxes/{sandboxID}", seconds=2)
        pausing = asyncio.create_task(client.pause(sandbox_id, timeout=30))
        await wait_status(client, sandbox_id, {"pausing"}, timeout=30)
        extended = await client.extend_ttl(sandbox_id, "30m")
        with pytest.raises(CommandFailed):
            await pausing
        store = JetStreamEventStore(client.nc, client.js)
        loaded = await logged(  # its `pause_failed` in the log
            lambda: store.load(sandbox_id), lambda got: got.state.status != "pausing"
        )
        state = loaded.state
        assert state.status == "ready"
        assert state.expires_at == extended["expires_at"]
        wanted = datetime.fromisoformat(extended["expires_at"]).timestamp()
        async with asyncio.timeout(20):
            while (provider.timeout_end(sandbox_id) or 0) < wanted:
                await asyncio.sleep(0.1)
        await client.destroy(sandbox_id)
    finally:
        await service.client.close()
        await service.shutdown()


async def test_modal_s_timeout_follows_the_ttl_max_recorded_not_the_profile_edited_since(
    nats_server: Any, home: Path, modal_double: ModalDouble
) -> None:
    """Modal's timeout, set once at its create, is the latest the sandbox may reach: its
    ``ttl.max`` as its ``requested`` recorded it (4h). Here the profile was edited to 12h
    after the create and before the provision (the worker started with the new catalog):
    the old code gave Modal the edited profile's 12h, so a leak there outlived anything
    the sandbox could ever be extended to by 8 hours."""
    service = await start_service(home, nats_server.url, roles=["control", "projector"])
    worker = None
    try:
        await service.fund()
        client = service.client
        sandbox_id = (await client.create("profile.modal-gpu", ttl="10m", wait=False))["sandbox_id"]
        packaged = packaged_dir("profiles") / "profile.modal-gpu.yaml"
        edited = packaged.read_text().replace("version: 1", "version: 2")
        (home / "profiles").mkdir(exist_ok=True)
        (home / "profiles" / packaged.name).write_text(edited.replace("max: 4h", "max: 12h"))
        worker = await start_service(home, nats_server.url, roles=["ext.modal"])
        await wait_status(client, sandbox_id, {"ready"}, timeout=60)
        [record] = modal_double.running_for(sandbox_id)
        assert 4 * 3600 < record.timeout_secs <= 4 * 3600 + 600 + 5  # ttl.max, the margin
        await client.destroy(sandbox_id)
        assert modal_double.running_for(sandbox_id) == []
    finally:
        if worker is not None:
            await worker.client.close()
            await worker.shutdown()
        await service.client.close()
        await service.shutdown()


async def test_kill_9_between_the_providers_create_and_ready_leaves_one(
    nats_server: Any, home: Path, provider: Provider
) -> None:
    # The provider makes the sandbox, then holds its answer: the worker dies waiting for it.
    provider.fault("lost", method="POST", pattern=provider.create_path, seconds=60)
    service = await start_service(home, nats_server.url, roles=["control", "projector"])
    worker = start_worker(home, nats_server.url, provider.extension)
    replacement = None
    try:
        await service.fund()
        client = service.client
        created = await client.create(provider.profile, wait=False)
        sandbox_id = created["sandbox_id"]
        async with asyncio.timeout(30):
            while provider.ours() != [sandbox_id]:
                await asyncio.sleep(0.05)
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
        replacement = start_worker(home, nats_server.url, provider.extension)
        ready = await wait_status(client, sandbox_id, {"ready", "failed"}, timeout=60)
        assert ready["status"] == "ready", ready
        assert provider.ours() == [sandbox_id]  # the first one was found by label, not leaked
        await client.destroy(sandbox_id)
        assert provider.ours() == []
        await no_secret_in_the_log(service, provider, home)
    finally:
        for process in (worker, replacement):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(10)
        await service.client.close()
        await service.shutdown()


async def test_a_leak_at_the_provider_is_stale_and_reaped(
    nats_server: Any, home: Path, provider: Provider
) -> None:
    service = await start_service(
        home, nats_server.url, roles=["control", "projector", provider.extension]
    )
    try:
        await service.fund()
        client = service.client
        ready = await client.create(provider.profile)
        await provider.plant_orphan("leaked000001")
        [stale] = await client.inventory("stale", provider.extension, {})
        [host] = stale["hosts"]
        assert [o["sandbox_id"] for o in host["orphans"]] == ["leaked000001"]
        [reaped] = await client.inventory("reap", provider.extension, {"apply": True})
        assert "leaked000001" in str(reaped)
        assert provider.ours() == [ready["sandbox_id"]]  # ours, known to the log, stays
        await client.destroy(ready["sandbox_id"])
    finally:
        await service.client.close()
        await service.shutdown()


async def test_a_quota_refusal_fails_the_create_as_retryable_and_leaves_nothing(
    nats_server: Any, home: Path, provider: Provider
) -> None:
    provider.fault("status", status=429, method="POST", pattern=provider.create_path)
    service = await start_service(
        home, nats_server.url, roles=["control", "projector", provider.extension]
    )
    try:
        await service.fund()
        with pytest.raises(CommandFailed) as failed:
            await service.client.create(provider.profile)
        event = failed.value.event
        assert (event["type"], event["retryable"], event["code"]) == (
            "failed",
            True,
            "provider_quota",
        )
        assert "quota" in event["reason"]
        assert provider.ours() == []
    finally:
        await service.client.close()
        await service.shutdown()


async def run_in(service: Service, sandbox_id: str, script: str) -> tuple[int, bytes]:
    out = bytearray()

    async def collect(_stream: str, data: bytes) -> None:
        out.extend(data)

    code = await service.client.exec(sandbox_id, ["sh", "-c", script], collect)
    return code, bytes(out)


@pytest.mark.parametrize("provider", ["ext.daytona", "ext.modal"], indirect=True)
async def test_a_hosted_snapshot_restores_on_this_machine(
    nats_server: Any, home: Path, provider: Provider
) -> None:
    """Checkpoint a hosted sandbox, then restore it as a local bubblewrap sandbox."""
    service = await start_service(
        home, nats_server.url, roles=["control", "projector", provider.extension, "ext.local"]
    )
    try:
        await service.fund()
        ready = await service.client.create(provider.profile)
        hosted = ready["sandbox_id"]
        # Relative paths: inside the doubles a sandbox's files live under a directory of theirs.
        assert await run_in(service, hosted, "mkdir -p notes && echo from-the-cloud > notes/a") == (
            0,
            b"",
        )
        snapshot = await service.client.snapshot(hosted)
        local = await service.client.restore(snapshot["snapshot_id"], profile="profile.local")
        code, out = await run_in(service, local["sandbox_id"], "cat /workspace/notes/a")
        assert (code, out) == (0, b"from-the-cloud\n")
        await service.client.destroy(local["sandbox_id"])
        await service.client.destroy(hosted)
        assert provider.ours() == []
    finally:
        await service.client.close()
        await service.shutdown()


def declare_copy(home: Path, extension: str, copy: str) -> None:
    """Declare ``copy`` in ``home/extensions`` as the packaged ``extension`` is, but for its id:
    a second declaration of the same provider (the same account, when the key is the same)."""
    declared = (Path(__file__).parents[2] / "extensions" / f"{extension}.yaml").read_text()
    (home / "extensions").mkdir(exist_ok=True)
    (home / "extensions" / f"{copy}.yaml").write_text(
        declared.replace(f"id: {extension}\n", f"id: {copy}\n")
    )


async def each_keeps_to_its_own(
    home: Path, url: str, provider: Provider, made: list[str], declarations: tuple[str, str]
) -> None:
    """Start the control, the workers of both ``declarations`` and the projector, in that order
    (the workers' reconciles run before the projector answers, so before the checks): every
    sandbox ``made`` is still at the provider, neither declaration's ``inspect stale`` shows an
    orphan or a ghost, and each destroy removes its sandbox."""
    async with serving(home, url, roles=["control", *declarations, "projector"]) as service:
        client = service.client
        assert sorted(provider.ours()) == sorted(made)
        for extension in declarations:
            [stale] = await client.inventory("stale", extension, {})
            [drift] = stale["hosts"]
            assert (drift["orphans"], drift["ghosts"]) == ([], []), extension
        for sandbox_id in made:
            await client.destroy(sandbox_id)
        assert provider.ours() == []


async def test_two_e2b_declarations_on_one_account_keep_to_their_own(
    nats_server: Any, home: Path, e2b_double: ServedE2b, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ext.e2b-eu`` declared beside ``ext.e2b`` with the same key sees the same E2B team.
    Its start must not remove ext.e2b's sandboxes as copies of sandboxes the log places
    elsewhere, nor its ``inspect stale`` show them: one made now (labelled with ext.e2b), and
    one made before sandboxes were labelled with their backend (the log decides)."""
    declare_copy(home, "ext.e2b", "ext.e2b-eu")
    provider, service = await served_e2b(nats_server, home, e2b_double, monkeypatch)
    try:
        made = [(await service.client.create(provider.profile))["sandbox_id"] for _ in range(2)]
        [older] = [r for r in e2b_double.double.live() if r.metadata["sandboxer_id"] == made[1]]
        older.metadata.pop("sandboxer_extension", None)  # as made before the label
    finally:
        await service.client.close()
        await service.shutdown()
    await each_keeps_to_its_own(home, nats_server.url, provider, made, ("ext.e2b-eu", "ext.e2b"))


async def test_two_daytona_declarations_on_one_account_keep_to_their_own(
    nats_server: Any, home: Path, daytona_double: DaytonaServed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ext.daytona-eu`` declared beside ``ext.daytona`` with the same key sees the same
    Daytona organization. Neither's start may remove the other's sandboxes as copies of
    sandboxes the log places elsewhere, nor its ``inspect stale`` show them, and each
    destroys its own: for each, one made now (labelled with its declaration) and one made
    before the labels named the declaration (labelled ext.daytona whichever made it: the
    log decides)."""
    declare_copy(home, "ext.daytona", "ext.daytona-eu")
    profile = (Path(__file__).parents[2] / "profiles" / "profile.daytona.yaml").read_text()
    (home / "profiles").mkdir(exist_ok=True)
    (home / "profiles" / "profile.daytona-eu.yaml").write_text(
        profile.replace("id: profile.daytona\n", "id: profile.daytona-eu\n").replace(
            "extension: ext.daytona\n", "extension: ext.daytona-eu\n"
        )
    )
    provider = daytona(daytona_double)
    for name, value in provider.env.items():
        monkeypatch.setenv(name, value)
    roles = ["control", "projector", "ext.daytona", "ext.daytona-eu"]
    service = await start_service(home, nats_server.url, roles=roles)
    made: list[str] = []
    try:
        await service.fund()
        for profile_id in ("profile.daytona", "profile.daytona-eu"):
            for _ in range(2):
                made.append((await service.client.create(profile_id, timeout=60))["sandbox_id"])
        for older in (made[1], made[3]):  # as made before the labels named the declaration
            [record] = [r for r in daytona_double.double.live() if r.name == f"sandboxer-{older}"]
            record.labels = {"sandboxer_id": older, "sandboxer_extension": "ext.daytona"}
    finally:
        await service.client.close()
        await service.shutdown()
    await each_keeps_to_its_own(
        home, nats_server.url, provider, made, ("ext.daytona", "ext.daytona-eu")
    )


async def test_an_e2b_sandbox_paused_while_its_log_says_ready_is_resumed_by_the_leak_sweep(
    nats_server: Any, home: Path, e2b_double: ServedE2b, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Paused at E2B behind the service's back while the log says ``ready``: the worker's
    leak sweep resumes it, and moves E2B's timeout (an hour after a resume) back to the
    sandbox's expiry, as after any resume. Nothing is recorded on the sandbox."""
    provider, service = await served_e2b(nats_server, home, e2b_double, monkeypatch)
    try:
        client = service.client
        sandbox_id = (await client.create(provider.profile, ttl="3h"))["sandbox_id"]
        (record,) = [
            r for r in e2b_double.double.live() if r.metadata.get("sandboxer_id") == sandbox_id
        ]
        record.state = "paused"
        store = JetStreamEventStore(client.nc, client.js)
        # Its `ready` in the log, where the sweep reads it (still provisioning, it is left).
        loaded = await logged(
            lambda: store.load(sandbox_id), lambda got: got.state.status == "ready"
        )
        state = loaded.state
        assert state.expires_at is not None
        worker_side = build_extension(provider.extension, Catalog.load(home), service.settings)
        try:
            worker = ExtensionWorker(client.js, store, Catalog.load(home), worker_side)
            assert await worker.sweep_leaks() == []
        finally:
            await worker_side.aclose()  # type: ignore[attr-defined]
        assert record.state == "running"
        # E2B's resume left an hour; the expiry (3 h away), and its grace, is moved back.
        assert record.end_at >= datetime.fromisoformat(state.expires_at)
        assert (await store.load(sandbox_id)).state.version == state.version
        await client.destroy(sandbox_id)
    finally:
        await service.client.close()
        await service.shutdown()
