"""NATS access (docs/security.md): the embedded server's generated credentials, each
identity's permissions, and the roles under exactly the configuration the docs give for a
shared NATS."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeout

from sandboxer import subjects
from sandboxer.bus import permissions
from sandboxer.bus.checkpoints import AccountCheckpoints
from sandboxer.bus.connect import connect
from sandboxer.bus.nats_auth import (
    AUTH_DIR_NAME,
    NatsCredentials,
    ensure_embedded_auth,
    read_credentials,
)
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.bus.streams import ensure_streams
from sandboxer.client import SandboxerClient
from sandboxer.errors import BusError, ConfigError
from tests.integration.conftest import Cli, reap_local
from tests.ports import closed_port

pytestmark = pytest.mark.integration

SECURITY_DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"


@pytest.fixture
async def authed(tmp_path: Path) -> AsyncIterator[tuple[NatsServerProcess, Path]]:
    """A server with the embedded configuration, and the directory of its credentials."""
    home = tmp_path / "home"
    config = ensure_embedded_auth(home)
    server = NatsServerProcess(home / "nats", config_file=config, server_name="auth")
    await server.start()
    try:
        yield server, home / AUTH_DIR_NAME
    finally:
        await server.stop()


def creds(directory: Path, role: str) -> NatsCredentials:
    found = read_credentials(directory, role)
    assert found is not None
    return found


async def violations(nc: Client) -> list[str]:
    await nc.flush()
    await asyncio.sleep(0.1)
    return list(getattr(nc, "_seen_errors", []))


async def connect_as(url: str, who: NatsCredentials) -> Client:
    seen: list[str] = []

    async def on_error(exc: Exception) -> None:
        seen.append(str(exc))

    nc = await nats.connect(
        servers=[url], user=who.user, password=who.password, error_cb=on_error, connect_timeout=2
    )
    nc._seen_errors = seen  # type: ignore[attr-defined]
    return nc


async def refused_request(nc: Client, subject: str) -> None:
    """A request to ``subject`` is refused by the permissions: no answer, a violation."""
    with pytest.raises(NatsTimeout):
        await nc.request(subject, b"", timeout=0.5)
    assert f'nats: permissions violation for publish to "{subject.lower()}"' in await violations(nc)


async def test_anonymous_and_wrong_passwords_are_refused(
    authed: tuple[NatsServerProcess, Path],
) -> None:
    server, directory = authed
    with pytest.raises(BusError, match="refused an anonymous connection"):
        await connect([server.url], name="anonymous", long_lived=False)
    wrong = NatsCredentials("sandboxer-client", "not-the-password")
    with pytest.raises(BusError, match="refused user 'sandboxer-client'") as refused:
        await connect([server.url], name="wrong", long_lived=False, credentials=wrong)
    assert "not-the-password" not in str(refused.value)
    nc = await connect(
        [server.url], name="client", long_lived=False, credentials=creds(directory, "client")
    )
    await nc.close()


def test_credentials_are_private_generated_once_and_never_shown(tmp_path: Path) -> None:
    home = tmp_path / "home"
    config = ensure_embedded_auth(home)
    directory = home / AUTH_DIR_NAME
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for path in (config, directory / "service.json", directory / "client.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    first = {role: creds(directory, role) for role in permissions.ROLES}
    assert first["service"].password != first["client"].password
    ensure_embedded_auth(home)  # a restart reuses them
    assert {role: creds(directory, role) for role in permissions.ROLES} == first
    assert first["client"].password not in repr(first["client"])
    (directory / "client.json").chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        read_credentials(directory, "client")


async def test_each_identity_gets_only_its_subjects(
    authed: tuple[NatsServerProcess, Path],
) -> None:
    server, directory = authed
    service = await connect_as(server.url, creds(directory, "service"))
    client = await connect_as(server.url, creds(directory, "client"))
    try:
        await ensure_streams(service.jetstream())  # the service manages the streams
        before = (await service.jetstream().stream_info(subjects.EVENTS_STREAM)).state.messages

        # A client cannot write to the events or jobs streams, nor delete or change a stream.
        await client.publish("sandboxer.evt.x.y.z", b"{}")
        await client.publish("sandboxer.job.local.sbx", b"{}")
        seen = await violations(client)
        assert any('publish to "sandboxer.evt.x.y.z"' in line for line in seen), seen
        assert any('publish to "sandboxer.job.local.sbx"' in line for line in seen), seen
        for api in ("STREAM.DELETE", "STREAM.PURGE", "STREAM.UPDATE", "STREAM.MSG.DELETE"):
            await refused_request(client, f"$JS.API.{api}.{subjects.EVENTS_STREAM}")
        await refused_request(client, f"$JS.API.STREAM.DELETE.{subjects.JOBS_STREAM}")
        await refused_request(client, f"$JS.API.STREAM.PURGE.{subjects.JOBS_STREAM}")
        js = client.jetstream()
        assert (await js.stream_info(subjects.EVENTS_STREAM)).state.messages == before

        # A client publishes commands; the service publishes only its internal ones.
        await client.publish(subjects.command_subject("create"), b"{}")
        assert not [line for line in await violations(client) if "sandboxer.cmd" in line]
        for verb in permissions.INTERNAL_COMMANDS:
            await service.publish(subjects.command_subject(verb), b"{}")
        await service.publish(subjects.command_subject("destroy"), b"{}")
        seen = await violations(service)
        assert [line for line in seen if "sandboxer.cmd" in line] == [
            'nats: permissions violation for publish to "sandboxer.cmd.destroy"'
        ]
        # The account checkpoints are the service's alone: a client that wrote one would set
        # a project's balance (bus/checkpoints.py).
        await AccountCheckpoints.open(service.jetstream(), 1)
        bucket = f"OBJ_{subjects.CHECKPOINTS_BUCKET}"
        for api in ("STREAM.INFO", "STREAM.CREATE", "STREAM.MSG.GET", "CONSUMER.CREATE"):
            await refused_request(client, f"$JS.API.{api}.{bucket}")
        await refused_request(client, f"$JS.API.DIRECT.GET.{bucket}.$O.x.M.y")
        await client.publish(f"$O.{subjects.CHECKPOINTS_BUCKET}.M.YWNjb3VudC5hY21l", b"{}")
        seen = await violations(client)
        assert any(f"$o.{subjects.CHECKPOINTS_BUCKET.lower()}.m" in line for line in seen), seen
        # Nor may the service delete a stream, or purge the events.
        await refused_request(service, f"$JS.API.STREAM.DELETE.{subjects.EVENTS_STREAM}")
        await refused_request(service, f"$JS.API.STREAM.PURGE.{subjects.EVENTS_STREAM}")
    finally:
        await client.close()
        await service.close()


async def test_up_and_the_cli_use_the_generated_credentials(home: Path, tmp_path: Path) -> None:
    """'sandboxer create' starts the embedded service (auth on); the CLI's lifecycle,
    uploads and events work as the client identity; no password leaks into a file
    others read or a log."""
    env = {k: v for k, v in os.environ.items() if k not in {"SANDBOXER_NATS_URL"}}
    env |= {"SANDBOXER_HOME": str(home), "SANDBOXER_HTTP_ADDR": "127.0.0.1:0"}
    cli = Cli(env)
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "README").write_text("hello repo\n")
    try:
        created = await cli("create", "--input", f"repo={repo}", "--json")
        sandbox_id = json.loads(created.stdout)["sandbox_id"]
        listed = json.loads((await cli("list", "--json")).stdout)
        assert [s["sandbox_id"] for s in listed] == [sandbox_id]
        ran = await cli("exec", sandbox_id, "--", "cat", "/workspace/README")
        assert ran.stdout == "hello repo\n"
        client = await SandboxerClient.connect(
            [json.loads((home / "service.json").read_text())["nats_url"]],
            credentials=creds(home / AUTH_DIR_NAME, "client"),
        )
        try:  # stdin travels to the inbox the worker names
            output: list[bytes] = []
            code = await client.exec(
                sandbox_id, ["cat"], lambda _kind, data: output.append(data), stdin=b"in\n"
            )
        finally:
            await client.close()
        assert (code, b"".join(output)) == (0, b"in\n")
        events = (await cli("events", "--sandbox", sandbox_id, "--json")).stdout
        assert '"ready"' in events
        await cli("destroy", sandbox_id)

        directory = home / AUTH_DIR_NAME
        secrets = [creds(directory, role).password for role in permissions.ROLES]
        record = json.loads((home / "service.json").read_text())
        await check_gateway(cli, record["http_url"])  # its connection is the client's

        anonymous = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", ANONYMOUS_PROBE, record["nats_url"]],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert anonymous.stdout.strip() == "refused", anonymous
    finally:
        await cli("down", check=False)
        await reap_local(home)
    for path in home.rglob("*"):
        if path.is_file() and path.parent.name != AUTH_DIR_NAME:
            text = path.read_bytes()
            assert not any(secret.encode() in text for secret in secrets), path
    assert not permission_violations((home / "nats-server.log").read_text())


async def check_gateway(cli: Cli, url: str, sandbox_id: str | None = None) -> None:
    """The gateway answers a health query over the bus (with an API key when it asks one);
    given ``sandbox_id``, a file copied in and out through it with a key: the gateway's
    copies ride on the bus inline as the client identity, which its permissions allow (the
    caller checks the server logged no violation)."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as api:
        health = await api.get("/v1/health")
        if health.status_code == 401 or sandbox_id is not None:
            made = await cli("keys", "create", "--project", "ops", "--type", "adm", "--json")
            api.headers["Authorization"] = f"Bearer {json.loads(made.stdout)['key']}"
            health = await api.get("/v1/health")
        assert health.status_code == 200, health.text
        if sandbox_id is not None:
            files = f"/v1/sandboxes/{sandbox_id}/files"
            put = await api.put(files, params={"path": "via-http"}, content=b"over http\n")
            assert put.status_code == 200, put.text
            got = await api.get(files, params={"path": "via-http"})
            assert (got.status_code, got.content) == (200, b"over http\n"), got.text


