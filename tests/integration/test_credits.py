"""Credits through the real service, on the metered stub (ext.saas-stub: 0.001 USD per create,
0.0001 USD per second, i.e. 1000 credits and 100 credits a second): reserve, meter, debit
once, refuse what an account cannot pay for, BYOK, budgets, the export (docs/payments.md)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import stamina
from nats.js.errors import NotFoundError

from sandboxer import subjects
from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.cleanup_waits import cancel_until_done
from sandboxer.client import SandboxerClient
from sandboxer.clock import utc_now
from sandboxer.commands.types import CreateKey, CreateSandbox, ExtendTtl, RevokeKey
from sandboxer.config.catalog import Catalog
from sandboxer.domain.account_decide import ReserveCredits, reserve_command_id
from sandboxer.domain.admission import admit_create
from sandboxer.domain.key_state import hash_key, key_id_for, new_key
from sandboxer.domain.lost_creates import STRANDED_SECONDS
from sandboxer.domain.sandbox_decide import AdmittedCreate
from sandboxer.domain.timestamps import shift
from sandboxer.errors import CommandFailed, ConcurrencyConflict, Rejected, StreamUnavailable
from sandboxer.events.account_events import CreditsReserved
from sandboxer.events.actor import Actor
from sandboxer.ids import new_command_id
from sandboxer.workers.credit_reservation import reserve_for_create, reserve_for_extend
from sandboxer.workers.deciding import apply, apply_account, apply_key
from sandboxer.workers.meter_export import HttpExport, run_meter_export
from sandboxer.workers.meter_worker import MeterWorker
from tests.integration.conftest import Service, send_again, start_service
from tests.integration.test_ext_saas_stub import write_override
from tests.waiting import logged

pytestmark = pytest.mark.integration

ROLES = ["control", "projector", "meter", "ext.saas-stub"]
PER_CREATE, PER_SECOND = 1000, 100  # the stub's packaged prices, in credits


@pytest.fixture
async def service(nats_server: NatsServerProcess, home: Path) -> AsyncIterator[Service]:
    write_override(home, latency_ms=1)
    svc = await start_service(home, nats_server.url, ROLES)
    try:
        yield svc
    finally:
        await svc.client.close()
        await svc.shutdown()


@pytest.fixture
async def acme(nats_server: NatsServerProcess) -> AsyncIterator[SandboxerClient]:
    """A client acting for project ``acme`` (an administrator, so it may add credits)."""
    client = await SandboxerClient.connect(
        [nats_server.url], actor={"type": "adm", "id": "ops", "project": "acme"}
    )
    try:
        yield client
    finally:
        await client.close()


async def account_events(client: SandboxerClient, project: str, kind: str) -> list[dict[str, Any]]:
    return [
        event
        async for _seq, event in client.events()
        if event.get("project") == project and event.get("type") == kind
    ]


OPS = Actor(type="adm", id="ops", project="acme")
BETA = Actor(type="agt", id="b", project="beta")


async def account(client: SandboxerClient, project: str, *, metered: int = 0) -> dict[str, Any]:
    """The project's account once the view shows ``metered`` sandboxes metered."""
    async with asyncio.timeout(30):
        while True:
            found = await client.credits(project)
            if found and found[0]["metered"] >= metered:
                return found[0]
            await asyncio.sleep(0.1)


def stub_create(
    catalog: Catalog, actor: Actor, command_id: str, *, ttl: str, sandbox_id: str | None
) -> AdmittedCreate:
    """A create of ``profile.saas-stub``, admitted as the control worker admits it."""
    create = CreateSandbox(
        command_id=command_id,
        actor=actor,
        profile="profile.saas-stub",
        sandbox_id=sandbox_id,
        ttl=ttl,
    )
    return admit_create(create, catalog.profile(create.profile), catalog.extensions_enabled())


async def hold_long_ago(store: JetStreamEventStore, amount: int, *held: tuple[str, str]) -> None:
    """Holds of ``amount`` on acme's account for each (sandbox id, create command id),
    recorded longer ago than STRANDED_SECONDS: what a create lost after its hold leaves."""
    long_ago = shift(utc_now(), -STRANDED_SECONDS - 60)
    holds = [
        CreditsReserved(
            project="acme",
            command_id=reserve_command_id(sandbox_id),
            causation_id=create_id,
            actor=OPS,
            at=long_ago,
            sandbox_id=sandbox_id,
            amount=amount,
            price=str(PER_SECOND),
            create_price=str(PER_CREATE),
            extension="ext.saas-stub",
            profile="profile.saas-stub",
        )
        for sandbox_id, create_id in held
    ]
    for hold in holds:  # one at a time: a hold sweep may append to the account in between
        async for attempt in stamina.retry_context(on=ConcurrencyConflict, attempts=10):
            with attempt:
                await store.append_account(await store.load_account("acme"), [hold])


async def funded(client: SandboxerClient, project: str, amount: int) -> None:
    """``amount`` credits added to ``project``'s account, and in the log: a create cut off
    after its hold (below) reads the account there, which may not have the outcome yet."""
    added = await client.account_command("add_credits", project, amount=amount)
    store = JetStreamEventStore(client.nc, client.js)
    await logged(
        lambda: store.load_account(project), lambda got: added["command_id"] in got.book.handled
    )


async def cut_off_after_its_hold(
    client: SandboxerClient,
    home: Path,
    actor: Actor,
    command_id: str,
    *,
    ttl: str,
    sandbox_id: str | None = None,
) -> AdmittedCreate:
    """What a create of ``profile.saas-stub`` leaves when it is cut off (kill -9) between its
    credit hold and its append: admitted and held as the control worker does, and waited for
    in the view (appended beside the client, which cannot ask the view to have read it)."""
    catalog = Catalog.load(home)
    admitted = stub_create(catalog, actor, command_id, ttl=ttl, sandbox_id=sandbox_id)
    await reserve_for_create(JetStreamEventStore(client.nc, client.js), catalog, admitted)
    assert actor.project is not None
    async with asyncio.timeout(30):  # this hold, not any: another may be in the view already
        while admitted.sandbox_id not in (await account(client, actor.project))["reservations"]:
            await asyncio.sleep(0.05)
    return admitted


