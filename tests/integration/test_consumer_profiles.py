"""The consumer profiles and consumer attribution, through the bus against real NATS and real
bubblewrap (issue 12 items 3 and 4): profile.agent-dev's read-only workspace holds inside the
sandbox, its scope asks for the session; profile.build's setup commands run before ready with
their secrets redacted from every event and log line; list filters and usage groups by the
consumer through the client, the CLI and the HTTP API."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.cli.key_commands import create_key
from sandboxer.client import CommandFailed, SandboxerClient
from tests.integration.conftest import Cli, Service, reap_local, serve_gateway, start_service

pytestmark = pytest.mark.integration

SESSION = {"harness": "agent-harness", "session_id": "sess-1", "labels": {"team": "core"}}


async def collect_exec(client: SandboxerClient, sandbox_id: str, script: str) -> tuple[int, str]:
    chunks: list[bytes] = []

    async def keep(_stream: str, data: bytes) -> None:
        chunks.append(data)

    code = await client.exec(sandbox_id, ["sh", "-c", script], keep)
    return code, b"".join(chunks).decode(errors="replace")


async def events_of(client: SandboxerClient, sandbox_id: str) -> list[dict[str, Any]]:
    return [event async for _seq, event in client.events(sandbox_id=sandbox_id)]


async def test_agent_dev_mirrors_the_checkout_read_only(service: Service, tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / "main.py").write_text("print('hi')\n")
    ready = await service.client.create(
        "profile.agent-dev", {"repo": str(checkout)}, consumer=SESSION
    )
    sandbox_id = ready["sandbox_id"]
    assert ready["warnings"] == []  # ext.local enforces the access: nothing to warn about

    code, out = await collect_exec(service.client, sandbox_id, "cat /workspace/main.py")
    assert (code, out) == (0, "print('hi')\n")
    code, out = await collect_exec(service.client, sandbox_id, "echo changed > /workspace/main.py")
    assert code != 0
    assert "Read-only file system" in out
    code, _ = await collect_exec(service.client, sandbox_id, "touch /workspace/new-file")
    assert code != 0
    code, _ = await collect_exec(service.client, sandbox_id, "echo scratch > /tmp/x && cat /tmp/x")
    assert code == 0  # the agent's scratch space
    # Nothing reached the checkout or the mirrored copy.
    assert (checkout / "main.py").read_text() == "print('hi')\n"

    requested = (await events_of(service.client, sandbox_id))[0]
    assert requested["type"] == "requested"
    assert requested["consumer"]["session_id"] == "sess-1"
    sandbox = await service.client.get(sandbox_id)
    assert sandbox is not None
    assert sandbox["consumer"]["harness"] == "agent-harness"


async def test_agent_dev_wants_the_session_it_belongs_to(service: Service) -> None:
    with pytest.raises(CommandFailed) as caught:
        await service.client.create("profile.agent-dev", consumer={"harness": "agent-harness"})
    assert caught.value.event["code"] == "missing_consumer"
    assert "consumer.session_id" in caught.value.event["reason"]


async def test_access_none_binds_no_workspace(
    nats_server: NatsServerProcess, home: Path, tmp_path: Path
) -> None:
    profiles = home / "profiles"
    profiles.mkdir(exist_ok=True)
    (profiles / "profile.no-files.yaml").write_text(
        "id: profile.no-files\nextension: ext.local\nnetwork: {default: deny}\n"
        "workspace: {mode: remote, access: none}\n"
        "inputs:\n  repo: {type: directory, required: false}\n"
    )
    service = await start_service(home, nats_server.url)
    try:
        checkout = tmp_path / "private"
        checkout.mkdir()
        (checkout / "secret.txt").write_text("not for the sandbox\n")
        ready = await service.client.create("profile.no-files", {"repo": str(checkout)})
        code, out = await collect_exec(service.client, ready["sandbox_id"], "ls -A /workspace")
        assert (code, out) == (0, "")  # an empty scratch directory, not the workspace
        code, _ = await collect_exec(service.client, ready["sandbox_id"], "echo x > /workspace/y")
        assert code == 0  # scratch: writable, and gone with the sandbox
        workspace = service.settings.local_root / ready["sandbox_id"] / "workspace"
        assert (workspace / "secret.txt").exists()  # copied for the sandbox, never bound in
        assert not (workspace / "y").exists()
    finally:
        await service.client.close()
        await service.shutdown()
        await reap_local(home)


def build_profile(home: Path, commands: list[str]) -> None:
    profiles = home / "profiles"
    profiles.mkdir(exist_ok=True)
    lines = "".join(f"    - {json.dumps(command)}\n" for command in commands)
    (profiles / "profile.build-test.yaml").write_text(
        "id: profile.build-test\nextension: ext.local\nnetwork: {default: deny}\n"
        "setup:\n  secret_refs: {BUILD_TOKEN: env:SANDBOXER_TEST_BUILD_TOKEN}\n"
        f"  commands:\n{lines}"
    )


@pytest.fixture
def build_token(monkeypatch: pytest.MonkeyPatch) -> str:
    token = "tok-" + secrets.token_hex(16)
    monkeypatch.setenv("SANDBOXER_TEST_BUILD_TOKEN", token)
    monkeypatch.setenv("SANDBOXER_BUILD_TOKEN", token)  # what the packaged profile.build names
    return token


async def test_build_setup_runs_before_ready_and_redacts_its_secret(
    nats_server: NatsServerProcess, home: Path, build_token: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    build_profile(
        home,
        [
            '. ./.sandboxer/secrets.env && echo "token is $BUILD_TOKEN" && echo done > built',
            'echo "on stderr: $(cat .sandboxer/secrets.env)" >&2',
        ],
    )
    service = await start_service(home, nats_server.url)
    try:
        ready = await service.client.create("profile.build-test")
        sandbox_id = ready["sandbox_id"]
        assert [(s["index"], s["exit_code"]) for s in ready["setup"]] == [(0, 0), (1, 0)]
        assert ready["setup"][0]["output_tail"] == "token is [redacted]"
        assert "[redacted]" in ready["setup"][1]["output_tail"]
        # It ran inside the sandbox, before ready: its file is there.
        code, out = await collect_exec(service.client, sandbox_id, "cat built")
        assert (code, out) == (0, "done\n")

        packaged = await service.client.create("profile.build")
        assert [s["output_tail"] for s in packaged["setup"]] == [
            "secrets delivered",
            "workspace ready for the build",
        ]

        recorded = json.dumps(await events_of(service.client, sandbox_id))
        assert build_token not in recorded
        assert build_token not in caplog.text
        holder_log = (service.settings.local_root / sandbox_id).rglob("*.log")
        for log_file in holder_log:
            assert build_token.encode() not in log_file.read_bytes()
    finally:
        await service.client.close()
        await service.shutdown()
        await reap_local(home)


async def test_a_failing_setup_command_fails_the_sandbox_with_a_redacted_reason(
    nats_server: NatsServerProcess, home: Path, build_token: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    build_profile(
        home,
        ["true", '. ./.sandboxer/secrets.env && echo "leaking $BUILD_TOKEN"; exit 7'],
    )
    service = await start_service(home, nats_server.url)
    try:
        with pytest.raises(CommandFailed) as caught:
            await service.client.create("profile.build-test")
        failed = caught.value.event
        assert failed["type"] == "failed"
        assert failed["code"] == "setup_failed"
        assert failed["stage"] == "provision"
        assert "setup.commands[1]" in failed["reason"]
        assert "exited with code 7" in failed["reason"]
        assert "leaking [redacted]" in failed["reason"]
        sandbox_id = failed["sandbox_id"]
        recorded = json.dumps(await events_of(service.client, sandbox_id))
        assert build_token not in recorded
        assert build_token not in caplog.text
        # What it made is torn down.
        assert not (service.settings.local_root / sandbox_id).exists()
    finally:
        await service.client.close()
        await service.shutdown()
        await reap_local(home)


async def test_list_filters_and_usage_groups_by_consumer(
    service: Service, home: Path, cli_env: dict[str, str]
) -> None:
    client = service.client
    mine = await client.create(consumer=SESSION)
    other = await client.create(consumer={"harness": "code-gen", "job_id": "job-9"})
    plain = await client.create()

    async def ids(**consumer: Any) -> list[str]:
        return [s["sandbox_id"] for s in await client.list_sandboxes(consumer=consumer)]

    assert await ids(harness="agent-harness") == [mine["sandbox_id"]]
    assert await ids(job_id="job-9") == [other["sandbox_id"]]
    assert await ids(labels={"team": "core"}) == [mine["sandbox_id"]]
    assert len(await ids()) == 3

    cli = Cli(cli_env)
    listed = json.loads((await cli("list", "--harness", "code-gen", "--json")).stdout)
    assert [s["sandbox_id"] for s in listed] == [other["sandbox_id"]]
    listed = json.loads((await cli("list", "--label", "team=core", "--json")).stdout)
    assert [s["sandbox_id"] for s in listed] == [mine["sandbox_id"]]
    from_cli = json.loads(
        (await cli("create", "--harness", "cli-harness", "--label", "via=cli", "--json")).stdout
    )
    assert from_cli["consumer"] == {"harness": "cli-harness", "labels": {"via": "cli"}}
    listed = json.loads((await cli("list", "--label", "via=cli", "--json")).stdout)
    assert [s["sandbox_id"] for s in listed] == [from_cli["sandbox_id"]]
    await client.destroy(from_cli["sandbox_id"])
    refused = await cli("list", "--harness", "Not A Name", check=False)
    assert refused.returncode != 0
    assert "consumer.harness" in refused.stderr + refused.stdout

    async with serve_gateway(service, home) as base:
        admin = SandboxerClient(client.nc, actor={"type": "adm", "id": "pytest-admin"})
        key, _ = await create_key(admin, project="default", key_type="adm", max_live=100)
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as http:
            answer = await http.get("/v1/sandboxes", params={"harness": "agent-harness"})
            assert answer.status_code == 200, answer.text
            assert [s["sandbox_id"] for s in answer.json()["sandboxes"]] == [mine["sandbox_id"]]
            answer = await http.get("/v1/sandboxes", params={"label": "team=core"})
            assert [s["sandbox_id"] for s in answer.json()["sandboxes"]] == [mine["sandbox_id"]]
            bad = await http.get("/v1/sandboxes", params={"label": "no-equals-sign"})
            assert bad.status_code == 400
            body = {"profile": "profile.local", "consumer": {"harness": "http-harness"}}
            made = await http.post("/v1/sandboxes", json=body, params={"wait": 60})
            assert made.status_code == 201, made.text
            assert made.json()["consumer"] == {"harness": "http-harness"}
            answer = await http.get("/v1/sandboxes", params={"harness": "http-harness"})
            assert [s["sandbox_id"] for s in answer.json()["sandboxes"]] == [
                made.json()["sandbox_id"]
            ]
            hostile = {"consumer": {"harness": "http-harness", "labels": {"k": "\u0007"}}}
            refused = await http.post("/v1/sandboxes", json=hostile)
            assert refused.status_code in {400, 422}, refused.text
            await http.delete(f"/v1/sandboxes/{made.json()['sandbox_id']}")

    for sandbox in (mine, other, plain):
        await client.destroy(sandbox["sandbox_id"])
    async with asyncio.timeout(30):  # the meter records each destroyed sandbox after it
        while (usage := await client.usage(by="harness"))["total"]["sandboxes"] < 5:
            await asyncio.sleep(0.1)
    groups = {row["harness"]: row["sandboxes"] for row in usage["summary"]}
    assert groups == {
        None: 1,
        "agent-harness": 1,
        "code-gen": 1,
        "cli-harness": 1,
        "http-harness": 1,
    }
    shown = (await cli("usage", "--by", "harness")).stdout
    assert "agent-harness" in shown
    assert "code-gen" in shown


async def test_a_restore_carries_its_consumer(service: Service, tmp_path: Path) -> None:
    client = service.client
    checkout = tmp_path / "repo"
    checkout.mkdir()
    (checkout / "f.txt").write_text("kept\n")
    source = await client.create(inputs={"repo": str(checkout)}, consumer={"harness": "first"})
    snapshot = await client.snapshot(source["sandbox_id"])
    ready = await client.restore(
        snapshot["snapshot_id"], consumer={"harness": "restorer", "run_id": "run-2"}
    )
    requested = (await events_of(client, ready["sandbox_id"]))[0]
    assert requested["restored_from"] == snapshot["snapshot_id"]
    assert requested["consumer"] == {"harness": "restorer", "run_id": "run-2"}
    listed = await client.list_sandboxes(consumer={"harness": "restorer"})
    assert [s["sandbox_id"] for s in listed] == [ready["sandbox_id"]]
    with pytest.raises(CommandFailed) as caught:
        await client.restore(snapshot["snapshot_id"], consumer={"labels": {"Bad Key": "v"}})
    assert caught.value.event["code"] == "invalid_consumer"


async def test_a_setup_command_that_runs_too_long_is_stopped_and_fails_the_sandbox(
    nats_server: NatsServerProcess, home: Path
) -> None:
    profiles = home / "profiles"
    profiles.mkdir(exist_ok=True)
    (profiles / "profile.slow-setup.yaml").write_text(
        "id: profile.slow-setup\nextension: ext.local\nnetwork: {default: deny}\n"
        "setup:\n  command_timeout: 2s\n  commands:\n    - 'echo started; sleep 600'\n"
    )
    service = await start_service(home, nats_server.url)
    try:
        with pytest.raises(CommandFailed) as caught:
            await service.client.create("profile.slow-setup")
        failed = caught.value.event
        assert failed["code"] == "setup_failed"
        assert "ran past 2s" in failed["reason"]
        assert "started" in failed["reason"]
        assert not (service.settings.local_root / failed["sandbox_id"]).exists()
    finally:
        await service.client.close()
        await service.shutdown()
        await reap_local(home)
