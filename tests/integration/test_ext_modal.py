"""ext.modal against the Modal double: the pinned SDK, unpatched, speaking gRPC to a local server.

The double (tests/doubles/modal_double.py) serves Modal's API and command router
on loopback; ``MODAL_SERVER_URL`` points the SDK at it. Faults are injected there,
never in our client.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from grpclib import Status

from sandboxer.config.catalog import Catalog
from sandboxer.config.profile import Profile
from sandboxer.errors import (
    ConfigError,
    InvalidInput,
    ProviderAuth,
    ProviderError,
    ProviderQuota,
    ProviderUnavailable,
    SandboxNotFound,
    WorkspaceRefused,
)
from sandboxer.extensions.base import ProvisionRequest
from sandboxer.extensions.modal.backend import ModalExtension
from sandboxer.extensions.modal.config import ModalConfig
from tests.doubles.modal_double import Fault, ModalDouble, modal_double, modal_extensions
from tests.waiting import until

pytestmark = pytest.mark.integration

__all__ = ["modal_double", "modal_extensions"]  # fixtures, used by name


@pytest.fixture
def extension(modal_extensions: Callable[..., ModalExtension]) -> Callable[..., ModalExtension]:
    return modal_extensions


def profile(**changes: Any) -> Profile:
    base = Catalog.load().profile("profile.modal-gpu")
    return Profile.model_validate(base.model_dump() | changes)


def request(sandbox_id: str, **fields: Any) -> ProvisionRequest:
    fields.setdefault("profile", profile())
    return ProvisionRequest(sandbox_id=sandbox_id, inputs={}, **fields)


async def run(ext: ModalExtension, sandbox_id: str, *argv: str) -> tuple[int, bytes, bytes]:
    out: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}

    async def sink(stream: str, data: bytes) -> None:
        out[stream].extend(data)

    code = await ext.exec(sandbox_id, list(argv), sink)
    return code, bytes(out["stdout"]), bytes(out["stderr"])


async def test_lifecycle(
    modal_double: ModalDouble, extension: Callable[..., ModalExtension]
) -> None:
    ext = extension()
    expires = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    req = request("modal00001", expires_at=expires, project="proj-a", secrets={"API": "s3cret"})
    await ext.provision(req)
    readiness = await ext.wait_ready(req)
    assert readiness.descriptor["kind"] == "modal"
    assert readiness.descriptor["gpu"] == "A10G"
    [record] = modal_double.running_for("modal00001")
    assert record.tags == {
        "sandboxer_id": "modal00001",
        "sandboxer_extension": "ext.modal",
        "sandboxer_project": "proj-a",
        "sandboxer_attempt": "1.1",  # generation 1, attempt 1
    }
    assert record.gpu == "A10G"
    assert record.image == "python:3.12-slim"
    assert record.milli_cpu == 2000
    assert record.memory_mb == 4096
    assert record.network == "blocked"
    # Modal's own timeout is a backstop a little past the longest extend_ttl may reach
    # (the profile's ttl.max, 4h), since Modal cannot move it later.
    assert 4 * 3600 < record.timeout_secs <= 4 * 3600 + 600 + 5
    assert readiness.warnings == []
    assert [(f.sandbox_id, f.alive) for f in await ext.list_sandboxes()] == [("modal00001", True)]
    code, stdout, stderr = await run(ext, "modal00001", "sh", "-c", "echo hi; echo no >&2; exit 9")
    assert (code, stdout, stderr) == (9, b"hi\n", b"no\n")
    assert (await run(ext, "modal00001", "sh", "-c", 'printf %s "$API"'))[1] == b"s3cret"
    await ext.teardown("modal00001")
    assert modal_double.running_for("modal00001") == []
    assert list(await ext.list_sandboxes()) == []
    await ext.teardown("modal00001")
    await ext.teardown("neverthere1")
    with pytest.raises(SandboxNotFound):
        await run(ext, "modal00001", "true")


async def test_no_token_value_in_the_descriptor(
    modal_double: ModalDouble, extension: Callable[..., ModalExtension]
) -> None:
    ext = extension()
    req = request("modal00002")
    await ext.provision(req)
    text = repr((await ext.wait_ready(req)).descriptor)
    assert modal_double.token_secret not in text
    assert modal_double.token_id not in text


@pytest.mark.parametrize("bad", ["../../etc", "a;rm -rf /", "UPPER1234", "x", "$(id)aaaa"])
async def test_hostile_ids_are_refused_before_any_call(
    modal_double: ModalDouble, extension: Callable[..., ModalExtension], bad: str
) -> None:
    ext = extension()
    with pytest.raises(InvalidInput):
        await ext.provision(request(bad))
    with pytest.raises(InvalidInput):
        await ext.teardown(bad)
    with pytest.raises(InvalidInput):
        await run(ext, bad, "true")
    assert modal_double.calls == []


async def test_ttl_past_modal_limit_is_capped_and_said(
    modal_double: ModalDouble, extension: Callable[..., ModalExtension]
) -> None:
    ext = extension()
    expires = (datetime.now(UTC) + timedelta(hours=30)).isoformat()
    req = request("modal00003", expires_at=expires)
    await ext.provision(req)
    assert modal_double.running_for("modal00003")[0].timeout_secs == 24 * 3600
    readiness = await ext.wait_ready(req)
    assert any("24 hours" in w for w in readiness.warnings)


async def test_quota_is_provider_quota(
    modal_double: ModalDouble, extension: Callable[..., ModalExtension]
) -> None:
    modal_double.inject(
        Fault("SandboxCreate", "status", Status.RESOURCE_EXHAUSTED, "too many sandboxes", times=9)
    )
    with pytest.raises(ProviderQuota, match="too many sandboxes") as caught:
        await extension().provision(request("modal00004"))
    assert caught.value.retryable
    assert modal_double.running() == []


async def test_unavailable_is_retried_then_succeeds(
    modal_double: ModalDouble, extension: Callable[..., ModalExtension]
) -> None:
    # More failures than the SDK's own retries (3): ours carry it through. (A redelivered
    # job's provision lists what an earlier attempt made: its first call.)
    modal_double.inject(Fault("SandboxList", "status", Status.UNAVAILABLE, times=5))
    ext = extension()
    await ext.provision(request("modal00005", attempt=2))
    assert len(modal_double.running_for("modal00005")) == 1
    assert modal_double.calls.count("SandboxList") > 5


async def test_unavailable_for_ever_is_provider_unavailable(
    modal_double: ModalDouble, extension: Callable[..., ModalExtension]
) -> None:
    modal_double.inject(Fault("SandboxList", "status", Status.UNAVAILABLE, times=1000))
    with pytest.raises(ProviderUnavailable, match="after retries"):
        await extension(retry_attempts=2).provision(request("modal00006", attempt=2))


async def test_a_hang_is_a_timeout_then_retried(
    modal_double: ModalDouble, extension: Callable[..., ModalExtension]
) -> None:
    modal_double.inject(Fault("SandboxList", "hang", times=1))
    ext = extension(call_timeout=0.5)
    await ext.provision(request("modal00007", attempt=2))
    assert len(modal_double.running_for("modal00007")) == 1


@pytest.mark.parametrize("kind", ["lost_answer", "lost_hang"])
async def test_lost_create_answer_leaves_exactly_one(
    modal_double: ModalDouble, extension: Callable[..., ModalExtension], kind: Any
) -> None:
    modal_double.inject(Fault("SandboxCreate", kind, Status.UNAVAILABLE, times=1))
    ext = extension(call_timeout=1)
    req = request("modal00008")
    await ext.provision(req)
    assert len(modal_double.running_for("modal00008")) == 1
    await ext.wait_ready(req)
    assert [f.sandbox_id for f in await ext.list_sandboxes()] == ["modal00008"]


async def test_second_provision_of_one_id_leaves_exactly_one(
    modal_double: ModalDouble, extension: Callable[..., ModalExtension]
) -> None:
    ext = extension()
    req = request("modal00009")
    await ext.provision(req)
    first = modal_double.running_for("modal00009")[0].sandbox_id
    again = dataclasses.replace(req, attempt=2)  # its job, delivered again
    await ext.provision(again)
    [second] = modal_double.running_for("modal00009")
    assert second.sandbox_id != first  # started clean
    await ext.wait_ready(again)


async def test_a_bad_token_is_provider_auth_naming_its_source(
    modal_double: ModalDouble,
    extension: Callable[..., ModalExtension],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-wrong-secret-value")
    with pytest.raises(ProviderAuth) as caught:
        await extension().provision(request("modal00010"))
    message = caught.value.message
    assert "env:MODAL_TOKEN_SECRET" in message
    assert "as-wrong-secret-value" not in message
    assert modal_double.token_secret not in message


async def test_token_from_a_secret_reference(
    modal_double: ModalDouble,
    extension: Callable[..., ModalExtension],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    secret_file = tmp_path / "modal-secret"
    secret_file.write_text(modal_double.token_secret + "\n")
    monkeypatch.setenv("TEAM_MODAL_ID", modal_double.token_id)
    monkeypatch.delenv("MODAL_TOKEN_ID")
    monkeypatch.delenv("MODAL_TOKEN_SECRET")
    ext = extension(token_id="env:TEAM_MODAL_ID", token_secret=f"file:{secret_file}")
    await ext.provision(request("modal00011"))
    assert len(modal_double.running_for("modal00011")) == 1


async def test_a_profile_without_image_is_refused(
    modal_double: ModalDouble, extension: Callable[..., ModalExtension]
) -> None:
    with pytest.raises(ConfigError, match="has no image"):
        await extension().provision(request("modal00012", profile=profile(image=None)))


def test_missing_extra_names_the_install_command(tmp_path: Path) -> None:
    """A Python whose ``import modal`` fails (a sitecustomize blocks it) gets the install hint."""
    (tmp_path / "sitecustomize.py").write_text(
        textwrap.dedent(
            """
            import sys

            class _NoModal:
                def find_spec(self, name, path=None, target=None):
                    if name == "modal" or name.startswith(("modal.", "modal_proto")):
                        raise ImportError(f"No module named {name!r}")
                    return None

            sys.meta_path.insert(0, _NoModal())
            """
        )
    )
    script = textwrap.dedent(
        """
        from sandboxer.config.catalog import Catalog
        from sandboxer.config.settings import Settings
        from sandboxer.errors import ConfigError
        from sandboxer.extensions.loading import build_extension
        try:
            build_extension("ext.modal", Catalog.load(), Settings.from_env())
        except ConfigError as exc:
            print(exc.message)
        """
    )
    env = os.environ | {"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert "pip install 'sandboxer[modal]'" in done.stdout


async def test_snapshot_copies_the_working_directory_out(
    modal_double: ModalDouble, extension: Callable[..., ModalExtension], tmp_path: Path
) -> None:
    ext = extension()
    req = request("modal00009")
    await ext.provision(req)
    await ext.wait_ready(req)
    script = "mkdir -p src && echo kept > src/file && ln -s src/file link && pwd"
    code, stdout, _ = await run(ext, "modal00009", "sh", "-c", script)
    assert code == 0
    assert stdout.decode().rstrip().endswith("/workspace")  # exec starts in the workdir
    destination = tmp_path / "copy"
    destination.mkdir()
    await ext.snapshot_workspace("modal00009", destination)
    assert (destination / "src" / "file").read_text() == "kept\n"
    assert (destination / "link").readlink() == Path("src/file")
    # A link out of the tree is refused, as for every backend's snapshot.
    assert (await run(ext, "modal00009", "ln", "-s", "/etc/passwd", "escape"))[0] == 0
    refused = tmp_path / "refused"
    refused.mkdir()
    with pytest.raises(WorkspaceRefused):
        await ext.snapshot_workspace("modal00009", refused)
    await ext.teardown("modal00009")


@pytest.mark.parametrize("tag", ["x.>", "*", "../x", "UPPER1234"])
async def test_a_tag_that_is_no_id_of_ours_is_not_listed(
    modal_double: ModalDouble, extension: Callable[..., ModalExtension], tag: str
) -> None:
    """Anyone with the workspace's token can tag a sandbox in our app (SandboxTagsSet): a
    ``sandboxer_id`` that is no id of ours is not ours, and never reaches reap-stale."""
    ext = extension()
    await ext.provision(request("modaltag01"))
    await ext.provision(request("modaltag02"))
    [retagged] = modal_double.running_for("modaltag02")
    retagged.tags["sandboxer_id"] = tag  # behind our back
    assert [f.sandbox_id for f in await ext.list_sandboxes()] == ["modaltag01"]


async def test_a_declaration_beside_ours_in_the_app_touches_only_its_own(
    modal_double: ModalDouble, extension: Callable[..., ModalExtension]
) -> None:
    """``ext.modal-eu`` with the same token and app: it neither lists, terminates nor adopts
    our sandbox; one made before the extension tag is listed for the log to judge."""
    ours = extension()
    decl = Catalog.load().extensions_enabled()["ext.modal"]
    eu = ModalExtension(ModalConfig.from_settings(decl.settings), extension="ext.modal-eu")
    try:
        await ours.provision(request("modaleu001"))
        assert list(await eu.list_sandboxes()) == []
        await eu.teardown("modaleu001")
        assert len(modal_double.running_for("modaleu001")) == 1
        with pytest.raises(ProviderError):  # Modal refuses the name; the other's is not taken
            await eu.provision(request("modaleu001"))
        [record] = modal_double.running_for("modaleu001")
        del record.tags["sandboxer_extension"]  # as if made before the tag
        listed = await eu.list_sandboxes()
        assert [(f.sandbox_id, f.unmarked) for f in listed] == [("modaleu001", True)]
    finally:
        await eu.aclose()


async def test_a_failed_create_that_lands_after_its_teardown_is_terminated(
    modal_double: ModalDouble, extension: Callable[..., ModalExtension]
) -> None:
    """Every create outlives call_timeout, so the provision fails having found nothing by
    tag, and the worker's cleanup tears the sandbox down at once; Modal carries the creates
    out after that. Teardown keeps looking until they can no longer land (create_settle),
    so none is left running with our tags and no record naming it."""
    modal_double.inject(Fault("SandboxCreate", "done_late", delay=3.0, times=10))
    ext = extension(call_timeout=0.3, retry_attempts=3, create_settle=4.0)
    with pytest.raises(ProviderUnavailable):
        await ext.provision(request("modallate1"))
    assert modal_double.running_for("modallate1") == []  # nothing had landed
    await ext.teardown("modallate1")  # what the worker does with a failed create
    for _ in range(100):  # the first create lands in the end
        if any(c == "SandboxCreate" for c in modal_double.calls) and modal_double.sandboxes:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    assert modal_double.sandboxes  # the provider did make them
    assert modal_double.running_for("modallate1") == []


async def test_a_redelivered_job_beside_its_killed_worker_s_create_leaves_one(
    modal_double: ModalDouble, extension: Callable[..., ModalExtension]
) -> None:
    """A worker sends the create and is killed before Modal answers; the job, redelivered to
    another worker process, creates again while the first is still on its way. Modal
    refuses a second running sandbox of one name, so the one carried out later is refused
    (or, when it is ours, adopts the first)."""
    modal_double.inject(Fault("SandboxCreate", "done_late", delay=1.0, times=1))
    req = request("modalredo1")
    killed = extension()
    sent = asyncio.create_task(killed.provision(req))
    for _ in range(250):
        if "SandboxCreate" in modal_double.calls:
            break
        await asyncio.sleep(0.02)
    sent.cancel()  # the worker dies with its create on the way
    await asyncio.gather(sent, return_exceptions=True)
    await killed.aclose()
    late_by = asyncio.get_running_loop().time() + 1.0
    ext = extension()
    again = dataclasses.replace(req, attempt=2)
    await ext.provision(again)
    await ext.wait_ready(again)
    await asyncio.sleep(late_by - asyncio.get_running_loop().time() + 0.3)  # the first lands
    assert modal_double.calls.count("SandboxCreate") >= 2
    assert len(modal_double.running_for("modalredo1")) == 1


async def test_an_exec_finds_its_labelled_sandbox_without_reading_tags(
    modal_double: ModalDouble, extension: Callable[..., ModalExtension]
) -> None:
    """Listed by its id and this declaration's tag at once: no tag read per exec (each was
    one more round trip to Modal, per sandbox listed)."""
    ext = extension()
    req = request("modal00031")
    await ext.provision(req)
    await ext.wait_ready(req)
    modal_double.calls.clear()
    assert (await run(ext, "modal00031", "true"))[0] == 0
    assert "SandboxTagsGet" not in modal_double.calls, modal_double.calls
    await ext.teardown("modal00031")


async def test_a_later_attempt_never_adopts_an_earlier_attempt_s_sandbox(
    modal_double: ModalDouble, extension: Callable[..., ModalExtension]
) -> None:
    """Attempt 1's worker is cut off with its create on the way; the job goes to attempt 2,
    which finds nothing and creates. Attempt 1's create lands first, so Modal refuses attempt
    2's (the name is taken). Adopting it would leave the log's `ready` naming a sandbox that
    attempt 1, still running, may remove as its own: attempt 2 terminates it and makes its
    own, which attempt 1's clean-up then leaves alone."""
    landing = Fault("SandboxCreate", "done_late", delay=1.0, times=1)
    modal_double.inject(landing)
    modal_double.inject(Fault("SandboxCreate", "latency", delay=2.0, times=1))
    req = request("modalfence1")
    cut_off = extension(create_settle=2)  # its clean-up looks for its late create that long
    sent = asyncio.create_task(cut_off.provision(req))
    # Until the double has taken attempt 1's create on (its late work is then under way):
    # a create merely seen arriving could still be cancelled with its caller, and attempt 2's
    # would take its fault.
    await until(
        lambda: landing.times == 0, 30, failure="attempt 1's create never reached the double"
    )
    sent.cancel()  # its create goes on at Modal
    await asyncio.gather(sent, return_exceptions=True)
    ext = extension()
    again = dataclasses.replace(req, attempt=2)
    await ext.provision(again)  # lists nothing; its create is refused: attempt 1's landed
    readiness = await ext.wait_ready(again)
    [earlier] = [
        r for r in modal_double.sandboxes.values() if r.tags.get("sandboxer_attempt") == "1.1"
    ]
    [record] = modal_double.running_for("modalfence1")
    assert readiness.descriptor["modal_sandbox_id"] == record.sandbox_id != earlier.sandbox_id
    assert record.tags["sandboxer_attempt"] == "1.2"
    await cut_off.teardown_attempt("modalfence1", req.made_by)  # attempt 1 tears down its own
    assert [r.sandbox_id for r in modal_double.running_for("modalfence1")] == [record.sandbox_id]


