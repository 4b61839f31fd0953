"""ext.local's egress enforcement through the real service: bus, control, projector and the
ext.local worker, real bwrap, nftables and network namespaces (docs/network.md).

A profile allows one name and one address and port; a create narrows it. Commands run in the
sandboxes through ``exec`` over the bus and try to get out. Every target is in the namespace
test_local_egress's ``target`` fixture makes (198.18.0.0/15) or on loopback; names resolve
through ``$SANDBOXER_HOME/egress-hosts``, which the worker hands to the proxies.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sandboxer.client import SandboxerClient
from sandboxer.errors import CommandFailed
from sandboxer.extensions.local import LocalExtension
from tests.integration import test_local_egress
from tests.integration.conftest import Service, reap_local, start_service
from tests.integration.test_local_egress import (
    CURL_CONNECT_REFUSED,
    CURL_PROXY_REFUSED,
    NOTHING,
    Target,
    leftovers,
)

pytestmark = pytest.mark.integration

# The target namespace and the tool checks (root, bwrap, ip, nft, curl), as test_local_egress has them.
target = test_local_egress.target
_tools = test_local_egress._tools

ROLES = ["control", "projector", "ext.local"]
PROFILE = """\
id: profile.egress-one
extension: ext.local
network:
  default: deny
  egress: ["pkg.allowed.test:80,443/tcp", "{address}:8080/tcp"]
inputs:
  repo: {{type: directory, required: false}}
ttl: {{default: 10m, max: 1h}}
"""


@pytest.fixture
async def service(nats_server: Any, home: Path, target: Target) -> AsyncIterator[Service]:
    (home / "profiles").mkdir(parents=True, exist_ok=True)
    (home / "profiles" / "profile.egress-one.yaml").write_text(
        PROFILE.format(address=target.address)
    )
    # Its network is built before its setup instruction runs, and the instruction fails.
    (home / "profiles" / "profile.egress-fails.yaml").write_text(
        "id: profile.egress-fails\nextension: ext.local\n"
        'network: {default: deny, egress: ["pkg.allowed.test:80"]}\n'
        'setup: {instructions: ["exit 3"]}\n'
    )
    shutil.copy(target.hosts_file, home / "egress-hosts")
    running = await start_service(home, nats_server.url, ROLES)
    try:
        yield running
    finally:
        await running.client.close()
        await running.shutdown()
        await reap_local(home)


@pytest.fixture
def ca_input(home: Path, target: Target) -> dict[str, str]:
    """The target's certificate as the repo input (a path under the workers' input roots)."""
    directory = home.parent / "ca-input"
    if not directory.exists():
        shutil.copytree(target.ca_dir, directory)
    return {"repo": str(directory)}


async def run(client: SandboxerClient, sandbox_id: str, *argv: str) -> tuple[int, str]:
    output = bytearray()

    def collect(_stream: str, data: bytes) -> None:
        output.extend(data)

    code = await client.exec(sandbox_id, list(argv), collect, timeout=60)
    return code, output.decode(errors="replace")


async def curl(
    client: SandboxerClient, sandbox_id: str, url: str, *options: str
) -> tuple[int, str]:
    """curl's exit code and what it said; ``--connect-timeout`` only bounds a broken test."""
    return await run(
        client, sandbox_id, "curl", "-sS", "--connect-timeout", "5", "--max-time", "10",
        "--cacert", "/workspace/ca.pem", *options, url,
    )  # fmt: skip


def built(home: Path, sandbox_id: str) -> dict[str, Any]:
    return leftovers(LocalExtension(home / "local"), sandbox_id)


