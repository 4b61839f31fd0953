"""The lifecycle contract every extension passes, run against every real implementation.

Add an implementation to ``EXTENSIONS`` (a factory taking the test's
temporary directory) and it must pass every test here unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from sandboxer.config.catalog import Catalog
from sandboxer.errors import InvalidInput
from sandboxer.extensions.base import Extension, ProvisionRequest
from sandboxer.extensions.local.backend import LocalExtension
from tests.conftest import require_tool

pytestmark = pytest.mark.integration


def _local(tmp: Path) -> Extension:
    require_tool("bwrap", "bubblewrap")
    require_tool("nsenter", "util-linux")
    return LocalExtension(tmp / "local")


EXTENSIONS: dict[str, tuple[Callable[[Path], Extension], str]] = {
    "ext.local": (_local, "profile.local"),
}


@pytest.fixture(params=sorted(EXTENSIONS))
async def subject(request: pytest.FixtureRequest,
                  tmp_path: Path) -> AsyncIterator[tuple[Extension, str]]:
    factory, profile = EXTENSIONS[request.param]
    extension = factory(tmp_path)
    yield extension, profile
    for found in await extension.list_sandboxes():
        await extension.teardown(found.sandbox_id)


def request_for(sandbox_id: str, profile_id: str) -> ProvisionRequest:
    return ProvisionRequest(sandbox_id=sandbox_id, profile=Catalog.load().profile(profile_id),
                            inputs={})


class TestExtensionContract:
    async def test_lifecycle(self, subject: tuple[Extension, str]) -> None:
        extension, profile = subject
        request = request_for("contract0001", profile)
        await extension.provision(request)
        readiness = await extension.wait_ready(request)
        assert isinstance(readiness.descriptor, dict)
        assert readiness.descriptor.get("kind")
        found = {f.sandbox_id: f.alive for f in await extension.list_sandboxes()}
        assert found == {"contract0001": True}
        await extension.teardown("contract0001")
        assert list(await extension.list_sandboxes()) == []

    async def test_teardown_is_idempotent(self, subject: tuple[Extension, str]) -> None:
        extension, profile = subject
        request = request_for("contract0002", profile)
        await extension.provision(request)
        await extension.teardown("contract0002")
        await extension.teardown("contract0002")
        await extension.teardown("neverexisted")

    async def test_provision_again_starts_clean(self, subject: tuple[Extension, str]) -> None:
        extension, profile = subject
        request = request_for("contract0003", profile)
        await extension.provision(request)
        await extension.provision(request)
        await extension.wait_ready(request)
        assert [f.sandbox_id for f in await extension.list_sandboxes()] == ["contract0003"]

    @pytest.mark.parametrize("bad", ["../../etc", "a;rm -rf /", "UPPER1234", "x", "$(id)aaaa"])
    async def test_hostile_ids_are_refused_before_any_io(
        self, subject: tuple[Extension, str], bad: str
    ) -> None:
        extension, profile = subject
        with pytest.raises(InvalidInput):
            await extension.provision(request_for(bad, profile))
        assert list(await extension.list_sandboxes()) == []

    async def test_exec_returns_the_exit_code(self, subject: tuple[Extension, str]) -> None:
        extension, profile = subject
        request = request_for("contract0004", profile)
        await extension.provision(request)
        await extension.wait_ready(request)
        output: list[bytes] = []

        async def sink(_stream: str, data: bytes) -> None:
            output.append(data)

        assert await extension.exec("contract0004", ["sh", "-c", "echo hi; exit 9"], sink) == 9
        assert b"".join(output) == b"hi\n"
