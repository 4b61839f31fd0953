"""Every ```python example of docs/python-client.md, run as written against a real service.

The whole service runs in the test's event loop on a real nats-server, with ext.local
sandboxes; each example is a whole program, run in order in its own Python process with
``SANDBOXER_NATS_URL`` pointing at that server (as a reader would run it), and must exit 0.
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
from tests.integration.conftest import Service, reap_local, start_service

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DOC = Path(__file__).resolve().parents[2] / "docs" / "python-client.md"
EXAMPLE = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)
EXAMPLE_TIMEOUT = 120.0


def doc_examples() -> list[str]:
    return [m[1] for m in EXAMPLE.finditer(DOC.read_text())]


@pytest.fixture
async def running(nats_server: NatsServerProcess, home: Path) -> AsyncIterator[Service]:
    service = await start_service(home, nats_server.url)
    try:
        yield service
    finally:
        await service.client.close()
        await service.shutdown()
        await reap_local(home)


def test_the_page_has_its_examples() -> None:
    examples = doc_examples()
    assert len(examples) >= 6, "docs/python-client.md lost its examples"
    every = "\n".join(examples)
    for call in (
        "from_env",
        ".create(",
        ".get(",
        ".list_sandboxes(",
        ".exec(",
        "stdin=",
        ".copy_in(",
        ".copy_out(",
        ".events(",
        ".snapshot(",
        ".restore(",
        ".credits(",
        "CommandFailed",
    ):
        assert call in every, f"no example uses {call}"


@pytest.mark.parametrize("index", range(len(doc_examples())))
async def test_the_example_runs(
    index: int, running: Service, nats_server: NatsServerProcess, home: Path, tmp_path: Path
) -> None:
    source = doc_examples()[index]
    script = tmp_path / f"example_{index + 1}.py"
    script.write_text(source)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOXER_")}
    env |= {"SANDBOXER_HOME": str(home), "SANDBOXER_NATS_URL": nats_server.url}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), EXAMPLE_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail(f"example {index + 1} ran past {EXAMPLE_TIMEOUT:g}s:\n{source}")
    assert process.returncode == 0, (
        f"example {index + 1} of docs/python-client.md exited {process.returncode}\n"
        f"--- stdout\n{stdout.decode()}\n--- stderr\n{stderr.decode()[-4000:]}"
    )