def stub_records(home: Path) -> list[Path]:
    return sorted((home / "saas-stub").rglob("*.json"))


async def test_a_paid_sandbox_is_reserved_metered_and_debited_once(
    service: Service, acme: SandboxerClient, nats_server: NatsServerProcess
) -> None:
    await acme.account_command("add_credits", "acme", amount=1_000_000)
    ready = await acme.create("profile.saas-stub", ttl="10m", command_id="paid-create-1")
    sandbox_id = ready["sandbox_id"]
    held = await account(acme, "acme")
    assert held["reserved"] == PER_CREATE + 600 * PER_SECOND  # the 10 minutes asked for
    assert held["available"] == 1_000_000 - held["reserved"]

    # The same create again, past JetStream's duplicate check (another message id): nothing new.
    await send_again(acme, "paid-create-1", "profile.saas-stub", ttl="10m")
    await asyncio.sleep(1.2)  # metered for a second at least
    await acme.destroy(sandbox_id)

    settled = await account(acme, "acme", metered=1)
    (usage,) = (await acme.usage(project="acme"))["usage"]
    assert usage["sandbox_id"] == sandbox_id
    assert usage["seconds"] >= 1
    assert usage["amount"] == PER_CREATE + usage["seconds"] * PER_SECOND
    assert (settled["balance"], settled["reserved"]) == (1_000_000 - usage["amount"], 0)
    assert len(await account_events(acme, "acme", "credits_reserved")) == 1
    (metered,) = await account_events(acme, "acme", "usage_metered")
    assert metered["reserved_released"] == PER_CREATE + 600 * PER_SECOND

    # The meter message delivered again: the account has handled meter-<id> already.
    store = JetStreamEventStore(acme.nc, acme.js)
    meter = MeterWorker(
        acme.nc, acme.js, store, Catalog.load(service.settings.home), service.settings
    )
    await meter.meter(sandbox_id)
    assert len(await account_events(acme, "acme", "usage_metered")) == 1
    # A read that ends before the destroyed event (a replica behind) is not taken for "not
    # destroyed yet, nothing to meter": the message waits for a read that reaches it.
    with pytest.raises(StreamUnavailable, match="before its destroyed event"):
        await meter.meter(sandbox_id, seen_at=(await store.load(sandbox_id)).last_seq + 1)
    assert (await account(acme, "acme", metered=1))["balance"] == settled["balance"]

    summary = (await acme.usage())["summary"]
    assert summary == [
        {
            "project": "acme",
            "profile": "profile.saas-stub",
            "extension": "ext.saas-stub",
            "sandboxes": 1,
            "seconds": usage["seconds"],
            "amount": usage["amount"],
            "byok_sandboxes": 0,
        }
    ]
    replayed = await acme.replay(verify=True)
    assert replayed["verified"], replayed["differences"]


async def test_insufficient_credits_refuse_the_create_before_the_provider(
    service: Service, acme: SandboxerClient, home: Path
) -> None:
    await acme.account_command("add_credits", "acme", amount=10)
    with pytest.raises(CommandFailed) as refused:
        await acme.create("profile.saas-stub", ttl="30m")
    rejection = refused.value.event
    assert rejection["type"] == "rejected"
    assert rejection["code"] == "insufficient_credits"
    assert "need 181000, have 10 (0 reserved" in rejection["reason"]
    assert stub_records(home) == []  # the provider was never called
    assert (await account(acme, "acme"))["reserved"] == 0


async def test_an_extension_reserves_more_or_is_refused(
    service: Service, acme: SandboxerClient
) -> None:
    await acme.account_command("add_credits", "acme", amount=PER_CREATE + 600 * PER_SECOND)
    ready = await acme.create("profile.saas-stub", ttl="10m")
    with pytest.raises(CommandFailed, match="need 360000, have 0"):
        await acme.extend_ttl(ready["sandbox_id"], "1h")
    await acme.account_command("add_credits", "acme", amount=360_000)
    await acme.extend_ttl(ready["sandbox_id"], "1h")
    assert (await account(acme, "acme"))["reserved"] == PER_CREATE + 4200 * PER_SECOND
    await acme.destroy(ready["sandbox_id"])
    assert (await account(acme, "acme", metered=1))["reserved"] == 0


async def test_an_extend_id_sent_again_on_another_sandbox_still_reserves(
    service: Service, acme: SandboxerClient
) -> None:
    """A client may send a command id again once the bus forgets it (two minutes; here with
    another Nats-Msg-Id). On another sandbox it is a new extension, and the account must
    hold credits for it: it once took the reservation for one it had already made."""
    await acme.account_command(
        "add_credits", "acme", amount=2 * (PER_CREATE + 600 * PER_SECOND) + 3600 * PER_SECOND
    )
    first = (await acme.create("profile.saas-stub", ttl="10m"))["sandbox_id"]
    second = (await acme.create("profile.saas-stub", ttl="10m"))["sandbox_id"]
    await acme.extend_ttl(first, "1h", command_id="sendagain1")
    assert (await account(acme, "acme"))["available"] == 0
    again = {"command_id": "sendagain1", "sandbox_id": second, "duration": "1h"}
    await acme.js.publish(
        subjects.command_subject("extend_ttl"),
        msgspec.json.encode({**again, "actor": acme.actor}),
        headers={"Nats-Msg-Id": "a-new-message-id"},
    )
    async with asyncio.timeout(30):
        while True:
            outcome = [
                event
                async for _seq, event in acme.events()
                if event.get("command_id") == "sendagain1"
                and event.get("sandbox_id") == second
                and event.get("type") in {"rejected", "ttl_extended"}
            ]
            if outcome:
                break
            await asyncio.sleep(0.1)
    assert [(e["type"], e.get("code")) for e in outcome] == [("rejected", "insufficient_credits")]
    for sandbox_id in (first, second):
        await acme.destroy(sandbox_id)


