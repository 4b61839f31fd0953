"""API keys as NATS identities, against 'sandboxer up' with its embedded server (auth on).

An agt key logs in to NATS with the key itself. It acts only as itself and only on its
own project: another project's sandbox does not exist for it, a forged actor is rejected,
subjects that are not its own are refused by the server, and a revoked key is cut off.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeout

from sandboxer import subjects
from sandboxer.bus.connect import connect
from sandboxer.bus.key_users import key_credentials
from sandboxer.bus.nats_auth import AUTH_DIR_NAME, read_credentials
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.cli.key_commands import create_key
from sandboxer.client import Sandboxer, SandboxerClient
from sandboxer.domain.key_access import taken_refusal
from sandboxer.domain.key_state import hash_key, key_id_for
from sandboxer.errors import BusError, CommandFailed, RateLimited, SandboxerError
from sandboxer.ids import derive_sandbox_id, derive_snapshot_id, new_command_id
from tests.integration.conftest import Cli, reap_local

pytestmark = pytest.mark.integration


class Key:
    """One API key's NATS connection, speaking the public contract by hand."""

    def __init__(self, key: str, nc: Client, seen: list[str]) -> None:
        self.key = key
        self.id = key_id_for(hash_key(key))
        self.nc = nc
        self.seen = seen

    async def actor(self, project: str, kind: str = "agt") -> dict[str, Any]:
        return {"type": kind, "id": self.id, "project": project}

    async def command(
        self, verb: str, body: dict[str, Any], *, subject: str | None = None, dedupe: bool = True
    ) -> str:
        """``dedupe=False``: without the ``Nats-Msg-Id`` the stream's duplicate window takes
        (as a command sent again past that window is)."""
        command_id = body.setdefault("command_id", new_command_id())
        await self.nc.jetstream().publish(
            subject or subjects.stamped(subjects.command_subject(verb), self.id),
            msgspec.json.encode(body),
            headers={"Nats-Msg-Id": command_id} if dedupe else None,
        )
        return str(command_id)

    async def query(self, subject: str, request: dict[str, Any]) -> dict[str, Any]:
        while True:
            reply = await self.nc.request(
                subjects.stamped(subject, self.id), msgspec.json.encode(request), timeout=5
            )
            answer: dict[str, Any] = msgspec.json.decode(reply.data)
            if answer.get("code") != "rate_limited":
                return answer
            # The key's polls (wait_for) may pass its rate: ask again when told.
            await asyncio.sleep(answer["retry_after"])

    async def events(self, **about: Any) -> list[dict[str, Any]]:
        answer = await self.query(subjects.QUERY_SANDBOX_EVENTS, about)
        assert answer["ok"], answer
        return [event for _seq, event in answer["events"]]

    async def wait_for(self, kind: str, **about: Any) -> dict[str, Any]:
        for _ in range(600):
            found = [e for e in await self.events(**about) if e["type"] == kind]
            if found:
                return found[-1]
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {kind} event for {about}")

    async def violations(self) -> list[str]:
        await self.nc.flush()
        await asyncio.sleep(0.2)
        return list(self.seen)


async def login(url: str, key: str) -> Key:
    """Connect as the key, at once: ``keys create`` returns it once the server takes it."""
    seen: list[str] = []
    nc = await connect([url], name="key", long_lived=False, credentials=key_credentials(key))

    async def on_error(exc: Exception) -> None:
        seen.append(str(exc))

    nc._error_cb = on_error  # keep permission violations for the assertions
    return Key(key, nc, seen)


START_UP = """
import asyncio
from sandboxer.cli.background import connect_client
from sandboxer.config.settings import Settings
async def main():
    client = await connect_client(Settings.from_env(), autostart=True)
    await client.close()
asyncio.run(main())
"""


@pytest.fixture
async def up(home: Path) -> AsyncIterator[tuple[Cli, str]]:
    env = {k: v for k, v in os.environ.items() if k != "SANDBOXER_NATS_URL"}
    env |= {"SANDBOXER_HOME": str(home), "SANDBOXER_HTTP_ADDR": "off"}
    cli = Cli(env)
    try:
        started = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-c", START_UP], env=env, check=False, timeout=120
        )
        assert started.returncode == 0, started
        yield cli, json.loads((home / "service.json").read_text())["nats_url"]
    finally:
        await cli("down", check=False)
        await reap_local(home)


