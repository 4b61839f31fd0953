"""A host whose SFTP server stops answering fails the step that writes a file, within a bound.

Every remote command carries its deadline to the host, but a file written over SFTP (the
secrets file, a compose override, the gate proxy's files, a long way's marker) waited for
the host's answer without one. The host's sshd still answers keepalives when what hangs is
the SFTP server under it (a stalled disk), so the connection never dropped: the worker
waited for ever inside a create's make, holding the sandbox's lock on the host, and every
teardown of that sandbox failed on the lock. Real sshd, its SFTP subsystem a process that
never answers; ext.vm-packer.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sandboxer.config.catalog import Catalog
from sandboxer.config.settings import Settings
from sandboxer.errors import RemoteCommandFailed
from sandboxer.extensions.base import ProvisionRequest
from sandboxer.extensions.vm_packer.backend import VmPackerExtension
from sandboxer.ssh import remote
from tests.integration.remote_fixtures import SshHosts, write_hosts_file

pytestmark = pytest.mark.integration

SANDBOX = "sftphang01"


async def test_a_host_whose_sftp_server_hangs_fails_the_make_and_lets_the_lock_go(
    ssh_hosts: SshHosts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SANDBOXER_HOSTS", raising=False)
    monkeypatch.setattr(remote, "PUT_TIMEOUT", 2.0, raising=False)  # 60 s in service
    [vm] = await ssh_hosts(1)
    server = vm.server
    await server.stop()
    config = server.config.read_text()
    assert "Subsystem sftp internal-sftp\n" in config
    server.config.write_text(
        config.replace("Subsystem sftp internal-sftp\n", "Subsystem sftp /bin/sleep 120\n")
    )
    await server.start()
    home = tmp_path / "home"
    write_hosts_file(home / "hosts.yaml", [vm])
    extension = VmPackerExtension.from_settings(
        Settings(home=home, nats_urls=(), nats_server=None, ack_wait=30.0)
    )
    request = ProvisionRequest(
        sandbox_id=SANDBOX,
        profile=Catalog.load().profile("profile.vm-haskell-build"),
        inputs={"vm": "host1"},
        secrets={"TOKEN": "a-secret-value"},  # written over SFTP, under the sandbox's lock
        host="host1",
    )
    async with asyncio.timeout(30):  # on the old code: waited for ever
        with pytest.raises(RemoteCommandFailed, match=r"SFTP.*within 2s") as caught:
            await extension.provision(request)
    assert "a-secret-value" not in caught.value.message
    # The lock went with the make: the teardown takes it at once and removes the workspace.
    async with asyncio.timeout(20):
        await extension.teardown(SANDBOX, host="host1")
    root = Path(vm.host.workspace_root)
    assert sorted(path.name for path in root.iterdir()) == []