async def test_a_create_that_lost_its_sandbox_id_to_another_project_gives_its_credits_back(
    service: Service, acme: SandboxerClient, nats_server: NatsServerProcess, home: Path
) -> None:
    """Two projects' creates name one sandbox id and both reserve before either appends:
    the loser is refused sandbox_exists, and its hold was never released (nothing meters a
    sandbox that is not its own), its credits locked for good."""
    beta = await SandboxerClient.connect(
        [nats_server.url], actor={"type": "adm", "id": "b", "project": "beta"}
    )
    try:
        for project, client in (("acme", acme), ("beta", beta)):
            await funded(client, project, PER_CREATE + 600 * PER_SECOND)
        # beta's create gets as far as its reservation ...
        await cut_off_after_its_hold(
            beta,
            home,
            Actor(type="adm", id="b", project="beta"),
            "beta-create-1",
            ttl="10m",
            sandbox_id="contested01",
        )
        # ... acme's takes the id, then beta's is decided
        await acme.create("profile.saas-stub", ttl="10m", sandbox_id="contested01")
        with pytest.raises(CommandFailed, match="is taken"):
            await beta.create(
                "profile.saas-stub", ttl="10m", sandbox_id="contested01", command_id="beta-create-1"
            )
        async with asyncio.timeout(30):
            while (await account(beta, "beta"))["reserved"] != 0:
                await asyncio.sleep(0.1)
        assert (await account(beta, "beta"))["balance"] == PER_CREATE + 600 * PER_SECOND
        assert (await account(acme, "acme"))["reserved"] > 0  # the winner's hold stands
        await acme.destroy("contested01")
    finally:
        await beta.close()


async def test_a_lost_create_s_release_does_not_replace_the_owner_s_usage_row(
    service: Service, acme: SandboxerClient, nats_server: NatsServerProcess, home: Path
) -> None:
    """Sandbox ids are the clients', one namespace across projects. beta's create of acme's
    id held credits before acme's appended, and was decided only after acme's sandbox was
    destroyed and metered: its release meters the id at zero on beta's account. The usage
    view kept one row per sandbox id, so beta's zero row replaced acme's: acme's usage lost
    the sandbox it paid for, and its summary the amount."""
    beta = await SandboxerClient.connect(
        [nats_server.url], actor={"type": "adm", "id": "b", "project": "beta"}
    )
    funds = PER_CREATE + 600 * PER_SECOND
    try:
        for project in ("acme", "beta"):
            await funded(acme, project, funds)
        await cut_off_after_its_hold(
            beta,
            home,
            Actor(type="adm", id="b", project="beta"),
            "beta-create-2",
            ttl="10m",
            sandbox_id="contested02",
        )
        await acme.create(
            "profile.saas-stub", ttl="10m", sandbox_id="contested02", consumer={"run_id": "r1"}
        )
        await acme.destroy("contested02")
        paid = funds - (await account(acme, "acme", metered=1))["balance"]
        assert paid > 0
        with pytest.raises(CommandFailed, match="is taken"):
            await beta.create(
                "profile.saas-stub", ttl="10m", sandbox_id="contested02", command_id="beta-create-2"
            )
        await account(beta, "beta", metered=1)  # beta's release, metered at zero

        acme_usage = await acme.usage(project="acme")
        assert [(u["sandbox_id"], u["project"], u["amount"]) for u in acme_usage["usage"]] == [
            ("contested02", "acme", paid)
        ]
        assert (acme_usage["total"]["sandboxes"], acme_usage["total"]["amount"]) == (1, paid)
        beta_usage = await beta.usage(project="beta")
        assert [(u["sandbox_id"], u["project"], u["amount"]) for u in beta_usage["usage"]] == [
            ("contested02", "beta", 0)
        ]
        everyone = await acme.usage()
        assert sorted((u["project"], u["amount"]) for u in everyone["usage"]) == [
            ("acme", paid),
            ("beta", 0),
        ]
        # Grouped by consumer, a row takes its sandbox's consumer only from its own project's
        # sandbox: acme's run, never beta's release.
        by_run = await acme.usage(by="run_id")
        assert sorted(
            ((g["run_id"] or ""), g["sandboxes"], g["amount"]) for g in by_run["summary"]
        ) == [("", 1, 0), ("r1", 1, paid)]
    finally:
        await beta.close()


@contextlib.asynccontextmanager
async def beta_held_what_acme_made(
    acme: SandboxerClient,
    nats_url: str,
    home: Path,
    command_id: str,
    actor: Actor = BETA,
) -> AsyncIterator[tuple[SandboxerClient, str, int]]:
    """beta's create (as the gateway sends a key's: an ``agt`` actor on the plain subject;
    ``actor``: a key's own) under ``command_id`` held credits and was cut off before its
    append; acme's create under the same command id then made the sandbox (both projects
    funded alike). Yields beta's client, the sandbox id and what each project was given."""
    beta = await SandboxerClient.connect([nats_url], actor=msgspec.to_builtins(actor))
    funds = PER_CREATE + 600 * PER_SECOND
    try:
        for project in ("acme", "beta"):
            await funded(acme, project, funds)
        admitted = await cut_off_after_its_hold(beta, home, actor, command_id, ttl="10m")
        made = await acme.create("profile.saas-stub", ttl="10m", command_id=command_id)
        assert made["sandbox_id"] == admitted.sandbox_id
        yield beta, admitted.sandbox_id, funds
        async with asyncio.timeout(30):
            while (await account(acme, "beta"))["reserved"] != 0:
                await asyncio.sleep(0.1)
        assert (await account(acme, "beta"))["balance"] == funds  # released, never debited
        sandbox = await acme.get(admitted.sandbox_id)
        assert sandbox is not None
        assert (sandbox["status"], sandbox["actor"]["project"]) == ("ready", "acme")
        await acme.destroy(admitted.sandbox_id)
        settled = await account(acme, "acme", metered=1)
        assert settled["reserved"] == 0
        assert settled["balance"] < funds  # acme's own sandbox, metered to acme
    finally:
        await beta.close()


