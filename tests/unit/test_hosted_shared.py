"""What every hosted backend shares: where endpoints and keys come from, and create_once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sandboxer.errors import ConfigError, ProviderQuota, ProviderUnavailable
from sandboxer.hosted.attempt_fence import holder_action, live_one, made_by, own, removable
from sandboxer.hosted.create_once import LateCreates, create_once
from sandboxer.hosted.labels import labels_for, made_elsewhere, maker, our_sandbox_id
from sandboxer.hosted.provider_settings import provider_value


def test_the_declaration_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("E2B_API_URL", "http://from-env")
    found = provider_value(
        {"api_url": "http://declared"}, "api_url", ["E2B_API_URL"], extension="ext.e2b"
    )
    assert found is not None
    assert (found.value, found.source) == ("http://declared", "settings.api_url")
    found = provider_value({}, "api_url", ["E2B_API_URL"], extension="ext.e2b")
    assert found is not None
    assert (found.value, found.source) == ("http://from-env", "env:E2B_API_URL")


def test_a_secret_reference_is_resolved_and_named_by_its_reference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "key").write_text("sk-file\n")
    found = provider_value({"api_key": f"file:{tmp_path / 'key'}"}, "api_key", extension="ext.e2b")
    assert found is not None
    assert found.value == "sk-file"
    assert "sk-file" not in found.source
    assert found.source == f"settings.api_key (file:{tmp_path / 'key'})"
    monkeypatch.setenv("TEAM_KEY", "sk-env")
    found = provider_value({"api_key": "env:TEAM_KEY"}, "api_key", extension="ext.e2b")
    assert found is not None
    assert found.value == "sk-env"


def test_a_missing_key_names_both_places_to_set_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("E2B_API_KEY", raising=False)
    with pytest.raises(ConfigError) as missing:
        provider_value({}, "api_key", ["E2B_API_KEY"], extension="ext.e2b")
    assert "E2B_API_KEY" in missing.value.message
    assert "settings.api_key" in missing.value.message
    assert (
        provider_value({}, "api_key", ["E2B_API_KEY"], extension="ext.e2b", required=False) is None
    )
    found = provider_value({}, "domain", ["E2B_DOMAIN"], extension="ext.e2b", default="e2b.app")
    assert found is not None
    assert found.value == "e2b.app"


def test_labels_name_our_sandbox_and_the_backend_that_made_it() -> None:
    made = labels_for("sbx1", None, "ext.e2b")
    assert made == {"sandboxer_id": "sbx1", "sandboxer_extension": "ext.e2b"}
    assert our_sandbox_id(labels_for("sbx1", "proj", "ext.e2b")) == "sbx1"
    assert our_sandbox_id({"other": "x"}) is None
    assert our_sandbox_id(None) is None
    assert maker(made) == "ext.e2b"
    assert not made_elsewhere(made, "ext.e2b")
    assert made_elsewhere(made, "ext.e2b-eu")
    assert not made_elsewhere({"sandboxer_id": "sbx1"}, "ext.e2b-eu")  # before the label


def test_an_attempt_adopts_its_own_and_removes_its_own_and_earlier_ones_only() -> None:
    """Two attempts at one provisioning may run at once (a job redelivered past ack_wait to
    another worker while the first is frozen): neither may remove the later one's sandbox."""
    labels = labels_for("sbx1", "proj", "ext.e2b", (2, 3))
    assert labels["sandboxer_attempt"] == "2.3"
    assert made_by(labels) == (2, 3)
    assert own(labels, (2, 3))
    assert not own(labels, (2, 4))
    assert removable(labels, (2, 3))  # its own
    assert removable(labels, (2, 4))  # a later attempt of the generation
    assert removable(labels, (3, 1))  # a later generation (a recreate)
    assert not removable(labels, (2, 2))  # an earlier attempt, resumed
    assert not removable(labels, (1, 9))  # an earlier generation's
    # Made before the label, or a value that is not ours: as earlier, never adopted.
    for unsaid in (
        {"sandboxer_id": "sbx1"},
        {"sandboxer_attempt": "x.1"},
        {"sandboxer_attempt": "1"},
    ):
        assert made_by(unsaid) is None
        assert removable(unsaid, (1, 1))
        assert not own(unsaid, (1, 1))


def test_a_create_refused_for_a_taken_name_adopts_replaces_or_stops() -> None:
    """Modal's ALREADY_EXISTS and Daytona's 409: the holder is this attempt's own (adopted),
    an earlier attempt's or made before the label (replaced), or a later one's (stop)."""
    mine = (2, 3)
    assert holder_action(labels_for("sbx1", "proj", "ext.modal", (2, 3)), mine) == "adopt"
    assert holder_action(labels_for("sbx1", "proj", "ext.modal", (2, 2)), mine) == "replace"
    assert holder_action(labels_for("sbx1", "proj", "ext.modal", (1, 9)), mine) == "replace"
    assert holder_action({"sandboxer_id": "sbx1"}, mine) == "replace"  # before the label
    assert holder_action(None, mine) == "replace"
    assert holder_action(labels_for("sbx1", "proj", "ext.modal", (2, 4)), mine) == "stop"
    assert holder_action(labels_for("sbx1", "proj", "ext.modal", (3, 1)), mine) == "stop"


