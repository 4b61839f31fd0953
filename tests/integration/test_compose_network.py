"""ext.compose-ssh under a deny policy: every service is cut off the network, whatever the
compose file says (docs/network.md), against a real sshd host and a real engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sandboxer.config.network_policy import DENY_ALL, parse_policy
from sandboxer.errors import InvalidInput
from sandboxer.extensions.base import ProvisionRequest
from sandboxer.extensions.compose_ssh.stack import NO_NETWORK_FILE
from tests.integration.remote_fixtures import ENGINES
from tests.integration.test_ext_compose_ssh import Env, env, make_repo

__all__ = ["env"]  # a fixture, used by name

pytestmark = pytest.mark.integration

# No network_mode: left alone, compose would put both services on the project's network.
NETWORKED = """\
services:
  web:
    image: localhost/mini:latest
    command: ["sleep", "3600"]
    init: true
  worker:
    image: localhost/mini:latest
    command: ["sleep", "3600"]
    init: true
"""


def denied(env: Env, sandbox_id: str, repo: Path) -> ProvisionRequest:
    request = env.request(sandbox_id, repo)
    return ProvisionRequest(
        sandbox_id=request.sandbox_id,
        profile=env.profile.with_network(DENY_ALL),
        inputs=request.inputs,
        host=request.host,
    )


@pytest.mark.parametrize("compose_engine", ENGINES, indirect=True)
async def test_deny_gives_every_service_no_network(env: Env, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", NETWORKED)
    request = denied(env, "composenonet1", repo)
    await env.extension.provision(request)
    readiness = await env.extension.wait_ready(request)
    assert not [w for w in readiness.warnings if "network" in w]
    directory = env.root / "sbx-composenonet1"
    override = json.loads((directory / NO_NETWORK_FILE).read_text())
    assert override == {
        "services": {"web": {"network_mode": "none"}, "worker": {"network_mode": "none"}}
    }
    names = env.containers("composenonet1")
    assert len(names) == 2
    for name in names:
        # Inside, only loopback exists: there is no interface to reach anything else through.
        links = env.engine.cli("exec", name, "ls", "/sys/class/net").stdout.split()
        assert links == ["lo"], (name, links)
        mode = env.engine.cli("inspect", "--format", "{{.HostConfig.NetworkMode}}", name)
        assert mode.stdout.strip() == "none"
    code = await _exec(env, "composenonet1", ["ls", "/sys/class/net"])
    assert code == (0, b"lo\n")
    await env.extension.teardown("composenonet1", host="host1")
    assert env.containers("composenonet1") == []
    assert not directory.exists()


async def test_an_allowlist_is_refused_before_anything_is_made(env: Env, tmp_path: Path) -> None:
    """Routing never sends one here (network: all-or-nothing); a direct caller is refused."""
    repo = make_repo(tmp_path / "repo", NETWORKED)
    base = env.request("composeallow1", repo)
    request = ProvisionRequest(
        sandbox_id=base.sandbox_id,
        profile=env.profile.with_network(parse_policy({"egress": ["pypi.org:443"]})),
        inputs=base.inputs,
        host=base.host,
    )
    with pytest.raises(InvalidInput, match="enforces no egress allowlist yet"):
        await env.extension.provision(request)
    assert not (env.root / "sbx-composeallow1").exists()


async def _exec(env: Env, sandbox_id: str, argv: list[str]) -> tuple[int, bytes]:
    out = bytearray()

    async def sink(stream: str, data: bytes) -> None:
        if stream == "stdout":
            out.extend(data)

    code = await env.extension.exec(sandbox_id, argv, sink, host="host1")
    return code, bytes(out)
