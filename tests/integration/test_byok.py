"""BYOK reaches the providers: a project that brought its own key for a hosted backend has
every provider call for its sandboxes made with that key (docs/payments.md#byok).

Through the real service and the provider doubles, which take a second key as another
team's (it sees and reaches only what it made): the double sees only the project's key
for the project's sandbox, the operator's for everyone else's; the project pays nothing
in credits; and neither key reaches the log. A reference the project may not use (the
operator's own variable) and a key the provider refuses fail the create with a reason
that names the reference, never the value.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sandboxer.bus.event_reader import read_events
from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.client import SandboxerClient
from sandboxer.commands.types import CreateSandbox
from sandboxer.config.catalog import Catalog
from sandboxer.domain.admission import admit_create
from sandboxer.errors import CommandFailed
from sandboxer.events.actor import Actor
from sandboxer.workers.credit_reservation import reserve_for_create
from tests.doubles.daytona_double import DaytonaServed
from tests.doubles.e2b_double import ServedE2b
from tests.doubles.modal_double import ModalDouble
from tests.integration.conftest import Service, start_service

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROJECT = "team_a"
KEY_VARIABLE = f"SANDBOXER_BYOK_{PROJECT}_KEY"
"""Where the operator put the project's key: a name the project's reference may use."""


@dataclass
class Keyed:
    """A hosted backend whose double accepts the operator's key and the project's."""

    extension: str
    profile: str
    operator_key: str
    project_key: str
    keys_of: Callable[[str], set[str]]
    """Every key a call for our sandbox ``sandbox_id`` reached the provider with."""
    live: Callable[[], list[str]]
    """Our sandbox ids the provider holds now, whoever's account they are in."""
    retimed: Callable[[str], int] | None
    """How many times the provider's own timeout of our sandbox was set (None: it keeps none
    that we move)."""
    runs_commands: bool = False
    operator_variable: str = ""
    """The variable holding the operator's own key."""


def e2b(served: ServedE2b, monkeypatch: pytest.MonkeyPatch) -> Keyed:
    double = served.double
    project_key = "e2b_" + secrets.token_hex(20)
    double.accept_key(project_key)
    monkeypatch.setenv("E2B_API_URL", served.url)
    monkeypatch.setenv("E2B_API_KEY", served.api_key)

    def mine(sandbox_id: str) -> list[Any]:
        return [r for r in double.made if r.metadata.get("sandboxer_id") == sandbox_id]

    return Keyed(
        extension="ext.e2b",
        profile="profile.e2b-burst",
        operator_key=served.api_key,
        project_key=project_key,
        keys_of=lambda sandbox_id: {key for r in mine(sandbox_id) for key in r.keys},
        live=lambda: [str(r.metadata.get("sandboxer_id")) for r in double.live()],
        retimed=lambda sandbox_id: sum(len(r.timeouts) for r in mine(sandbox_id)),
        operator_variable="E2B_API_KEY",
    )


def daytona(served: DaytonaServed, monkeypatch: pytest.MonkeyPatch) -> Keyed:
    double = served.double
    project_key = "dtn_" + secrets.token_hex(20)
    double.accept_key(project_key)
    monkeypatch.setenv("DAYTONA_API_URL", served.api_url)
    monkeypatch.setenv("DAYTONA_API_KEY", served.key)

    def mine(sandbox_id: str) -> list[Any]:
        return [r for r in double.made if r.labels.get("sandboxer_id") == sandbox_id]

    return Keyed(
        extension="ext.daytona",
        profile="profile.daytona",
        operator_key=served.key,
        project_key=project_key,
        keys_of=lambda sandbox_id: {key for r in mine(sandbox_id) for key in r.keys},
        live=lambda: [str(r.labels.get("sandboxer_id")) for r in double.live()],
        retimed=lambda sandbox_id: sum(r.auto_stop_sets for r in mine(sandbox_id)),
        runs_commands=True,
        operator_variable="DAYTONA_API_KEY",
    )


def modal(double: ModalDouble) -> Keyed:
    token_id, token_secret = f"ak-{secrets.token_hex(8)}", f"as-{secrets.token_hex(16)}"
    double.accept_token(token_id, token_secret)

    def mine(sandbox_id: str) -> list[Any]:
        return [r for r in double.sandboxes.values() if r.tags.get("sandboxer_id") == sandbox_id]

    return Keyed(
        extension="ext.modal",
        profile="profile.modal-gpu",
        operator_key=double.token_secret,
        project_key=f"{token_id}:{token_secret}",
        # Token ids stand for the workspace a call spoke to (the secret never reaches a record).
        keys_of=lambda sandbox_id: {
            {double.token_id: double.token_secret, token_id: f"{token_id}:{token_secret}"}[key]
            for r in mine(sandbox_id)
            for key in r.keys
        },
        live=lambda: [str(r.tags.get("sandboxer_id")) for r in double.running()],
        retimed=None,
        runs_commands=True,
        operator_variable="MODAL_TOKEN_SECRET",
    )