async def test_another_project_s_create_under_a_create_s_command_id_gives_its_hold_back(
    service: Service, acme: SandboxerClient, nats_server: NatsServerProcess, home: Path
) -> None:
    """Command ids are the clients' (a gateway key's ``Idempotency-Key``), one namespace across
    projects, and a create's sandbox id is derived from its command id. beta's create under
    acme's create's command id got as far as its hold (cut off, kill -9, before its append)
    while acme's was made; decided again, it was taken for acme's create sent again: nothing
    recorded, acme's job sent again, and beta's hold for acme's sandbox kept for ever."""
    async with beta_held_what_acme_made(acme, nats_server.url, home, "shared-create-1") as (
        beta,
        _sandbox_id,
        _funds,
    ):
        await send_again(beta, "shared-create-1", "profile.saas-stub", ttl="10m")
        async with asyncio.timeout(30):
            while not (refused := await _rejections_of(acme, "shared-create-1")):
                await asyncio.sleep(0.1)
        assert [(e["code"], e["actor"]["project"]) for e in refused] == [("sandbox_exists", "beta")]
        assert "ready" not in refused[0]["reason"]  # nothing of acme's sandbox is told


async def test_a_create_refused_before_deciding_gives_back_its_hold_on_another_project_s_id(
    service: Service, acme: SandboxerClient, nats_server: NatsServerProcess, home: Path
) -> None:
    """beta's create held credits for an id (cut off before its append) that acme's create,
    under the same command id, then made. Sent again, beta's is refused before its sandbox
    is looked at (here its TTL past ttl.max; its hosts down would do the same): only a
    sandbox_exists refusal gave such a hold back, so this one was held for ever."""
    async with beta_held_what_acme_made(acme, nats_server.url, home, "shared-create-5") as (
        beta,
        _sandbox_id,
        _funds,
    ):
        await send_again(beta, "shared-create-5", "profile.saas-stub", ttl="5h")


async def bus_key(acme: SandboxerClient, project: str) -> tuple[str, Actor, JetStreamEventStore]:
    """A new agent key of ``project`` that publishes on the bus: its id, its actor, and the
    store it was recorded with."""
    key_hash = hash_key(new_key())
    key_id = key_id_for(key_hash)
    store = JetStreamEventStore(acme.nc, acme.js)
    made = CreateKey(
        command_id=new_command_id(),
        actor=OPS,
        project=project,
        key_type="agt",
        key_hash=key_hash,
    )
    await apply_key(store, made)
    return key_id, Actor(type="agt", id=key_id, project=project), store


async def test_a_bus_key_s_create_refused_as_taken_gives_back_its_hold_on_another_project_s_id(
    service: Service, acme: SandboxerClient, nats_server: NatsServerProcess, home: Path
) -> None:
    """As the test above, but beta's create comes from its key's own NATS identity (on the
    key's subject, as a bus key publishes it): sent again, it is refused ``sandbox_exists``
    by the key's check (workers/bus_identity.py), before anything is decided, and that
    refusal gave nothing back: beta's hold for acme's sandbox was held for ever."""
    key_id, own, _store = await bus_key(acme, "beta")
    async with beta_held_what_acme_made(acme, nats_server.url, home, "shared-create-k", own) as (
        beta,
        _sandbox_id,
        _funds,
    ):
        again = {"command_id": "shared-create-k", "profile": "profile.saas-stub", "ttl": "10m"}
        await beta.js.publish(
            subjects.stamped(subjects.command_subject("create"), key_id),
            msgspec.json.encode({**again, "inputs": {}, "actor": msgspec.to_builtins(own)}),
            headers={"Nats-Msg-Id": "shared-create-k-again"},
        )
        async with asyncio.timeout(30):
            while not (refused := await _rejections_of(acme, "shared-create-k")):
                await asyncio.sleep(0.1)
        assert [(e["code"], e["actor"]["id"]) for e in refused] == [("sandbox_exists", key_id)]


async def test_a_bus_key_s_create_cut_off_after_its_hold_and_its_key_revoked_gives_it_back(
    service: Service, acme: SandboxerClient, home: Path
) -> None:
    """acme's key's create (on the key's own subject) held a minute's credits and was cut off
    before its append (kill -9); the key was revoked before it came again. Every delivery of
    it is refused ``key_revoked`` by the key's check, before anything is decided, and that
    refusal gave nothing back: the hold was reserved for ever. Now the key's own create
    (its actor the key's, as it was before the revocation) gives its id up and its hold back,
    as any create refused after its hold does."""
    minute = PER_CREATE + 60 * PER_SECOND
    await acme.account_command("add_credits", "acme", amount=minute)
    key_id, own, store = await bus_key(acme, "acme")
    await cut_off_after_its_hold(
        acme, home, own, "revoked-create-1", ttl="1m", sandbox_id="revoked01"
    )
    await apply_key(store, RevokeKey(command_id=new_command_id(), actor=OPS, key_id=key_id))
    again = {"command_id": "revoked-create-1", "profile": "profile.saas-stub", "ttl": "1m"}
    again |= {"sandbox_id": "revoked01", "inputs": {}, "actor": msgspec.to_builtins(own)}
    await acme.js.publish(
        subjects.stamped(subjects.command_subject("create"), key_id),
        msgspec.json.encode(again),
        headers={"Nats-Msg-Id": "revoked-create-1-again"},
    )
    async with asyncio.timeout(30):
        while not (refused := await _rejections_of(acme, "revoked-create-1")):
            await asyncio.sleep(0.1)
    assert [e["code"] for e in refused] == ["key_revoked"]
    async with asyncio.timeout(30):
        while (await account(acme, "acme"))["reserved"] != 0:
            await asyncio.sleep(0.1)
    [released] = await account_events(acme, "acme", "credits_released")
    assert (released["hold"], released["amount"]) == ("reserve-revoked01", minute)
    assert (released["causation_id"], released["reason"]) == ("revoked-create-1", "key_revoked")
    assert await acme.get("revoked01") is None  # never made
    assert stub_records(home) == []


async def _rejections_of(client: SandboxerClient, command_id: str) -> list[dict[str, Any]]:
    return [
        event
        async for _seq, event in client.events()
        if event.get("command_id") == command_id and event.get("type") == "rejected"
    ]


