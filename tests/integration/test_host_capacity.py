"""A host's ``max_sandboxes`` holds under a burst of creates one control worker handles at once.

Placement read each host's live sandboxes from the route signals its create fetched
before it probed the hosts, and a create held its host only once its probe had answered:
every create of a burst fetched its signals while the others were still probing, saw the
same free place and took it. Real nats-server, real sshd hosts, ext.vm-packer.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.conftest import start_service
from tests.integration.remote_fixtures import SshHosts, write_hosts_file
from tests.integration.test_pause import events_of

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROFILE = """\
id: profile.vm-spill
route:
  strategy: explicit
  candidates: [ext.vm-packer]
network: {default: allow}
placement: {prefer: [host1], fallback: [host2]}
"""
ROLES = ["control", "projector", "ext.vm-packer"]


async def test_a_burst_of_creates_fills_a_host_to_its_max_sandboxes_and_no_further(
    nats_server: Any, home: Path, ssh_hosts: SshHosts, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SANDBOXER_HOSTS", raising=False)
    hosts = await ssh_hosts(2)
    path = write_hosts_file(home / "hosts.yaml", hosts)
    document = yaml.safe_load(path.read_text())
    document["hosts"]["host1"]["max_sandboxes"] = 1
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    (home / "profiles").mkdir(parents=True, exist_ok=True)
    (home / "profiles" / "profile.vm-spill.yaml").write_text(PROFILE)
    service = await start_service(home, nats_server.url, ROLES)
    try:
        client = service.client
        burst = await asyncio.gather(*(client.create("profile.vm-spill") for _ in range(4)))
        placed = []
        for sandbox in burst:
            events = await events_of(client, sandbox["sandbox_id"])
            [routed] = [e for e in events if e["type"] == "routed"]
            placed.append(routed["host"])
        assert sorted(placed) == ["host1", "host2", "host2", "host2"], placed
        skipped = [
            routed_reason
            for sandbox in burst
            for routed_reason in [
                e["reason"]
                for e in await events_of(client, sandbox["sandbox_id"])
                if e["type"] == "routed" and e["host"] == "host2"
            ]
        ]
        assert all("host1 is full (1 of its max_sandboxes 1)" in why for why in skipped), skipped
        for sandbox in burst:
            await client.destroy(sandbox["sandbox_id"])
    finally:
        await service.client.close()
        await service.shutdown()
