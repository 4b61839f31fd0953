"""Every ```python example of docs/python-client.md, run as written against a real service,
over both transports of the client.

The whole service runs in the test's event loop on a real nats-server, with ext.local
sandboxes; each example is a whole program, run in its own Python process as a reader
would run it, and must exit 0: once over the bus (``SANDBOXER_NATS_URL`` set) and once
over the HTTP gateway (``SANDBOXER_API_KEY``, an ``agt`` key of project acme from
'keys create', and ``SANDBOXER_HTTP_URL`` set), except an example whose first line says
``# bus only``. Project acme has credits, as a harness's project would.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.cli.key_commands import create_key
from sandboxer.client import SandboxerClient
from sandboxer.client.api import API_KEY_VARIABLE, HTTP_URL_VARIABLE
from tests.integration.conftest import reap_local, serve_gateway, start_service

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DOC = Path(__file__).resolve().parents[2] / "docs" / "python-client.md"
EXAMPLE = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)
EXAMPLE_TIMEOUT = 120.0
BUS_ONLY = "# bus only"
PROJECT = "acme"


def doc_examples() -> list[str]:
    return [m[1] for m in EXAMPLE.finditer(DOC.read_text())]


def cases() -> list[tuple[int, str]]:
    return [
        (index, transport)
        for index, source in enumerate(doc_examples())
        for transport in ("bus", "http")
        if transport == "bus" or not source.startswith(BUS_ONLY)
    ]


@pytest.fixture
async def example_env(
    request: pytest.FixtureRequest, nats_server: NatsServerProcess, home: Path
) -> AsyncIterator[dict[str, str]]:
    """A running service, and the environment an example runs in over ``request.param``."""
    service = await start_service(home, nats_server.url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOXER_")}
    env |= {"SANDBOXER_HOME": str(home), "SANDBOXER_NATS_URL": nats_server.url}
    try:
        await service.fund(PROJECT)
        if request.param == "bus":
            yield env
        else:
            admin = SandboxerClient(service.client.nc, actor={"type": "adm", "id": "pytest"})
            key, _ = await create_key(
                admin, project=PROJECT, key_type="agt", max_live=50, rate_per_second=1000
            )
            async with serve_gateway(service, home) as url:
                yield env | {API_KEY_VARIABLE: key, HTTP_URL_VARIABLE: url}
    finally:
        await service.client.close()
        await service.shutdown()
        await reap_local(home)


def test_the_page_has_its_examples() -> None:
    examples = doc_examples()
    assert len(examples) >= 8, "docs/python-client.md lost its examples"
    every = "\n".join(examples)
    for call in (
        "Sandboxer.from_env",
        "Sandboxer.over_bus",
        "Sandboxer.over_http",
        ".create(",
        "wait=False",
        ".get(",
        ".list_sandboxes(",
        ".destroy(",
        ".extend_ttl(",
        ".pause(",
        ".resume(",
        ".exec(",
        "stdin=",
        "timeout=",
        ".copy_in(",
        ".copy_out(",
        ".events(",
        "after=",
        ".snapshot(",
        ".snapshots(",
        ".restore(",
        ".delete_snapshot(",
        ".credits(",
        ".usage(",
        ".route_explain(",
        "CommandFailed",
        "NotFound",
        "InvalidInput",
        "PathRefused",
    ):
        assert call in every, f"no example uses {call}"
    assert sum(source.startswith(BUS_ONLY) for source in examples) <= 1, "most run on both"


@pytest.mark.parametrize(("index", "example_env"), cases(), indirect=["example_env"])
async def test_the_example_runs(index: int, example_env: dict[str, str], tmp_path: Path) -> None:
    source = doc_examples()[index]
    script = tmp_path / f"example_{index + 1}.py"
    script.write_text(source)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        cwd=tmp_path,
        env=example_env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), EXAMPLE_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail(f"example {index + 1} ran past {EXAMPLE_TIMEOUT:g}s:\n{source}")
    over = "HTTP" if API_KEY_VARIABLE in example_env else "the bus"
    assert process.returncode == 0, (
        f"example {index + 1} of docs/python-client.md exited {process.returncode} over {over}\n"
        f"--- stdout\n{stdout.decode()}\n--- stderr\n{stderr.decode()[-4000:]}"
    )
    if b"connected over" in stdout:  # the page's first example says which it chose
        expected = "http" if API_KEY_VARIABLE in example_env else "bus"
        assert f"connected over {expected}".encode() in stdout, stdout