async def make_key(cli: Cli, project: str, kind: str = "agt", *limits: str) -> str:
    made = await cli("keys", "create", "--project", project, "--type", kind, *limits, "--json")
    key: str = json.loads(made.stdout)["key"]
    return key


async def test_a_key_logs_in_to_the_bus_as_soon_as_create_key_returns(
    up: tuple[Cli, str], home: Path
) -> None:
    """``keys create`` waits for the embedded server to take the new key's login, so the
    key works on the bus once it is shown (it was refused for up to a second before)."""
    _, url = up
    trusted = await connect(
        [url],
        name="admin",
        long_lived=False,
        credentials=read_credentials(home / AUTH_DIR_NAME, "client"),
    )
    admin = SandboxerClient(trusted, actor={"type": "adm", "id": "ops"})
    try:
        for project in ("alpha", "beta", "gamma"):
            key, _ = await create_key(admin, project=project, key_type="agt")
            nc = await connect(
                [url], name="key", long_lived=False, credentials=key_credentials(key)
            )
            await nc.close()
    finally:
        await admin.close()


async def test_an_agt_key_on_the_bus_acts_only_as_itself_in_its_project(
    up: tuple[Cli, str], home: Path
) -> None:
    cli, url = up
    alpha = await login(url, await make_key(cli, "alpha"))
    beta = await login(url, await make_key(cli, "beta"))
    try:
        # alpha creates a sandbox through its own command subject, as itself.
        await alpha.command(
            "create",
            {
                "profile": "profile.local",
                "sandbox_id": "alphabox1",
                "actor": await alpha.actor("alpha"),
            },
        )
        ready = await alpha.wait_for("ready", sandbox_id="alphabox1")
        assert ready["sandbox_id"] == "alphabox1"
        mine = await alpha.query(subjects.QUERY_GET, {"sandbox_id": "alphabox1"})
        assert mine["sandbox"]["actor"]["project"] == "alpha"

        # To beta, alpha's sandbox does not exist: get, list and its events.
        assert (await beta.query(subjects.QUERY_GET, {"sandbox_id": "alphabox1"}))[
            "sandbox"
        ] is None
        assert (await beta.query(subjects.QUERY_LIST, {}))["sandboxes"] == []
        assert await beta.events(sandbox_id="alphabox1") == []

        # beta's destroy, as itself, is refused as for an unknown sandbox ...
        refused = await beta.command(
            "destroy", {"sandbox_id": "alphabox1", "actor": await beta.actor("beta")}
        )
        rejection = await beta.wait_for("rejected", command_id=refused)
        assert rejection["code"] == "unknown_sandbox", rejection
        # ... and so is one that claims to be alpha's key. The rejection is beta's own (its
        # key's actor, whatever it claimed): beta reads why, alpha never sees it.
        forged = await beta.command(
            "destroy", {"sandbox_id": "alphabox1", "actor": await alpha.actor("alpha")}
        )
        rejection = await beta.wait_for("rejected", command_id=forged)
        assert rejection["code"] == "actor_mismatch", rejection
        assert rejection["actor"] == await beta.actor("beta"), rejection
        assert await alpha.events(command_id=forged) == []

        # Subjects that are not beta's own are refused by the server itself.
        destroy = {"command_id": new_command_id(), "sandbox_id": "alphabox1"}
        await beta.nc.publish(subjects.command_subject("destroy"), msgspec.json.encode(destroy))
        await beta.nc.publish(
            subjects.stamped(subjects.command_subject("destroy"), alpha.id),
            msgspec.json.encode(destroy),
        )
        await beta.nc.subscribe(subjects.EVENTS)
        await beta.nc.subscribe("_INBOX.>")
        with pytest.raises(NatsTimeout):
            await beta.nc.request(subjects.QUERY_GET, b'{"sandbox_id": "alphabox1"}', timeout=0.5)
        seen = " | ".join(await beta.violations())
        for refused_subject in (
            '"sandboxer.cmd.destroy"',
            f'"sandboxer.cmd.destroy.{alpha.id}"',
            '"sandboxer.evt.>"',
            '"_inbox.>"',
            f'"{subjects.QUERY_GET}"',
        ):
            assert refused_subject in seen.lower(), (refused_subject, seen)

        # alpha's sandbox is untouched; alpha destroys it itself.
        assert (await alpha.query(subjects.QUERY_GET, {"sandbox_id": "alphabox1"}))["sandbox"][
            "status"
        ] == "ready"
        await alpha.command(
            "destroy", {"sandbox_id": "alphabox1", "actor": await alpha.actor("alpha")}
        )
        await alpha.wait_for("destroyed", sandbox_id="alphabox1")
    finally:
        await alpha.nc.close()
        await beta.nc.close()


