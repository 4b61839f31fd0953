"""ext.vm-packer (attach mode) called directly, against real sshd "VMs" on loopback.

The VM is this machine, so what a sandbox leaves is checked on the local
filesystem. The fixture ``ssh_hosts`` comes from
tests/integration/remote_fixtures.py (registered by tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shlex
import shutil
import time
from pathlib import Path

import pytest

from sandboxer.config.catalog import Catalog
from sandboxer.config.profile import Profile, Setup
from sandboxer.config.settings import Settings
from sandboxer.errors import (
    ExtensionError,
    HostUnreachable,
    InvalidInput,
    RemoteCommandFailed,
    SandboxNotFound,
    Unsupported,
)
from sandboxer.extensions.base import ProvisionRequest
from sandboxer.extensions.vm_packer import backend as vm_backend
from sandboxer.extensions.vm_packer.backend import VmPackerExtension
from tests.integration.remote_fixtures import SshHostInfo, SshHosts, write_hosts_file
from tests.ports import closed_port

pytestmark = pytest.mark.integration

SECRET = "vm-s3cr3t-value-77"


def settings_for(home: Path) -> Settings:
    return Settings(home=home, nats_urls=(), nats_server=None, ack_wait=30.0)


def make_repo(directory: Path) -> Path:
    (directory / "src").mkdir(parents=True)
    (directory / "src" / "Main.hs").write_text('main = putStrLn "hi"\n')
    (directory / "README").write_text("the repo\n")
    return directory


def profile(*instructions: str) -> Profile:
    base = Catalog.load().profile("profile.vm-haskell-build")
    return base.model_copy(update={"setup": Setup(instructions=list(instructions))})


async def vms(
    ssh_hosts: SshHosts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int = 1
) -> tuple[VmPackerExtension, list[SshHostInfo]]:
    monkeypatch.delenv("SANDBOXER_HOSTS", raising=False)
    hosts = await ssh_hosts(count)
    home = tmp_path / "home"
    write_hosts_file(home / "hosts.yaml", hosts)
    return VmPackerExtension.from_settings(settings_for(home)), hosts


async def test_lifecycle_with_repo_sync_setup_secrets_and_exec(
    ssh_hosts: SshHosts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extension, [vm] = await vms(ssh_hosts, tmp_path, monkeypatch)
    request = ProvisionRequest(
        sandbox_id="vmlife0001",
        profile=profile("mkdir -p dist && cp src/Main.hs dist/", "test -f .sandboxer.env"),
        inputs={"vm": "host1", "repo": str(make_repo(tmp_path / "repo"))},
        secrets={"HACKAGE_TOKEN": SECRET},
        host="host1",
    )
    began = time.monotonic()
    await extension.provision(request)
    provisioned = time.monotonic()
    readiness = await extension.wait_ready(request)
    ready = time.monotonic()

    workspace = Path(vm.host.workspace_root) / "sbx-vmlife0001"
    access = readiness.descriptor.pop("access")  # test_reachability_ssh.py logs in with it
    assert (access["kind"], access["host_name"], access["workdir"]) == (
        "ssh",
        "host1",
        str(workspace),
    )
    assert readiness.descriptor == {
        "kind": "vm-packer",
        "host": "host1",
        "address": "127.0.0.1",
        "port": vm.port,
        "user": vm.host.user,
        "workspace": str(workspace),
        "exec": "sandboxer exec vmlife0001 -- CMD (runs on the VM in workspace)",
        "secrets_file": str(workspace / ".sandboxer.env"),
    }
    assert SECRET not in json.dumps(readiness.descriptor)
    assert (workspace / "README").read_text() == "the repo\n"
    assert (workspace / "dist" / "Main.hs").exists()  # the setup instructions ran there
    secrets_file = workspace / ".sandboxer.env"
    assert secrets_file.stat().st_mode & 0o777 == 0o600
    assert f"HACKAGE_TOKEN={shlex.quote(SECRET)}\n" in secrets_file.read_text()

    out: dict[str, bytes] = {"stdout": b"", "stderr": b""}

    async def sink(stream: str, data: bytes) -> None:
        out[stream] += data

    code = await extension.exec(
        "vmlife0001",
        [
            "sh",
            "-c",
            '. ./.sandboxer.env; pwd; test "$HACKAGE_TOKEN" = "$1" && '
            "echo same; echo warn >&2; exit 7",
            "sh",
            SECRET,
        ],
        sink,
        host="host1",
    )
    assert code == 7
    assert out == {"stdout": f"{workspace}\nsame\n".encode(), "stderr": b"warn\n"}
    big: list[bytes] = []

    async def keep(_stream: str, data: bytes) -> None:
        big.append(data)

    assert (
        await extension.exec(
            "vmlife0001", ["head", "-c", "300000", "/dev/zero"], keep, host="host1"
        )
        == 0
    )
    assert sum(len(chunk) for chunk in big) == 300000
    assert len(big) > 1  # streamed in chunks

    with pytest.raises(Unsupported, match="have no services"):
        await extension.exec("vmlife0001", ["true"], sink, host="host1", service="web")

    found = await extension.list_sandboxes()
    assert [(f.sandbox_id, f.alive, f.host) for f in found] == [("vmlife0001", True, "host1")]
    report = await extension.inspect_host("host1")
    assert report["sandboxes"] == ["vmlife0001"]
    assert report["memory_total_mb"] > 0

    tearing_down = time.monotonic()
    await extension.teardown("vmlife0001", host="host1")
    torn_down = time.monotonic()
    assert not workspace.exists()
    assert not (Path(vm.host.workspace_root) / "sbx-vmlife0001.json").exists()
    assert Path(vm.host.workspace_root).is_dir()  # only the workspace goes
    assert vm.server.running  # and the VM stays
    assert await extension.list_sandboxes() == []
    await extension.teardown("vmlife0001", host="host1")
    await extension.teardown("vmlife0001")
    with pytest.raises(SandboxNotFound):
        await extension.exec("vmlife0001", ["true"], sink, host="host1")
    logging.getLogger(__name__).warning(
        "vm-packer timings: provision %.2fs, ready %.2fs, teardown %.2fs",
        provisioned - began,
        ready - provisioned,
        torn_down - tearing_down,
    )


async def test_without_repo_or_vm_input_uses_the_placement_host(
    ssh_hosts: SshHosts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extension, [_, vm2] = await vms(ssh_hosts, tmp_path, monkeypatch, count=2)
    request = ProvisionRequest(sandbox_id="vmnorepo01", profile=profile(), inputs={}, host="host2")
    await extension.provision(request)
    readiness = await extension.wait_ready(request)
    assert readiness.descriptor["host"] == "host2"
    workspace = Path(vm2.host.workspace_root) / "sbx-vmnorepo01"
    assert workspace.is_dir()
    assert list(workspace.iterdir()) == []
    # No host given: exec and teardown find it on whichever host holds it.
    assert await extension.exec("vmnorepo01", ["true"], _discard) == 0
    await extension.teardown("vmnorepo01")
    assert not workspace.exists()


async def test_failing_setup_reports_its_output_redacted(
    ssh_hosts: SshHosts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extension, [vm] = await vms(ssh_hosts, tmp_path, monkeypatch)
    request = ProvisionRequest(
        sandbox_id="vmsetupfail1",
        profile=profile('. ./.sandboxer.env; echo "token=$T"; exit 3'),
        inputs={"vm": "host1"},
        secrets={"T": SECRET},
        host="host1",
    )
    with pytest.raises(ExtensionError) as caught:
        await extension.provision(request)
    assert "exited with code 3" in caught.value.message
    assert "token=[redacted]" in caught.value.message
    assert SECRET not in str(caught.value)
    await extension.teardown("vmsetupfail1", host="host1")
    assert not (Path(vm.host.workspace_root) / "sbx-vmsetupfail1").exists()


async def test_vm_input_must_agree_with_placement_and_exist(
    ssh_hosts: SshHosts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extension, _ = await vms(ssh_hosts, tmp_path, monkeypatch, count=2)
    with pytest.raises(InvalidInput, match=re.escape("placement: {host_input: vm}")):
        await extension.provision(
            ProvisionRequest(
                sandbox_id="vmmismatch1", profile=profile(), inputs={"vm": "host2"}, host="host1"
            )
        )
    with pytest.raises(ExtensionError, match="not in the hosts file"):
        await extension.provision(
            ProvisionRequest(
                sandbox_id="vmunknown01", profile=profile(), inputs={"vm": "buildvm01"}
            )
        )
    with pytest.raises(InvalidInput):
        await extension.provision(
            ProvisionRequest(
                sandbox_id="vmhostile01", profile=profile(), inputs={"vm": "$(reboot)"}
            )
        )
    with pytest.raises(ExtensionError, match="has 2 hosts"):
        await extension.provision(
            ProvisionRequest(sandbox_id="vmnohost001", profile=profile(), inputs={})
        )


@pytest.mark.parametrize(
    ("sandbox_id", "inputs"),
    [
        ("../x", {}),
        ("$(reboot)", {}),
        ("vmhostile01", {"repo": "/nonexistent/dir"}),
        ("vmhostile02", {"repo": "$(reboot)"}),
        ("vmhostile03", {"vm": "../etc"}),
    ],
)
async def test_hostile_ids_and_inputs_are_refused_before_any_connection(
    ssh_hosts: SshHosts,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    sandbox_id: str,
    inputs: dict[str, str],
) -> None:
    monkeypatch.delenv("SANDBOXER_HOSTS", raising=False)
    [vm] = await ssh_hosts(1)
    await vm.server.stop()
    home = tmp_path / "home"
    write_hosts_file(home / "hosts.yaml", [vm], port=closed_port())
    extension = VmPackerExtension(settings_for(home))
    with pytest.raises(InvalidInput):
        await extension.provision(
            ProvisionRequest(sandbox_id=sandbox_id, profile=profile(), inputs=inputs, host="host1")
        )
    with pytest.raises(HostUnreachable):  # a well-formed request does reach for the host
        await extension.provision(
            ProvisionRequest(sandbox_id="wellformed01", profile=profile(), inputs={}, host="host1")
        )


async def test_listing_skips_unreachable_vms_and_other_backends_workspaces(
    ssh_hosts: SshHosts,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    extension, [vm1, vm2] = await vms(ssh_hosts, tmp_path, monkeypatch, count=2)
    for vm, sandbox_id in ((vm1, "vmlisted01"), (vm2, "vmlisted02")):
        await extension.provision(
            ProvisionRequest(sandbox_id=sandbox_id, profile=profile(), inputs={}, host=vm.name)
        )
    root2 = Path(vm2.host.workspace_root)
    (root2 / "sbx-composeonly1").mkdir()
    (root2 / "sbx-composeonly1.json").write_text('{"extension": "ext.compose-ssh"}\n')
    found = await extension.list_sandboxes()
    assert sorted((f.sandbox_id, f.host) for f in found) == [
        ("vmlisted01", "host1"),
        ("vmlisted02", "host2"),
    ]
    await extension.teardown("composeonly1", host="host2")
    assert (root2 / "sbx-composeonly1").is_dir()  # not ours: left alone

    await vm1.server.stop()
    found = await extension.list_sandboxes()
    assert [(f.sandbox_id, f.host) for f in found] == [("vmlisted02", "host2")]
    assert "skipping host host1" in caplog.text
    await vm1.server.start()
    for item in await extension.list_sandboxes():
        await extension.teardown(item.sandbox_id, host=item.host)
    assert await extension.list_sandboxes() == []


async def _discard(_stream: str, _data: bytes) -> None:
    return None


async def test_a_deleted_workspace_whose_marker_stayed_is_a_corpse(
    ssh_hosts: SshHosts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extension, [vm] = await vms(ssh_hosts, tmp_path, monkeypatch)
    request = ProvisionRequest(
        sandbox_id="vmgone00001", profile=profile(), inputs={"vm": "host1"}, host="host1"
    )
    await extension.provision(request)
    await extension.wait_ready(request)
    workspace = Path(vm.host.workspace_root) / "sbx-vmgone00001"
    shutil.rmtree(workspace)  # someone cleaned the VM by hand
    [found] = await extension.list_sandboxes()
    assert (found.sandbox_id, found.alive, found.host) == ("vmgone00001", False, "host1")
    assert found.detail["dead"] == f"its workspace {workspace} was deleted"
    await extension.teardown("vmgone00001", host="host1")
    assert await extension.list_sandboxes() == []
    assert not (Path(vm.host.workspace_root) / "sbx-vmgone00001.json").exists()


async def test_a_setup_instruction_past_its_deadline_is_stopped_on_the_vm(
    ssh_hosts: SshHosts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extension, _ = await vms(ssh_hosts, tmp_path, monkeypatch)
    monkeypatch.setattr(vm_backend, "SETUP_TIMEOUT", 1.0)
    pid_file = tmp_path / "setup.pid"
    request = ProvisionRequest(
        sandbox_id="vmslow00001",
        profile=profile(f"echo $$ > {pid_file}; exec sleep 300"),
        inputs={"vm": "host1"},
        host="host1",
    )
    with pytest.raises(RemoteCommandFailed, match="did not finish within 1s; the host stopped"):
        await extension.provision(request)
    pid = int(pid_file.read_text())
    for _ in range(40):
        if not _running(pid):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"setup process {pid} still runs after its deadline")
    await extension.teardown("vmslow00001", host="host1")


def _running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
