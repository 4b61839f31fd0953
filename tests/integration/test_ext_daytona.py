"""ext.daytona called directly, against the served Daytona double (tests/doubles/daytona_double.py).

The double enforces Daytona's published spec in both directions, so every test
also proves that the adapter sent only what the spec allows; its fixture
fails the test on any violation.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sandboxer.config.catalog import Catalog
from sandboxer.config.profile import Profile, Resources
from sandboxer.config.settings import Settings
from sandboxer.errors import (
    ConfigError,
    ExtensionError,
    InvalidInput,
    ProviderAuth,
    ProviderError,
    ProviderQuota,
    SandboxNotFound,
    Unsupported,
    WorkspaceRefused,
)
from sandboxer.extensions.base import ProvisionRequest
from sandboxer.extensions.capabilities import Pausable, Snapshotter, TimeoutKeeper, check_claims
from sandboxer.extensions.daytona.backend import DaytonaExtension
from sandboxer.extensions.daytona.plan import our_labels
from tests.doubles.daytona_double import DaytonaServed
from tests.waiting import until

pytestmark = pytest.mark.integration

STOP_PATH = "/sandbox/{sandboxIdOrName}/stop"
FAST = {"poll_interval": 0.02, "ready_timeout": 5, "request_timeout": 2}


def build(
    served: DaytonaServed,
    *,
    upload_max_mb: int = 1024,
    extension: str = "ext.daytona",
    kind: type[DaytonaExtension] = DaytonaExtension,
    **settings: Any,
) -> DaytonaExtension:
    """The backend as the worker builds it: from the packaged declaration (under another id
    with ``extension``, as a copy in $SANDBOXER_HOME/extensions), settings overridden; a
    ``kind`` of it a test subclassed to watch it."""
    decl = Catalog.load().extensions_enabled()["ext.daytona"]
    given = {"api_url": served.api_url, "api_key": served.key, **FAST, **settings}
    settings_given = {k: v for k, v in given.items() if v is not None}
    decl = decl.model_copy(update={"id": extension, "settings": settings_given})
    settings_ = Settings(
        home=Path("/nonexistent"),
        nats_urls=(),
        nats_server=None,
        ack_wait=5.0,
        upload_max_mb=upload_max_mb,
    )
    extension = kind.from_declaration(decl, settings_)
    check_claims(decl, extension)
    return extension


@pytest.fixture
async def daytona(daytona_double: DaytonaServed) -> AsyncIterator[DaytonaExtension]:
    extension = build(daytona_double)
    yield extension
    await extension.aclose()


def request(sandbox_id: str, profile: Profile | None = None, **fields: Any) -> ProvisionRequest:
    return ProvisionRequest(
        sandbox_id=sandbox_id,
        profile=profile or Catalog.load().profile("profile.daytona"),
        inputs={},
        **fields,
    )


class Collected:
    def __init__(self) -> None:
        self.chunks: list[tuple[str, bytes]] = []

    async def __call__(self, stream: str, data: bytes) -> None:
        self.chunks.append((stream, data))

    @property
    def text(self) -> str:
        return b"".join(data for _, data in self.chunks).decode()


async def up(extension: DaytonaExtension, sandbox_id: str, **fields: Any) -> dict[str, Any]:
    req = request(sandbox_id, **fields)
    await extension.provision(req)
    return (await extension.wait_ready(req)).descriptor


class TestLifecycle:
    async def test_create_polls_until_started(
        self, daytona: DaytonaExtension, daytona_double: DaytonaServed
    ) -> None:
        daytona_double.double.ready_after_polls = 4
        descriptor = await up(daytona, "dtlife0001", project="acme")
        [record] = daytona_double.double.live()
        assert descriptor == {
            "kind": "daytona",
            "sandbox_id": record.id,
            "name": "sandboxer-dtlife0001",
            "state": "started",
            "target": "us",
            "access": {
                "kind": "provider",
                "provider": "daytona",
                "provider_sandbox_id": record.id,
                "exec": "sandboxer exec dtlife0001 -- CMD",
            },
        }
        # Generation 1, attempt 1: the provisioning that made it.
        assert record.labels == our_labels("dtlife0001", "acme", "ext.daytona", (1, 1))
        assert record.labels["sandboxer_attempt"] == "1.1"
        assert record.body["snapshot"] == "daytonaio/sandbox:0.4.3"
        assert "cpu" not in record.body  # Daytona refuses resources with a snapshot
        assert daytona_double.app.calls.count(("GET", "/sandbox/{sandboxIdOrName}")) >= 5
        found = await daytona.list_sandboxes()
        assert [(f.sandbox_id, f.alive) for f in found] == [("dtlife0001", True)]
        await daytona.teardown("dtlife0001")
        assert await daytona.list_sandboxes() == []

    async def test_201_where_the_spec_says_200_is_accepted(
        self, daytona: DaytonaExtension, daytona_double: DaytonaServed
    ) -> None:
        await up(daytona, "dtlife0002")
        await daytona.pause("dtlife0002")
        await daytona.resume("dtlife0002")
        answered = daytona_double.app.deviations
        assert 201 in answered[("POST", "/sandbox")]
        assert ("POST", "/sandbox") in daytona_double.app.calls
        assert ("POST", "/sandbox/{sandboxIdOrName}/stop") in daytona_double.app.calls

    @pytest.mark.parametrize("state", ["error", "build_failed"])
    async def test_a_failed_sandbox_fails_with_the_providers_reason(
        self, daytona: DaytonaExtension, daytona_double: DaytonaServed, state: str
    ) -> None:
        daytona_double.double.end_state = state  # type: ignore[assignment]
        daytona_double.double.error_reason = "no space left on runner r-7"
        req = request("dtfail0001")
        await daytona.provision(req)
        with pytest.raises(ProviderError, match=f"{state}: no space left on runner r-7"):
            await daytona.wait_ready(req)
        found = await daytona.list_sandboxes()
        assert [(f.sandbox_id, f.alive) for f in found] == [("dtfail0001", False)]
        await daytona.teardown("dtfail0001")
        assert daytona_double.double.live() == []

    async def test_a_sandbox_that_never_starts_times_out(
        self, daytona_double: DaytonaServed
    ) -> None:
        daytona_double.double.ready_after_polls = 10_000
        extension = build(daytona_double, ready_timeout=0.3)
        req = request("dtslow0001")
        await extension.provision(req)
        with pytest.raises(ProviderError, match=r"did not start within 0\.3s"):
            await extension.wait_ready(req)
        await extension.teardown("dtslow0001")
        await extension.aclose()

    async def test_image_profiles_build_with_resources(
        self, daytona: DaytonaExtension, daytona_double: DaytonaServed
    ) -> None:
        base = Catalog.load().profile("profile.daytona")
        profile = base.model_copy(
            update={
                "image": "image:python:3.12-slim",
                "resources": Resources(cpu=1.5, memory_mb=3000, disk_mb=5120, gpu="H100"),
            }
        )
        req = request("dtimage001", profile)
        await daytona.provision(req)
        [record] = daytona_double.double.live()
        assert record.body["buildInfo"] == {"dockerfileContent": "FROM python:3.12-slim\n"}
        assert (record.body["cpu"], record.body["memory"], record.body["disk"]) == (2, 3, 5)
        assert (record.body["gpu"], record.body["gpuType"]) == (1, ["H100"])
        assert "snapshot" not in record.body

    async def test_a_snapshot_profile_with_resources_warns(self, daytona: DaytonaExtension) -> None:
        base = Catalog.load().profile("profile.daytona")
        profile = base.model_copy(update={"resources": Resources(cpu=4)})
        req = request("dtwarn0001", profile)
        await daytona.provision(req)
        readiness = await daytona.wait_ready(req)
        assert any("fixes cpu, memory, disk" in w for w in readiness.warnings)

    async def test_a_profile_without_image_is_refused_naming_it(
        self, daytona: DaytonaExtension, daytona_double: DaytonaServed
    ) -> None:
        profile = Catalog.load().profile("profile.daytona").model_copy(update={"image": None})
        with pytest.raises(InvalidInput, match=r"profile profile\.daytona names no image"):
            await daytona.provision(request("dtnoimg001", profile))
        assert daytona_double.app.calls == []

    async def test_the_leak_backstop_follows_the_ttl(
        self, daytona: DaytonaExtension, daytona_double: DaytonaServed
    ) -> None:
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
        await up(daytona, "dtttl00001", expires_at=expires)
        [record] = daytona_double.double.live()
        assert record.auto_stop == 60 + 15  # the TTL's remaining minutes plus the grace
        assert record.auto_delete == 15
        later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 7200))
        assert isinstance(daytona, TimeoutKeeper)
        await daytona.set_timeout("dtttl00001", later)
        assert record.auto_stop == 120 + 15


class TestTeardownAndListing:
    async def test_teardown_is_idempotent(
        self, daytona: DaytonaExtension, daytona_double: DaytonaServed
    ) -> None:
        await up(daytona, "dtdown0001")
        await daytona.teardown("dtdown0001")
        await daytona.teardown("dtdown0001")
        await daytona.teardown("neverexisted")
        assert daytona_double.double.live() == []

    async def test_list_shows_only_ours_and_orphans_with_our_labels(
        self, daytona: DaytonaExtension, daytona_double: DaytonaServed
    ) -> None:
        await up(daytona, "dtlist0001")
        daytona_double.double.plant_orphan({"team": "other"})  # not ours
        daytona_double.double.plant_orphan({"sandboxer_id": "dtlist0002"})  # lacks the marker
        double = daytona_double.double
        double.plant_orphan(our_labels("dtleak0001", "acme", "ext.daytona"))  # a leak of ours
        double.plant_orphan(our_labels("dtstop0001", None, "ext.daytona"), state="stopped")
        double.plant_orphan({**our_labels("x", None, "ext.daytona"), "sandboxer_id": "../x"})
        double.plant_orphan(our_labels("dteu000001", None, "ext.daytona-eu"))  # not ours
        # Made before the labels named the declaration: listed, for the log to say whose.
        double.plant_orphan({"sandboxer_id": "dtold00001", "sandboxer_extension": "ext.daytona"})
        listed = await daytona.list_sandboxes()
        found = {f.sandbox_id: f.alive for f in listed}
        assert found == {
            "dtlist0001": True,
            "dtleak0001": True,
            "dtstop0001": True,
            "dtold00001": True,
        }
        assert [f.sandbox_id for f in listed if f.unmarked] == ["dtold00001"]

    async def test_list_follows_the_cursor(
        self, daytona: DaytonaExtension, daytona_double: DaytonaServed
    ) -> None:
        daytona_double.double.page_size = 2
        for n in range(5):
            daytona_double.double.plant_orphan(our_labels(f"dtpage000{n}", None, "ext.daytona"))
        found = sorted(f.sandbox_id for f in await daytona.list_sandboxes())
        assert found == [f"dtpage000{n}" for n in range(5)]


class TestTwoDeclarations:
    """``ext.daytona-eu``, a copy of the declaration with the same key, on the same Daytona
    organization: each lists, adopts, deletes and reaps only its own."""

    async def test_a_declaration_beside_ours_touches_only_its_own(
        self, daytona: DaytonaExtension, daytona_double: DaytonaServed
    ) -> None:
        eu = build(daytona_double, extension="ext.daytona-eu")
        double = daytona_double.double
        try:
            # The sandbox of an id ext.daytona gave up on, rerouted to ext.daytona-eu.
            await up(eu, "dtboth0001")
            [theirs] = double.live()
            assert theirs.labels == our_labels("dtboth0001", None, "ext.daytona-eu", (1, 1))
            assert list(await daytona.list_sandboxes()) == []
            await daytona.teardown("dtboth0001")  # the failed attempt's clean-up here
            with pytest.raises(ProviderError, match=r"taken by a sandbox of ext\.daytona-eu"):
                await daytona.provision(request("dtboth0001", attempt=2))  # not adopted
            with pytest.raises(SandboxNotFound):
                await daytona.exec("dtboth0001", ["true"], Collected())
            assert double.live() == [theirs]
            await up(daytona, "dtmine0001")
            assert [f.sandbox_id for f in await eu.list_sandboxes()] == ["dtboth0001"]
            assert [f.sandbox_id for f in await daytona.list_sandboxes()] == ["dtmine0001"]
            await eu.teardown("dtmine0001")
            assert {r.name for r in double.live()} == {
                "sandboxer-dtboth0001",
                "sandboxer-dtmine0001",
            }
        finally:
            await eu.aclose()

    async def test_sandboxes_made_before_the_declaration_label_are_the_log_s_to_judge(
        self, daytona: DaytonaExtension, daytona_double: DaytonaServed
    ) -> None:
        """Before, every sandbox was labelled ext.daytona whichever declaration made it: each
        declaration lists those as unmarked (the worker judges one only where the log places
        it on that declaration), and the one that made it still finds and deletes it."""
        eu = build(daytona_double, extension="ext.daytona-eu")
        double = daytona_double.double
        try:
            await up(eu, "dtold00001")
            await up(daytona, "dtnew00001")
            [older] = [r for r in double.live() if r.name == "sandboxer-dtold00001"]
            older.labels = {"sandboxer_id": "dtold00001", "sandboxer_extension": "ext.daytona"}
            assert [(f.sandbox_id, f.unmarked) for f in await eu.list_sandboxes()] == [
                ("dtold00001", True)
            ]
            listed = await daytona.list_sandboxes()
            assert sorted((f.sandbox_id, f.unmarked) for f in listed) == [
                ("dtnew00001", False),
                ("dtold00001", True),
            ]
            out = Collected()
            assert await eu.exec("dtold00001", ["echo", "still", "eu's"], out) == 0
            await eu.teardown("dtold00001")
            assert [r.name for r in double.live()] == ["sandboxer-dtnew00001"]
        finally:
            await eu.aclose()


class TestExec:
    async def test_exit_code_and_output(self, daytona: DaytonaExtension) -> None:
        await up(daytona, "dtexec0001")
        out = Collected()
        assert await daytona.exec("dtexec0001", ["sh", "-c", "echo hi; exit 9"], out) == 9
        assert out.chunks == [("stdout", b"hi\n")]

    async def test_arguments_stay_separate(
        self, daytona: DaytonaExtension, daytona_double: DaytonaServed
    ) -> None:
        await up(daytona, "dtexec0002")
        out = Collected()
        hostile = "a b; echo pwned $(id) 'q\""
        assert await daytona.exec("dtexec0002", ["printf", "%s|", hostile, "two"], out) == 0
        assert out.text == f"{hostile}|two|"
        [sent] = daytona_double.double.exec_log
        assert sent["timeout"] == 3600

    async def test_commands_run_in_the_workdir_setting(self, daytona_double: DaytonaServed) -> None:
        extension = build(daytona_double, workdir="/home/daytona")
        await up(extension, "dtexec0006")
        out = Collected()
        assert await extension.exec("dtexec0006", ["pwd"], out) == 0
        assert out.text.endswith("/home/daytona\n")
        assert daytona_double.double.exec_log[-1]["cwd"] == "/home/daytona"
        await extension.aclose()

    async def test_service_and_bad_argv_are_refused(self, daytona: DaytonaExtension) -> None:
        with pytest.raises(Unsupported):
            await daytona.exec("dtexec0003", ["true"], Collected(), service="web")
        with pytest.raises(InvalidInput):
            await daytona.exec("dtexec0003", [], Collected())

    async def test_exec_in_a_missing_or_paused_sandbox(self, daytona: DaytonaExtension) -> None:
        with pytest.raises(SandboxNotFound):
            await daytona.exec("dtexec0004", ["true"], Collected())
        await up(daytona, "dtexec0005")
        await daytona.pause("dtexec0005")
        with pytest.raises(ExtensionError, match="stopped; resume it first"):
            await daytona.exec("dtexec0005", ["true"], Collected())


class TestPause:
    async def test_pause_stops_and_resume_starts(
        self, daytona: DaytonaExtension, daytona_double: DaytonaServed
    ) -> None:
        assert isinstance(daytona, Pausable)
        await up(daytona, "dtpause001")
        [record] = daytona_double.double.live()
        await daytona.pause("dtpause001")
        assert (record.state, record.auto_delete) == ("stopped", -1)
        found = {f.sandbox_id: (f.alive, f.frozen) for f in await daytona.list_sandboxes()}
        assert found == {"dtpause001": (True, "all")}  # paused, not dead
        await daytona.pause("dtpause001")  # again: already stopped
        await daytona.resume("dtpause001")
        assert (record.state, record.auto_delete) == ("started", 15)
        [listed] = await daytona.list_sandboxes()
        assert listed.frozen == "none"
        out = Collected()
        assert await daytona.exec("dtpause001", ["echo", "back"], out) == 0
        assert out.text == "back\n"

    async def test_pause_of_a_missing_sandbox(self, daytona: DaytonaExtension) -> None:
        with pytest.raises(SandboxNotFound):
            await daytona.pause("dtpause002")

    @pytest.mark.parametrize(("status", "tries"), [(400, 1), (503, 4)])
    async def test_a_failed_stop_gives_the_auto_delete_back(
        self, daytona: DaytonaExtension, daytona_double: DaytonaServed, status: int, tries: int
    ) -> None:
        """Review 2026-12-04: the pause lifted the auto-delete (-1) before the stop and left
        it so when the stop failed, on a sandbox still running and ``ready`` in the log."""
        await up(daytona, "dtpause003")
        [record] = daytona_double.double.live()
        for _ in range(2):  # the pause retried fails the same way: still put back
            daytona_double.app.faults.add(
                "status", method="POST", pattern=STOP_PATH, status=status, times=tries
            )  # a 503 is retried within the call (4 tries): each is refused
            with pytest.raises(ProviderError, match=f"stop.* {status}|\\({status}\\)"):
                await daytona.pause("dtpause003")
            assert (record.state, record.auto_delete) == ("started", 15)
        await daytona.pause("dtpause003")  # once the stop goes through, it pauses
        assert (record.state, record.auto_delete) == ("stopped", -1)

    async def test_a_stop_that_lands_though_the_pause_failed_is_started_again(
        self, daytona: DaytonaExtension, daytona_double: DaytonaServed
    ) -> None:
        """The stop went through but the pause gave up waiting: the pause failed, so the log
        keeps the sandbox ``ready``. Once the stop has landed the sandbox is started again,
        with its auto-delete (on the old code it stayed stopped, the auto-delete lifted). The
        start too takes longer than this ``ready_timeout``: the error says it may not land."""
        await up(daytona, "dtpause004")
        [record] = daytona_double.double.live()
        extension = build(daytona_double, ready_timeout=0.001)
        try:
            with pytest.raises(ProviderError, match="did not stop within") as caught:
                await extension.pause("dtpause004")
        finally:
            await extension.aclose()
        assert (record.state, record.auto_delete) == ("started", 15)
        assert "its stop landed after all, and starting it again" in str(caught.value)


class TestFaults:
    async def test_401_names_the_key_source_not_the_key(
        self, daytona_double: DaytonaServed, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        wrong = "dtn_wrong_key_9f8e7d6c5b4a"
        monkeypatch.setenv("DAYTONA_API_KEY", wrong)
        extension = build(daytona_double, api_key=None)
        with pytest.raises(ProviderAuth) as caught:
            await extension.provision(request("dtauth0001"))
        assert "env:DAYTONA_API_KEY" in caught.value.message
        assert wrong not in str(caught.value)
        assert caught.value.status == 401
        await extension.aclose()

    async def test_a_missing_key_is_a_config_error_on_first_use(
        self, daytona_double: DaytonaServed, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv("DAYTONA_API_KEY", raising=False)
        extension = build(daytona_double, api_key=None)  # building does not need the key
        with pytest.raises(ConfigError, match="DAYTONA_API_KEY"):
            await extension.provision(request("dtauth0002"))

    async def test_429_is_a_quota_refusal(
        self, daytona: DaytonaExtension, daytona_double: DaytonaServed
    ) -> None:
        daytona_double.app.faults.add("status", method="POST", pattern="/sandbox", status=429)
        with pytest.raises(ProviderQuota) as caught:
            await daytona.provision(request("dtquota001"))
        assert caught.value.retryable
        assert daytona_double.double.live() == []

    async def test_500_twice_then_ok(
        self, daytona: DaytonaExtension, daytona_double: DaytonaServed
    ) -> None:
        daytona_double.app.faults.add("status", method="POST", pattern="/sandbox", times=2)
        daytona_double.app.faults.add(
            "status", method="GET", pattern="/sandbox/{sandboxIdOrName}", status=503, times=2
        )
        await up(daytona, "dtretry001")
        assert len(daytona_double.double.live()) == 1
        assert daytona_double.double.creates == 1

    async def test_a_lost_create_answer_leaves_exactly_one(
        self, daytona_double: DaytonaServed
    ) -> None:
        extension = build(daytona_double, request_timeout=0.3, create_settle=4.0)
        daytona_double.app.faults.add("lost", method="POST", pattern="/sandbox", seconds=1.0)
        await up(extension, "dtlost0001")
        assert len(daytona_double.double.live()) == 1
        assert daytona_double.double.creates == 1
        await extension.aclose()

    async def test_a_hung_create_is_retried_once_nothing_was_made(
        self, daytona_double: DaytonaServed
    ) -> None:
        extension = build(daytona_double, request_timeout=0.3, create_settle=4.0)
        daytona_double.app.faults.add("hang", method="POST", pattern="/sandbox", seconds=0.6)
        await up(extension, "dthang0001")
        assert len(daytona_double.double.live()) == 1
        await extension.aclose()

    async def test_provision_twice_leaves_exactly_one(
        self, daytona: DaytonaExtension, daytona_double: DaytonaServed
    ) -> None:
        req = request("dttwice001")
        await daytona.provision(req)
        first = {r.id for r in daytona_double.double.live()}
        again = dataclasses.replace(req, attempt=2)
        await daytona.provision(again)  # a redelivered job: the first attempt's is deleted
        await daytona.wait_ready(again)
        [record] = daytona_double.double.live()
        assert record.id not in first
        assert [f.sandbox_id for f in await daytona.list_sandboxes()] == ["dttwice001"]

    async def test_a_redelivered_job_removes_a_labelled_orphan(
        self, daytona: DaytonaExtension, daytona_double: DaytonaServed
    ) -> None:
        daytona_double.double.plant_orphan(our_labels("dtorph0001", None, "ext.daytona"))
        await up(daytona, "dtorph0001", attempt=2)
        assert [r.name for r in daytona_double.double.live()] == ["sandboxer-dtorph0001"]

    @pytest.mark.parametrize("bad", ["../../etc", "a;rm -rf /", "UPPER1234", "x", "$(id)aaaa"])
    async def test_hostile_ids_are_refused_before_any_request(
        self, daytona: DaytonaExtension, daytona_double: DaytonaServed, bad: str
    ) -> None:
        for call in (
            daytona.provision(request(bad)),
            daytona.wait_ready(request(bad)),
            daytona.teardown(bad),
            daytona.exec(bad, ["true"], Collected()),
            daytona.pause(bad),
            daytona.resume(bad),
            daytona.set_timeout(bad, "2030-01-01T00:00:00Z"),
            daytona.snapshot_workspace(bad, Path("/nonexistent")),
        ):
            with pytest.raises(InvalidInput):
                await call
        assert daytona_double.app.calls == []


class TestSnapshot:
    async def test_copies_files_written_through_exec(
        self, daytona: DaytonaExtension, tmp_path: Path
    ) -> None:
        assert isinstance(daytona, Snapshotter)
        await up(daytona, "dtsnap0001")
        script = "mkdir -p src && printf 'print(1)\\n' > src/main.py && ln -s src/main.py link"
        assert await daytona.exec("dtsnap0001", ["sh", "-c", script], Collected()) == 0
        destination = tmp_path / "tree"
        destination.mkdir()
        await daytona.snapshot_workspace("dtsnap0001", destination)
        assert (destination / "src" / "main.py").read_text() == "print(1)\n"
        assert (destination / "link").is_symlink()
        assert not list(tmp_path.glob("*.tar"))

    async def test_a_link_out_of_the_workspace_is_refused(
        self, daytona: DaytonaExtension, tmp_path: Path
    ) -> None:
        await up(daytona, "dtsnap0002")
        assert await daytona.exec("dtsnap0002", ["ln", "-s", "/etc/passwd", "pw"], Collected()) == 0
        destination = tmp_path / "tree"
        destination.mkdir()
        with pytest.raises(WorkspaceRefused, match=r"leaves? the workspace"):
            await daytona.snapshot_workspace("dtsnap0002", destination)
        assert list(destination.iterdir()) == []


MIB = 1024 * 1024
BIG = 40 * MIB
"""A file far over the 1 MiB copy limit these tests set."""
HOSTILE_TOOLS = (
    # A tenant has root in its sandbox: it replaces head with one that cuts nothing and
    # wc with one that says every file is empty, so no check inside the sandbox holds.
    "mkdir -p ../../usr/local/bin && cd ../../usr/local/bin && "
    "printf '#!/bin/sh\\nshift 2\\nexec cat \"$@\"\\n' >head && "
    "printf '#!/bin/sh\\necho 0\\n' >wc && chmod +x head wc"
)


class TestLargeAnswers:
    """The toolbox answers a command's output whole; the worker holds it. Neither a large
    workspace nor a large output may make the worker hold more than the copy limit."""

    async def _with_big_file(self, served: DaytonaServed, sandbox_id: str) -> DaytonaExtension:
        extension = build(served, upload_max_mb=1, request_timeout=60)
        await up(extension, sandbox_id)
        write = ["sh", "-c", f"head -c {BIG} /dev/urandom >big"]
        assert await extension.exec(sandbox_id, write, Collected()) == 0
        return extension

    async def test_a_workspace_over_the_limit_is_refused_in_the_sandbox(
        self, daytona_double: DaytonaServed, tmp_path: Path
    ) -> None:
        extension = await self._with_big_file(daytona_double, "dtbig00001")
        destination = tmp_path / "tree"
        destination.mkdir()
        tracemalloc.start()
        try:
            with pytest.raises(WorkspaceRefused, match="larger than 1 MiB"):
                await extension.snapshot_workspace("dtbig00001", destination)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
            await extension.aclose()
        # Read whole, the 40 MiB would be held several times over (base64, JSON, bytes).
        assert peak < 8 * MIB, f"{peak / MIB:.0f} MiB held for a refused snapshot"
        assert list(destination.iterdir()) == []

    async def test_output_over_the_cap_is_cut_and_said(self, daytona_double: DaytonaServed) -> None:
        extension = await self._with_big_file(daytona_double, "dtbig00002")
        [record] = daytona_double.double.live()
        out = Collected()
        tracemalloc.start()
        try:
            assert await extension.exec("dtbig00002", ["cat", "big"], out) == 0
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
            await extension.aclose()
        assert peak < 16 * MIB, f"{peak / MIB:.0f} MiB held for a 1 MiB output"
        stdout = b"".join(data for stream, data in out.chunks if stream == "stdout")
        stderr = b"".join(data for stream, data in out.chunks if stream == "stderr")
        assert stdout == (record.root / "home" / "daytona" / "big").read_bytes()[:MIB]
        assert b"at most 1048576 bytes of each stream" in stderr
        assert b"the rest of stdout was dropped" in stderr

    async def test_a_sandbox_that_does_not_cut_is_not_read_past_the_cap(
        self, daytona_double: DaytonaServed, tmp_path: Path
    ) -> None:
        extension = await self._with_big_file(daytona_double, "dtbig00003")
        try:
            assert await extension.exec("dtbig00003", ["sh", "-c", HOSTILE_TOOLS], Collected()) == 0
            with pytest.raises(ProviderError, match=r"answered more than \d+ bytes"):
                await extension.exec("dtbig00003", ["cat", "big"], Collected())
            destination = tmp_path / "tree"
            destination.mkdir()
            with pytest.raises(ProviderError, match=r"answered more than \d+ bytes"):
                await extension.snapshot_workspace("dtbig00003", destination)
        finally:
            await extension.aclose()


class TestMalformedAnswers:
    """What is not Daytona's spec (a wrong api_url, a broken item) is a ProviderError, which
    the worker's reconcile at start reports and goes on from; any other exception stops it."""

    async def test_a_web_page_where_the_api_should_be(
        self, daytona: DaytonaExtension, daytona_double: DaytonaServed
    ) -> None:
        page = "<html><body>Sign in</body></html>"
        daytona_double.app.faults.add(
            "answer",
            method="GET",
            pattern="/sandbox",
            status=200,
            body=page,
            content_type="text/html",
        )
        with pytest.raises(ProviderError, match=r"GET /api/sandbox answered 200 .*not JSON"):
            await daytona.list_sandboxes()

    @pytest.mark.parametrize("item", [{"name": "no-id"}, {"id": 7}, "a string"])
    async def test_a_listed_item_that_is_not_a_sandbox(
        self, daytona: DaytonaExtension, daytona_double: DaytonaServed, item: Any
    ) -> None:
        body = {"items": [item], "nextCursor": None}
        daytona_double.app.faults.add(
            "answer", method="GET", pattern="/sandbox", status=200, body=body
        )
        with pytest.raises(ProviderError, match="not what its API spec describes"):
            await daytona.list_sandboxes()

    async def test_fields_of_the_wrong_type_are_read_as_absent(
        self, daytona: DaytonaExtension, daytona_double: DaytonaServed
    ) -> None:
        item = {
            "id": "d0d0",
            "state": ["started"],  # a list: it cannot be looked up among the states
            "errorReason": {"why": 1},
            "labels": our_labels("dtodd00001", None, "ext.daytona"),
        }
        body = {"items": [item], "nextCursor": None}
        daytona_double.app.faults.add(
            "answer", method="GET", pattern="/sandbox", status=200, body=body
        )
        [found] = await daytona.list_sandboxes()
        assert (found.sandbox_id, found.detail) == (
            "dtodd00001",
            {"provider_id": "d0d0", "state": None},
        )