async def test_a_shared_nats_takes_the_printed_key_users(
    up: tuple[Cli, str], tmp_path: Path
) -> None:
    """'keys nats-users' prints what a shared server needs: the key logs in there, with the
    same permissions (a subject outside them is refused)."""
    cli, _url = up
    key = await make_key(cli, "delta")
    printed = (await cli("keys", "nats-users")).stdout
    config = tmp_path / "shared.conf"
    config.write_text("authorization {\n  users: [\n" + printed + "\n  ]\n}\n")
    async with NatsServerProcess(tmp_path / "shared", config_file=config) as shared:
        delta = await login(shared.url, key)
        try:
            await delta.nc.publish(subjects.command_subject("create"), b"{}")
            await delta.nc.publish(
                subjects.stamped(subjects.command_subject("create"), delta.id), b"{}"
            )
            seen = " | ".join(await delta.violations())
            assert '"sandboxer.cmd.create"' in seen, seen
            assert delta.id not in seen, seen
        finally:
            await delta.nc.close()


async def test_a_revoked_key_is_cut_off_the_bus_at_once(up: tuple[Cli, str], home: Path) -> None:
    cli, url = up
    key = await make_key(cli, "gamma")
    gamma = await login(url, key)
    closed = asyncio.Event()

    async def on_closed() -> None:
        closed.set()

    gamma.nc._closed_cb = on_closed
    await cli("keys", "revoke", gamma.id)
    await asyncio.wait_for(closed.wait(), 10)  # the server dropped its connection
    with pytest.raises(BusError, match=f"refused API key {gamma.id}"):
        await connect([url], name="key", long_lived=False, credentials=key_credentials(key))
    # The service's own identities are unaffected, and no key is in the server's config.
    config = (home / AUTH_DIR_NAME / "nats-server.conf").read_text()
    assert key not in config
    assert gamma.id not in config
    assert read_credentials(home / AUTH_DIR_NAME, "client") is not None


async def test_the_python_client_over_the_bus_as_a_key(up: tuple[Cli, str], tmp_path: Path) -> None:
    """Sandboxer.over_bus(api_key=...): the whole lifecycle as the key, and nothing of
    another project's sandbox: not its row, not its exec, not its files."""
    cli, url = up
    alpha = await Sandboxer.over_bus([url], api_key=await make_key(cli, "alpha"))
    beta = await Sandboxer.over_bus([url], api_key=await make_key(cli, "beta"))
    try:
        assert alpha.bus.actor["project"] == "alpha"
        made = await alpha.create("profile.local", sandbox_id="alphabox2")
        assert (made.status, made.actor and made.actor["project"]) == ("ready", "alpha")
        ran = await alpha.exec("alphabox2", ["sh", "-c", "cat; echo done >&2"], stdin=b"in\n")
        assert (ran.exit_code, ran.stdout, ran.stderr) == (0, b"in\n", b"done\n")
        blob = tmp_path / "blob.bin"
        blob.write_bytes(bytes(range(256)) * 64)
        await alpha.copy_in("alphabox2", blob, "blob.bin")
        back = tmp_path / "back.bin"
        await alpha.copy_out("alphabox2", "blob.bin", back)
        assert back.read_bytes() == blob.read_bytes()
        kinds = [event.type async for event in alpha.events(sandbox_id="alphabox2")]
        assert kinds[0] == "requested", kinds
        assert "ready" in kinds, kinds

        assert await beta.get("alphabox2") is None
        assert await beta.list_sandboxes() == []
        with pytest.raises(SandboxerError):
            await beta.destroy("alphabox2")
        for subject in (subjects.exec_subject("alphabox2"), "sandboxer.files.alphabox2"):
            with pytest.raises(NatsTimeout):  # no worker answers another project's key
                await beta.bus.nc.request(
                    subjects.stamped(subject, beta.bus.key_id or ""),
                    b'{"argv": ["true"]}',
                    timeout=1,
                )
        assert (await alpha.get("alphabox2")) is not None

        gone = await alpha.destroy("alphabox2")
        assert gone.status == "destroyed"
    finally:
        await alpha.close()
        await beta.close()