async def test_a_second_create_of_a_sandbox_id_is_refused_not_made_on_the_first_s_hold(
    service: Service, acme: SandboxerClient, home: Path
) -> None:
    """Two creates of one project name one sandbox id (two control workers, say, or one
    handler held up). The first holds a minute's credits and has not appended yet; the
    second found ``reserve-<id>`` decided and appended on that hold: a 30-minute sandbox made
    on a minute's credits (it alone would be refused insufficient_credits), metered at
    whatever the first had reserved. The id is the first's: the second is refused."""
    minute = PER_CREATE + 60 * PER_SECOND
    await funded(acme, "acme", minute)
    await cut_off_after_its_hold(
        acme, home, OPS, "acme-create-a", ttl="1m", sandbox_id="contested02"
    )

    with pytest.raises(CommandFailed) as refused:
        await acme.create(
            "profile.saas-stub", ttl="30m", sandbox_id="contested02", command_id="acme-create-b"
        )
    assert refused.value.event["code"] == "sandbox_exists"
    assert stub_records(home) == []  # the provider was never called for it

    # The first create goes on (redelivered, say): it is made, on its own hold.
    ready = await acme.create(
        "profile.saas-stub", ttl="1m", sandbox_id="contested02", command_id="acme-create-a"
    )
    assert ready["sandbox_id"] == "contested02"
    sandbox = await acme.get("contested02")
    assert (sandbox["created_by"], sandbox["ttl_seconds"]) == ("acme-create-a", 60)
    await acme.destroy("contested02")
    settled = await account(acme, "acme", metered=1)
    assert settled["reserved"] == 0
    assert len(await account_events(acme, "acme", "credits_reserved")) == 1


async def test_an_extension_is_not_priced_from_a_hold_another_create_made(
    service: Service, acme: SandboxerClient, home: Path
) -> None:
    """A hold under a sandbox's id is not always its own create's: here a create of the
    project under its own key (BYOK: nothing to reserve) made the sandbox, while a paid
    create of the same id, which had found the id free a moment before, held a minute's
    credits for it (and was then refused sandbox_exists). The sandbox's extensions cost the
    project nothing; priced from the other create's hold, one was refused
    insufficient_credits (or held credits the sandbox would never use)."""
    minute = PER_CREATE + 60 * PER_SECOND
    await acme.account_command("add_credits", "acme", amount=minute)
    await acme.account_command(
        "set_byok", "acme", extension="ext.saas-stub", key_ref="env:ACME_STUB_KEY"
    )
    ready = await acme.create(
        "profile.saas-stub", ttl="1m", sandbox_id="strayhold01", command_id="acme-create-b"
    )
    # The paid create's hold, decided as it is once the id was seen free: after the BYOK
    # create's look at the account, appended after its sandbox.
    hold = ReserveCredits(
        command_id=reserve_command_id("strayhold01"),
        causation_id="acme-create-a",
        actor=OPS,
        sandbox_id="strayhold01",
        amount=minute,
        price=str(PER_SECOND),
        create_price=str(PER_CREATE),
        extension="ext.saas-stub",
        profile="profile.saas-stub",
    )
    await apply_account(JetStreamEventStore(acme.nc, acme.js), "acme", hold)
    sandbox = await acme.get("strayhold01")
    assert sandbox is not None
    assert sandbox["created_by"] == "acme-create-b"

    extended = await acme.extend_ttl(ready["sandbox_id"], "10m")
    assert extended["by_seconds"] == 600
    assert (await account(acme, "acme"))["reserved"] == minute  # nothing more held
    await acme.destroy("strayhold01")
    settled = await account(acme, "acme", metered=1)
    assert (settled["balance"], settled["reserved"]) == (minute, 0)


async def test_a_create_that_reserves_nothing_does_not_take_an_id_another_create_holds(
    service: Service, acme: SandboxerClient, home: Path
) -> None:
    """A paid create held a minute's credits for an id and was cut off before its append. A
    create of the project that reserves nothing (its own key pays: BYOK) named the same id
    and was made: the id was the first's (a paid second create is refused sandbox_exists),
    the first, sent again, was refused although it came first, and its hold stayed until
    the second's sandbox was metered. Now the second is refused, and the first is made."""
    minute = PER_CREATE + 60 * PER_SECOND
    await funded(acme, "acme", minute)
    await cut_off_after_its_hold(acme, home, OPS, "acme-create-a", ttl="1m", sandbox_id="heldid01")
    await acme.account_command(
        "set_byok", "acme", extension="ext.saas-stub", key_ref="env:ACME_STUB_KEY"
    )
    with pytest.raises(CommandFailed) as refused:
        await acme.create(
            "profile.saas-stub", ttl="30m", sandbox_id="heldid01", command_id="acme-create-b"
        )
    assert refused.value.event["code"] == "sandbox_exists"
    assert stub_records(home) == []  # the provider was never called for it

    ready = await acme.create(
        "profile.saas-stub", ttl="1m", sandbox_id="heldid01", command_id="acme-create-a"
    )
    assert ready["sandbox_id"] == "heldid01"
    sandbox = await acme.get("heldid01")
    assert sandbox is not None
    assert sandbox["created_by"] == "acme-create-a"
    await acme.destroy("heldid01")
    assert (await account(acme, "acme", metered=1))["reserved"] == 0


