"""The token service (``sandboxer.token.<sandbox_id>``) against the real service, its
ext.e2b worker and the E2B double: each request is answered on its own, so a backend that
is slow, hangs or fails for one sandbox holds no other sandbox's answer, and a failure is
answered, saying why, instead of leaving the asker to time out on a worker that seems
absent (docs/protocol.md#tokens).

The worker keeps a sandbox's tokens in ``$SANDBOXER_HOME/tokens``: removing a sandbox's
file makes it ask E2B (the double) again, and a file made unreadable makes the backend's
token call raise what no backend means to (a JSONDecodeError).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import nats
import pytest

from sandboxer import subjects
from sandboxer.cli.key_commands import create_key
from sandboxer.client import SandboxerClient
from sandboxer.errors import CommandFailed, RequestError
from sandboxer.workers.token_service import TOKEN_TIMEOUT
from tests.doubles.e2b_double import ServedE2b
from tests.integration.test_hosted_service import served_e2b

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GET = ("GET", "/sandboxes/{sandboxID}")
"""E2B's read of one sandbox, which answers with its tokens."""


def issued(served: ServedE2b, sandbox_id: str) -> dict[str, str]:
    """The tokens E2B issued for our sandbox ``sandbox_id``."""
    (record,) = [r for r in served.double.live() if r.metadata["sandboxer_id"] == sandbox_id]
    return {"envd_access_token": record.access_token}


async def asked_e2b(served: ServedE2b, since: int) -> None:
    """Return once the worker has read a sandbox of E2B after call number ``since``."""
    async with asyncio.timeout(5):
        while GET not in served.double.calls[since:]:
            await asyncio.sleep(0.02)


async def test_a_slow_hung_or_failing_backend_holds_no_other_sandboxs_tokens(
    nats_server: Any,
    home: Path,
    e2b_double: ServedE2b,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One sandbox's tokens are slow to come from E2B: another's are answered meanwhile, at
    once, and the slow one's come after. E2B hanging is answered within TOKEN_TIMEOUT, under
    the client's 5 s, saying so. A token call that raises what no backend means to is
    answered with an error naming it (and logged), and the next request is answered. On
    the old code, requests were answered one after the other, the hang and the failure
    left unanswered (the client said no worker held the sandbox)."""
    _provider, service = await served_e2b(nats_server, home, e2b_double, monkeypatch)
    client = service.client
    double = e2b_double.double
    try:
        slow = (await client.create("profile.e2b-burst", ttl="10m"))["sandbox_id"]
        other = (await client.create("profile.e2b-burst", ttl="10m"))["sandbox_id"]
        kept = home / "tokens" / f"{slow}.json"

        # Slow: E2B takes 2.5 s to answer for ``slow``.
        kept.unlink()
        double.app.faults.add("latency", method=GET[0], pattern=GET[1], seconds=2.5)
        since = len(double.calls)
        slow_tokens = asyncio.create_task(client.tokens(slow))
        await asked_e2b(e2b_double, since)
        began = time.monotonic()
        assert await client.tokens(other) == issued(e2b_double, other)
        assert time.monotonic() - began < 1.5  # not after the slow one's 2.5 s
        assert not slow_tokens.done()
        assert await slow_tokens == issued(e2b_double, slow)

        # Hung: E2B never answers for ``slow``; the worker gives up and says so.
        kept.unlink()
        double.app.faults.add("hang", method=GET[0], pattern=GET[1], seconds=30)
        # Answered before the client's 5 s, or it would raise BusError (no worker).
        with pytest.raises(CommandFailed, match=f"within {TOKEN_TIMEOUT:g} s; ask again"):
            await client.tokens(slow)
        assert await client.tokens(other) == issued(e2b_double, other)

        # Failing: the backend's call raises a JSONDecodeError for ``slow``.
        kept.write_text("{not json")
        with (
            caplog.at_level(logging.ERROR, logger="sandboxer.workers.token_service"),
            pytest.raises(CommandFailed, match=r"failed to hand out.*JSONDecodeError"),
        ):
            await client.tokens(slow)
        assert f"handing out the tokens of {slow} failed" in caplog.text
        assert await client.tokens(other) == issued(e2b_double, other)
        kept.unlink()
        assert await client.tokens(slow) == issued(e2b_double, slow)
    finally:
        await client.close()
        await service.shutdown()


async def test_a_key_of_project_default_reads_the_tokens_of_a_sandbox_naming_no_project(
    nats_server: Any, home: Path, e2b_double: ServedE2b, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sandbox whose creator names no project (the operator's CLI) is project
    ``default``'s: a key of that project may exec in it, so the token service hands the key
    its tokens too (one rule, key_access.may_see; docs/protocol.md#tokens). On the old code
    the key was refused: the tokens went to the sandbox's exact creator only."""
    _provider, service = await served_e2b(nats_server, home, e2b_double, monkeypatch)
    client = service.client
    nc = None
    try:
        sandbox_id = (await client.create("profile.e2b-burst", ttl="10m"))["sandbox_id"]
        assert "project" not in client.actor
        admin = await SandboxerClient.connect([nats_server.url])  # adm, as the CLI is
        try:
            _, made = await create_key(admin, project="default", key_type="agt")
        finally:
            await admin.close()
        # The test's server has no authorization: the key's subjects and inbox make it the key.
        nc = await nats.connect(nats_server.url, inbox_prefix=f"_INBOX.{made['key_id']}")
        key = SandboxerClient(nc, key_id=made["key_id"])
        # The key was made on the admin's connection: its views have it a moment later.
        async with asyncio.timeout(10):
            while True:
                with contextlib.suppress(RequestError):
                    key.actor = dict((await key.query(subjects.QUERY_KEY_WHOAMI, {}))["actor"])
                    break
                await asyncio.sleep(0.05)
        assert (await key.get(sandbox_id) or {}).get("status") == "ready"  # it sees it
        assert await key.tokens(sandbox_id) == issued(e2b_double, sandbox_id)
    finally:
        if nc is not None:
            await nc.close()
        await client.close()
        await service.shutdown()