async def test_a_keys_live_limit_holds_on_the_bus(up: tuple[Cli, str], home: Path) -> None:
    """--max-live held only the gateway's creates: on the bus a key made as many as it
    liked. The control worker holds each create and restore a key makes, on the key's own
    subject and on the plain one the gateway forwards a key's commands on."""
    cli, url = up
    key = await make_key(cli, "lima", "agt", "--max-live", "1")
    own = {"type": "agt", "id": key_id_for(hash_key(key)), "project": "lima"}
    lima = await Sandboxer.over_bus([url], api_key=key)
    trusted = await connect(
        [url],
        name="gateway-like",
        long_lived=False,
        credentials=read_credentials(home / AUTH_DIR_NAME, "client"),
    )
    forwarded = SandboxerClient(trusted, actor=own)  # as the gateway publishes for the key
    try:
        await lima.create("profile.local", sandbox_id="limabox01")
        taken = await lima.snapshot("limabox01")
        why = f"project lima has 1 live sandboxes; key {own['id']} allows 1"
        for over in (
            lambda: lima.create("profile.local", sandbox_id="limabox02"),
            lambda: lima.restore(taken.snapshot_id, sandbox_id="limabox03"),
        ):  # the facade raises what it raises over HTTP
            with pytest.raises(RateLimited) as limited:
                await over()
            assert (limited.value.code, limited.value.retry_after) == ("live_limit", 30.0)
            assert why in limited.value.message
        with pytest.raises(CommandFailed) as refused:
            await forwarded.create("profile.local", sandbox_id="limabox04")
        rejection = refused.value.event
        assert rejection["code"] == "live_limit", rejection
        assert why in rejection["reason"]
        assert rejection["actor"] == own, rejection  # the key reads why
        assert [s.sandbox_id for s in await lima.list_sandboxes()] == ["limabox01"]

        await lima.destroy("limabox01")
        made = await lima.create("profile.local", sandbox_id="limabox05")  # room again
        assert made.status == "ready"
        await lima.destroy("limabox05")
    finally:
        await lima.close()
        await trusted.close()


async def test_an_administrators_snapshot_stays_its_sandboxs_projects(up: tuple[Cli, str]) -> None:
    """An administrator of project ops snapshots alpha's sandbox: the snapshot is alpha's.
    On the bus an agt key of ops neither sees, restores nor deletes it (the bus used to
    judge a snapshot by who took it, the gateway by its sandbox); alpha's key sees it."""
    cli, url = up
    alpha = await Sandboxer.over_bus([url], api_key=await make_key(cli, "alpha"))
    admin = await Sandboxer.over_bus([url], api_key=await make_key(cli, "ops", "adm"))
    ops = await login(url, await make_key(cli, "ops"))
    try:
        await alpha.create("profile.local", sandbox_id="alphabox3")
        taken = await admin.snapshot("alphabox3")
        assert taken.project == "alpha", taken
        snapshot_id = taken.snapshot_id

        assert (await alpha.snapshot_get(snapshot_id)) is not None
        assert [s.snapshot_id for s in await alpha.snapshots()] == [snapshot_id]
        asked = {"snapshot_id": snapshot_id}
        assert (await ops.query(subjects.QUERY_SNAPSHOT_GET, asked))["snapshot"] is None
        assert (await ops.query(subjects.QUERY_SNAPSHOT_LIST, {}))["snapshots"] == []
        assert await ops.events(snapshot_id=snapshot_id) == []
        for verb, body in (
            ("restore", {"snapshot_id": snapshot_id}),
            ("delete_snapshot", {"snapshot_id": snapshot_id}),
        ):
            refused = await ops.command(verb, {**body, "actor": await ops.actor("ops")})
            rejection = await ops.wait_for("rejected", command_id=refused)
            assert rejection["code"] == "unknown_snapshot", (verb, rejection)
        assert (await alpha.snapshot_get(snapshot_id)).status == "created"  # type: ignore[union-attr]
        await alpha.delete_snapshot(snapshot_id)
        await alpha.destroy("alphabox3")
    finally:
        await alpha.close()
        await admin.close()
        await ops.nc.close()