async def test_a_failed_create_that_lands_after_its_teardown_is_deleted(
    daytona_double: DaytonaServed,
) -> None:
    """Every create outlives request_timeout, so the provision fails having found nothing by
    name, and the worker's cleanup tears the sandbox down at once; the creates land at
    Daytona after that. Teardown keeps looking until they can no longer land
    (create_settle), so none is left with our label and no record naming it."""
    extension = build(daytona_double, request_timeout=0.3, create_settle=4.0)
    daytona_double.app.faults.add(
        "latency", method="POST", pattern="/sandbox", seconds=3.0, times=3
    )
    try:
        with pytest.raises(ProviderError):
            await extension.provision(request("dtlate0001"))
        assert daytona_double.double.made == []  # nothing had landed when it gave up
        await extension.teardown("dtlate0001")  # what the worker does with a failed create
        for _ in range(100):  # the first create lands in the end
            if daytona_double.double.made:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
    finally:
        await extension.aclose()
    assert daytona_double.double.made
    assert daytona_double.double.live() == []


async def test_a_redelivered_job_beside_its_killed_worker_s_create_leaves_one(
    daytona_double: DaytonaServed,
) -> None:
    """A worker sends the create and is killed before Daytona answers; the job, redelivered
    to another worker process, creates again while the first is still on its way, and the
    first reaches Daytona only once the redelivered job's sandbox is ready. Daytona refuses a
    second sandbox of one name, so it is refused: no second sandbox for ready to look for.
    (The first landing before the second create is
    TestAttempts.test_a_later_attempt_never_adopts_an_earlier_attempt_s_sandbox.)"""
    app, double = daytona_double.app, daytona_double.double

    def creates_answered() -> list[int]:
        return [status for *call, status in app.handled if call == ["POST", "/sandbox"]]

    arrives = threading.Event()
    app.faults.add("latency", method="POST", pattern="/sandbox", until=arrives)
    killed = build(daytona_double)
    sent = asyncio.create_task(killed.provision(request("dtredo0001")))
    await until(lambda: ("POST", "/sandbox") in app.calls)
    sent.cancel()  # the worker dies with its create on the way
    await asyncio.gather(sent, return_exceptions=True)
    await killed.aclose()
    extension = build(daytona_double)
    try:
        ready = await up(extension, "dtredo0001", attempt=2)
        arrives.set()  # the killed worker's create arrives
        await until(lambda: len(creates_answered()) == 2)
    finally:
        arrives.set()
        await extension.aclose()
    assert creates_answered() == [201, 409]  # the redelivered job's made; the killed one's refused
    assert [r.id for r in double.live()] == [ready["sandbox_id"]]
    assert double.creates == 1


