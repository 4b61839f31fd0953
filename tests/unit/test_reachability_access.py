"""The access shapes of ``reachability.access`` (docs/protocol.md#reachability)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from sandboxer.config.hosts import HostConfig
from sandboxer.events.reachability import (
    LocalExecAccess,
    ProviderAccess,
    SshAccess,
    access_of,
    fingerprint_of_public_key,
    provider_access,
)


def test_each_kind_records_only_its_fields() -> None:
    local = LocalExecAccess(node="n1", workdir="/w", exec="sandboxer exec s -- CMD").as_dict()
    assert local == {"kind": "local-exec", "node": "n1", "workdir": "/w", "exec": local["exec"]}
    ssh = SshAccess(
        host="10.0.0.1",
        port=2222,
        user="root",
        host_key_fingerprint="SHA256:abc",
        host_key_verified=True,
        host_name="h1",
        workdir="/var/tmp/sandboxer/sbx-s",
    ).as_dict()
    assert ssh["kind"] == "ssh"
    assert "tunnel_ref" not in ssh
    assert "enter" not in ssh
    assert provider_access("e2b", "s", "ib1", url="https://{port}-ib1.e2b.app") == {
        "access": {
            "kind": "provider",
            "provider": "e2b",
            "provider_sandbox_id": "ib1",
            "url": "https://{port}-ib1.e2b.app",
            "exec": "sandboxer exec s -- CMD",
        }
    }


def test_a_reader_takes_known_kinds_and_skips_the_rest() -> None:
    recorded = provider_access("modal", "s", "sb-1")
    assert access_of(recorded) == ProviderAccess(
        provider="modal", provider_sandbox_id="sb-1", exec="sandboxer exec s -- CMD"
    )
    assert access_of({"kind": "local"}) is None  # events from before access existed
    assert access_of({"access": {"kind": "carrier-pigeon", "loft": "roof"}}) is None
    assert access_of({"access": {"kind": "ssh", "host": "h"}}) is None  # fields missing
    assert access_of({"access": "ssh://h"}) is None
    # A later version's extra fields do not stop an older reader.
    later = {
        **SshAccess(
            host="h", port=22, user="u", host_key_verified=True, host_name="h", workdir="/w"
        ).as_dict(),
        "jump_host": "bastion",
    }
    assert isinstance(access_of({"access": later}), SshAccess)


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs OpenSSH's ssh-keygen")
def test_the_fingerprint_is_what_ssh_keygen_prints(tmp_path: Path) -> None:
    key = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    line = (tmp_path / "k.pub").read_text()
    printed = subprocess.run(
        ["ssh-keygen", "-lf", str(tmp_path / "k.pub")], check=True, capture_output=True, text=True
    ).stdout.split()[1]
    assert fingerprint_of_public_key(line) == printed


def test_a_line_without_a_key_is_refused() -> None:
    with pytest.raises(ValueError, match="base64"):
        fingerprint_of_public_key("ssh-ed25519 !!!not-base64!!!")
    with pytest.raises(ValueError, match="<type> <base64>"):
        fingerprint_of_public_key("ssh-ed25519")


def test_hosts_file_names_tunnel_and_principal_as_plain_words() -> None:
    host = HostConfig(
        address="10.0.0.1",
        host_key="ssh-ed25519 AAAA",
        tunnel_ref="tunnels/h1",
        ssh_principal="sandbox-users",
    )
    assert (host.tunnel_ref, host.ssh_principal) == ("tunnels/h1", "sandbox-users")
    for hostile in ("$(reboot)", "a b", "", "-oProxyCommand=x"):
        with pytest.raises(ValueError, match="should match pattern"):
            HostConfig(address="h", host_key="ssh-ed25519 AAAA", tunnel_ref=hostile)
        with pytest.raises(ValueError, match="should match pattern"):
            HostConfig(address="h", host_key="ssh-ed25519 AAAA", ssh_principal=hostile)