async def test_a_create_refused_after_its_hold_gives_its_id_up_and_its_hold_back(
    service: Service, acme: SandboxerClient, home: Path
) -> None:
    """A create held a minute's credits and was cut off (kill -9) before its append; sent
    again, it is refused (here its TTL past the profile's ttl.max: a refusal found before its
    hold is looked at, as its hosts down or its profile gone would be). Nothing ever metered
    or released that hold: the account showed it reserved for good. Now the id is given up
    (``create_abandoned``), then the hold given back (``credits_released``), once; and no
    create of the id is made after, not even the one cut off going on: it would run on no
    hold."""
    minute = PER_CREATE + 60 * PER_SECOND
    await funded(acme, "acme", minute)
    cut_off = await cut_off_after_its_hold(
        acme, home, OPS, "acme-cut-1", ttl="1m", sandbox_id="givenup01"
    )
    with pytest.raises(CommandFailed) as refused:
        await acme.create(
            "profile.saas-stub", ttl="5h", sandbox_id="givenup01", command_id="acme-cut-1"
        )
    assert refused.value.event["code"] == "ttl_max_exceeded"
    async with asyncio.timeout(30):
        while (await account(acme, "acme"))["reserved"] != 0:
            await asyncio.sleep(0.1)
    [released] = await account_events(acme, "acme", "credits_released")
    assert (released["hold"], released["amount"]) == ("reserve-givenup01", minute)
    assert (released["causation_id"], released["reason"]) == ("acme-cut-1", "ttl_max_exceeded")
    abandoned = [
        event
        async for _seq, event in acme.events()
        if event.get("sandbox_id") == "givenup01" and event.get("type") == "create_abandoned"
    ]
    assert [(e["command_id"], e["code"]) for e in abandoned] == [("acme-cut-1", "ttl_max_exceeded")]

    # The delivery that was cut off goes on to its append: refused, on a hold that is gone.
    store = JetStreamEventStore(acme.nc, acme.js)
    with pytest.raises(Rejected) as late:
        await apply(store, "givenup01", cut_off)
    assert late.value.code == "sandbox_exists"
    # Sent again as it first was (its outcome is the refusal it was told), or another
    # create of the id: refused, nothing made, given back once.
    await send_again(acme, "acme-cut-1", "profile.saas-stub", ttl="1m", sandbox_id="givenup01")
    with pytest.raises(CommandFailed) as again:
        await acme.create(
            "profile.saas-stub", ttl="1m", sandbox_id="givenup01", command_id="acme-cut-2"
        )
    assert again.value.event["code"] == "sandbox_exists"
    assert stub_records(home) == []  # the provider was never called
    assert await acme.get("givenup01") is None  # never made
    assert len(await account_events(acme, "acme", "credits_released")) == 1
    settled = await account(acme, "acme")
    assert (settled["balance"], settled["reserved"]) == (minute, 0)


async def test_an_extension_its_sandbox_refuses_past_ttl_max_gives_its_hold_back(
    service: Service, acme: SandboxerClient, home: Path
) -> None:
    """An extension holds its time before its sandbox decides, under the sandbox's own check.
    Here one (2h) held and was cut off before its append while another (2h) was taken: the
    two together pass the profile's ttl.max (4h from a 1h create), so the first, sent again,
    is refused ttl_max_exceeded. Its hold stayed until the sandbox was metered, tying up
    the project's credits; now it is given back at the refusal."""
    create, two_hours = PER_CREATE + 3600 * PER_SECOND, 7200 * PER_SECOND
    await acme.account_command("add_credits", "acme", amount=create + 2 * two_hours)
    ready = await acme.create("profile.saas-stub", ttl="1h")
    sandbox_id = ready["sandbox_id"]
    first = ExtendTtl(command_id="held-ext-1", actor=OPS, sandbox_id=sandbox_id, duration="2h")
    store = JetStreamEventStore(acme.nc, acme.js)
    await reserve_for_extend(store, Catalog.load(home), first)  # held, never appended
    await acme.extend_ttl(sandbox_id, "2h", command_id="taken-ext-2")
    assert (await account(acme, "acme"))["reserved"] in (create + two_hours, create + 2 * two_hours)

    with pytest.raises(CommandFailed) as refused:
        await acme.extend_ttl(sandbox_id, "2h", command_id="held-ext-1")
    assert refused.value.event["code"] == "ttl_max_exceeded"
    async with asyncio.timeout(30):
        while (await account(acme, "acme"))["reserved"] != create + two_hours:
            await asyncio.sleep(0.1)
    [released] = await account_events(acme, "acme", "credits_released")
    assert (released["sandbox_id"], released["amount"]) == (sandbox_id, two_hours)
    assert released["reason"] == "ttl_max_exceeded"
    # Sent again once more: given back once.
    with pytest.raises(CommandFailed):
        await acme.extend_ttl(sandbox_id, "2h", command_id="held-ext-1")
    assert len(await account_events(acme, "acme", "credits_released")) == 1
    await acme.destroy(sandbox_id)
    assert (await account(acme, "acme", metered=1))["reserved"] == 0
    (metered,) = await account_events(acme, "acme", "usage_metered")
    assert metered["reserved_released"] == create + two_hours


async def test_a_budget_refuses_a_create_and_names_itself(
    service: Service, acme: SandboxerClient
) -> None:
    await acme.account_command("add_credits", "acme", amount=10_000_000)
    await acme.account_command("set_budget", "acme", limit=100_000, period="day")
    with pytest.raises(CommandFailed) as refused:
        await acme.create("profile.saas-stub", ttl="30m")
    assert refused.value.event["code"] == "budget_exceeded"
    assert "daily budget of 100000 credits" in refused.value.event["reason"]


async def test_byok_meters_usage_and_never_debits(
    service: Service, acme: SandboxerClient, nats_server: NatsServerProcess
) -> None:
    # The stub takes no provider key: a project's own "key" there would only waive its
    # price, so an agent of the project may not set one; an administrator may.
    agent = await SandboxerClient.connect(
        [nats_server.url], actor={"type": "agt", "id": "agent", "project": "acme"}
    )
    try:
        with pytest.raises(CommandFailed, match="takes no provider key") as refused:
            await agent.account_command(
                "set_byok", "acme", extension="ext.saas-stub", key_ref="env:ACME_STUB_KEY"
            )
        assert refused.value.event["code"] == "forbidden"
    finally:
        await agent.close()
    event = await acme.account_command(
        "set_byok", "acme", extension="ext.saas-stub", key_ref="env:ACME_STUB_KEY"
    )
    assert event["key_ref"] == "env:ACME_STUB_KEY"
    ready = await acme.create("profile.saas-stub", ttl="30m")  # no credits at all
    await asyncio.sleep(1.1)
    await acme.destroy(ready["sandbox_id"])
    settled = await account(acme, "acme", metered=1)
    (usage,) = (await acme.usage(project="acme"))["usage"]
    assert (usage["byok"], usage["amount"]) == (True, 0)
    assert usage["seconds"] >= 1
    assert (settled["balance"], settled["debited"], settled["reserved"]) == (0, 0, 0)


