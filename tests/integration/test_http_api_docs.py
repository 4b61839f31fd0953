"""The curl examples of docs/http-api.md, run as written against the real service.

Every fenced ``sh`` block of the page whose first line starts with ``# tested:`` runs, in
the order of the page, in one bash script (``set -euo pipefail``: a later block uses the
sandbox an earlier one made) with the real ``curl`` and ``jq``, ``URL`` the gateway's and
``KEY`` an ``adm`` key of project ``acme``. ``curl`` is wrapped in a shell function that
calls the real binary with ``--fail-with-body`` and keeps each call's arguments, exit code
and output: every call must exit 0 (a live event stream the example cuts with
``--max-time`` exits 28, as curl does when its own time runs out) and answer JSON, Server-
Sent Events whose data are JSON, a tar, or a file written with ``-o``.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import tarfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.cli.key_commands import create_key
from sandboxer.client import SandboxerClient
from tests.conftest import require_tool
from tests.integration.conftest import reap_local, serve_gateway, start_service

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DOC = Path(__file__).resolve().parents[2] / "docs" / "http-api.md"
TESTED = re.compile(r"^```sh\n(# tested:.*?)^```$", re.MULTILINE | re.DOTALL)

WRAPPER = r"""
set -euo pipefail
echo 0 > "$CALLS/count"
curl() {
  local n
  n=$(( $(cat "$CALLS/count") + 1 ))
  echo "$n" > "$CALLS/count"
  local out="$CALLS/$n"
  cat "$CALLS/block" > "$out.block"
  printf '%s\n' "$@" > "$out.args"
  local rc=0
  command curl --fail-with-body "$@" | tee "$out.body" || rc=${PIPESTATUS[0]}
  echo "$rc" > "$out.rc"
  if [ "$rc" = 28 ] && grep -qx -- '--max-time' "$out.args" && grep -q '/events' "$out.args"; then
    return 0  # a live stream the example cut after a few seconds
  fi
  return "$rc"
}
"""


@dataclass
class Gateway:
    url: str
    key: str


@pytest.fixture
async def gateway(nats_server: NatsServerProcess, home: Path) -> AsyncIterator[Gateway]:
    """The whole service and a gateway beside it; project acme funded, an adm key of it."""
    service = await start_service(home, nats_server.url)
    admin = SandboxerClient(service.client.nc, actor={"type": "adm", "id": "pytest-docs"})
    key, _ = await create_key(
        admin, project="acme", key_type="adm", max_live=100, rate_per_second=1000
    )
    await service.fund("acme")
    try:
        async with serve_gateway(service, home) as url:
            yield Gateway(url, key)
    finally:
        await service.client.close()
        await service.shutdown()
        await reap_local(home)


def doc_examples() -> list[str]:
    return [m[1] for m in TESTED.finditer(DOC.read_text())]


def test_the_page_marks_its_examples() -> None:
    blocks = doc_examples()
    assert len(blocks) >= 6, "docs/http-api.md lost its '# tested:' curl examples"
    every = "\n".join(blocks)
    for route in ("/v1/sandboxes", "/exec", "/files?path=", "/events", "/v1/snapshots"):
        assert route in every, f"no tested example uses {route}"
    assert "-X DELETE" in every


def check_call(calls: Path, n: int, key: str) -> str | None:
    """What is wrong with call ``n`` (None: nothing)."""
    args = (calls / f"{n}.args").read_text().replace(key, "$KEY").splitlines()
    rc = int((calls / f"{n}.rc").read_text())
    body = (calls / f"{n}.body").read_bytes()
    shown = f"block {(calls / f'{n}.block').read_text().strip()}: curl {' '.join(args)}"
    streaming = any("/events" in a for a in args)
    if rc != 0 and not (rc == 28 and streaming and "--max-time" in args):
        return f"{shown}\n  exited {rc}: {body[:500]!r}"
    if "-o" in args:
        return None if body == b"" else f"{shown}\n  wrote to stdout despite -o"
    if streaming:  # Server-Sent Events, each event's data JSON
        data = [line for line in body.decode().splitlines() if line.startswith("data:")]
        for line in data:
            json.loads(line.removeprefix("data:"))
        return None if data else f"{shown}\n  a stream without events: {body[:300]!r}"
    if body[:1] not in {b"{", b"["}:
        try:
            with tarfile.open(fileobj=io.BytesIO(body)) as tar:
                tar.getmembers()
        except tarfile.TarError:
            return f"{shown}\n  answered neither JSON nor a tar: {body[:300]!r}"
        return None
    try:
        json.loads(body)
    except ValueError:
        return f"{shown}\n  answered what is not JSON: {body[:300]!r}"
    return None


async def test_the_curl_examples_run_as_written(gateway: Gateway, tmp_path: Path) -> None:
    require_tool("curl", "curl")
    require_tool("jq", "jq")
    calls = tmp_path / "calls"
    work = tmp_path / "work"
    calls.mkdir()
    work.mkdir()
    blocks = doc_examples()
    script = WRAPPER + "\n".join(
        f'echo {i + 1} > "$CALLS/block"\necho "== block {i + 1}" >&2\n{block}'
        for i, block in enumerate(blocks)
    )
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "URL": gateway.url,
        "KEY": gateway.key,
        "CALLS": str(calls),
    }
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        script,
        cwd=work,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 300)
    count = int((calls / "count").read_text())
    problems = [
        p for n in range(1, count + 1) if (p := check_call(calls, n, gateway.key)) is not None
    ]
    assert process.returncode == 0, (
        f"the examples stopped (exit {process.returncode}) in:\n{stderr.decode()[-3000:]}\n"
        + "\n".join(problems)
    )
    assert not problems, "\n".join(problems)
    assert count >= 30, f"only {count} curl calls ran"
    assert (work / "back" / "src" / "main.py").read_text() == 'print("hello")\n'
    assert stdout
