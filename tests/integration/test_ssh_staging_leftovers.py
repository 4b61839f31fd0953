"""A teardown removes the staging copies that an upload cut off left beside a sandbox.

A file written over SFTP goes to ``<path>.sbx-<random>`` first and is renamed into place;
a worker killed (or a connection lost) between the two leaves that staging copy. Beside a
sandbox's directory, in the workspace root, that is the marker's, or a compose stack's
secrets file's, whose copy holds the secrets: teardown removed only the files by their own
names, so the copy stayed on the host for ever. Real sshd, ext.vm-packer (the code is the
SSH backends' shared teardown).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sandboxer.config.catalog import Catalog
from sandboxer.config.settings import Settings
from sandboxer.extensions.base import ProvisionRequest
from sandboxer.extensions.ssh_targets import target
from sandboxer.extensions.vm_packer.backend import VmPackerExtension
from sandboxer.ssh import session
from tests.integration.remote_fixtures import SshHosts, write_hosts_file

pytestmark = pytest.mark.integration

SANDBOX = "stagedcut1"


async def cut_off_upload(settings: Settings, path: str, data: bytes) -> None:
    """What a worker killed mid-upload leaves: the staging copy written, never renamed."""
    item = target(settings, "host1", sandbox_id=SANDBOX, extension="ext.vm-packer")
    async with session(item.name, item.config) as conn, conn.start_sftp_client() as sftp:
        async with sftp.open(f"{path}.sbx-0123456789ab", "xb") as handle:
            await handle.write(data)
        conn.abort()  # the connection drops before the rename


async def test_teardown_removes_the_staging_copies_of_a_cut_off_upload(
    ssh_hosts: SshHosts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SANDBOXER_HOSTS", raising=False)
    [vm] = await ssh_hosts(1)
    home = tmp_path / "home"
    write_hosts_file(home / "hosts.yaml", [vm])
    settings = Settings(home=home, nats_urls=(), nats_server=None, ack_wait=30.0)
    extension = VmPackerExtension.from_settings(settings)
    request = ProvisionRequest(
        sandbox_id=SANDBOX,
        profile=Catalog.load().profile("profile.vm-haskell-build"),
        inputs={"vm": "host1"},
        host="host1",
    )
    await extension.provision(request)
    root = Path(vm.host.workspace_root)
    item = target(settings, "host1", sandbox_id=SANDBOX, extension=extension.id)
    await cut_off_upload(settings, item.secrets(SANDBOX), b"TOKEN='a-secret-value'\n")
    await cut_off_upload(settings, item.marker(SANDBOX), b'{"extension":"ext.vm-packer"}\n')
    # Another sandbox's files, whose id starts with this one's, stay.
    (root / f"sbx-{SANDBOX}x.env.sbx-0123456789ab").write_text("theirs\n")
    await extension.teardown(SANDBOX, host="host1")
    assert sorted(path.name for path in root.iterdir()) == [f"sbx-{SANDBOX}x.env.sbx-0123456789ab"]