async def test_a_request_cannot_make_the_service_publish_outside_an_inbox(
    up: tuple[Cli, str], home: Path
) -> None:
    """nats-server checks who publishes a request, never the reply subject it names. Every
    answer the service sends goes to an inbox (a key's request: that key's own inbox): an
    answer sent where a request asked once stored a key's chosen bytes in the log as the
    service, and reached the JetStream API with the service's rights."""
    cli, url = up
    alpha = await login(url, await make_key(cli, "alpha"))
    beta = await login(url, await make_key(cli, "beta"))
    creds = read_credentials(home / AUTH_DIR_NAME, "client")
    assert creds is not None
    admin = await connect([url], name="admin", long_lived=False, credentials=creds)
    try:
        await alpha.command(
            "create",
            {
                "profile": "profile.local",
                "sandbox_id": "alphabox4",
                "actor": await alpha.actor("alpha"),
            },
        )
        await alpha.wait_for("ready", sandbox_id="alphabox4")
        events = await admin.jetstream().stream_info(subjects.EVENTS_STREAM)
        before = events.state.last_seq
        replies = [
            "sandboxer.evt.sandbox.alphabox4.destroyed",
            "sandboxer.job.ext.local.alphabox4",
            f"$JS.API.STREAM.PURGE.{subjects.COMMANDS_STREAM}",
            f"_INBOX.{beta.id}.stolen",  # another key's inbox
        ]
        for reply in replies:
            for subject, body in (
                (subjects.QUERY_KEY_WHOAMI, b"{}"),
                (subjects.token_subject("alphabox4"), b"{}"),
                ("sandboxer.files.alphabox4", b'{"op": "stat", "path": "."}'),
            ):
                await alpha.nc.publish(subjects.stamped(subject, alpha.id), body, reply=reply)
        await alpha.nc.flush()
        await asyncio.sleep(2)
        after = await admin.jetstream().stream_info(subjects.EVENTS_STREAM)
        assert after.state.last_seq == before, "a reply subject made the service append"
        assert (await alpha.query(subjects.QUERY_KEY_WHOAMI, {}))["ok"]  # still answered
    finally:
        await admin.close()
        await alpha.nc.close()
        await beta.nc.close()


async def test_an_administrators_key_publishes_only_under_its_own_stamp(
    up: tuple[Cli, str],
) -> None:
    """An adm key was given the client identity's ``sandboxer.>``: that holds every other
    key's stamped subjects, and the workers take the stamp for the sender, so an adm key
    of project ops destroyed alpha's sandbox as alpha's own agt key. nats-server refuses
    it now; the administrator still acts on any project under its own stamp, reads the
    events stream and asks the plain queries."""
    cli, url = up
    alpha = await login(url, await make_key(cli, "alpha"))
    admin = await login(url, await make_key(cli, "ops", "adm"))
    try:
        await alpha.command(
            "create",
            {
                "profile": "profile.local",
                "sandbox_id": "alphabox7",
                "actor": await alpha.actor("alpha"),
            },
        )
        await alpha.wait_for("ready", sandbox_id="alphabox7")

        # As alpha's key: a destroy, a query and an exec on alpha's stamped subjects.
        forged = {
            "command_id": new_command_id(),
            "sandbox_id": "alphabox7",
            "actor": await alpha.actor("alpha"),
        }
        await admin.nc.publish(
            subjects.stamped(subjects.command_subject("destroy"), alpha.id),
            msgspec.json.encode(forged),
        )
        for subject in (
            subjects.stamped(subjects.QUERY_GET, alpha.id),
            subjects.stamped(subjects.exec_subject("alphabox7"), alpha.id),
        ):
            await admin.nc.publish(subject, b'{"sandbox_id": "alphabox7", "argv": ["true"]}')
        seen = " | ".join(await admin.violations()).lower()
        for refused in (
            f'"sandboxer.cmd.destroy.{alpha.id}"',
            f'"sandboxer.query.sandbox.get.{alpha.id}"',
            f'"sandboxer.exec.alphabox7.{alpha.id}"',
        ):
            assert refused in seen, (refused, seen)
        await asyncio.sleep(1)
        assert (await alpha.query(subjects.QUERY_GET, {"sandbox_id": "alphabox7"}))["sandbox"][
            "status"
        ] == "ready"

        # What an administrator does is left: the events stream, a plain query, and any
        # project's sandbox under its own stamp.
        admin.seen.clear()
        info = await admin.nc.jetstream().stream_info(subjects.EVENTS_STREAM)
        assert info.state.messages > 0
        reply = await admin.nc.request(subjects.QUERY_HOSTS, b"{}", timeout=5)
        assert msgspec.json.decode(reply.data)["ok"], reply.data
        mine = await admin.query(subjects.QUERY_GET, {"sandbox_id": "alphabox7"})
        assert mine["sandbox"]["status"] == "ready"
        await admin.command(
            "destroy", {"sandbox_id": "alphabox7", "actor": await admin.actor("ops", "adm")}
        )
        await alpha.wait_for("destroyed", sandbox_id="alphabox7")
        assert await admin.violations() == []
    finally:
        await alpha.nc.close()
        await admin.nc.close()