async def test_kill_9_between_metering_and_its_ack_debits_once(
    nats_server: NatsServerProcess, home: Path, acme: SandboxerClient
) -> None:
    write_override(home, latency_ms=1)
    service = await start_service(home, nats_server.url, ["control", "projector", "ext.saas-stub"])
    crasher = start_crashing_meter(home, nats_server.url)
    meter_task = None
    try:
        await acme.account_command("add_credits", "acme", amount=1_000_000)
        ready = await acme.create("profile.saas-stub", ttl="10m")
        await asyncio.sleep(1.1)
        await acme.destroy(ready["sandbox_id"])
        assert await asyncio.to_thread(crasher.wait, 60) == -signal.SIGKILL
        assert len(await account_events(acme, "acme", "usage_metered")) == 1  # appended, unacked
        before = await acme.js.consumer_info(subjects.EVENTS_STREAM, "meter")
        destroyed_at = before.delivered.stream_seq if before.delivered else 0
        # The meter comes back: the message is delivered again, and decides nothing. (With
        # another ack_wait than the killed one's, it makes its durable again from the ack
        # floor, bus/guarded_durable.py: the consumer's own counters start over.)
        meter = MeterWorker(
            acme.nc,
            acme.js,
            JetStreamEventStore(acme.nc, acme.js),
            Catalog.load(home),
            service.settings,
        )
        stop = asyncio.Event()
        meter_task = asyncio.create_task(meter.run(stop))
        async with asyncio.timeout(30):
            while True:
                try:
                    info = await acme.js.consumer_info(subjects.EVENTS_STREAM, "meter")
                except NotFoundError:  # between the remake's delete and its create
                    await asyncio.sleep(0.2)
                    continue
                acked = info.ack_floor.stream_seq if info.ack_floor else 0
                # Delivered again (the first delivery went with the killed process), and acked.
                if info.num_ack_pending == 0 and (acked or 0) >= (destroyed_at or 1):
                    break
                await asyncio.sleep(0.2)
        stop.set()
        await meter_task
        assert len(await account_events(acme, "acme", "usage_metered")) == 1
        settled = await account(acme, "acme", metered=1)
        (usage,) = (await acme.usage(project="acme"))["usage"]
        assert settled["balance"] == 1_000_000 - usage["amount"]
    finally:
        if meter_task is not None:
            await cancel_until_done(meter_task)
        if crasher.poll() is None:
            crasher.kill()
            crasher.wait()
        await service.client.close()
        await service.shutdown()


CRASHING_METER = """
import asyncio, os, signal, sys
from sandboxer.bus.connect import connect
from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.config.catalog import Catalog
from sandboxer.config.settings import Settings
from sandboxer.events.codec import decode_event
from sandboxer.workers.meter_worker import MeterWorker

class DiesBeforeItsAck(MeterWorker):
    async def handle(self, msg):
        await self.meter(decode_event(msg.data).sandbox_id)
        os.kill(os.getpid(), signal.SIGKILL)  # appended, never acknowledged

async def main():
    settings = Settings.from_env()
    nc = await connect(list(settings.nats_urls), name="crashing-meter")
    js = nc.jetstream()
    worker = DiesBeforeItsAck(
        nc, js, JetStreamEventStore(nc, js), Catalog.load(settings.home), settings
    )
    await worker.run(asyncio.Event())

asyncio.run(main())
"""


def start_crashing_meter(home: Path, url: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, SANDBOXER_HOME=str(home), SANDBOXER_NATS_URL=url, SANDBOXER_ACK_WAIT="2")
    with (home / "meter.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-c", CRASHING_METER], env=env, stdout=subprocess.DEVNULL, stderr=log
        )


async def metered_in_log(client: SandboxerClient) -> list[dict[str, Any]]:
    return [event async for _seq, event in client.events() if event.get("type") == "usage_metered"]


async def use_and_destroy(client: SandboxerClient) -> None:
    ready = await client.create("profile.saas-stub", ttl="10m")
    await client.destroy(ready["sandbox_id"])


async def lines_of(path: Path, count: int) -> list[dict[str, Any]]:
    async with asyncio.timeout(30):
        while True:
            if path.exists():
                data = path.read_bytes()
                whole = data[: data.rfind(b"\n") + 1]  # a line cut short is not one yet
                lines = [msgspec.json.decode(line) for line in whole.splitlines()]
                if len(lines) >= count:
                    return lines
            await asyncio.sleep(0.1)


async def test_the_export_file_holds_every_usage_once_in_order_across_restarts(
    service: Service, acme: SandboxerClient, home: Path
) -> None:
    await acme.account_command("add_credits", "acme", amount=10_000_000)
    export = home / "exports" / "usage.jsonl"
    for _ in range(2):
        await use_and_destroy(acme)
    await account(acme, "acme", metered=2)

    async def exporting() -> tuple[asyncio.Event, asyncio.Task[None]]:
        stop = asyncio.Event()
        task = asyncio.create_task(
            run_meter_export(acme.js, stop, file=export, url=None, home=home)
        )
        return stop, task

    stop, task = await exporting()
    assert len(await lines_of(export, 2)) == 2
    stop.set()
    await task
    # A crash cut the next line short: the restart cuts it off and writes it whole.
    with export.open("ab") as handle:
        handle.write(b'{"type":"usage_metered","event_id":"half')
    await use_and_destroy(acme)
    await account(acme, "acme", metered=3)
    stop, task = await exporting()
    await lines_of(export, 3)
    await asyncio.sleep(0.5)  # nothing more arrives
    stop.set()
    await task
    lines = [msgspec.json.decode(line) for line in export.read_bytes().splitlines()]
    logged = await metered_in_log(acme)
    assert [line["event_id"] for line in lines] == [event["event_id"] for event in logged]
    assert [line["stream_seq"] for line in lines] == sorted(line["stream_seq"] for line in lines)
    assert all(line["type"] == "usage_metered" and line["project"] == "acme" for line in lines)


