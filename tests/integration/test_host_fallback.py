"""A backend whose hosts are all down hands the create to the profile's next candidate.

Whether a host answers only placement's SSH probe knows, so routing chose ext.vm-packer
with every host of its placement down, and the create was rejected ``no_host`` although
the profile's route had another candidate. Real sshd hosts, stopped; ext.saas-stub (a paid
backend) is the next candidate: one reservation, one ``routed``, and a command sent again
decides nothing new.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sandboxer.errors import CommandFailed
from sandboxer.ids import new_command_id
from tests.integration.conftest import Service, send_again, start_service
from tests.integration.remote_fixtures import SshHostInfo, SshHosts, write_hosts_file
from tests.integration.test_ext_saas_stub import write_override
from tests.integration.test_pause import events_of

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROFILES = {
    "profile.vm-or-stub": """\
id: profile.vm-or-stub
route:
  strategy: explicit
  candidates: [ext.vm-packer, ext.saas-stub]
network: {default: allow}
placement: {prefer: [host1], fallback: [host2]}
""",
    "profile.vm-only": """\
id: profile.vm-only
route:
  strategy: explicit
  candidates: [ext.vm-packer]
network: {default: allow}
placement: {prefer: [host1], fallback: [host2]}
""",
}
ROLES = ["control", "projector", "ext.saas-stub", "ext.vm-packer"]


async def service_with_hosts(
    home: Path, url: str, ssh_hosts: SshHosts, monkeypatch: pytest.MonkeyPatch, *, up: bool
) -> tuple[Service, list[SshHostInfo]]:
    monkeypatch.delenv("SANDBOXER_HOSTS", raising=False)
    hosts = await ssh_hosts(2)
    write_hosts_file(home / "hosts.yaml", hosts)
    if not up:
        await stop(hosts)
    (home / "profiles").mkdir(parents=True, exist_ok=True)
    for name, text in PROFILES.items():
        (home / "profiles" / f"{name}.yaml").write_text(text)
    write_override(home, latency_ms=1)  # the packaged prices: a paid backend
    return await start_service(home, url, ROLES), hosts


async def stop(hosts: list[SshHostInfo]) -> None:
    for host in hosts:
        await host.server.stop()


async def rejections_of(service: Service, command_id: str) -> list[dict[str, Any]]:
    return [
        event
        async for _seq, event in service.client.events()
        if event.get("type") == "rejected" and event.get("command_id") == command_id
    ]


async def test_a_backend_with_no_reachable_host_falls_to_the_next_candidate(
    nats_server: Any, home: Path, ssh_hosts: SshHosts, monkeypatch: pytest.MonkeyPatch
) -> None:
    service, _hosts = await service_with_hosts(
        home, nats_server.url, ssh_hosts, monkeypatch, up=False
    )
    try:
        await service.fund(amount=50_000_000)
        client = service.client
        command_id = new_command_id()
        ready = await client.create("profile.vm-or-stub", ttl="10m", command_id=command_id)
        sandbox_id = ready["sandbox_id"]
        events = await events_of(client, sandbox_id)
        assert [e["type"] for e in events] == ["requested", "routed", "provisioning", "ready"]
        routed = events[1]
        assert routed["extension"] == "ext.saas-stub"
        assert routed["host"] is None
        reason = routed["reason"]
        assert reason.startswith("explicit: ext.saas-stub is the first eligible candidate")
        assert "ext.vm-packer has no reachable host" in reason
        assert "host1 unhealthy" in reason
        assert "host2 unhealthy" in reason
        [vm] = [s for s in routed["scores"] if s["extension"] == "ext.vm-packer"]
        assert not vm["eligible"]
        assert vm["why_not"].startswith("has no reachable host")
        [account] = await client.credits("default")
        reserved = account["reserved"]
        assert reserved == 61_000  # once, at the stub's prices: 0.001 + 600 s x 0.0001 USD

        # Sent again: the same outcome, nothing decided or reserved twice, no rejection.
        await send_again(service.client, command_id, "profile.vm-or-stub", ttl="10m")
        assert await events_of(client, sandbox_id) == events
        [account] = await client.credits("default")
        assert account["reserved"] == reserved
        assert await rejections_of(service, command_id) == []
        await client.destroy(sandbox_id)
    finally:
        await service.client.close()
        await service.shutdown()


async def test_no_candidate_left_is_no_host_with_each_host_s_reason(
    nats_server: Any, home: Path, ssh_hosts: SshHosts, monkeypatch: pytest.MonkeyPatch
) -> None:
    service, _hosts = await service_with_hosts(
        home, nats_server.url, ssh_hosts, monkeypatch, up=False
    )
    try:
        with pytest.raises(CommandFailed) as caught:
            await service.client.create("profile.vm-only")
        event = caught.value.event
        assert (event["type"], event["code"]) == ("rejected", "no_host")
        assert event["reason"].startswith("no host can take this sandbox: host1 unhealthy")
        assert "host2 unhealthy" in event["reason"]
    finally:
        await service.client.close()
        await service.shutdown()


async def test_a_routed_create_sent_again_once_its_hosts_are_down_is_not_rejected(
    nats_server: Any, home: Path, ssh_hosts: SshHosts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A create placed on host1, sent again once every host is down: admitted anew it finds
    no host and no other candidate, and was recorded as rejected although it had routed
    a sandbox that is ready (a decided command turned into a rejection)."""
    service, hosts = await service_with_hosts(
        home, nats_server.url, ssh_hosts, monkeypatch, up=True
    )
    try:
        client = service.client
        command_id = new_command_id()
        ready = await client.create("profile.vm-only", command_id=command_id)
        assert ready["reachability"]["host"] == "host1"
        events = await events_of(client, ready["sandbox_id"])
        await stop(hosts)
        await send_again(service.client, command_id, "profile.vm-only")
        assert await rejections_of(service, command_id) == []
        assert await events_of(client, ready["sandbox_id"]) == events
    finally:
        await service.client.close()
        await service.shutdown()
