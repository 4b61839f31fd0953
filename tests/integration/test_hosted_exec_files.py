"""Exec with standard input and a timeout, and copies both ways, on the hosted backends that
declare exec (ext.daytona, ext.modal), through the real service over the bus against their provider doubles
(tests/doubles/), which enforce the providers' published specs.

Daytona's toolbox answers a command's output as JSON text: a binary download through it
came back corrupted until ext.daytona wrapped its commands to send output base64-encoded
(sandboxer/extensions/daytona/exec_wire.py). The doubles run commands as local
processes, so what a timed-out command leaves running shows in this machine's ``/proc``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sandboxer.client import CommandFailed
from sandboxer.errors import PathRefused
from tests.doubles.daytona_double import DaytonaServed
from tests.integration.conftest import Service, start_service
from tests.integration.test_exec_files import listing, nested_tree
from tests.integration.test_remote_exec_files import every_byte, run_in, running_here

pytestmark = [pytest.mark.integration, pytest.mark.slow]


PROFILES = {"ext.daytona": "profile.daytona", "ext.modal": "profile.modal-gpu"}


@pytest.fixture(params=sorted(PROFILES))
def extension(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The hosted backend under test, its double served and the worker's env pointing at it."""
    name = str(request.param)
    if name == "ext.daytona":
        served: DaytonaServed = request.getfixturevalue("daytona_double")
        monkeypatch.setenv("DAYTONA_API_URL", served.api_url)
        monkeypatch.setenv("DAYTONA_API_KEY", served.key)
    else:
        request.getfixturevalue("modal_double")  # points the SDK's URL and token at itself
    return name


@pytest.fixture
async def hosted(
    extension: str, nats_server: Any, home: Path
) -> AsyncIterator[tuple[Service, str]]:
    """A running sandbox of the hosted backend, made through the bus, and the service."""
    service = await start_service(home, nats_server.url, roles=["control", "projector", extension])
    try:
        await service.fund()
        ready = await service.client.create(PROFILES[extension])
        yield service, str(ready["sandbox_id"])
        await service.client.destroy(str(ready["sandbox_id"]))
    finally:
        await service.client.close()
        await service.shutdown()


async def test_binary_output_stdin_and_copies_both_ways(
    hosted: tuple[Service, str], tmp_path: Path
) -> None:
    service, sandbox_id = hosted
    client = service.client
    # Output is bytes, stdout and stderr apart.
    out: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}

    async def collect(stream: str, data: bytes) -> None:
        out[stream].extend(data)

    code = await client.exec(
        sandbox_id, ["sh", "-c", "printf '\\377\\000\\200'; echo oops >&2; exit 3"], collect
    )
    assert (code, bytes(out["stdout"]), bytes(out["stderr"])) == (3, b"\xff\x00\x80", b"oops\n")

    # Standard input: more than a mebibyte of every byte value, then an async stream.
    data = every_byte(1_200_000) + os.urandom(1000)
    got = bytearray()
    code = await client.exec(
        sandbox_id, ["cat"], lambda s, d: got.extend(d) if s == "stdout" else None, stdin=data
    )
    assert code == 0
    assert bytes(got) == data

    async def pieces() -> AsyncIterator[bytes]:
        for index in range(4):
            await asyncio.sleep(0.02)
            yield bytes([index]) * 5000

    got.clear()
    code = await client.exec(
        sandbox_id,
        ["wc", "-c"],
        lambda s, d: got.extend(d) if s == "stdout" else None,
        stdin=pieces(),
    )
    assert (code, bytes(got).strip()) == (0, b"20000")

    # Copies: all 256 byte values, a file over a mebibyte, a nested directory.
    for name, content in (("bytes.bin", every_byte(256)), ("big.bin", data)):
        (tmp_path / name).write_bytes(content)
        await client.copy_in(sandbox_id, tmp_path / name, f"in/{name}")
        code, text = await run_in(client, sandbox_id, f"sha256sum in/{name}")
        assert (code, text.split()[0].decode()) == (0, hashlib.sha256(content).hexdigest())
        back = await client.copy_out(sandbox_id, f"in/{name}", tmp_path / f"{name}.back")
        assert back.kind == "file"
        assert (tmp_path / f"{name}.back").read_bytes() == content
    tree = nested_tree(tmp_path / "tree")
    await client.copy_in(sandbox_id, tree, "project")
    await client.copy_out(sandbox_id, "project", tmp_path / "fetched")
    assert listing(tmp_path / "fetched") == listing(tree)


async def test_a_timeout_kills_what_the_command_started(hosted: tuple[Service, str]) -> None:
    service, sandbox_id = hosted
    with pytest.raises(CommandFailed) as failed:
        await service.client.exec(
            sandbox_id,
            ["sh", "-c", "sleep 3311 & sleep 3411; echo after"],
            lambda _s, _d: None,
            command_timeout=1.5,
        )
    assert failed.value.event["timed_out"] is True
    assert running_here("sleep 3311") == []
    assert running_here("sleep 3411") == []
    assert await run_in(service.client, sandbox_id, "echo alive") == (0, b"alive\n")


async def test_paths_out_of_the_workspace_are_refused_both_ways(
    hosted: tuple[Service, str], tmp_path: Path
) -> None:
    service, sandbox_id = hosted
    client = service.client
    code, _ = await run_in(
        client, sandbox_id, "ln -s /etc etc && ln -s /etc/passwd pw && ln -s .. up"
    )
    assert code == 0
    (tmp_path / "payload").write_bytes(b"payload")
    for path, reason in {
        "../x": "climbs",
        "/etc/passwd": "absolute",
        "pw": "leads out of the workspace",
        "etc/passwd": "leads out of the workspace",
        "up": "leads out of the workspace",
    }.items():
        with pytest.raises(PathRefused, match=reason):
            await client.copy_out(sandbox_id, path, tmp_path / "out")
    for path, reason in {
        "../x": "climbs",
        "/tmp/x": "absolute",
        "etc/evil": "leads out of the workspace",
        "up/evil": "leads out of the workspace",
    }.items():
        with pytest.raises(PathRefused, match=reason):
            await client.copy_in(sandbox_id, tmp_path / "payload", path)
    assert not (tmp_path / "out").exists()
    assert not Path("/etc/evil").exists()