async def test_the_endpoint_export_retries_while_it_is_down_and_posts_each_once(
    service: Service, acme: SandboxerClient, home: Path
) -> None:
    await acme.account_command("add_credits", "acme", amount=10_000_000)
    for _ in range(2):
        await use_and_destroy(acme)
    await account(acme, "acme", metered=2)
    received: list[tuple[str, dict[str, Any]]] = []
    calls = 0

    def endpoint(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls <= 3:
            return httpx.Response(503)  # down for a while
        received.append((request.headers["Idempotency-Key"], msgspec.json.decode(request.content)))
        return httpx.Response(200)

    position = home / "meter-export" / "http.position"

    async def export_until(count: int) -> None:
        client = httpx.AsyncClient(transport=httpx.MockTransport(endpoint))
        export = HttpExport(
            acme.js, "http://billing.test/usage", position, client=client, wait_max=0.05
        )
        task = asyncio.create_task(export.run())
        try:
            async with asyncio.timeout(30):
                while len(received) < count:
                    await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
        finally:
            await cancel_until_done(task)
            await client.aclose()

    await export_until(2)
    await use_and_destroy(acme)  # and one more after a restart of the exporter
    await account(acme, "acme", metered=3)
    await export_until(3)
    logged = await metered_in_log(acme)
    assert [key for key, _body in received] == [event["event_id"] for event in logged]
    assert [body["event_id"] for _key, body in received] == [e["event_id"] for e in logged]


async def given_back_as_stranded(client: SandboxerClient) -> list[tuple[str, str]]:
    """(sandbox id, create command id) of each hold of ``acme`` given back as a lost create's:
    its ``credits_released`` with the reason ``hold_stranded``, after its sandbox's
    ``create_abandoned`` of that create, coded the same."""
    given_back = []
    for released in await account_events(client, "acme", "credits_released"):
        assert released["reason"] == "hold_stranded"
        sandbox_id = released["sandbox_id"]
        abandoned = [
            event
            async for _seq, event in client.events(sandbox_id=sandbox_id)
            if event["type"] == "create_abandoned"
        ]
        assert [e["code"] for e in abandoned] == ["hold_stranded"]
        given_back.append((sandbox_id, abandoned[0]["command_id"]))
    return given_back


async def test_a_lost_create_s_hold_is_given_back_once_the_project_runs_short(
    service: Service, acme: SandboxerClient, home: Path
) -> None:
    """A create cut off between its hold and its append, and never sent again (its command
    gone from the commands stream), held the project's credits for ever: every later create
    was refused insufficient_credits. Now a create refused for credits gives back the holds
    of creates lost for longer than STRANDED_SECONDS (each id given up first) and is decided
    again. A younger hold (a create that may still be sent again) is kept."""
    minute = PER_CREATE + 60 * PER_SECOND
    await acme.account_command("add_credits", "acme", amount=2 * minute)
    store = JetStreamEventStore(acme.nc, acme.js)
    await hold_long_ago(store, minute, ("losthold01", "acme-create-lost"))
    await cut_off_after_its_hold(
        acme, home, OPS, "acme-create-young", ttl="1m", sandbox_id="younghold1"
    )
    assert (await account(acme, "acme"))["reserved"] == 2 * minute  # all of it held

    ready = await acme.create("profile.saas-stub", ttl="1m", command_id="acme-create-next")
    assert await given_back_as_stranded(acme) == [("losthold01", "acme-create-lost")]
    # The lost create, sent again at last, is refused: nothing is held for it any more.
    with pytest.raises(CommandFailed):
        await acme.create(
            "profile.saas-stub", ttl="1m", sandbox_id="losthold01", command_id="acme-create-lost"
        )
    # The young one goes on (redelivered, say), on its own hold.
    young = await acme.create(
        "profile.saas-stub", ttl="1m", sandbox_id="younghold1", command_id="acme-create-young"
    )
    for sandbox_id in (ready["sandbox_id"], young["sandbox_id"]):
        await acme.destroy(sandbox_id)
    settled = await account(acme, "acme", metered=2)
    assert settled["reserved"] == 0
    assert settled["balance"] == 2 * minute - sum(
        e["amount"] for e in await account_events(acme, "acme", "usage_metered")
    )


SWEEP = 0.5
"""Seconds between the control worker's hold sweeps in the test below."""


@pytest.fixture
async def swept(nats_server: NatsServerProcess, home: Path) -> AsyncIterator[Service]:
    """The service, its control worker sweeping for lost holds every :data:`SWEEP` s."""
    write_override(home, latency_ms=1)
    svc = await start_service(home, nats_server.url, ROLES, leak_sweep_interval=SWEEP)
    try:
        yield svc
    finally:
        await svc.client.close()
        await svc.shutdown()


async def test_a_lost_create_s_hold_is_given_back_by_the_sweep_with_nothing_refused(
    swept: Service, acme: SandboxerClient, home: Path
) -> None:
    """A project with credits to spare is never refused, so a lost create's hold showed as
    reserved for ever. The control worker's hold sweep now gives it back (its id given up
    first) with no create at all. A young hold stays, and so does an old hold whose sandbox
    was appended after all: its log is what decides. An old hold of an id another project's
    sandbox took is metered at zero: no metering of this account would ever release it."""
    minute = PER_CREATE + 60 * PER_SECOND
    await acme.account_command("add_credits", "acme", amount=10 * minute)
    store = JetStreamEventStore(acme.nc, acme.js)
    await hold_long_ago(
        store,
        minute,
        ("losthold02", "acme-lost-2"),
        ("madehold01", "acme-made-1"),
        ("takenhld03", "acme-taken-3"),
    )
    catalog = Catalog.load(home)
    made = stub_create(catalog, OPS, "acme-made-1", ttl="1m", sandbox_id="madehold01")
    await apply(store, "madehold01", made)  # its create appended after all, late
    taken = stub_create(catalog, BETA, "beta-taken-3", ttl="1m", sandbox_id="takenhld03")
    await apply(store, "takenhld03", taken)  # beta's create of the id came first
    await cut_off_after_its_hold(acme, home, OPS, "acme-young-2", ttl="1m", sandbox_id="younghld2")

    async with asyncio.timeout(30):
        while {"losthold02", "takenhld03"} & set((await account(acme, "acme"))["reservations"]):
            await asyncio.sleep(0.1)
    assert await given_back_as_stranded(acme) == [("losthold02", "acme-lost-2")]
    metered = await account_events(acme, "acme", "usage_metered")
    assert [(e["sandbox_id"], e["amount"]) for e in metered] == [("takenhld03", 0)]
    await asyncio.sleep(4 * SWEEP)  # more sweeps: nothing else is given back
    assert sorted((await account(acme, "acme"))["reservations"]) == ["madehold01", "younghld2"]
    assert len(await account_events(acme, "acme", "credits_released")) == 1
