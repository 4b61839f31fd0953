"""The validator's contract (docs/integrations/validator.md), run as the page writes it.

The page's ``# tested:`` sh block runs in bash (``set -euo pipefail``) with the real
``sandboxer`` CLI and ``jq``, against the whole service on a real nats-server, with the
packaged ``profile.compose-e2e`` as it ships: its placement names ``sandboxer01`` and
``coulombcore``, so the two sshd hosts of the test carry those names, and the stack runs on
a real docker engine. ``sandboxer`` is a shell function that runs the CLI and keeps each
call's arguments, output and exit code, so the test can hold every answer against the
page's tables: the fields the page promises are in the answers, the retried create is the
same sandbox, the stack is on the preferred host, and after ``destroy`` nothing is left.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sandboxer.bus.nats_server import NatsServerProcess
from tests.conftest import require_tool
from tests.integration.conftest import start_service
from tests.integration.remote_fixtures import (
    TWO_SERVICE_COMPOSE,
    ComposeEngine,
    SshHosts,
    write_hosts_file,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PAGE = Path(__file__).resolve().parents[2] / "docs" / "integrations" / "validator.md"
TESTED = re.compile(r"^```sh\n(# tested:.*?)^```$", re.MULTILINE | re.DOTALL)

WRAPPER = r"""
set -euo pipefail
echo 0 > "$CALLS/count"
sandboxer() {
  local n
  n=$(( $(cat "$CALLS/count") + 1 ))  # a file: a call inside $(...) runs in a subshell
  echo "$n" > "$CALLS/count"
  printf '%s\n' "$@" > "$CALLS/$n.args"
  local rc=0
  "$PYTHON" -m sandboxer.cli.app "$@" > "$CALLS/$n.out" || rc=$?
  echo "$rc" > "$CALLS/$n.rc"
  cat "$CALLS/$n.out"
  return "$rc"
}
"""


@dataclasses.dataclass
class Call:
    args: list[str]
    out: str
    rc: int

    def json(self) -> Any:
        return json.loads(self.out)


def calls(directory: Path) -> list[Call]:
    found = []
    for n in range(1, len(list(directory.glob("*.rc"))) + 1):
        found.append(
            Call(
                (directory / f"{n}.args").read_text().splitlines(),
                (directory / f"{n}.out").read_text(),
                int((directory / f"{n}.rc").read_text()),
            )
        )
    return found


def table_fields(heading_text: str) -> list[str]:
    """The backticked names in the first column of the table that follows ``heading_text``."""
    text = PAGE.read_text()
    after = text[text.index(heading_text) :]
    rows = re.search(r"\n(\|.*?\n)(?!\|)", after, re.S)
    assert rows, f"no table after {heading_text!r}"
    lines = rows.group(1).splitlines()[2:]
    return [name for line in lines for name in re.findall(r"`([^`]+)`", line.split("|")[1])]


def engine_containers(engine: ComposeEngine, project: str) -> list[str]:
    out = engine.cli(
        "ps", "-a", "--filter", f"label=com.docker.compose.project={project}", "--format", "{{.ID}}"
    ).stdout
    return out.split()


async def test_the_validator_page_runs_as_written(
    nats_server: NatsServerProcess,
    home: Path,
    tmp_path: Path,
    ssh_hosts: SshHosts,
    compose_engine: ComposeEngine,
    cli_env: dict[str, str],
) -> None:
    require_tool("jq", "jq")
    started = await ssh_hosts(2, env=compose_engine.env, compose_cmd=compose_engine.compose_cmd)
    named = [
        dataclasses.replace(info, name=name)
        for info, name in zip(started, ["sandboxer01", "coulombcore"], strict=True)
    ]
    write_hosts_file(home / "hosts.yaml", named)

    checkout = tmp_path / "checkout"
    (checkout / "e2e").mkdir(parents=True)
    (checkout / "e2e" / "compose.yml").write_text(TWO_SERVICE_COMPOSE)
    (checkout / "README").write_text("the app\n")
    (checkout / ".git").mkdir()
    (checkout / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    call_dir = tmp_path / "calls"
    call_dir.mkdir()
    [block] = TESTED.findall(PAGE.read_text())
    env = {
        **cli_env,
        "CHECKOUT": str(checkout),
        "RUN": "4711",
        "PYTHON": sys.executable,
        "CALLS": str(call_dir),
    }

    service = await start_service(home, nats_server.url)
    try:
        result = await asyncio.to_thread(
            subprocess.run,
            ["bash", "-c", WRAPPER + block],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        made = calls(call_dir)
        assert result.returncode == 0, (
            f"the page's example failed ({result.returncode}):\n{result.stderr}\n"
            + "\n".join(f"{c.args} -> {c.rc}: {c.out[-500:]}" for c in made)
        )
        create, retry, get, exec_, events, destroy = made
        assert all(call.rc == 0 for call in made)

        row = create.json()
        sandbox_id = row["sandbox_id"]
        assert row["status"] == "ready"
        assert row["profile"] == "profile.compose-e2e"
        assert row["extension"] == "ext.compose-ssh"
        assert row["host"] == "sandboxer01"  # the profile's preferred host, as it ships
        assert retry.json()["sandbox_id"] == sandbox_id

        # Every field the page names is in the answers.
        got = get.json()
        assert got["sandbox_id"] == sandbox_id
        for field in table_fields("`create --json` and `get --json` print"):
            assert field in got, f"the page promises {field!r} in the row"
        descriptor = got["reachability"]
        for field in table_fields("`reachability`, the `ready` event's descriptor"):
            assert field in descriptor, f"the page promises {field!r} in the descriptor"
        assert sorted(descriptor["services"]) == ["web", "worker"]
        assert descriptor["host"] == "sandboxer01"
        access = descriptor["access"]
        assert access["kind"] == "ssh"
        assert access["host_name"] == "sandboxer01"
        assert access["workdir"] == descriptor["directory"]
        assert access["host_key_fingerprint"].startswith("SHA256:")
        assert access["host_key_verified"] is True
        assert access["enter"].endswith("exec -T SERVICE CMD")
        assert got["inputs"]["repo"].startswith("object:sha256:")

        assert exec_.out == "reachable\n"
        types = [json.loads(line)["type"] for line in events.out.splitlines()]
        lifecycle = ["requested", "routed", "provisioning", "ready", "active"]
        assert [t for t in types if t in lifecycle] == lifecycle  # one create, not two

        # destroy: the stack and the checkout's copy are gone from the host.
        assert destroy.out.strip() == f"destroyed {sandbox_id}"
        assert engine_containers(compose_engine, descriptor["compose_project"]) == []
        assert not Path(descriptor["directory"]).exists()
        final = await service.client.get(sandbox_id)
        assert final is not None
        assert final["status"] == "destroyed"
    finally:
        await service.client.close()
        await service.shutdown()
