"""A fresh create's one-command claim (ssh_workspace.claim) against a real sshd on loopback."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from sandboxer.extensions.ssh_targets import Target
from sandboxer.extensions.ssh_workspace import claim, probe
from sandboxer.ssh import session
from tests.integration.remote_fixtures import SshHosts

pytestmark = pytest.mark.integration


async def test_a_fresh_claim_writes_the_marker_then_the_directory(ssh_hosts: SshHosts) -> None:
    [info] = await ssh_hosts(1)
    item = Target(info.name, info.host)
    swept = Path(info.host.workspace_root).parent / "swept"
    async with session(info.name, info.host) as conn:
        done = await claim(
            conn, item, "claimfresh01", {"extension": "ext.x"}, first=["touch", str(swept)]
        )
    assert done.claimed
    assert done.host_has_rsync  # rsync is installed here
    assert swept.exists()  # the command given first ran
    marker = Path(item.marker("claimfresh01"))
    assert json.loads(marker.read_text()) == {"extension": "ext.x", "sandbox_id": "claimfresh01"}
    assert stat.S_IMODE(marker.stat().st_mode) == 0o600
    assert Path(item.workspace("claimfresh01")).is_dir()
    assert not list(marker.parent.glob("*.sbx-*"))  # no staging file left


@pytest.mark.parametrize("leftover", ["marker", "directory"])
async def test_a_claim_changes_nothing_where_something_is_left(
    ssh_hosts: SshHosts, leftover: str
) -> None:
    [info] = await ssh_hosts(1)
    item = Target(info.name, info.host)
    root = Path(info.host.workspace_root)
    root.mkdir(parents=True, exist_ok=True)
    if leftover == "marker":
        Path(item.marker("claimbusy01")).write_text('{"extension": "ext.other"}\n')
    else:
        Path(item.workspace("claimbusy01")).mkdir()
    swept = root.parent / "swept"
    async with session(info.name, info.host) as conn:
        done = await claim(
            conn, item, "claimbusy01", {"extension": "ext.x"}, first=["touch", str(swept)]
        )
        found = await probe(conn, item, "claimbusy01")
    assert not done.claimed
    assert not swept.exists()  # nothing ran: the caller takes the long way
    if leftover == "marker":
        assert found.marker == {"extension": "ext.other"}
        assert not found.path_exists
    else:
        assert not found.marker_exists
        assert found.directory


async def test_a_failing_first_command_claims_nothing(ssh_hosts: SshHosts) -> None:
    [info] = await ssh_hosts(1)
    item = Target(info.name, info.host)
    async with session(info.name, info.host) as conn:
        done = await claim(conn, item, "claimfail01", {"extension": "ext.x"}, first=["false"])
        found = await probe(conn, item, "claimfail01")
    assert not done.claimed
    assert not found.marker_exists
    assert not found.path_exists
