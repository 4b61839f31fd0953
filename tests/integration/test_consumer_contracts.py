"""The agent harness's and the code generator's contracts (docs/integrations/agent-harness.md,
docs/integrations/code-generator.md), run as the pages write them.

Each page's ``# tested:`` python block runs as a whole program in its own process, as the
consumer would run it, against the whole service on a real nats-server with ext.local
(bubblewrap) sandboxes. Its JSON output is held against the page's promises: the mirror is
read-only, the session's sandboxes are listed by the consumer, the setup ran before ready
with its secret redacted, and a failing setup fails the sandbox with a redacted reason. The
worker's build token appears in no event and no log line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import secrets
import sys
from pathlib import Path
from typing import Any

import pytest

from sandboxer.bus.nats_server import NatsServerProcess
from tests.integration.conftest import reap_local, start_service

pytestmark = pytest.mark.integration

PAGES = Path(__file__).resolve().parents[2] / "docs" / "integrations"
TESTED = re.compile(r"^```python\n(# tested:.*?)^```$", re.MULTILINE | re.DOTALL)
BROKEN = """\
id: profile.build-broken
extension: ext.local
network: {default: deny}
setup:
  secret_refs: {BUILD_TOKEN: env:SANDBOXER_BUILD_TOKEN}
  commands:
    - "echo preparing"
    - ". ./.sandboxer/secrets.env && echo \\"token was $BUILD_TOKEN\\" && exit 1"
"""


def program_of(page: str) -> str:
    (program,) = TESTED.findall((PAGES / page).read_text())
    return program


async def run_program(source: str, env: dict[str, str], tmp_path: Path) -> list[Any]:
    script = tmp_path / "consumer.py"
    script.write_text(source)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 180)
    assert process.returncode == 0, f"{stdout.decode()}\n{stderr.decode()[-4000:]}"
    return [json.loads(line) for line in stdout.decode().splitlines() if line.strip()]


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> str:
    value = "tok-" + secrets.token_hex(16)
    monkeypatch.setenv("SANDBOXER_BUILD_TOKEN", value)  # the in-process worker's environment
    return value


async def test_the_pages_run_as_written(
    nats_server: NatsServerProcess,
    home: Path,
    tmp_path: Path,
    token: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    (home / "profiles").mkdir()
    (home / "profiles" / "profile.build-broken.yaml").write_text(BROKEN)
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / "README.md").write_text("the harness's checkout\n")
    sources = tmp_path / "sources"
    sources.mkdir()
    (sources / "main.txt").write_text("generated\n")
    service = await start_service(home, nats_server.url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOXER_")}
    env |= {
        "SANDBOXER_HOME": str(home),
        "SANDBOXER_NATS_URL": nats_server.url,
        "CHECKOUT": str(checkout),
        "SESSION_ID": "sess-42",
        "SOURCES": str(sources),
        "JOB_ID": "job-7",
    }
    try:
        await service.fund("acme")
        (harness,) = await run_program(program_of("agent-harness.md"), env, tmp_path)
        assert harness["status"] == "ready"
        assert harness["consumer"]["session_id"] == "sess-42"
        assert harness["consumer"]["labels"] == {"agent": "coder"}
        assert harness["warnings"] == []
        assert harness["read"] == [0, "the harness's checkout\n"]
        assert harness["write"][0] != 0
        assert "Read-only file system" in harness["write"][1]
        assert harness["scratch"] == 0
        assert harness["session_sandboxes"] == [harness["sandbox_id"]]
        assert (checkout / "README.md").read_text() == "the harness's checkout\n"
        gone = await service.client.get(harness["sandbox_id"])
        assert gone is not None
        assert gone["status"] == "destroyed"

        build, broken = await run_program(program_of("code-generator.md"), env, tmp_path)
        assert build["status"] == "ready"
        assert build["setup"] == [[0, "secrets delivered"], [0, "workspace ready for the build"]]
        assert build["build"] == 0
        assert build["result"] == "generated\n"
        assert broken["code"] == "setup_failed"
        assert "setup.commands[1]" in broken["reason"]
        assert "token was [redacted]" in broken["reason"]

        every_event = [event async for _seq, event in service.client.events()]
        assert any(event.get("code") == "setup_failed" for event in every_event)
        assert token not in json.dumps(every_event)
        assert token not in caplog.text
    finally:
        await service.client.close()
        await service.shutdown()
        await reap_local(home)