ANONYMOUS_PROBE = """
import asyncio, sys, nats
async def main():
    try:
        nc = await nats.connect(servers=[sys.argv[1]], allow_reconnect=False, connect_timeout=2)
    except Exception as exc:
        print("refused" if "Authorization Violation" in str(exc) else f"other: {exc!r}")
    else:
        await nc.close()
        print("accepted")
asyncio.run(main())
"""


def documented_shared_config() -> str:
    """The ```conf block docs/security.md gives for a shared NATS."""
    text = SECURITY_DOC.read_text()
    found = re.search(r"<!-- shared-nats-config -->\s*```conf\n(.*?)```", text, re.DOTALL)
    assert found, "docs/security.md lost its shared-nats-config block"
    return found.group(1)


def test_the_documented_config_is_the_one_the_code_writes() -> None:
    assert documented_shared_config() == permissions.shared_nats_config()


def write_credentials(directory: Path, role: str, password: str) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / f"{role}.json"
    path.write_text(json.dumps({"user": permissions.USERS[role], "password": password}))
    path.chmod(0o600)


async def test_the_roles_run_under_the_documented_shared_config(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A nats-server started with exactly the docs' snippet: 'sandboxer up' against it (as
    the service identity, its gateway as the client) and the CLI holding only the client's
    credentials run one lifecycle; the server logs no permission violation."""
    passwords = {"service": "service-pw-for-tests-0001", "client": "client-pw-for-tests-0002"}
    monkeypatch.setenv("NATS_SANDBOXER_SERVICE_PASSWORD", passwords["service"])
    monkeypatch.setenv("NATS_SANDBOXER_CLIENT_PASSWORD", passwords["client"])
    config = tmp_path / "shared-nats.conf"
    config.write_text(documented_shared_config())
    server = NatsServerProcess(tmp_path / "shared", config_file=config, server_name="shared")
    await server.start()
    service_dir, client_dir = tmp_path / "service-auth", tmp_path / "client-auth"
    for role in permissions.ROLES:
        write_credentials(service_dir, role, passwords[role])
    write_credentials(client_dir, "client", passwords["client"])
    port = closed_port()
    env = {k: v for k, v in os.environ.items() if not k.endswith("_PASSWORD")}
    env |= {
        "SANDBOXER_HOME": str(home),
        "SANDBOXER_NATS_URL": server.url,
        "SANDBOXER_HTTP_ADDR": f"127.0.0.1:{port}",
    }
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen(
        [sys.executable, "-m", "sandboxer.cli.app", "up"],
        env=env | {"SANDBOXER_NATS_AUTH": str(service_dir)},
        stdout=log,
        stderr=log,
    )
    cli = Cli(env | {"SANDBOXER_NATS_AUTH": str(client_dir)})
    try:
        client = await SandboxerClient.connect(
            [server.url], credentials=creds(client_dir, "client")
        )
        try:
            await wait_healthy(client, up)
        finally:
            await client.close()
        created = json.loads((await cli("create", "--json")).stdout)
        sandbox_id = created["sandbox_id"]
        assert created["status"] == "ready"
        assert (await cli("exec", sandbox_id, "--", "true")).returncode == 0
        listed = json.loads((await cli("list", "--json")).stdout)
        assert [s["sandbox_id"] for s in listed] == [sandbox_id]
        await check_gateway(cli, f"http://127.0.0.1:{port}", sandbox_id)
        await cli("destroy", sandbox_id)
        no_creds = Cli(env)
        refused = await no_creds("list", check=False)
        assert refused.returncode == 1
        assert "refused an anonymous connection" in refused.stderr
    finally:
        up.send_signal(signal.SIGTERM)
        await asyncio.to_thread(up.wait, 30)
        log.close()
        await server.stop()
        await reap_local(home)
    assert up.returncode == 0, (tmp_path / "up.log").read_text()
    assert not permission_violations(server.log_file.read_text())


def permission_violations(log: str) -> list[str]:
    """The server's log lines about a publish or subscribe its permissions refused."""
    return [
        line for line in log.splitlines() if re.search(r"(Publish|Subscription) Violation", line)
    ]