class TestAttempts:
    """Two attempts at one provisioning at once: the job redelivered past ack_wait to another
    worker while the first is frozen or cut off from NATS, not dead. Each Daytona sandbox
    names the attempt that made it; an attempt adopts only its own and deletes only its own
    and earlier ones', never a later one's (the log's `ready` may name that one)."""

    async def test_a_first_attempt_whose_name_is_free_only_creates(
        self, daytona: DaytonaExtension, daytona_double: DaytonaServed
    ) -> None:
        """Nothing of a first attempt's can be there before it, and a taken name says so in
        the create's 409: no look (a GET and a list) before every first create."""
        await daytona.provision(request("dtfirst001"))
        assert daytona_double.app.calls == [("POST", "/sandbox")]

    async def test_a_first_attempt_replaces_an_older_holder_of_its_name(
        self, daytona: DaytonaExtension, daytona_double: DaytonaServed
    ) -> None:
        """A sandbox of the id made before the attempt label holds the name (as an earlier
        attempt's would): the create's 409 deletes it, and the create is sent once more."""
        double = daytona_double.double
        older = double.plant_orphan(our_labels("dtolder001", None, "ext.daytona"))
        older.name = "sandboxer-dtolder001"
        req = request("dtolder001")
        await daytona.provision(req)
        descriptor = (await daytona.wait_ready(req)).descriptor
        [record] = double.live()
        assert descriptor["sandbox_id"] == record.id != older.id
        assert record.labels["sandboxer_attempt"] == "1.1"

    async def test_a_resumed_earlier_attempt_leaves_the_later_one_s_sandbox(
        self, daytona_double: DaytonaServed
    ) -> None:
        """Attempt 2's worker froze before its create; attempt 3, on another worker process,
        makes the sandbox the log's `ready` names. Attempt 2 resumes: as a redelivered job it
        deletes what earlier attempts left, its create finds the name held by attempt 3's
        (not adopted: it stops), and, taken over, it tears down what it made. None of it
        deletes attempt 3's sandbox."""
        double = daytona_double.double
        made = request("dtfence001")
        second, third = (dataclasses.replace(made, attempt=n) for n in (2, 3))
        later = build(daytona_double)
        resumed = build(daytona_double, create_settle=0.5)
        try:
            await later.provision(third)
            ready_one = (await later.wait_ready(third)).descriptor["sandbox_id"]
            # One made before the attempt label (a stray found by label only): earlier.
            older = double.plant_orphan(our_labels("dtfence001", None, "ext.daytona"))
            with pytest.raises(ProviderError, match=r"held by a later provisioning \(1\.3\)"):
                await resumed.provision(second)
            assert older not in double.live()  # its clean start deleted the earlier one
            await resumed.teardown_attempt("dtfence001", second.made_by)  # taken over
        finally:
            await later.aclose()
            await resumed.aclose()
        [record] = double.live()
        assert (record.id, record.labels["sandboxer_attempt"]) == (ready_one, "1.3")

    async def test_a_resumed_attempt_does_not_take_the_later_one_s_for_its_own(
        self, daytona_double: DaytonaServed
    ) -> None:
        """Attempt 2 made its sandbox and froze; attempt 3 deleted it (an earlier attempt's)
        and made its own. Attempt 2 resumes at its wait: the name's holder is not what it
        made, so it is not ready, and its teardown leaves attempt 3's sandbox."""
        double = daytona_double.double
        made = request("dtfence002")
        second, third = (dataclasses.replace(made, attempt=n) for n in (2, 3))
        later = build(daytona_double)
        resumed = build(daytona_double)
        try:
            await resumed.provision(second)
            [its_own] = double.live()
            assert its_own.labels["sandboxer_attempt"] == "1.2"
            await later.provision(third)  # a redelivered job: the earlier one's is deleted
            ready_one = (await later.wait_ready(third)).descriptor["sandbox_id"]
            assert ready_one != its_own.id
            with pytest.raises(SandboxNotFound, match=r"not the one provisioning 1\.2"):
                await resumed.wait_ready(second)
            await resumed.teardown_attempt("dtfence002", second.made_by)
        finally:
            await later.aclose()
            await resumed.aclose()
        assert [r.id for r in double.live()] == [ready_one]

    async def test_a_later_attempt_never_adopts_an_earlier_attempt_s_sandbox(
        self, daytona_double: DaytonaServed
    ) -> None:
        """Attempt 1's worker is cut off with its create on the way; the job goes to attempt
        2, which finds nothing and creates. Attempt 1's create lands first, so Daytona refuses
        attempt 2's (409: the name is taken). Adopting it would leave the log's `ready` naming
        a sandbox that attempt 1, still running, removes as its own: attempt 2 deletes it and
        makes its own, which attempt 1's clean-up then leaves alone."""
        double = daytona_double.double
        daytona_double.app.faults.add("latency", method="POST", pattern="/sandbox", seconds=0.5)
        daytona_double.app.faults.add("latency", method="POST", pattern="/sandbox", seconds=2.0)
        req = request("dtfence003")
        cut_off = build(daytona_double, create_settle=0.5)  # it looks for its late create so long
        sent = asyncio.create_task(cut_off.provision(req))
        for _ in range(100):
            if ("POST", "/sandbox") in daytona_double.app.calls:
                break
            await asyncio.sleep(0.02)
        sent.cancel()  # its create goes on at Daytona, and lands in 0.5 s
        await asyncio.gather(sent, return_exceptions=True)
        extension = build(daytona_double, request_timeout=5)
        again = dataclasses.replace(req, attempt=2)
        try:
            await extension.provision(again)  # finds nothing; its create meets attempt 1's
            readiness = await extension.wait_ready(again)
            [earlier] = [r for r in double.made if r.labels["sandboxer_attempt"] == "1.1"]
            [record] = double.live()
            assert readiness.descriptor["sandbox_id"] == record.id != earlier.id
            assert record.labels["sandboxer_attempt"] == "1.2"
            await cut_off.teardown_attempt("dtfence003", req.made_by)  # attempt 1's own
        finally:
            await cut_off.aclose()
            await extension.aclose()
        assert [r.id for r in double.live()] == [record.id]