async def test_a_create_naming_another_projects_sandbox_hears_only_that_the_id_is_taken(
    up: tuple[Cli, str],
) -> None:
    """Sandbox ids are one namespace: a key's create or restore naming another project's
    sandbox is refused as for any taken id, word for word, whatever its command id. Before,
    one carrying the command id of that project's create (the sandbox's id derived from it,
    or named beside it) was taken for that create sent again: no rejection came, so the key
    learnt the id was another project's, and that sandbox's job was sent again."""
    cli, url = up
    alpha = await login(url, await make_key(cli, "alpha"))
    beta = await login(url, await make_key(cli, "beta"))
    try:
        creates = [  # alpha's: an assigned id (derived from the command id), two chosen
            await alpha.command(
                "create", {"profile": "profile.local", **named, "actor": await alpha.actor("alpha")}
            )
            for named in ({}, {"sandbox_id": "alphabox8"}, {"sandbox_id": "alphabox9"})
        ]
        theirs = [derive_sandbox_id(creates[0]), "alphabox8", "alphabox9"]
        for sandbox_id in theirs:
            await alpha.wait_for("ready", sandbox_id=sandbox_id)
        await beta.command(
            "create",
            {
                "profile": "profile.local",
                "sandbox_id": "betabox8",
                "actor": await beta.actor("beta"),
            },
        )
        await beta.wait_for("ready", sandbox_id="betabox8")
        snapshot = await beta.command(
            "snapshot", {"sandbox_id": "betabox8", "actor": await beta.actor("beta")}
        )
        await beta.wait_for("snapshot_created", snapshot_id=derive_snapshot_id(snapshot))
        before = [await alpha.events(sandbox_id=sandbox_id) for sandbox_id in theirs]

        restore = {"snapshot_id": derive_snapshot_id(snapshot)}
        asks = [  # (verb, body, the id it names)
            ("create", {"profile": "profile.local", "sandbox_id": "betabox8"}, "betabox8"),
            ("create", {"profile": "profile.local", "sandbox_id": "alphabox8"}, "alphabox8"),
            ("create", {"profile": "profile.local", "command_id": creates[0]}, theirs[0]),
            (
                "create",
                {"profile": "profile.local", "sandbox_id": "alphabox8", "command_id": creates[1]},
                "alphabox8",
            ),
            (
                "restore",
                {**restore, "sandbox_id": "alphabox9", "command_id": creates[2]},
                "alphabox9",
            ),
        ]
        for verb, body, named in asks:
            # Sent as a key may send it: past the commands stream's duplicate window.
            sent = await beta.command(
                verb, {**body, "actor": await beta.actor("beta")}, dedupe=False
            )
            rejection = await beta.wait_for("rejected", command_id=sent)
            assert rejection["command"] == verb, rejection
            assert (rejection["code"], rejection["reason"]) == taken_refusal(named), rejection
            assert rejection["actor"] == await beta.actor("beta"), rejection
            assert await alpha.events(command_id=sent) == []  # beta's own, not alpha's

        # Nothing of alpha's sandboxes was told to beta or done to them.
        for sandbox_id, seen in zip(theirs, before, strict=True):
            assert await beta.events(sandbox_id=sandbox_id) == []
            assert await alpha.events(sandbox_id=sandbox_id) == seen
            found = await alpha.query(subjects.QUERY_GET, {"sandbox_id": sandbox_id})
            assert found["sandbox"]["status"] == "ready"
    finally:
        await alpha.nc.close()
        await beta.nc.close()
