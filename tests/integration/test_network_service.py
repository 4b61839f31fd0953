"""The network policy through the real service (nats-server, control, projector, ext.local and
the stub): routing by what a backend enforces, a create narrowing the policy, a widening
rejected on record, an adm widening, the policy in requested, ready and get (docs/network.md).

The stub's declaration is overridden to claim ``network: cidr`` (it enforces nothing: this
test is about routing and the record, not about packets): a backend that lacks ``domain``,
first in the route, so a policy with names passes it over for ext.local and one without
lands on it. test_local_egress_service, test_hosted_network and test_compose_network check
what is enforced and what backends are sent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from sandboxer.cli.key_commands import create_key
from sandboxer.client import Sandboxer, SandboxerClient
from sandboxer.config.catalog import packaged_dir
from sandboxer.errors import CommandFailed
from tests.integration.conftest import Cli, reap_local, serve_gateway, start_service

pytestmark = pytest.mark.integration

ROLES = ["control", "projector", "ext.local", "ext.saas-stub"]
PROFILE = """\
id: profile.pypi
route:
  strategy: explicit
  candidates: [ext.saas-stub, ext.local]
network:
  default: deny
  egress: ["*.pypi.org:443", "10.0.0.0/8"]
ttl: {default: 10m, max: 1h}
"""
AGENT = {"type": "agt", "id": "agent-net"}
ADMIN = {"type": "adm", "id": "ops"}


def write_home(home: Path) -> None:
    (home / "profiles").mkdir(parents=True, exist_ok=True)
    (home / "profiles" / "profile.pypi.yaml").write_text(PROFILE)
    decl = yaml.safe_load((packaged_dir("extensions") / "ext.saas-stub.yaml").read_text())
    decl["capabilities"]["network"] = "cidr"
    decl["pricing"] = {"per_second": 0.0, "per_create": 0.0}
    (home / "extensions").mkdir(parents=True, exist_ok=True)
    (home / "extensions" / "ext.saas-stub.yaml").write_text(yaml.safe_dump(decl))


async def create(
    client: SandboxerClient,
    sandbox_id: str,
    actor: dict[str, Any],
    network: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A create with its own ``network`` (the bus command's field), waited for."""
    command: dict[str, Any] = {
        "command_id": f"net-{sandbox_id}",
        "actor": actor,
        "profile": "profile.pypi",
        "sandbox_id": sandbox_id,
    }
    if network is not None:
        command["network"] = network
    return await client.outcomes.run(
        "create",
        command,
        sandbox_id,
        {"ready"},
        lambda: client.publish_command("create", command),
        None,
        60.0,
    )


async def events_of(client: SandboxerClient, sandbox_id: str) -> dict[str, dict[str, Any]]:
    return {e["type"]: e async for _seq, e in client.events(sandbox_id=sandbox_id)}


async def viewed(client: SandboxerClient, sandbox_id: str) -> dict[str, Any]:
    """The sandbox as the view holds it once the view has its latest event."""
    last = max([seq async for seq, _e in client.events(sandbox_id=sandbox_id)])
    return await client.get(sandbox_id, min_seq=last) or {}


async def test_the_policy_routes_narrows_and_is_on_record(nats_server: Any, home: Path) -> None:
    write_home(home)
    service = await start_service(home, nats_server.url, ROLES)
    client = service.client
    try:
        # The profile's policy needs names: the stub (cidr) is left out, and says why.
        explained = await client.route_explain("profile.pypi")
        why = {c["extension"]: c.get("why_not") for c in explained["decision"]["candidates"]}
        assert why["ext.saas-stub"] == (
            "cannot enforce the network policy (deny; egress *.pypi.org:443, 10.0.0.0/8): it "
            "needs a domain allowlist (network: domain) and the backend enforces network: cidr"
        )
        assert why["ext.local"] is None
        assert explained["decision"]["chosen"] == "ext.local"

        await create(client, "netprofile01", AGENT)
        events = await events_of(client, "netprofile01")
        policy = {"default": "deny", "egress": ["*.pypi.org:443", "10.0.0.0/8"]}
        assert events["requested"]["network"] == policy
        assert events["ready"]["network"] == policy
        assert events["routed"]["extension"] == "ext.local"
        assert "ext.saas-stub cannot enforce the network policy" in events["routed"]["reason"]
        assert (await viewed(client, "netprofile01"))["network"] == policy

        # Narrowed to no network at all: the stub can hold that, and is first.
        await create(client, "netnarrow001", AGENT, {"default": "deny"})
        events = await events_of(client, "netnarrow001")
        assert events["requested"]["network"] == {"default": "deny", "egress": []}
        assert events["routed"]["extension"] == "ext.saas-stub"
        assert (await viewed(client, "netnarrow001"))["network"] == {
            "default": "deny",
            "egress": [],
        }

        # Narrowed within the names, in the object form: still names, still ext.local.
        asked = {"egress": [{"to": "files.pypi.org", "ports": [443], "protocol": "tcp"}]}
        await create(client, "netnarrow002", AGENT, asked)
        events = await events_of(client, "netnarrow002")
        assert events["routed"]["extension"] == "ext.local"
        assert events["ready"]["network"] == {
            "default": "deny",
            "egress": ["files.pypi.org:443/tcp"],
        }

        # A widening by an agent is rejected, with the entry, on record; nothing is made.
        with pytest.raises(CommandFailed) as refused:
            await create(client, "netwiden0001", AGENT, {"egress": ["pypi.org:443"]})
        assert refused.value.event["code"] == "network_widened"
        assert (
            "egress pypi.org:443 is not within the profile's network policy"
            in (refused.value.event["reason"])
        )
        assert await client.get("netwiden0001") is None

        # An adm actor may widen: default allow needs nothing, so the stub takes it.
        await create(client, "netadmin0001", ADMIN, {"default": "allow"})
        events = await events_of(client, "netadmin0001")
        assert events["requested"]["network"] == {"default": "allow", "egress": []}
        assert events["routed"]["extension"] == "ext.saas-stub"

        # A bad entry is refused with the entry and the fix.
        with pytest.raises(CommandFailed) as bad:
            await create(client, "netbadentry1", AGENT, {"egress": ["10.1.1.1/8"]})
        assert bad.value.event["code"] == "invalid_network"
        assert "the network is 10.0.0.0/8" in bad.value.event["reason"]

        replay = await client.replay(verify=True)
        assert replay["verified"], replay["differences"]
        for sandbox_id in ("netprofile01", "netnarrow001", "netnarrow002", "netadmin0001"):
            await client.destroy(sandbox_id)
    finally:
        await client.close()
        await service.shutdown()
        await reap_local(home)


