"""A client's wait for a command's outcome rides out a service that restarts meanwhile.

The command is on the commands stream once published: a service restarting (``sandboxer
up`` again, a worker between its stop and its start) carries it out when it is back, so
the wait must not end because nothing answered for a moment; and when the wait does run
out, the client says the command was accepted and where its outcome will show.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest

from sandboxer import subjects
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.cli.key_commands import create_key, list_keys
from sandboxer.client import SandboxerClient
from sandboxer.domain.key_state import hash_key, key_id_for
from sandboxer.errors import OutcomePending
from tests.integration.conftest import Service, reap_local, start_service

pytestmark = pytest.mark.integration


@pytest.fixture
async def as_key(nats_server: NatsServerProcess, home: Path) -> AsyncIterator[SandboxerClient]:
    """An agt key's bus client (it reads outcomes as a key does: by asking the projector),
    its key made while the service ran; the service is stopped."""
    service = await start_service(home, nats_server.url)
    operator = await SandboxerClient.connect([nats_server.url])  # adm, as the CLI is
    _, made = await create_key(operator, project="p", key_type="agt")
    await operator.close()
    # The test's server has no authorization: the key's subjects and inbox make it the key.
    nc = await nats.connect(nats_server.url, inbox_prefix=f"_INBOX.{made['key_id']}")
    client = SandboxerClient(nc, key_id=made["key_id"])
    client.actor = dict((await client.query(subjects.QUERY_KEY_WHOAMI, {}))["actor"])
    await service.client.close()
    await service.shutdown()
    try:
        yield client
    finally:
        await nc.close()
        await reap_local(home)


async def test_a_keys_create_rides_out_a_service_restarting(
    as_key: SandboxerClient, nats_server: NatsServerProcess, home: Path
) -> None:
    creating = asyncio.create_task(as_key.create("profile.local", ttl="5m", timeout=60))
    await asyncio.sleep(1.5)  # the wait asks meanwhile, and nothing answers: "no responders"
    assert not creating.done()
    service: Service = await start_service(home, nats_server.url)
    try:
        ready = await creating
        assert ready["type"] == "ready"
        await as_key.destroy(ready["sandbox_id"])
    finally:
        await service.client.close()
        await service.shutdown()


async def test_a_wait_that_runs_out_says_the_command_was_accepted(as_key: SandboxerClient) -> None:
    with pytest.raises(OutcomePending) as pending:
        await as_key.create("profile.local", sandbox_id="waitrunsout01", timeout=3)
    message = pending.value.message
    assert f"no outcome for create {pending.value.command_id} within 3s" in message
    assert "the service did not answer" in message
    assert "The command was accepted" in message
    assert "'sandboxer events --sandbox waitrunsout01'" in message


async def test_keys_create_whose_wait_runs_out_still_shows_the_key(
    nats_server: NatsServerProcess, home: Path, cli_env: dict[str, str]
) -> None:
    """The command is accepted, so the key comes to exist when the service is back: a key not
    shown when the wait ran out would be a live key no one holds."""
    service = await start_service(home, nats_server.url)  # the streams, then nothing serves
    await service.client.close()
    await service.shutdown()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sandboxer.cli.app",
        *("keys", "create", "--project", "p", "--type", "agt", "--wait", "2"),
        env=cli_env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1, err
    key = out.decode().strip()
    assert key.startswith("sbx_"), out
    assert "The line above is the key" in err.decode()
    service = await start_service(home, nats_server.url)
    try:
        async with asyncio.timeout(20):
            while True:  # the restarted service carries the accepted create out
                keys = await list_keys(service.client, project="p")
                if [k["key_id"] for k in keys] == [key_id_for(hash_key(key))]:
                    break
                await asyncio.sleep(0.1)
    finally:
        await service.client.close()
        await service.shutdown()