async def wait_healthy(client: SandboxerClient, process: subprocess.Popen[Any]) -> None:
    for _ in range(600):
        if process.poll() is not None:
            pytest.fail(f"'sandboxer up' exited with {process.returncode}", pytrace=False)
        try:
            await client.health()
        except BusError:
            await asyncio.sleep(0.05)
        else:
            return
    pytest.fail("'sandboxer up' never answered a health query", pytrace=False)


def test_a_gateway_without_the_client_identity_is_refused(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With only service.json, 'worker gateway' stops with the reason (its commands would be
    refused by NATS), and 'up' leaves the gateway out."""
    from sandboxer.config.settings import Settings
    from sandboxer.service import gateway_lacks_identity

    service_only = tmp_path / "service-only"
    write_credentials(service_only, "service", "service-pw-for-tests-0001")
    monkeypatch.setenv("SANDBOXER_NATS_URL", "nats://127.0.0.1:4222")
    monkeypatch.setenv("SANDBOXER_NATS_AUTH", str(service_only))
    settings = Settings.from_env()
    with pytest.raises(ConfigError, match=r"client\.json"):
        gateway_lacks_identity(settings, required=True)
    assert gateway_lacks_identity(settings, required=False)
    write_credentials(service_only, "client", "client-pw-for-tests-0002")
    assert not gateway_lacks_identity(settings, required=True)
