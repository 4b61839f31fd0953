"""The lifecycle contract every extension passes, run against every real implementation.

Add an implementation to ``EXTENSIONS`` (a :class:`Backend`: the pytest
fixtures it needs, and an async factory that builds the extension and the
inputs its profile requires) and it must pass every test here unchanged.
Remote backends get real sshd hosts and real container engines from
tests/integration/remote_fixtures.py: ext.compose-ssh passes on dockerd with
docker-compose and on podman with podman-compose. Hosted backends run against
the doubles in tests/doubles/, which enforce each provider's published API.
A backend whose declaration does not offer exec must refuse it with
Unsupported. An ``AttemptScoped`` one (ext.local, ext.compose-ssh, ext.vm-packer, the hosted
backends) must leave a later attempt's sandbox through an earlier attempt's
``teardown_attempt``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sandboxer.config.catalog import Catalog
from sandboxer.config.settings import Settings
from sandboxer.domain.found import Frozen
from sandboxer.errors import InvalidInput, SandboxNotFound, Unsupported
from sandboxer.extensions.base import Extension, ProvisionRequest
from sandboxer.extensions.capabilities import AttemptScoped, Pausable, Pooling
from sandboxer.extensions.compose_ssh.backend import ComposeSshExtension
from sandboxer.extensions.daytona.backend import DaytonaExtension
from sandboxer.extensions.e2b.backend import E2bExtension
from sandboxer.extensions.loading import build_extension
from sandboxer.extensions.local.backend import LocalExtension
from sandboxer.extensions.vm_packer.backend import VmPackerExtension
from tests.conftest import require_tool
from tests.doubles.modal_double import modal_double, modal_extensions  # noqa: F401  (fixtures)
from tests.integration.remote_fixtures import TWO_SERVICE_COMPOSE, write_hosts_file

pytestmark = pytest.mark.integration

COMPOSE = TWO_SERVICE_COMPOSE


@dataclass
class Subject:
    """An extension under test, the profile it serves and what a create passes."""

    extension: Extension
    profile: str
    inputs: dict[str, str] = field(default_factory=dict)
    host: str | None = None
    """The placement host the worker would pass (None for host-local backends)."""


@dataclass(frozen=True)
class Backend:
    factory: Callable[[Path, dict[str, Any]], Awaitable[Subject]]
    fixtures: tuple[str, ...] = ()
    """Pytest fixtures the factory needs, by name (given to it in a dict)."""


async def _local(tmp: Path, _fixtures: dict[str, Any]) -> Subject:
    require_tool("bwrap", "bubblewrap")
    require_tool("nsenter", "util-linux")
    return Subject(LocalExtension(tmp / "local"), "profile.local")


async def _remote_settings(tmp: Path, fixtures: dict[str, Any], **host_fields: Any) -> Settings:
    fixtures["monkeypatch"].delenv("SANDBOXER_HOSTS", raising=False)
    hosts = await fixtures["ssh_hosts"](1, **host_fields)
    home = tmp / "home"
    write_hosts_file(home / "hosts.yaml", hosts)
    return Settings(home=home, nats_urls=(), nats_server=None, ack_wait=30.0)


def _compose_ssh(engine_fixture: str) -> Callable[[Path, dict[str, Any]], Awaitable[Subject]]:
    """ext.compose-ssh on the engine that fixture gives (dockerd or podman)."""

    async def factory(tmp: Path, fixtures: dict[str, Any]) -> Subject:
        engine = fixtures[engine_fixture]
        settings = await _remote_settings(
            tmp, fixtures, env=engine.env, compose_cmd=engine.compose_cmd
        )
        repo = tmp / "repo"
        (repo / "e2e").mkdir(parents=True)
        (repo / "e2e" / "compose.yml").write_text(COMPOSE)
        return Subject(
            ComposeSshExtension(settings), "profile.compose-e2e", {"repo": str(repo)}, host="host1"
        )

    return factory


async def _vm_packer(tmp: Path, fixtures: dict[str, Any]) -> Subject:
    settings = await _remote_settings(tmp, fixtures)
    repo = tmp / "repo"
    repo.mkdir()
    (repo / "README").write_text("the repo\n")
    return Subject(
        VmPackerExtension(settings),
        "profile.vm-haskell-build",
        {"vm": "host1", "repo": str(repo)},
        host="host1",
    )


async def _saas_stub(tmp: Path, _fixtures: dict[str, Any]) -> Subject:
    """ext.saas-stub as the worker builds it from its packaged declaration; records in tmp."""
    settings = Settings(home=tmp / "home", nats_urls=(), nats_server=None, ack_wait=30.0)
    return Subject(build_extension("ext.saas-stub", Catalog.load(), settings), "profile.saas-stub")


async def _e2b(_tmp: Path, fixtures: dict[str, Any]) -> Subject:
    served = fixtures["e2b_double"]
    extension = E2bExtension({"api_url": served.url, "api_key": served.api_key})
    return Subject(extension, "profile.e2b-burst")


async def _daytona(tmp: Path, fixtures: dict[str, Any]) -> Subject:
    """ext.daytona from its packaged declaration, pointed at the Daytona double, polling fast."""
    served = fixtures["daytona_double"]
    decl = Catalog.load().extensions_enabled()["ext.daytona"]
    given = {**decl.settings, "api_url": served.api_url, "api_key": served.key}
    decl = decl.model_copy(update={"settings": {**given, "poll_interval": 0.02}})
    settings = Settings(home=tmp / "home", nats_urls=(), nats_server=None, ack_wait=30.0)
    return Subject(DaytonaExtension.from_declaration(decl, settings), "profile.daytona")


async def _modal(_tmp: Path, fixtures: dict[str, Any]) -> Subject:
    return Subject(fixtures["modal_extensions"](), "profile.modal-gpu")


REMOTE = ("ssh_hosts", "monkeypatch")
EXTENSIONS: dict[str, Backend] = {
    "ext.local": Backend(_local),
    "ext.compose-ssh": Backend(_compose_ssh("docker_engine"), (*REMOTE, "docker_engine")),
    "ext.compose-ssh+podman": Backend(_compose_ssh("podman_engine"), (*REMOTE, "podman_engine")),
    "ext.vm-packer": Backend(_vm_packer, REMOTE),
    "ext.modal": Backend(_modal, ("modal_extensions",)),
    "ext.saas-stub": Backend(_saas_stub),
    "ext.e2b": Backend(_e2b, ("e2b_double",)),
    "ext.daytona": Backend(_daytona, ("daytona_double",)),
}


@pytest.fixture(params=sorted(EXTENSIONS))
def backend(request: pytest.FixtureRequest) -> tuple[Backend, dict[str, Any]]:
    """The backend and its fixtures (fetched here, outside the event loop)."""
    chosen = EXTENSIONS[request.param]
    return chosen, {name: request.getfixturevalue(name) for name in chosen.fixtures}


@pytest.fixture
async def subject(
    backend: tuple[Backend, dict[str, Any]], tmp_path: Path
) -> AsyncIterator[Subject]:
    chosen, fixtures = backend
    made = await chosen.factory(tmp_path, fixtures)
    yield made
    for found in await made.extension.list_sandboxes():
        await made.extension.teardown(found.sandbox_id, host=found.host)
    close = getattr(made.extension, "aclose", None)  # hosted backends hold an HTTP client
    if close is not None:
        await close()


def request_for(sandbox_id: str, subject: Subject) -> ProvisionRequest:
    return ProvisionRequest(
        sandbox_id=sandbox_id,
        profile=Catalog.load().profile(subject.profile),
        inputs=subject.inputs,
        host=subject.host,
    )


class TestExtensionContract:
    async def test_lifecycle(self, subject: Subject) -> None:
        extension = subject.extension
        request = request_for("contract0001", subject)
        await extension.provision(request)
        readiness = await extension.wait_ready(request)
        assert isinstance(readiness.descriptor, dict)
        assert readiness.descriptor.get("kind")
        found = {f.sandbox_id: f.alive for f in await extension.list_sandboxes()}
        assert found == {"contract0001": True}
        await extension.teardown("contract0001")
        assert list(await extension.list_sandboxes()) == []

    async def test_teardown_is_idempotent(self, subject: Subject) -> None:
        extension = subject.extension
        request = request_for("contract0002", subject)
        await extension.provision(request)
        await extension.teardown("contract0002")
        await extension.teardown("contract0002")
        await extension.teardown("neverexisted")

    async def test_provision_again_starts_clean(self, subject: Subject) -> None:
        extension = subject.extension
        request = request_for("contract0003", subject)
        await extension.provision(request)
        # The job delivered again: the worker's next attempt (ProvisionRequest.attempt), which
        # waits for what it made itself (hosted backends look up their own attempt's).
        again = dataclasses.replace(request, attempt=2)
        await extension.provision(again)
        await extension.wait_ready(again)
        assert [f.sandbox_id for f in await extension.list_sandboxes()] == ["contract0003"]

    @pytest.mark.parametrize("bad", ["../../etc", "a;rm -rf /", "UPPER1234", "x", "$(id)aaaa"])
    async def test_hostile_ids_are_refused_before_any_io(self, subject: Subject, bad: str) -> None:
        extension = subject.extension
        with pytest.raises(InvalidInput):
            await extension.provision(request_for(bad, subject))
        assert list(await extension.list_sandboxes()) == []

    async def test_a_pausable_backend_lists_how_much_of_a_sandbox_is_paused(
        self, subject: Subject
    ) -> None:
        """A worker's start, its leak sweep and reap-stale set a sandbox as paused as its log
        says from what the listing says (drift.pause_step): every backend that can pause
        says it, none once made or resumed, all once paused; one that cannot says nothing."""
        extension = subject.extension
        request = request_for("contract0005", subject)
        await extension.provision(request)
        await extension.wait_ready(request)

        async def frozen() -> list[Frozen | None]:
            return [f.frozen for f in await extension.list_sandboxes()]

        if not Catalog.load().extensions_enabled()[extension.id].capabilities.pause:
            assert await frozen() == [None]
            return
        assert isinstance(extension, Pausable)
        assert await frozen() == ["none"]
        await extension.pause("contract0005", host=subject.host)
        assert await frozen() == ["all"]
        await extension.resume("contract0005", host=subject.host)
        assert await frozen() == ["none"]

    async def test_exec_returns_the_exit_code(self, subject: Subject) -> None:
        extension = subject.extension
        if not Catalog.load().extensions_enabled()[extension.id].capabilities.exec:
            with pytest.raises(Unsupported):
                await extension.exec("contract0004", ["true"], _discard)
            return
        request = request_for("contract0004", subject)
        await extension.provision(request)
        await extension.wait_ready(request)
        output: list[bytes] = []

        async def sink(_stream: str, data: bytes) -> None:
            output.append(data)

        assert await extension.exec("contract0004", ["sh", "-c", "echo hi; exit 9"], sink) == 9
        assert b"".join(output) == b"hi\n"

    async def test_an_earlier_attempts_teardown_leaves_a_later_ones_sandbox(
        self, subject: Subject
    ) -> None:
        """An AttemptScoped backend's teardown_attempt removes only what that provisioning
        and earlier ones made: a worker resumed late (frozen past the ack wait) must leave
        the sandbox the job's later attempt made, which the log's `ready` names."""
        extension = subject.extension
        if extension.id in NOT_ATTEMPT_SCOPED:
            pytest.skip(f"{extension.id} is not AttemptScoped: its teardown takes the id's all")
        assert isinstance(extension, AttemptScoped), f"{extension.id} must be AttemptScoped"
        later = dataclasses.replace(request_for("contract0005", subject), attempt=2)
        await extension.provision(later)
        await extension.wait_ready(later)
        await extension.teardown_attempt("contract0005", (1, 1), host=subject.host)
        found = {f.sandbox_id: f.alive for f in await extension.list_sandboxes()}
        assert found == {"contract0005": True}
        await extension.teardown_attempt("contract0005", (1, 2), host=subject.host)
        assert list(await extension.list_sandboxes()) == []


NOT_ATTEMPT_SCOPED = frozenset({"ext.saas-stub"})
"""The backends that are not AttemptScoped (their teardown takes everything of an id,
docs/extensions.md); every other one must be, and passes the attempt test."""

POOLING = sorted(
    name for name in EXTENSIONS if Catalog.load().extensions[name.split("+")[0]].capabilities.pool
)
"""The backends whose declaration says they keep warm pools (docs/pools.md)."""


@pytest.fixture(params=POOLING)
async def pooler(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Subject]:
    chosen = EXTENSIONS[request.param]
    made = await chosen.factory(
        tmp_path, {name: request.getfixturevalue(name) for name in chosen.fixtures}
    )
    yield made
    assert isinstance(made.extension, Pooling)
    for backend in (made.extension, made.extension.pool_members()):
        for found in await backend.list_sandboxes():
            await backend.teardown(found.sandbox_id, host=found.host)


class TestPoolingContract:
    """What the pool keeper relies on, for every backend that declares it pools."""

    async def test_a_claimed_member_is_the_sandbox(self, pooler: Subject) -> None:
        extension = pooler.extension
        assert isinstance(extension, Pooling)
        members = extension.pool_members()
        profile = Catalog.load().profile(pooler.profile)
        member = ProvisionRequest(
            sandbox_id="pool00000000000000c1",
            profile=extension.member_profile(profile),
            inputs={},
            host=pooler.host,
        )
        await members.provision(member)
        await members.wait_ready(member)
        assert list(await extension.list_sandboxes()) == []  # a member is no one's sandbox

        request = request_for("contract0005", pooler)
        readiness = await extension.claim(member.sandbox_id, request)
        assert readiness.descriptor.get("kind")
        assert await extension.claim(member.sandbox_id, request)  # a retry finds it claimed
        assert [f.sandbox_id for f in await extension.list_sandboxes()] == ["contract0005"]
        assert list(await members.list_sandboxes()) == []
        assert await extension.exec("contract0005", ["true"], _discard) == 0
        # The keeper may tear the member down after its claim, from a listing taken just
        # before the move: nothing of the sandbox it became may go with it.
        await members.teardown(member.sandbox_id)
        assert await extension.exec("contract0005", ["true"], _discard) == 0
        assert [f.alive for f in await extension.list_sandboxes()] == [True]

        await extension.teardown("contract0005")
        assert list(await extension.list_sandboxes()) == []

    async def test_a_gone_member_cannot_be_claimed(self, pooler: Subject) -> None:
        extension = pooler.extension
        assert isinstance(extension, Pooling)
        with pytest.raises(SandboxNotFound):  # the worker makes such a create cold
            await extension.claim("pool00000000000000c2", request_for("contract0006", pooler))
        assert list(await extension.list_sandboxes()) == []


async def _discard(_stream: str, _data: bytes) -> None:
    return None
