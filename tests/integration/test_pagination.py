"""Lists a page at a time, against the real service: 7 rows read 3 at a time through the
bus (the low-level client and :class:`Sandboxer`), the HTTP gateway (``next``, the
``Link`` header) and the CLI (``--limit``, ``--after``, ``--all-pages``); a cursor that
is not the list's own is refused with a reason on each (docs/protocol.md#lists)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.cli.key_commands import create_key
from sandboxer.client import Sandboxer, SandboxerClient, pages
from sandboxer.errors import RequestError
from sandboxer.pagination import SNAPSHOTS
from tests.integration.conftest import Cli, Service, reap_local, serve_gateway, start_service

pytestmark = pytest.mark.integration

PROJECTS = ["p1", "p2", "p3", "p4", "p5", "p6", "p7"]


async def fund_seven(admin: SandboxerClient) -> None:
    await asyncio.gather(*(admin.account_command("add_credits", p, amount=5) for p in PROJECTS))


async def walk_http(api: httpx.AsyncClient, url: str, rows: str) -> list[list[str]]:
    """Every page of ``url``, following each page's ``Link: <...>; rel="next"``."""
    ids: list[list[str]] = []
    while True:
        response = await api.get(url)
        assert response.status_code == 200, response.text
        body = response.json()
        key = "sandbox_id" if rows == "sandboxes" else "project"
        ids.append([row[key] for row in body[rows]])
        link = response.headers.get("link")
        if body["next"] is None:
            assert link is None
            return ids
        assert link is not None
        assert link.endswith('>; rel="next"')
        url = link[1 : link.index(">")]
        assert httpx.URL(url).params["after"] == body["next"]


async def test_lists_page_through_the_bus_and_http(
    nats_server: NatsServerProcess, home: Path
) -> None:
    service = await start_service(home, nats_server.url)
    admin = SandboxerClient(service.client.nc, actor={"type": "adm", "id": "pytest-admin"})
    key, _ = await create_key(
        admin, project="default", key_type="adm", max_live=100, rate_per_second=1000
    )
    try:
        created = [(await admin.create("profile.local"))["sandbox_id"] for _ in range(7)]
        await fund_seven(admin)
        everything = [s["sandbox_id"] for s in await admin.list_sandboxes()]
        assert sorted(everything) == sorted(created)

        # the bus, by hand: 3, 3 and the last 1, in the list's order, none twice
        seen: list[list[str]] = []
        after = None
        while True:
            page = await admin.list_sandboxes(limit=3, after=after)
            seen.append([s["sandbox_id"] for s in page])
            if page.next is None:
                break
            after = page.next
        assert seen == [everything[:3], everything[3:6], everything[6:]]
        # ... and with the one walking helper, for another list
        accounts = [[a["project"] for a in page] async for page in pages(admin.credits, limit=3)]
        assert accounts == [PROJECTS[:3], PROJECTS[3:6], PROJECTS[6:]]
        with pytest.raises(RequestError, match="invalid cursor"):
            await admin.list_sandboxes(after="not-a-cursor")
        with pytest.raises(RequestError, match=r"invalid cursor .* for sandboxes"):
            await admin.list_sandboxes(after=SNAPSHOTS.cursor(("2026", "snp00001")))
        with pytest.raises(RequestError, match="'after' must be a string"):
            await admin.query("sandboxer.query.credits.list", {"after": 3})

        async with serve_gateway(service, home) as url:
            headers = {"Authorization": f"Bearer {key}"}
            async with httpx.AsyncClient(base_url=url, timeout=60, headers=headers) as api:
                got = await walk_http(api, "/v1/sandboxes?limit=3", "sandboxes")
                assert got == [everything[:3], everything[3:6], everything[6:]]
                got = await walk_http(api, "/v1/credits?limit=3", "accounts")
                assert got == [PROJECTS[:3], PROJECTS[3:6], PROJECTS[6:]]
                for bad in ("garbage", SNAPSHOTS.cursor(("2026", "snp00001"))):
                    refused = await api.get("/v1/sandboxes", params={"after": bad})
                    assert refused.status_code == 422, refused.text
                    error = refused.json()["error"]
                    assert error["code"] == "invalid_request"
                    assert "invalid cursor" in error["message"]
                    assert error["details"]["errors"][0]["loc"] == ["query", "after"]

            # the Python client over HTTP and over the bus: the same pages
            over_bus = await Sandboxer.over_bus([nats_server.url], actor=admin.actor)
            for sbx in (Sandboxer.over_http(url, key), over_bus):
                async with sbx:
                    walked: list[Any] = []
                    async for page in sbx.pages(sbx.list_sandboxes, limit=3):
                        walked.append([s.sandbox_id for s in page])
                    assert walked == [everything[:3], everything[3:6], everything[6:]]
                    first = await sbx.credits(limit=3)
                    assert [a.project for a in first] == PROJECTS[:3]
                    rest = await sbx.credits(limit=10, after=first.next)
                    assert [a.project for a in rest] == PROJECTS[3:]
                    assert rest.next is None
                    with pytest.raises(RequestError):
                        await sbx.credits(after="garbage!")
    finally:
        await service.client.close()
        await service.shutdown()
        await reap_local(home)


async def test_the_cli_says_a_list_was_cut_and_goes_on_after_it(
    service: Service, cli_env: dict[str, str]
) -> None:
    admin = SandboxerClient(service.client.nc, actor={"type": "adm", "id": "pytest-admin"})
    await fund_seven(admin)
    cli = Cli(cli_env)

    first = await cli("credits", "show", "--limit", "3", "--json")
    assert [a["project"] for a in json.loads(first.stdout)] == PROJECTS[:3]  # still a list
    assert "more accounts follow: run again with --after " in first.stderr
    cursor = first.stderr.split("--after ")[1].split()[0]
    rest = await cli("credits", "show", "--limit", "3", "--after", cursor)
    assert [line.split()[0] for line in rest.stdout.splitlines()[1:4]] == PROJECTS[3:6]
    assert "--after" in rest.stderr

    every = await cli("credits", "show", "--limit", "3", "--all-pages", "--json")
    assert [a["project"] for a in json.loads(every.stdout)] == PROJECTS
    assert "more" not in every.stderr

    refused = await cli("credits", "show", "--after", "garbage", check=False)
    assert refused.returncode == 1
    assert "invalid cursor" in refused.stderr
