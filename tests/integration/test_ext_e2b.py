"""ext.e2b against the E2B double, which refuses anything E2B's published spec does not allow.

Every test goes through the adapter's public methods over real HTTP; the
double's fixture fails the test if a request or an answer broke the spec.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sandboxer.config.catalog import Catalog
from sandboxer.config.profile import Profile
from sandboxer.config.settings import Settings
from sandboxer.errors import (
    ConfigError,
    ExtensionError,
    InvalidInput,
    ProviderAuth,
    ProviderError,
    ProviderQuota,
    ProviderUnavailable,
    SandboxNotFound,
    Unsupported,
)
from sandboxer.extensions.base import ProvisionRequest
from sandboxer.extensions.capabilities import Pausable, TimeoutKeeper
from sandboxer.extensions.e2b import backend as e2b_backend
from sandboxer.extensions.e2b.backend import E2bExtension
from sandboxer.extensions.loading import build_extension
from sandboxer.hosted.labels import labels_for
from sandboxer.hosted.tokens import SandboxTokens
from tests.doubles.e2b_double import ServedE2b

pytestmark = pytest.mark.integration

PROFILE = "profile.e2b-burst"


def settings_for(served: ServedE2b, **more: Any) -> dict[str, Any]:
    return {"api_url": served.url, "api_key": served.api_key, **more}


@pytest.fixture
async def e2b(e2b_double: ServedE2b) -> AsyncIterator[E2bExtension]:
    extension = E2bExtension(settings_for(e2b_double, retry_budget=5))
    yield extension
    await extension.aclose()


def profile(**changes: Any) -> Profile:
    base = Catalog.load().profile(PROFILE)
    return base.model_copy(update=changes)


def request(sandbox_id: str, *, expires_in: float | None = 600, **changes: Any) -> ProvisionRequest:
    expires_at = (
        None
        if expires_in is None
        else (datetime.now(UTC) + timedelta(seconds=expires_in))
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )
    return ProvisionRequest(
        sandbox_id=sandbox_id,
        profile=profile(**changes),
        inputs={},
        expires_at=expires_at,
        project="proj1",
    )


async def test_lifecycle_labels_the_sandbox_and_records_no_token(
    e2b: E2bExtension, e2b_double: ServedE2b
) -> None:
    made = request("e2blife0001")
    await e2b.provision(made)
    readiness = await e2b.wait_ready(made)
    [record] = e2b_double.double.live()
    assert record.metadata == {
        "sandboxer_id": "e2blife0001",
        "sandboxer_extension": "ext.e2b",
        "sandboxer_project": "proj1",
        "sandboxer_attempt": "1.1",  # generation 1, attempt 1
    }
    assert record.alias == "base"
    descriptor = readiness.descriptor
    assert descriptor["kind"] == "e2b"
    assert descriptor["sandbox_id"] == record.sandbox_id
    assert descriptor["template"] == "base"
    assert descriptor["port_url"] == f"https://{{port}}-{record.sandbox_id}.e2b.app"
    assert record.access_token not in json.dumps(descriptor)
    assert record.access_token not in repr(readiness)
    assert readiness.warnings == []  # the profile's 2 vCPU / 512 MiB is what the template gave
    found = await e2b.list_sandboxes()
    assert [(f.sandbox_id, f.alive) for f in found] == [("e2blife0001", True)]
    assert found[0].detail["provider_id"] == record.sandbox_id
    await e2b.teardown("e2blife0001")
    assert e2b_double.double.live() == []
    assert list(await e2b.list_sandboxes()) == []


async def test_the_timeout_sent_is_the_ttl_plus_the_margin(
    e2b: E2bExtension, e2b_double: ServedE2b
) -> None:
    await e2b.provision(request("e2btime0001", expires_in=600))
    [record] = e2b_double.double.live()
    # 600 s of TTL (less the moments the call took) plus the default margin of 120 s
    assert 715 <= record.timeouts[0] <= 721


async def test_without_an_expiry_the_profile_s_default_ttl_stands_in(
    e2b: E2bExtension, e2b_double: ServedE2b
) -> None:
    await e2b.provision(request("e2btime0002", expires_in=None))
    [record] = e2b_double.double.live()
    assert record.timeouts == [30 * 60 + 120]


async def test_a_ttl_past_the_plan_s_limit_is_cut_to_it_with_a_warning(
    e2b_double: ServedE2b,
) -> None:
    extension = E2bExtension(settings_for(e2b_double, max_timeout=3600))
    try:
        made = request("e2btime0003", expires_in=7200)
        await extension.provision(made)
        readiness = await extension.wait_ready(made)
    finally:
        await extension.aclose()
    [record] = e2b_double.double.live()
    assert record.timeouts == [3600]
    assert any("settings.max_timeout" in warning for warning in readiness.warnings)


async def test_set_timeout_moves_e2b_s_timeout_to_the_new_expiry(
    e2b: E2bExtension, e2b_double: ServedE2b
) -> None:
    assert isinstance(e2b, TimeoutKeeper)
    await e2b.provision(request("e2btime0004", expires_in=600))
    later = (datetime.now(UTC) + timedelta(hours=2)).isoformat().replace("+00:00", "Z")
    await e2b.set_timeout("e2btime0004", later)
    [record] = e2b_double.double.live()
    assert 7315 <= record.timeouts[-1] <= 7321
    assert record.end_at > datetime.now(UTC) + timedelta(seconds=7300)


async def test_a_restarted_worker_finds_its_sandbox_by_label(
    e2b: E2bExtension, e2b_double: ServedE2b
) -> None:
    made = request("e2brest0001")
    await e2b.provision(made)
    fresh = E2bExtension(settings_for(e2b_double))  # no cache: only the labels
    try:
        readiness = await fresh.wait_ready(made)
        later = (datetime.now(UTC) + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
        await fresh.set_timeout("e2brest0001", later)
        await fresh.teardown("e2brest0001")
    finally:
        await fresh.aclose()
    assert readiness.descriptor["kind"] == "e2b"
    assert e2b_double.double.live() == []


async def test_a_worker_remembers_a_bounded_number_of_sandboxes(
    e2b_double: ServedE2b, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The E2B id and log position kept per sandbox are bounded (REMEMBERED); one forgotten is
    found by its label again. Before, every sandbox a worker served stayed in memory."""
    monkeypatch.setattr(e2b_backend, "REMEMBERED", 2)
    extension = E2bExtension(settings_for(e2b_double))
    ids = ["e2bmemo0001", "e2bmemo0002", "e2bmemo0003"]
    try:
        for sandbox_id in ids:
            made = request(sandbox_id)
            await extension.provision(made)
            await extension.wait_ready(made)
            extension.follow_log(sandbox_id, (1, 1), None)
        assert len(extension._known) == len(extension._live) == 2
        later = (datetime.now(UTC) + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
        await extension.set_timeout(ids[0], later)  # forgotten: looked up by its label
        for sandbox_id in ids:
            await extension.teardown(sandbox_id)
    finally:
        await extension.aclose()
    assert e2b_double.double.live() == []


async def test_pause_and_resume(e2b: E2bExtension, e2b_double: ServedE2b) -> None:
    assert isinstance(e2b, Pausable)
    made = request("e2bpause001")
    await e2b.provision(made)
    await e2b.pause("e2bpause001")
    [record] = e2b_double.double.live()
    assert record.state == "paused"
    await e2b.pause("e2bpause001")  # already paused: E2B answers 409, which is done
    found = await e2b.list_sandboxes()
    assert [(f.sandbox_id, f.alive, f.detail["state"], f.frozen) for f in found] == [
        ("e2bpause001", True, "paused", "all")
    ]
    await e2b.resume("e2bpause001")
    assert record.state == "running"
    assert [f.frozen for f in await e2b.list_sandboxes()] == ["none"]
    assert record.timeouts[-1] == 3600  # settings.resume_timeout; the worker then retimes
    await e2b.resume("e2bpause001")  # already running: 409, done
    await e2b.teardown("e2bpause001")
    with pytest.raises(SandboxNotFound, match="e2bpause001"):
        await e2b.pause("e2bpause001")


async def test_only_our_sandboxes_are_listed(e2b: E2bExtension, e2b_double: ServedE2b) -> None:
    e2b_double.double.plant_orphan({"app": "someone-else"})
    e2b_double.double.plant_orphan({"sandboxer_id": "../../etc"})  # not an id of ours
    leaked = e2b_double.double.plant_orphan(labels_for("e2bleak0001", None, "ext.e2b"))
    # Made before labels named their backend: listed, for the log to say whose it is.
    older = e2b_double.double.plant_orphan({"sandboxer_id": "e2bold0001"}, state="paused")
    e2b_double.double.plant_orphan(labels_for("e2beu00001", None, "ext.e2b-eu"))  # not ours
    await e2b.provision(request("e2bmine0001"))
    listed = await e2b.list_sandboxes()
    found = {f.sandbox_id: f.detail["provider_id"] for f in listed}
    assert set(found) == {"e2bmine0001", "e2bleak0001", "e2bold0001"}
    assert (found["e2bleak0001"], found["e2bold0001"]) == (leaked.sandbox_id, older.sandbox_id)
    assert [f.sandbox_id for f in listed if f.unmarked] == ["e2bold0001"]
    report = await e2b.inspect_host()
    assert (report["sandboxes"], report["paused"], report["not_ours"]) == (3, 1, 3)


async def test_a_declaration_beside_ours_on_the_team_touches_only_its_own(
    e2b: E2bExtension, e2b_double: ServedE2b
) -> None:
    """``ext.e2b-eu`` with the same key: our copy of a sandbox rerouted to it (a create that
    landed late) is ours to kill, its sandbox of that id is not, nor is it ours to adopt."""
    eu = E2bExtension(settings_for(e2b_double, retry_budget=5), extension="ext.e2b-eu")
    try:
        made = request("e2bboth0001")
        await eu.provision(made)
        await eu.wait_ready(made)
        [theirs] = e2b_double.double.live()
        assert list(await e2b.list_sandboxes()) == []
        await e2b.provision(dataclasses.replace(made, attempt=2))  # no leftover of ours to kill
        await e2b.wait_ready(made)
        await e2b.teardown("e2bboth0001")
        assert [r.sandbox_id for r in e2b_double.double.live()] == [theirs.sandbox_id]
        theirs.metadata.pop("sandboxer_extension")  # as if made before the label
        assert [(f.sandbox_id, f.unmarked) for f in await e2b.list_sandboxes()] == [
            ("e2bboth0001", True)
        ]
        await eu.teardown("e2bboth0001")  # a sandbox made before the label is torn down too
        assert e2b_double.double.live() == []
    finally:
        await eu.aclose()


async def test_listing_follows_the_pages(e2b: E2bExtension, e2b_double: ServedE2b) -> None:
    for n in range(105):
        e2b_double.double.plant_orphan(labels_for(f"e2bpage{n:04d}", None, "ext.e2b"))
    found = await e2b.list_sandboxes()
    assert len({f.sandbox_id for f in found}) == 105
    assert e2b_double.double.calls.count(("GET", "/v2/sandboxes")) == 2


async def test_teardown_is_idempotent(e2b: E2bExtension, e2b_double: ServedE2b) -> None:
    await e2b.provision(request("e2bidem0001"))
    [record] = e2b_double.double.live()
    await e2b.teardown("e2bidem0001")
    await e2b.teardown("e2bidem0001")
    await e2b.teardown("e2bnever001")
    assert e2b_double.double.live() == []
    # a sandbox killed behind our back while the cache still names it: gone is done
    await e2b.provision(request("e2bidem0002"))
    for live in e2b_double.double.live():
        e2b_double.double.time_out(live.sandbox_id)
    await e2b.teardown("e2bidem0002")
    assert record.sandbox_id not in {r.sandbox_id for r in e2b_double.double.live()}


async def test_a_refused_key_names_its_source_and_never_its_value(
    e2b_double: ServedE2b, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "e2b_wrong_key_0123456789abcdef"
    monkeypatch.setenv("E2B_API_KEY", wrong)
    monkeypatch.setenv("E2B_API_URL", e2b_double.url)
    extension = E2bExtension({})
    try:
        with pytest.raises(ProviderAuth) as caught:
            await extension.provision(request("e2bauth0001"))
    finally:
        await extension.aclose()
    message = caught.value.message
    assert "env:E2B_API_KEY" in message
    assert wrong not in message
    assert wrong not in str(caught.value)
    assert caught.value.status == 401


async def test_a_missing_key_is_a_config_error_at_first_use_not_at_build(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.delenv("E2B_API_KEY", raising=False)
    catalog = Catalog.load(tmp_path)
    built = build_extension(
        "ext.e2b", catalog, Settings(home=tmp_path, nats_urls=(), nats_server=None, ack_wait=5)
    )
    assert isinstance(built, E2bExtension)
    with pytest.raises(ConfigError, match=r"E2B_API_KEY.*settings\.api_key"):
        await built.provision(request("e2bnokey001"))


async def test_a_quota_refusal_is_retryable_provider_quota(
    e2b: E2bExtension, e2b_double: ServedE2b
) -> None:
    e2b_double.double.app.faults.add("status", method="POST", pattern="/sandboxes", status=429)
    with pytest.raises(ProviderQuota) as caught:
        await e2b.provision(request("e2bquota001"))
    assert caught.value.retryable
    assert "injected fault" in caught.value.message  # the provider's own words are kept
    assert e2b_double.double.live() == []


async def test_server_errors_are_retried_and_the_create_made_once(
    e2b: E2bExtension, e2b_double: ServedE2b
) -> None:
    faults = e2b_double.double.app.faults
    faults.add("status", method="POST", pattern="/sandboxes", status=500, times=2)
    faults.add("status", method="GET", pattern="/v2/sandboxes", status=503, times=2)
    made = dataclasses.replace(request("e2bretry001"), attempt=2)  # it lists leftovers first
    await e2b.provision(made)
    await e2b.wait_ready(made)
    assert len(e2b_double.double.live()) == 1
    assert e2b_double.double.calls.count(("POST", "/sandboxes")) == 3
    assert e2b_double.double.calls.count(("GET", "/v2/sandboxes")) >= 3  # 2 refused, then read


async def test_a_lost_create_answer_leaves_exactly_one_sandbox(e2b_double: ServedE2b) -> None:
    e2b_double.double.app.faults.add("lost", method="POST", pattern="/sandboxes", seconds=1.5)
    extension = E2bExtension(settings_for(e2b_double, request_timeout=0.5))
    try:
        made = request("e2blost0001")
        await extension.provision(made)
        readiness = await extension.wait_ready(made)
    finally:
        await extension.aclose()
    [record] = e2b_double.double.live()
    assert readiness.descriptor["sandbox_id"] == record.sandbox_id
    assert e2b_double.double.calls.count(("POST", "/sandboxes")) == 1


async def test_a_failed_provision_leaves_no_mark_of_a_create_sent_again(
    e2b_double: ServedE2b,
) -> None:
    """Each create answered 500: after each, the look by label marked the sandbox as one whose
    create was sent again (for wait_ready to list its twins), and the provision failed. Only
    wait_ready took the mark, and none follows a failed provision: on the old code the mark
    stayed, one more for each such sandbox, for the worker's life."""
    faults = e2b_double.double.app.faults
    faults.add("status", method="POST", pattern="/sandboxes", status=500, times=3)
    extension = E2bExtension(settings_for(e2b_double, retry_budget=5))
    try:
        with pytest.raises(ProviderUnavailable):
            await extension.provision(request("e2bfail0001"))
        assert e2b_double.double.calls.count(("GET", "/v2/sandboxes")) == 3  # looked each time
        assert "e2bfail0001" not in extension._retried
    finally:
        await extension.aclose()
    assert e2b_double.double.live() == []


async def test_a_first_attempt_creates_without_listing_first(
    e2b: E2bExtension, e2b_double: ServedE2b
) -> None:
    """Only a redelivered job (attempt 2 on) can find an earlier attempt's sandbox."""
    await e2b.provision(request("e2bfirst001"))
    assert ("GET", "/v2/sandboxes") not in e2b_double.double.calls
    assert e2b_double.double.calls.count(("POST", "/sandboxes")) == 1


async def test_provisioning_twice_leaves_exactly_one(
    e2b: E2bExtension, e2b_double: ServedE2b
) -> None:
    made = request("e2btwice001")
    await e2b.provision(made)
    again = dataclasses.replace(made, attempt=2)  # a redelivered job: the first one's is killed
    await e2b.provision(again)
    readiness = await e2b.wait_ready(made)
    [record] = e2b_double.double.live()
    assert readiness.descriptor["sandbox_id"] == record.sandbox_id


@pytest.mark.parametrize("bad", ["../../etc", "a;rm -rf /", "UPPER1234", "x", "$(id)aaaa"])
async def test_hostile_ids_are_refused_before_any_request(
    e2b: E2bExtension, e2b_double: ServedE2b, bad: str
) -> None:
    with pytest.raises(InvalidInput):
        await e2b.provision(request(bad))
    for call in (e2b.teardown(bad), e2b.pause(bad), e2b.resume(bad)):
        with pytest.raises(InvalidInput):
            await call
    with pytest.raises(InvalidInput):
        await e2b.set_timeout(bad, "2030-01-01T00:00:00.000Z")
    assert e2b_double.double.calls == []


async def test_a_profile_without_a_template_is_refused_by_name(
    e2b: E2bExtension, e2b_double: ServedE2b
) -> None:
    with pytest.raises(ExtensionError, match=r"profile\.e2b-burst names no E2B template"):
        await e2b.provision(request("e2bnotpl001", image=None))
    assert ("POST", "/sandboxes") not in e2b_double.double.calls


async def test_network_deny_and_secrets_reach_the_create(
    e2b: E2bExtension, e2b_double: ServedE2b
) -> None:
    base = profile()
    denied = base.model_copy(
        update={
            "network": base.network.model_copy(
                update={"default": "deny", "egress": ["pypi.org:443"]}
            )
        }
    )
    made = ProvisionRequest(
        sandbox_id="e2bnet00001",
        profile=denied,
        inputs={},
        secrets={"GITHUB_TOKEN": "ghp_secretvalue"},
    )
    await e2b.provision(made)
    readiness = await e2b.wait_ready(made)
    [record] = e2b_double.double.live()
    assert record.allow_internet_access is False
    assert record.network == {"allowOut": ["pypi.org"]}
    assert record.env_vars == {"GITHUB_TOKEN": "ghp_secretvalue"}
    assert "ghp_secretvalue" not in json.dumps(readiness.descriptor)
    assert any("not by port" in warning for warning in readiness.warnings)


async def test_exec_is_unsupported(e2b: E2bExtension, e2b_double: ServedE2b) -> None:
    async def sink(_stream: str, _data: bytes) -> None:
        return None

    with pytest.raises(Unsupported, match="envd"):
        await e2b.exec("e2bexec0001", ["true"], sink)
    assert e2b_double.double.calls == []


async def test_the_envd_token_goes_to_the_token_store_only(
    e2b_double: ServedE2b, tmp_path: Any
) -> None:
    store = SandboxTokens(tmp_path / "tokens")
    extension = E2bExtension(settings_for(e2b_double), tokens=store)
    try:
        made = request("e2btoken001")
        await extension.provision(made)
        readiness = await extension.wait_ready(made)
        [record] = e2b_double.double.live()
        assert store.read("e2btoken001") == {"envd_access_token": record.access_token}
        assert (tmp_path / "tokens" / "e2btoken001.json").stat().st_mode & 0o077 == 0
        assert await extension.sandbox_tokens("e2btoken001") == {
            "envd_access_token": record.access_token
        }
        assert record.access_token not in json.dumps(readiness.descriptor)
        store.forget("e2btoken001")  # a store lost: E2B is asked again
        assert await extension.sandbox_tokens("e2btoken001") == {
            "envd_access_token": record.access_token
        }
        await extension.teardown("e2btoken001")
        assert store.read("e2btoken001") == {}
    finally:
        await extension.aclose()


async def test_a_create_adopted_after_a_lost_answer_still_has_its_token(
    e2b_double: ServedE2b, tmp_path: Any
) -> None:
    e2b_double.double.app.faults.add("lost", method="POST", pattern="/sandboxes", seconds=1.5)
    store = SandboxTokens(tmp_path / "tokens")
    extension = E2bExtension(settings_for(e2b_double, request_timeout=0.5), tokens=store)
    try:
        await extension.provision(request("e2btoken002"))
    finally:
        await extension.aclose()
    [record] = e2b_double.double.live()
    assert store.read("e2btoken002") == {"envd_access_token": record.access_token}


async def test_a_web_page_where_the_api_should_be_is_a_provider_error(
    e2b: E2bExtension, e2b_double: ServedE2b
) -> None:
    """A wrong api_url (a login page, a proxy) answers 200 with HTML: the worker's reconcile
    at start catches our errors only, so it must be one (it reports it and goes on)."""
    page = "<html><body>Sign in</body></html>"
    faults = e2b_double.double.app.faults
    for pattern in ("/v2/sandboxes", "/sandboxes"):
        method = "GET" if pattern == "/v2/sandboxes" else "POST"
        faults.add(
            "answer",
            method=method,
            pattern=pattern,
            status=200,
            body=page,
            content_type="text/html",
        )
    with pytest.raises(ProviderError, match=r"GET /v2/sandboxes answered 200 .*not JSON"):
        await e2b.list_sandboxes()
    with pytest.raises(ProviderError, match=r"POST /sandboxes answered 200 .*not JSON"):
        await e2b.provision(request("e2bhtml0001"))


@pytest.mark.parametrize("item", [{"state": "running"}, {"sandboxID": 7}, "a string"])
async def test_a_listed_item_that_is_not_a_sandbox_is_a_provider_error(
    e2b: E2bExtension, e2b_double: ServedE2b, item: Any
) -> None:
    e2b_double.double.app.faults.add(
        "answer", method="GET", pattern="/v2/sandboxes", status=200, body=[item]
    )
    with pytest.raises(ProviderError, match="not what its API spec describes"):
        await e2b.list_sandboxes()


def _later() -> str:
    return (datetime.now(UTC) + timedelta(hours=1)).isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize("operation", ["wait_ready", "pause", "resume", "set_timeout", "tokens"])
async def test_an_id_cached_before_another_worker_recreated_the_sandbox(
    e2b_double: ServedE2b, operation: str
) -> None:
    """Worker processes each cache E2B's id: one whose cache predates another's recreate
    looks the sandbox up again by its label instead of calling it gone."""
    made = request("e2bstale001")
    stale = E2bExtension(settings_for(e2b_double, retry_budget=5))
    other = E2bExtension(settings_for(e2b_double, retry_budget=5))
    try:
        await stale.provision(made)  # caches the first E2B id
        await other.teardown("e2bstale001")
        await other.provision(made)
        [record] = e2b_double.double.live()
        if operation == "resume":
            await other.pause("e2bstale001")
        calls: dict[str, Callable[[], Awaitable[object]]] = {
            "wait_ready": lambda: stale.wait_ready(made),
            "pause": lambda: stale.pause("e2bstale001"),
            "resume": lambda: stale.resume("e2bstale001"),
            "set_timeout": lambda: stale.set_timeout("e2bstale001", _later()),
            "tokens": lambda: stale.sandbox_tokens("e2bstale001"),
        }
        await calls[operation]()
    finally:
        await stale.aclose()
        await other.aclose()
    expected = {"pause": "paused"}.get(operation, "running")
    assert [(r.sandbox_id, r.state) for r in e2b_double.double.live()] == [
        (record.sandbox_id, expected)
    ]


async def test_a_create_that_finishes_after_its_retry_leaves_exactly_one(
    e2b_double: ServedE2b,
) -> None:
    """E2B answers a create once the microVM runs and lists only running and paused
    sandboxes: a create slower than request_timeout is invisible while it boots, so the
    retry makes a second one. The first is killed once ours is ready."""
    e2b_double.double.app.faults.add("latency", method="POST", pattern="/sandboxes", seconds=1.5)
    extension = E2bExtension(settings_for(e2b_double, request_timeout=0.5))
    try:
        made = request("e2bslow0001")
        await extension.provision(made)
        for _ in range(100):  # the slow first create finishes while ours is starting
            if len(e2b_double.double.made) == 2:
                break
            await asyncio.sleep(0.05)
        assert len(e2b_double.double.live()) == 2
        readiness = await extension.wait_ready(made)
    finally:
        await extension.aclose()
    [record] = e2b_double.double.live()
    assert readiness.descriptor["sandbox_id"] == record.sandbox_id


async def test_a_redelivered_job_kills_the_create_its_killed_worker_sent(
    e2b_double: ServedE2b,
) -> None:
    """A worker sends the create and is killed before E2B answers. The job, redelivered to
    another worker process, finds nothing (E2B lists no booting sandbox) and creates again;
    the first create lands meanwhile. The second process never retried a create itself,
    yet a redelivered create may have a twin too: its wait_ready kills it."""
    e2b_double.double.app.faults.add("latency", method="POST", pattern="/sandboxes", seconds=1.5)
    made = request("e2bredo0001")
    killed = E2bExtension(settings_for(e2b_double))
    sent = asyncio.create_task(killed.provision(made))
    for _ in range(100):
        if ("POST", "/sandboxes") in e2b_double.double.calls:
            break
        await asyncio.sleep(0.02)
    sent.cancel()  # the worker dies with its create on the way
    await asyncio.gather(sent, return_exceptions=True)
    await killed.aclose()
    again = dataclasses.replace(made, attempt=2)
    extension = E2bExtension(settings_for(e2b_double))
    try:
        await extension.provision(again)
        for _ in range(100):  # the killed worker's create lands while ours is starting
            if len(e2b_double.double.made) == 2:
                break
            await asyncio.sleep(0.05)
        assert len(e2b_double.double.live()) == 2
        readiness = await extension.wait_ready(again)
    finally:
        await extension.aclose()
    [record] = e2b_double.double.live()
    assert readiness.descriptor["sandbox_id"] == record.sandbox_id
    assert record.sandbox_id == e2b_double.double.made[0].sandbox_id  # ours, made first


async def test_a_failed_create_that_lands_after_its_teardown_is_killed(
    e2b_double: ServedE2b,
) -> None:
    """Every create outlives request_timeout, so the provision fails having found none (E2B
    lists no booting sandbox), and the worker's cleanup tears the sandbox down at once. The
    creates land at E2B after that: teardown keeps looking by label until they can no longer
    land (create_settle), so none is left running with our label and no record naming it.
    The creates take 6 s to land: the three tries and their looks take about 2 s, and under
    a loaded suite once took over 3 s, the old latency, so the look found the first create
    landed and the provision did not fail."""
    e2b_double.double.app.faults.add(
        "latency", method="POST", pattern="/sandboxes", seconds=6.0, times=3
    )
    extension = E2bExtension(settings_for(e2b_double, request_timeout=0.3, create_settle=7.0))
    try:
        with pytest.raises(ProviderError):
            await extension.provision(request("e2blate0001"))
        assert e2b_double.double.made == []  # nothing had landed when the provision gave up
        await extension.teardown("e2blate0001")  # what the worker does with a failed create
    finally:
        await extension.aclose()
    for _ in range(100):  # the three creates land in the end
        if len(e2b_double.double.made) == 3:
            break
        await asyncio.sleep(0.05)
    assert len(e2b_double.double.made) == 3
    assert e2b_double.double.live() == []


async def test_a_resumed_earlier_attempt_kills_only_its_own(e2b_double: ServedE2b) -> None:
    """Attempt 2's worker is frozen past ack_wait; attempt 3, on another worker process,
    makes the sandbox the log's `ready` names. Attempt 2 resumes: as a redelivered job it
    clears leftovers, creates, kills twins once ready, and (taken over) tears down what it
    made. Each of those kills only attempt 2's sandboxes and earlier ones', never attempt 3's."""
    made = request("e2bfence001")
    earlier_leftover = e2b_double.double.plant_orphan(  # attempt 1's, left by a dead worker
        labels_for("e2bfence001", "proj1", "ext.e2b", (1, 1))
    )
    later = E2bExtension(settings_for(e2b_double))
    resumed = E2bExtension(settings_for(e2b_double))
    try:
        third = dataclasses.replace(made, attempt=3)
        await later.provision(third)
        readiness = await later.wait_ready(third)
        ready_one = readiness.descriptor["sandbox_id"]
        second = dataclasses.replace(made, attempt=2)
        await resumed.provision(second)
        own = [r for r in e2b_double.double.live() if r.sandbox_id != ready_one]
        assert [r.metadata["sandboxer_attempt"] for r in own] == ["1.2"]
        await resumed.wait_ready(second)  # a redelivered attempt's: kills others it may
        await resumed.teardown_attempt("e2bfence001", second.made_by)  # taken over
    finally:
        await later.aclose()
        await resumed.aclose()
    assert [r.sandbox_id for r in e2b_double.double.live()] == [ready_one]
    assert earlier_leftover.sandbox_id not in {r.sandbox_id for r in e2b_double.double.live()}


async def _beside_a_late_copy(e2b_double: ServedE2b, sandbox_id: str) -> tuple[Any, Any]:
    """Attempt 2 ready; then attempt 1's create, its worker killed, lands beside it (E2B
    lists it first: the newest). Returns (attempt 2's E2B record, the copy's)."""
    made = dataclasses.replace(request(sandbox_id), attempt=2)
    first = E2bExtension(settings_for(e2b_double))
    try:
        await first.provision(made)
        await first.wait_ready(made)
    finally:
        await first.aclose()
    [live] = e2b_double.double.live()
    await asyncio.sleep(0.01)  # listed newest first: the copy comes first
    copy = e2b_double.double.plant_orphan(labels_for(sandbox_id, "proj1", "ext.e2b", (1, 1)))
    listed = [r.sandbox_id for r in e2b_double.double.live()]
    assert set(listed) == {live.sandbox_id, copy.sandbox_id}
    return live, copy


@pytest.mark.parametrize("told", [True, False], ids=["log-told", "nothing-told"])
async def test_a_restarted_worker_acts_on_the_live_attempt_s_sandbox_not_a_late_copy(
    e2b_double: ServedE2b, told: bool
) -> None:
    """An earlier attempt's late create runs beside the live sandbox until a reap or the
    worker's start removes it. A restarted worker (nothing cached) asked for the sandbox's
    token, or to pause it, takes attempt 2's (the log's ready), never attempt 1's, which E2B
    lists first and whose setup never ran."""
    live, copy = await _beside_a_late_copy(e2b_double, "e2blive0001")
    restarted = E2bExtension(settings_for(e2b_double))  # no token store: E2B is asked
    try:
        if told:  # what backend_for tells it: the log at generation 1, attempt 2
            restarted.follow_log("e2blive0001", (1, 2), None)
        tokens = await restarted.sandbox_tokens("e2blive0001")
        assert tokens == {"envd_access_token": live.access_token}
        await restarted.pause("e2blive0001")
    finally:
        await restarted.aclose()
    states = {r.sandbox_id: r.state for r in e2b_double.double.live()}
    assert states == {live.sandbox_id: "paused", copy.sandbox_id: "running"}


async def test_the_e2b_id_the_log_s_ready_recorded_decides_through_backend_for(
    e2b_double: ServedE2b,
) -> None:
    """Where the labels cannot tell (a twin of attempt 2 itself, its retried create landing
    late), the E2B id in the log's ready descriptor decides: the worker tells the backend it
    on every call (backend_for), and the twin, listed first, is not taken."""
    from sandboxer.domain.sandbox_state import SandboxState
    from sandboxer.workers.backend_for import backend_for

    made = dataclasses.replace(request("e2blive0002"), attempt=2)
    first = E2bExtension(settings_for(e2b_double))
    try:
        await first.provision(made)
        readiness = await first.wait_ready(made)
    finally:
        await first.aclose()
    [live] = e2b_double.double.live()
    await asyncio.sleep(0.01)
    twin = e2b_double.double.plant_orphan(labels_for("e2blive0002", "proj1", "ext.e2b", (1, 2)))
    state = SandboxState(
        sandbox_id="e2blive0002",
        status="ready",
        extension="ext.e2b",
        generation=1,
        attempt=2,
        reachability=readiness.descriptor,
        provider_key="operator",  # the declaration's key: backend_for reads no account
    )
    restarted = E2bExtension(settings_for(e2b_double))
    try:
        keyed = await backend_for(None, restarted, state)  # type: ignore[arg-type]  # no BYOK
        assert await keyed.sandbox_tokens("e2blive0002") == {"envd_access_token": live.access_token}
    finally:
        await restarted.aclose()
    assert twin.sandbox_id != live.sandbox_id


async def test_a_create_whose_look_failed_too_is_still_killed_when_it_lands(
    e2b_double: ServedE2b,
) -> None:
    """The create outlives request_timeout, and the look by label for what it may have made
    fails as well (E2B's list answering 503 through every retry): the provision fails, and
    the worker's cleanup tears the attempt down at once, before the create lands. That create
    was not noted as given up on, so the teardown looked once and the sandbox E2B made after
    it ran with our label and no record naming it (until a leak sweep or E2B's timeout).
    Now the teardown keeps looking for it while it may land (create_settle)."""
    faults = e2b_double.double.app.faults
    # The list's four tries (stamina's backoff and jitter) take up to about 5 s: E2B carries
    # the create out after them.
    faults.add("latency", method="POST", pattern="/sandboxes", seconds=6.0)
    faults.add("status", method="GET", pattern="/v2/sandboxes", status=503, times=4)
    extension = E2bExtension(
        settings_for(e2b_double, request_timeout=0.3, retry_budget=10, create_settle=6.0)
    )
    made = request("e2blook0001")
    try:
        with pytest.raises(ProviderError):
            await extension.provision(made)
        assert e2b_double.double.made == []  # nothing had landed when the provision gave up
        await extension.teardown_attempt("e2blook0001", made.made_by)  # the worker's cleanup
    finally:
        await extension.aclose()
    for _ in range(100):  # the create lands in the end
        if e2b_double.double.made:
            break
        await asyncio.sleep(0.05)
    assert len(e2b_double.double.made) == 1
    assert e2b_double.double.live() == []
