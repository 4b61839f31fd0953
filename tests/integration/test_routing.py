"""Routing through the real service: capacity spills a burst to a hosted backend and comes
back when room frees; a quota refusal opens the circuit; route explain; replay equals live.

ext.local's capacity is lowered by a declaration override in $SANDBOXER_HOME/extensions;
ext.saas-stub is the hosted backend (its quota set by its own override).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from sandboxer import subjects
from sandboxer.client import SandboxerClient
from sandboxer.config.catalog import packaged_dir
from tests.integration.conftest import Cli, start_service
from tests.integration.test_ext_saas_stub import write_override
from tests.integration.test_pause import events_of

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROLES = ["control", "projector", "ext.local", "ext.saas-stub"]
# profile.burst-sandbox's route with a policy the stub may take: the packaged profile denies
# egress, so routing never spills it to the stub (which enforces nothing, docs/network.md).
BURST = """\
id: profile.burst-stub
route:
  strategy: prefer-self-hosted
  candidates: [ext.local, ext.saas-stub, ext.e2b]
network: {default: allow}
ttl: {default: 30m, max: 4h}
"""
STUB_FIRST = """\
id: profile.stub-first
route:
  strategy: explicit
  candidates: [ext.saas-stub, ext.local]
network: {default: allow}
ttl: {default: 10m, max: 1h}
"""


def lower_local_capacity(home: Path, max_sandboxes: int) -> None:
    decl = yaml.safe_load((packaged_dir("extensions") / "ext.local.yaml").read_text())
    decl["capacity"] = {"max_sandboxes": max_sandboxes}
    (home / "extensions").mkdir(parents=True, exist_ok=True)
    (home / "extensions" / "ext.local.yaml").write_text(yaml.safe_dump(decl))


def free_stub(home: Path, **settings: Any) -> None:
    """The stub's override with a price of zero: these tests route, they do not pay."""
    write_override(home, latency_ms=1, **settings)
    path = home / "extensions" / "ext.saas-stub.yaml"
    decl = yaml.safe_load(path.read_text())
    decl["pricing"] = {"per_second": 0.0, "per_create": 0.0, "gpu_per_second": 0.0}
    path.write_text(yaml.safe_dump(decl))


async def routed_event(client: SandboxerClient, sandbox_id: str) -> dict[str, Any]:
    return next(e for e in await events_of(client, sandbox_id) if e["type"] == "routed")


async def signals_until(client: SandboxerClient, ok: Any, timeout: float = 10.0) -> dict[str, Any]:
    """Ask the view for route signals until ``ok(signals)``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        reply = await client.query(subjects.QUERY_ROUTE_SIGNALS, {})
        if ok(reply["signals"]):
            return dict(reply)
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"route signals never got there: {reply}")
        await asyncio.sleep(0.1)


async def test_a_burst_fills_local_capacity_spills_to_hosted_and_comes_back(
    nats_server: Any, home: Path
) -> None:
    lower_local_capacity(home, 2)
    free_stub(home, max_live=10)
    (home / "profiles").mkdir(parents=True, exist_ok=True)
    (home / "profiles" / "profile.burst-stub.yaml").write_text(BURST)
    service = await start_service(home, nats_server.url, ROLES)
    try:
        client = service.client
        burst = await asyncio.gather(
            *(client.create("profile.burst-stub", ttl="10m") for _ in range(5))
        )
        ids = [ready["sandbox_id"] for ready in burst]
        where = {sid: (await client.get(sid) or {})["extension"] for sid in ids}
        on_local = sorted(s for s, ext in where.items() if ext == "ext.local")
        on_stub = sorted(s for s, ext in where.items() if ext == "ext.saas-stub")
        assert (len(on_local), len(on_stub)) == (2, 3), where
        spilled = await routed_event(client, on_stub[0])
        assert "ext.local has no capacity (2 of 2 sandboxes live)" in spilled["reason"]
        assert spilled["reason"].startswith("prefer-self-hosted: no self-hosted candidate")
        scores = {s["extension"]: s for s in spilled["scores"]}
        assert set(scores) == {"ext.local", "ext.saas-stub", "ext.e2b"}
        assert scores["ext.local"]["eligible"] is False
        assert scores["ext.saas-stub"]["eligible"] is True
        kept = await routed_event(client, on_local[0])
        assert "ext.local is self-hosted and has room" in kept["reason"]

        await client.destroy(on_local[0])  # room for one again
        await signals_until(client, lambda s: s["live"].get("ext.local") == 1)
        back = await client.create("profile.burst-stub", ttl="10m")
        assert (await client.get(back["sandbox_id"]) or {})["extension"] == "ext.local"

        signals = await signals_until(client, lambda s: "ext.saas-stub" in s["latency_p50"])
        assert signals["signals"]["live"] == {"ext.local": 2, "ext.saas-stub": 3}
        assert signals["signals"]["latency_p50"]["ext.local"] >= 0

        replay = await client.replay(verify=True)
        assert replay["verified"], replay["differences"]
        for sid in [*on_local[1:], *on_stub, back["sandbox_id"]]:
            await client.destroy(sid)
    finally:
        await service.client.close()
        await service.shutdown()


async def test_a_quota_refusal_opens_the_circuit_and_the_next_create_goes_elsewhere(
    nats_server: Any, home: Path, cli_env: dict[str, str]
) -> None:
    (home / "profiles").mkdir(parents=True, exist_ok=True)
    (home / "profiles" / "profile.stub-first.yaml").write_text(STUB_FIRST)
    free_stub(home, max_live=1)
    service = await start_service(home, nats_server.url, ROLES)
    cli = Cli(cli_env)
    try:
        client = service.client
        first = await client.create("profile.stub-first")
        assert (await client.get(first["sandbox_id"]) or {})["extension"] == "ext.saas-stub"
        before = json.loads(
            (await cli("route", "explain", "-p", "profile.stub-first", "--json")).stdout
        )
        assert before["decision"]["chosen"] == "ext.saas-stub"

        refused = await client.create("profile.stub-first")  # 429 from the stub: fallback
        refused_events = [e["type"] for e in await events_of(client, refused["sandbox_id"])]
        assert "rerouting" in refused_events, refused_events
        await signals_until(client, lambda s: "ext.saas-stub" in s["circuits"])

        third = await client.create("profile.stub-first")
        routed = await routed_event(client, third["sandbox_id"])
        assert routed["extension"] == "ext.local"
        assert "ext.saas-stub circuit open until" in routed["reason"]
        stub_score = next(s for s in routed["scores"] if s["extension"] == "ext.saas-stub")
        assert stub_score["eligible"] is False
        assert stub_score["why_not"].startswith("circuit open until")

        explained = await cli("route", "explain", "--profile", "profile.stub-first", "--json")
        decision = json.loads(explained.stdout)["decision"]
        assert decision["chosen"] == "ext.local"
        assert [c["extension"] for c in decision["candidates"]] == ["ext.saas-stub", "ext.local"]
        assert "circuit open" in decision["candidates"][0]["why_not"]
        table = await cli("route", "explain", "--profile", "profile.stub-first", "--ttl", "5m")
        assert "chosen: ext.local" in table.stdout
        bad = await cli("route", "explain", "--profile", "../x", check=False)
        assert bad.returncode != 0
        assert "profile id" in bad.stderr

        replay = await client.replay(verify=True)
        assert replay["verified"], replay["differences"]
        for ready in (first, refused, third):
            await client.destroy(ready["sandbox_id"])
    finally:
        await service.client.close()
        await service.shutdown()