def test_a_call_takes_the_sandbox_the_log_names_whatever_the_listing_order() -> None:
    """Two provider sandboxes of one id (an earlier attempt's late create beside the live
    one): a call takes the log's attempt's, never the copy, in either order."""

    def labelled(attempt: tuple[int, int] | None) -> dict[str, str]:
        labels = labels_for("sbx1", "proj", "ext.e2b", attempt or (1, 1))
        if attempt is None:  # made before the attempt label
            del labels["sandboxer_attempt"]
        return labels

    copy, live, later = labelled((1, 1)), labelled((1, 2)), labelled((1, 3))
    old, newer_generation = labelled(None), labelled((2, 1))
    for found in ([copy, live], [live, copy]):
        assert live_one(found, dict, (1, 2)) is live
        assert live_one(found, dict, None) is live  # untold: the latest attempt's
    assert live_one([copy], dict, (1, 2)) is None  # only a stale copy left: none is it
    assert live_one([later, copy], dict, (1, 2)) is None  # not the log's
    assert live_one([copy, old], dict, (1, 2)) is old  # made before the label: may be it
    assert live_one([old, newer_generation, live], dict, None) is newer_generation
    assert live_one([old], dict, None) is old
    assert live_one([], dict, (1, 2)) is None


def unavailable() -> ProviderUnavailable:
    return ProviderUnavailable("lost", provider="ext.test")


async def test_a_lost_answer_adopts_what_the_create_made() -> None:
    made: list[str] = []

    async def create() -> str:
        made.append("one")
        raise unavailable()  # the provider made it; its answer never came

    async def find() -> str | None:
        return made[0] if made else None

    assert await create_once(create, find, sandbox_id="s1", late=LateCreates(), wait=0) == "one"
    assert made == ["one"]


async def test_nothing_made_is_tried_again_then_given_up() -> None:
    calls: list[int] = []

    async def create() -> str:
        calls.append(1)
        raise unavailable()

    async def find() -> str | None:
        return None

    with pytest.raises(ProviderUnavailable):
        await create_once(create, find, sandbox_id="s1", late=LateCreates(), attempts=3, wait=0)
    assert len(calls) == 3


async def test_a_quota_refusal_is_not_retried_here() -> None:
    calls: list[int] = []

    async def create() -> str:
        calls.append(1)
        raise ProviderQuota("full", provider="ext.test", status=429)

    async def find() -> str | None:
        return None

    with pytest.raises(ProviderQuota):
        await create_once(create, find, sandbox_id="s1", late=LateCreates(), wait=0)
    assert calls == [1]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        """No real waiting: the clock moves instead."""
        self.waits.append(seconds)
        self.now += seconds


def test_a_create_given_up_on_may_land_for_the_settle_window() -> None:
    clock = Clock()
    late = LateCreates(60, clock=clock)
    assert late.remaining("s1") == 0
    late.gave_up("s1")
    clock.now += 20
    assert late.remaining("s1") == 40
    late.gave_up("s1")  # another one, later: the window runs from the latest
    assert late.remaining("s1") == 60
    assert late.remaining("s2") == 0


async def test_what_gave_up_and_what_did_not() -> None:
    async def refused() -> str:
        raise ProviderQuota("full", provider="ext.test", status=429)

    async def nothing() -> str | None:
        return None

    late = LateCreates(60)
    with pytest.raises(ProviderQuota):  # answered: the provider will not make it later
        await create_once(refused, nothing, sandbox_id="s1", late=late, wait=0)
    assert late.remaining("s1") == 0

    async def lost() -> str:
        raise unavailable()

    with pytest.raises(ProviderUnavailable):
        await create_once(lost, nothing, sandbox_id="s2", late=late, attempts=1, wait=0)
    assert late.remaining("s2") > 0

    await create_once(_made, nothing, sandbox_id="s3", late=late, redelivered=True)
    assert late.remaining("s3") == 0  # made: a late copy is found by the sandbox's teardown
    with pytest.raises(ProviderQuota):
        await create_once(refused, nothing, sandbox_id="s4", late=late, redelivered=True)
    assert late.remaining("s4") > 0  # failed: an earlier attempt's create may still land


async def _made() -> str:
    return "made"


async def test_a_create_cancelled_on_its_way_may_land() -> None:
    started = asyncio.Event()

    async def slow() -> str:
        started.set()
        await asyncio.sleep(60)
        return "never"

    async def nothing() -> str | None:
        return None

    late = LateCreates(60)
    task = asyncio.create_task(create_once(slow, nothing, sandbox_id="s1", late=late))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert late.remaining("s1") > 0


async def test_teardown_looks_again_less_often_until_a_late_create_can_no_longer_land() -> None:
    clock = Clock()
    late = LateCreates(60, clock=clock, sleep=clock.sleep)
    looks: list[float] = []

    async def remove() -> None:
        looks.append(late.remaining("s1"))

    await late.teardown("s2", remove)  # nothing given up on: one look
    assert (looks, clock.waits) == ([0], [])
    late.gave_up("s1")
    looks.clear()
    await late.teardown("s1", remove)
    assert clock.waits == [1, 2, 4, 8, 8, 8, 8, 8, 8, 5]  # doubling, at most 8, cut at the end
    assert looks == [60, 59, 57, 53, 45, 37, 29, 21, 13, 5, 0]  # the last as it closes
    looks.clear()
    clock.waits.clear()
    await late.teardown("s1", remove)  # the window is over: one look again
    assert (looks, clock.waits) == ([0], [])


async def test_slow_looks_still_end_at_the_window_s_close() -> None:
    clock = Clock()
    late = LateCreates(10, first_wait=0.5, longest_wait=2, clock=clock, sleep=clock.sleep)
    looks: list[float] = []

    async def remove() -> None:  # each look takes 1.5 s (a listing, a kill)
        looks.append(clock.now)
        clock.now += 1.5

    late.gave_up("s1")
    await late.teardown("s1", remove)
    assert clock.waits == [0.5, 1, 2, 0.5]  # the time looks take counts: the last is cut
    assert looks == [100, 102, 104.5, 108, 110]  # the last as the window closes