async def test_the_cli_and_the_http_api_carry_a_narrowing(
    nats_server: Any, home: Path, cli_env: dict[str, str]
) -> None:
    write_home(home)
    service = await start_service(home, nats_server.url, ROLES)
    admin = SandboxerClient(service.client.nc, actor={"type": "adm", "id": "pytest-admin"})
    key, _ = await create_key(admin, project="default", key_type="agt", max_live=10)
    cli = Cli(cli_env)
    try:
        # The CLI: --network deny narrows to no network at all; the stub takes it.
        made = await cli(
            "create", "-p", "profile.pypi", "--id", "netcli000001", "--network", "deny"
        )
        assert "network      deny (no egress)" in made.stdout
        assert "extension    ext.saas-stub" in made.stdout
        shown = await cli("get", "netcli000001")
        assert "network      deny (no egress)" in shown.stdout
        # The CLI acts as an adm actor (docs/security.md): it may widen the profile's policy.
        wider = await cli(
            "create", "-p", "profile.pypi", "--id", "netcli000002", "--egress", "pypi.org:443"
        )
        assert "network      deny; egress pypi.org:443" in wider.stdout
        assert "extension    ext.local" in wider.stdout
        typo = await cli("create", "-p", "profile.pypi", "--egress", "10.1.1.1/8", check=False)
        assert typo.returncode == 2  # told before anything is sent
        assert "the network is 10.0.0.0/8" in typo.stderr

        # HTTP: the body's network, in the object form; a widening is 422 network_widened.
        headers = {"Authorization": f"Bearer {key}"}
        async with (
            serve_gateway(service, home) as url,
            httpx.AsyncClient(base_url=url, timeout=60, headers=headers) as api,
        ):
            body = {
                "profile": "profile.pypi",
                "sandbox_id": "nethttp00001",
                "network": {"egress": [{"to": "files.pypi.org", "ports": [443]}]},
            }
            answer = await api.post("/v1/sandboxes?wait=30s", json=body)
            assert answer.status_code == 201, answer.text
            assert answer.json()["network"] == {
                "default": "deny",
                "egress": ["files.pypi.org:443"],
            }
            wider = {"profile": "profile.pypi", "network": {"default": "allow"}}
            answer = await api.post("/v1/sandboxes?wait=30s", json=wider)
            assert answer.status_code == 422, answer.text
            assert answer.json()["error"]["code"] == "network_widened"

            # The Python client carries it over HTTP and over the bus alike.
            narrow = {"default": "deny", "egress": ["10.1.0.0/16:22"]}
            async with Sandboxer.over_http(url, key) as over_http:
                made_http = await over_http.create(
                    "profile.pypi", sandbox_id="netpyhttp001", network=narrow
                )
            assert made_http.network == {"default": "deny", "egress": ["10.1.0.0/16:22"]}
        async with await Sandboxer.over_bus([nats_server.url], actor=AGENT) as over_bus:
            made_bus = await over_bus.create(
                "profile.pypi", sandbox_id="netpybus0001", network={"default": "deny"}
            )
            assert (made_bus.network, made_bus.extension) == (
                {"default": "deny", "egress": []},
                "ext.saas-stub",
            )
            with pytest.raises(CommandFailed, match="default: allow is wider"):
                await over_bus.create("profile.pypi", network={"default": "allow"})
        for sandbox_id in (
            "netcli000001",
            "netcli000002",
            "nethttp00001",
            "netpyhttp001",
            "netpybus0001",
        ):
            await service.client.destroy(sandbox_id)
    finally:
        await service.client.close()
        await service.shutdown()
        await reap_local(home)