async def test_an_environment_the_sdk_does_not_list_in_is_refused_before_anything_is_made(
    modal_double: ModalDouble,
    extension: Callable[..., ModalExtension],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """``settings.environment: staging`` put the app, and each sandbox, in staging, while the
    SDK's ``Sandbox.list`` (every lookup, ``wait_ready``, teardown) asks for its own
    environment (``MODAL_ENVIRONMENT``, unset: the default) with that app's id, and finds
    nothing there: each create failed at ``wait_ready`` and its sandbox ran on, billed,
    found by no teardown or reap. Now such a declaration is refused, naming the fix, before
    anything is made."""
    monkeypatch.delenv("MODAL_ENVIRONMENT", raising=False)
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(tmp_path / "no-modal.toml"))
    ext = extension(environment="staging")
    req = request("modalenv01")
    with pytest.raises(ConfigError, match="MODAL_ENVIRONMENT=staging"):
        await ext.provision(req)
    assert modal_double.sandboxes == {}


async def test_an_environment_the_sdk_lists_in_is_found_and_torn_down(
    modal_double: ModalDouble,
    extension: Callable[..., ModalExtension],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    modal_double.environments.add("staging")
    monkeypatch.setenv("MODAL_ENVIRONMENT", "staging")
    ext = extension(environment="staging")
    req = request("modalenv02")
    await ext.provision(req)
    await ext.wait_ready(req)
    [record] = modal_double.running_for("modalenv02")
    assert record.environment == "staging"
    assert [f.sandbox_id for f in await ext.list_sandboxes()] == ["modalenv02"]
    await ext.teardown("modalenv02")
    assert modal_double.running_for("modalenv02") == []