async def test_the_profile_policy_is_enforced_and_destroy_leaves_nothing(
    service: Service, home: Path, target: Target, ca_input: dict[str, str]
) -> None:
    client = service.client
    ready = await client.create("profile.egress-one", ca_input, sandbox_id="egressprof01")
    assert ready["network"] == {
        "default": "deny",
        "egress": ["pkg.allowed.test:80,443/tcp", f"{target.address}:8080/tcp"],
    }
    assert ready["warnings"] == []
    sandbox_id = "egressprof01"

    # The allowed name, through the proxy, over HTTP and HTTPS; another name is refused.
    assert await curl(client, sandbox_id, "http://pkg.allowed.test/") == (
        0,
        "hello from pkg.allowed.test:80\n",
    )
    assert await curl(client, sandbox_id, "https://pkg.allowed.test/") == (
        0,
        "hello from pkg.allowed.test:443\n",
    )
    code, said = await curl(client, sandbox_id, "http://other.test/")
    assert "not on this sandbox's allowlist" in said
    assert "hello" not in said
    code, said = await curl(client, sandbox_id, "https://other.test/")
    assert code == CURL_PROXY_REFUSED, said

    # The allowed address and port connect directly; another port is refused at once (a
    # reset: curl's 7, not a timeout's 28), and so is the allowed name's address itself.
    direct = ("--noproxy", "*")
    assert await curl(client, sandbox_id, f"http://{target.address}:8080/", *direct) == (
        0,
        f"hello from {target.address}:8080:8080\n",
    )
    for refused in (f"http://{target.address}:8081/", f"http://{target.other_address}:8080/"):
        code, said = await curl(client, sandbox_id, refused, *direct)
        assert code == CURL_CONNECT_REFUSED, (refused, said)

    # Nobody inside changes the rules: not the exec user, not the sandbox's uid 0.
    code, said = await run(client, sandbox_id, "/usr/sbin/nft", "flush", "ruleset")
    assert code != 0
    assert "Operation not permitted" in said, said
    state = json.loads((home / "local" / sandbox_id / "state.json").read_text())
    as_sandbox_root = [
        "nsenter", "-t", str(state["holder_pid"]), "-a", "--",
        "setpriv", "--securebits=+noroot,+noroot_locked", "--inh-caps=-all",
        "--ambient-caps=-all", "--no-new-privs", "--",
    ]  # fmt: skip
    flushed = subprocess.run(
        [*as_sandbox_root, "nft", "flush", "ruleset"], capture_output=True, text=True, check=False
    )
    assert flushed.returncode != 0
    assert "Operation not permitted" in flushed.stderr, flushed.stderr
    code, said = await curl(client, sandbox_id, f"http://{target.address}:8081/", *direct)
    assert code == CURL_CONNECT_REFUSED, said

    made = built(home, sandbox_id)
    assert made["netns"]
    assert made["table"]
    assert [len(made[key]) for key in ("links", "proxies", "slots")] == [1, 1, 1]
    await client.destroy(sandbox_id)
    assert built(home, sandbox_id) == NOTHING


async def test_a_narrowed_create_is_enforced_as_narrowed(
    service: Service, home: Path, target: Target, ca_input: dict[str, str]
) -> None:
    client = service.client
    # One name on one port: the profile's address and the name's other port are gone.
    ready = await client.create(
        "profile.egress-one",
        ca_input,
        sandbox_id="egressnarr01",
        network={"egress": ["pkg.allowed.test:80/tcp"]},
    )
    assert ready["network"] == {"default": "deny", "egress": ["pkg.allowed.test:80/tcp"]}
    assert await curl(client, "egressnarr01", "http://pkg.allowed.test/") == (
        0,
        "hello from pkg.allowed.test:80\n",
    )
    code, said = await curl(client, "egressnarr01", "https://pkg.allowed.test/")
    assert code == CURL_PROXY_REFUSED, said
    code, said = await curl(
        client, "egressnarr01", f"http://{target.address}:8080/", "--noproxy", "*"
    )
    assert code == CURL_CONNECT_REFUSED, said

    # Deny: loopback only, nothing of ours is built, nothing connects.
    ready = await client.create(
        "profile.egress-one", ca_input, sandbox_id="egressdeny01", network={"default": "deny"}
    )
    assert ready["network"] == {"default": "deny", "egress": []}
    assert built(home, "egressdeny01") == NOTHING
    code, out = await run(client, "egressdeny01", "cat", "/proc/net/dev")
    assert [line.split(":")[0].strip() for line in out.splitlines()[2:]] == ["lo"]
    for url in (f"http://{target.address}:8080/", "http://pkg.allowed.test/"):
        code, said = await curl(client, "egressdeny01", url)
        assert code != 0, said
        assert "hello" not in said

    for sandbox_id in ("egressnarr01", "egressdeny01"):
        await client.destroy(sandbox_id)
        assert built(home, sandbox_id) == NOTHING


async def test_a_failed_create_leaves_no_network_behind(service: Service, home: Path) -> None:
    with pytest.raises(CommandFailed) as failed:
        await service.client.create("profile.egress-fails", sandbox_id="egressfail01")
    assert failed.value.event["type"] == "failed"
    assert "setup.instructions[0]" in failed.value.event["reason"]
    assert built(home, "egressfail01") == NOTHING
