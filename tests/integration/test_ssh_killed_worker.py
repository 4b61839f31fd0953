"""A worker killed (SIGKILL) while a command of its make runs on an SSH host stops that command.

Closing an SSH channel stops nothing on the host, and the sandbox's lock on the host goes
with the killed worker's connection: its setup step (or compose's ``up``) ran on to its
deadline (30 minutes for a setup step), beside the next attempt that the lock now let in,
writing where that attempt worked. Now the host watches each such command's channel and
stops the command, with all it started, when the channel closes. Real sshd, ext.vm-packer
in a process of its own, killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from sandboxer.config.catalog import Catalog
from sandboxer.config.settings import Settings
from sandboxer.extensions.base import ProvisionRequest
from sandboxer.extensions.vm_packer.backend import VmPackerExtension
from tests.integration.remote_fixtures import SshHosts, write_hosts_file

pytestmark = pytest.mark.integration

SANDBOX = "killedmk01"

# The worker: provisions attempt 1 of SANDBOX on host1, whose one setup step says it started,
# then, 3 s later, writes the file the test looks for.
WORKER = """
import asyncio, sys
from pathlib import Path
from sandboxer.config.catalog import Catalog
from sandboxer.config.profile import Setup
from sandboxer.config.settings import Settings
from sandboxer.extensions.base import ProvisionRequest
from sandboxer.extensions.vm_packer.backend import VmPackerExtension

home, started, late = sys.argv[1:4]
step = f"echo up > {started}; sleep 3; echo late > {late}"
profile = Catalog.load().profile("profile.vm-haskell-build")
profile = profile.model_copy(update={"setup": Setup(instructions=[step])})
settings = Settings(home=Path(home), nats_urls=(), nats_server=None, ack_wait=30.0)
request = ProvisionRequest(
    sandbox_id="killedmk01", profile=profile, inputs={"vm": "host1"}, host="host1"
)
asyncio.run(VmPackerExtension.from_settings(settings).provision(request))
"""


async def test_a_setup_step_stops_when_its_worker_is_killed(
    ssh_hosts: SshHosts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SANDBOXER_HOSTS", raising=False)
    [vm] = await ssh_hosts(1)
    home = tmp_path / "home"
    write_hosts_file(home / "hosts.yaml", [vm])
    started, late = tmp_path / "started", tmp_path / "late"
    environment = {k: v for k, v in os.environ.items() if k != "SANDBOXER_HOSTS"}
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        WORKER,
        str(home),
        str(started),
        str(late),
        env=environment,
    )
    try:
        async with asyncio.timeout(30):
            while not started.exists():
                assert worker.returncode is None, "the worker ended before its setup step ran"
                await asyncio.sleep(0.05)
    finally:
        worker.send_signal(signal.SIGKILL)
        await worker.wait()
    await asyncio.sleep(4.5)  # the step would have written by now
    assert not late.exists(), "the killed worker's setup step ran on after it"

    # The lock went with the connection: the next attempt makes the sandbox at once.
    extension = VmPackerExtension.from_settings(
        Settings(home=home, nats_urls=(), nats_server=None, ack_wait=30.0)
    )
    request = ProvisionRequest(
        sandbox_id=SANDBOX,
        profile=Catalog.load().profile("profile.vm-haskell-build"),
        inputs={"vm": "host1"},
        host="host1",
        attempt=2,
    )
    async with asyncio.timeout(20):
        await extension.provision(request)
        await extension.teardown(SANDBOX, host="host1")