@pytest.fixture(params=["ext.e2b", "ext.daytona", "ext.modal"])
def keyed(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Keyed:
    if request.param == "ext.e2b":
        return e2b(request.getfixturevalue("e2b_double"), monkeypatch)
    if request.param == "ext.modal":
        return modal(request.getfixturevalue("modal_double"))
    return daytona(request.getfixturevalue("daytona_double"), monkeypatch)


@pytest.fixture
async def team(nats_server: NatsServerProcess) -> AsyncIterator[SandboxerClient]:
    """A client acting for the project (an agent of it, not an administrator)."""
    client = await SandboxerClient.connect(
        [nats_server.url], actor={"type": "agt", "id": "x", "project": PROJECT}
    )
    try:
        yield client
    finally:
        await client.close()


async def running(home: Path, url: str, keyed: Keyed) -> Service:
    return await start_service(home, url, roles=["control", "projector", "meter", keyed.extension])


async def log_bytes(service: Service) -> list[bytes]:
    return [data async for _seq, _subject, data, _pending in read_events(service.client.js)]


async def metered(client: SandboxerClient, project: str, count: int) -> dict[str, Any]:
    async with asyncio.timeout(30):
        while True:
            found = await client.credits(project)
            if found and found[0]["metered"] >= count:
                return found[0]
            await asyncio.sleep(0.1)


async def test_every_call_for_a_byok_sandbox_uses_the_projects_key(
    nats_server: NatsServerProcess,
    home: Path,
    keyed: Keyed,
    team: SandboxerClient,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv(KEY_VARIABLE, keyed.project_key)
    service = await running(home, nats_server.url, keyed)
    try:
        await service.fund()  # the operator's own sandbox is paid from credits
        await team.account_command(
            "set_byok", PROJECT, extension=keyed.extension, key_ref=f"env:{KEY_VARIABLE}"
        )
        ours = await team.create(keyed.profile, ttl="10m")  # the project has no credits at all
        theirs = await service.client.create(keyed.profile, ttl="10m")
        byok_id, paid_id = ours["sandbox_id"], theirs["sandbox_id"]
        assert sorted(keyed.live()) == sorted([byok_id, paid_id])

        retimed = keyed.retimed
        before = retimed(byok_id) if retimed else 0
        await team.extend_ttl(byok_id, "20m")
        async with asyncio.timeout(20):  # the retime job moves the provider's timeout
            while retimed is not None and retimed(byok_id) <= before:
                await asyncio.sleep(0.1)
        if keyed.runs_commands:
            out = bytearray()

            async def collect(_stream: str, data: bytes) -> None:
                out.extend(data)

            assert await team.exec(byok_id, ["sh", "-c", "echo hi"], collect) == 0
            assert bytes(out) == b"hi\n"
        if keyed.extension == "ext.e2b":
            tokens = await team.tokens(byok_id)  # read with the project's key when not kept
            assert tokens
        # The operator's key cannot see the project's sandbox: reap-stale leaves it alone.
        [reaped] = await service.client.inventory("reap", keyed.extension, {"apply": True})
        assert [(h["removed"], h["marked_failed"]) for h in reaped["hosts"]] == [([], [])]
        assert (await team.get(byok_id) or {}).get("status") in {"ready", "active"}

        await team.destroy(byok_id)
        await service.client.destroy(paid_id)
        assert keyed.live() == []

        assert keyed.keys_of(byok_id) == {keyed.project_key}
        assert keyed.keys_of(paid_id) == {keyed.operator_key}
        account = await metered(team, PROJECT, 1)
        assert (account["balance"], account["debited"], account["reserved"]) == (0, 0, 0)
        (usage,) = (await team.usage(project=PROJECT))["usage"]
        assert (usage["byok"], usage["amount"]) == (True, 0)

        events = await log_bytes(service)
        for key in (keyed.project_key, keyed.operator_key):
            assert not any(key.encode() in data for data in events), "a key reached the log"
            assert key not in caplog.text, "a key reached a log line"
    finally:
        await service.client.close()
        await service.shutdown()


async def test_a_key_set_or_removed_under_a_live_sandbox_keeps_the_one_it_was_made_with(
    nats_server: NatsServerProcess,
    home: Path,
    keyed: Keyed,
    team: SandboxerClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sandbox lives in the provider account that made it: its teardown must use the key
    it was made with. Made on the operator's key and destroyed after the project set its
    own (or the reverse), it was looked for in the other account, found gone, and left
    running there; its metering followed the account's key of the moment too."""
    monkeypatch.setenv(KEY_VARIABLE, keyed.project_key)
    service = await running(home, nats_server.url, keyed)
    try:
        await service.fund(PROJECT)
        paid = (await team.create(keyed.profile, ttl="10m"))["sandbox_id"]
        byok = {"extension": keyed.extension, "key_ref": f"env:{KEY_VARIABLE}"}
        await team.account_command("set_byok", PROJECT, **byok)
        own = (await team.create(keyed.profile, ttl="10m"))["sandbox_id"]
        assert sorted(keyed.live()) == sorted([paid, own])

        await team.destroy(paid)  # the project's key is set now
        await team.account_command("set_byok", PROJECT, extension=keyed.extension, key_ref=None)
        await team.destroy(own)  # and removed now
        assert keyed.live() == []
        assert keyed.keys_of(paid) == {keyed.operator_key}
        assert keyed.keys_of(own) == {keyed.project_key}

        await metered(team, PROJECT, 2)
        usage = {u["sandbox_id"]: u for u in (await team.usage(project=PROJECT))["usage"]}
        assert usage[paid]["byok"] is False
        assert (usage[own]["byok"], usage[own]["amount"]) == (True, 0)
    finally:
        await service.client.close()
        await service.shutdown()


async def test_a_reference_the_project_may_not_use_fails_before_the_provider_is_called(
    nats_server: NatsServerProcess, home: Path, keyed: Keyed, team: SandboxerClient
) -> None:
    operator_variable = keyed.operator_variable
    service = await running(home, nats_server.url, keyed)
    try:
        # The operator's own key, named by the project to be served free: refused.
        await team.account_command(
            "set_byok", PROJECT, extension=keyed.extension, key_ref=f"env:{operator_variable}"
        )
        with pytest.raises(CommandFailed) as failed:
            await team.create(keyed.profile, ttl="10m")
        reason = failed.value.event["reason"]
        assert f"env:{operator_variable}" in reason
        assert f"SANDBOXER_BYOK_{PROJECT}_" in reason  # says where a project's key goes
        assert keyed.operator_key not in reason
        assert keyed.live() == []
    finally:
        await service.client.close()
        await service.shutdown()


async def test_a_key_the_provider_refuses_names_the_reference(
    nats_server: NatsServerProcess,
    home: Path,
    keyed: Keyed,
    team: SandboxerClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wrong = f"ak-wrong{secrets.token_hex(6)}:as-wrong{secrets.token_hex(12)}"  # Modal's form too
    key_file = home / "byok" / PROJECT / keyed.extension
    key_file.parent.mkdir(parents=True)
    key_file.write_text(wrong + "\n")
    service = await running(home, nats_server.url, keyed)
    try:
        await team.account_command(
            "set_byok", PROJECT, extension=keyed.extension, key_ref=f"file:{key_file}"
        )
        with pytest.raises(CommandFailed) as failed:
            await team.create(keyed.profile, ttl="10m")
        event = failed.value.event
        assert f"file:{key_file}" in event["reason"]
        assert "401" in event["reason"] or "UNAUTHENTICATED" in event["reason"]
        assert wrong not in event["reason"]
        assert not any(wrong.encode() in data for data in await log_bytes(service))
    finally:
        await service.client.close()
        await service.shutdown()


async def test_a_create_sent_again_after_the_project_set_its_key_is_not_charged_its_hold(
    nats_server: NatsServerProcess,
    home: Path,
    keyed: Keyed,
    team: SandboxerClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A create held credits on the operator's key and was cut off before its append (a
    crash); the project set its own key; the create, sent again, was routed with the
    project's key and made in the project's provider account, and its metering charged the
    hold all the same: credits for a sandbox the project's own key paid the provider for."""
    monkeypatch.setenv(KEY_VARIABLE, keyed.project_key)
    service = await running(home, nats_server.url, keyed)
    try:
        await service.fund(PROJECT)
        catalog = Catalog.load(home)
        cut_off = CreateSandbox(
            command_id="team-create-1",
            actor=Actor(type="agt", id="x", project=PROJECT),
            profile=keyed.profile,
            ttl="10m",
        )
        admitted = admit_create(
            cut_off, catalog.profile(keyed.profile), catalog.extensions_enabled()
        )
        store = JetStreamEventStore(team.nc, team.js)
        assert await reserve_for_create(store, catalog, admitted) == "operator"
        async with asyncio.timeout(30):  # appended beside the client: wait for the view
            while not ((await team.credits(PROJECT)) or [{}])[0].get("reserved"):
                await asyncio.sleep(0.05)
        byok = {"extension": keyed.extension, "key_ref": f"env:{KEY_VARIABLE}"}
        await team.account_command("set_byok", PROJECT, **byok)

        ready = await team.create(keyed.profile, ttl="10m", command_id="team-create-1")
        sandbox_id = ready["sandbox_id"]
        await team.destroy(sandbox_id)
        assert keyed.keys_of(sandbox_id) == {keyed.project_key}
        account = await metered(team, PROJECT, 1)
        (usage,) = (await team.usage(project=PROJECT))["usage"]
        assert (usage["byok"], usage["amount"]) == (True, 0)
        assert (account["debited"], account["reserved"]) == (0, 0)
    finally:
        await service.client.close()
        await service.shutdown()
