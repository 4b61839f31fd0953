"""Route signals: the circuit rule, samples from events, and the view's rows live vs rebuilt."""

from __future__ import annotations

from pathlib import Path

import msgspec

from sandboxer.domain.route_signals import (
    Circuit,
    FailureSample,
    circuit_at,
    signals_from_rows,
)
from sandboxer.events.types import (
    Actor,
    SandboxDestroyed,
    SandboxDestroying,
    SandboxEvent,
    SandboxFailed,
    SandboxProvisioning,
    SandboxReady,
    SandboxRequested,
    SandboxRerouting,
    SandboxRouted,
)
from sandboxer.projections.folding import Batch
from sandboxer.projections.route_rows import KEEP
from sandboxer.projections.sandbox_view import SandboxView

ACTOR = Actor(type="adm", id="t")
T0 = "2026-12-02T10:00:00.000Z"


def at(seconds: float) -> str:
    from sandboxer.domain.timestamps import shift

    return shift(T0, seconds)


def quota(seconds: float, ext: str = "ext.a") -> FailureSample:
    return FailureSample(ext, at(seconds), "provider_quota")


def outage(seconds: float, ext: str = "ext.a") -> FailureSample:
    return FailureSample(ext, at(seconds), "provider_unavailable")


def test_a_quota_refusal_opens_the_circuit_for_60_s() -> None:
    assert circuit_at([quota(0)], None, at(59)) == Circuit(at(60), f"quota refusal at {at(0)}")
    assert circuit_at([quota(0)], None, at(60)) is None


def test_three_retryable_failures_within_5_minutes_open_it() -> None:
    two = [outage(0), outage(100)]
    assert circuit_at(two, None, at(101)) is None
    opened = circuit_at([*two, outage(290)], None, at(300))
    assert opened is not None
    assert opened.until == at(350)
    assert circuit_at([outage(0), outage(100), outage(301)], None, at(302)) is None  # too spread


def test_a_success_closes_it() -> None:
    failures = [outage(0), outage(1), quota(2)]
    assert circuit_at(failures, None, at(10)) is not None
    assert circuit_at(failures, at(5), at(10)) is None  # a ready at 5 s, after them all


def test_signals_from_rows_take_the_p50_of_recent_and_count_live() -> None:
    from sandboxer.domain.route_signals import LatencySample

    samples = [
        LatencySample(f"s{i}:1", "ext.a", None, at(i), at(i + s), s)
        for i, s in enumerate([1.0, 9.0, 2.0, 3.0])
    ]
    signals = signals_from_rows(
        latencies=samples,
        failures=[quota(0, "ext.b")],
        live=[("ext.a", None, 2), ("ext.c", "h1", 1), ("ext.c", "h2", 3)],
        now=at(30),
    )
    assert signals.latency_p50 == {"ext.a": 2.5}
    assert signals.live == {"ext.a": 2, "ext.c": 4}
    assert signals.live_by_host == {"ext.c": {"h1": 1, "h2": 3}}
    assert set(signals.circuits) == {"ext.b"}


def _life(n: int, ext: str, ready_after: float, *, fail: str | None = None) -> list[SandboxEvent]:
    """One sandbox's events: created at n seconds, ready (or failed) ``ready_after`` later."""
    sid = f"sbx{n:04d}"
    head = {"sandbox_id": sid, "command_id": f"c{n}", "actor": ACTOR}
    events: list[SandboxEvent] = [
        SandboxRequested(**head, at=at(n), profile="profile.routed", profile_version=1),
        SandboxRouted(**head, at=at(n), extension=ext, reason="test"),
        SandboxProvisioning(**head, at=at(n), extension=ext),
    ]
    if fail == "rerouting":
        events.append(
            SandboxRerouting(
                **head, at=at(n + ready_after), extension=ext, reason="429", code="provider_quota"
            )
        )
    elif fail:
        events.append(
            SandboxFailed(
                **head,
                at=at(n + ready_after),
                reason="down",
                stage="provision",
                retryable=True,
                code=fail,
            )
        )
    else:
        events.append(SandboxReady(**head, at=at(n + ready_after), reachability={}))
        if n % 3 == 0:
            events.append(SandboxDestroying(**head, at=at(n + ready_after + 1)))
            events.append(SandboxDestroyed(**head, at=at(n + ready_after + 2)))
    return events


def _log() -> list[bytes]:
    events: list[SandboxEvent] = []
    for n in range(KEEP + 30):
        events += _life(n, "ext.local", 0.5 + (n % 7) / 10)
    for n in range(200, 210):
        events += _life(n, "ext.stub", 2.0, fail="provider_unavailable" if n % 2 else None)
    events += _life(400, "ext.stub", 1.0, fail="rerouting")
    return [msgspec.json.encode(e) for e in events]


async def _fold(path: Path, log: list[bytes], every: int) -> dict[str, list[tuple[object, ...]]]:
    view = await SandboxView.open(path)
    try:
        batch = Batch(view, fresh=every == 0)
        for seq, data in enumerate(log, start=1):
            await batch.apply(seq, data)
            if every and seq % every == 0:
                await batch.flush()
        await batch.flush()
        return await view.dump()
    finally:
        await view.close()


async def test_route_rows_are_the_same_live_and_rebuilt(tmp_path: Path) -> None:
    log = _log()
    live = await _fold(tmp_path / "live.db", log, every=7)
    rebuilt = await _fold(tmp_path / "rebuilt.db", log, every=0)
    assert live == rebuilt
    local_rows = [r for r in live["route_latency"] if r[1] == "ext.local"]
    assert len(local_rows) == KEEP  # pruned to the newest
    assert min(int(str(r[6])) for r in local_rows) > 1  # the oldest samples went
    failures = live["route_failures"]
    assert [(r[1], r[3]) for r in failures][-1] == ("ext.stub", "provider_quota")


async def test_the_view_answers_signals(tmp_path: Path) -> None:
    view = await SandboxView.open(tmp_path / "v.db")
    try:
        batch = Batch(view)
        for seq, data in enumerate(_log(), start=1):
            await batch.apply(seq, data)
        await batch.flush()
        signals, by_host = await view.route_signals(at(401.5))
    finally:
        await view.close()
    assert signals.latency_p50["ext.stub"] == 2.0
    assert 0.5 <= signals.latency_p50["ext.local"] <= 1.1
    # ext.local: every third sandbox was destroyed, the rest are ready and hold a place.
    assert signals.live["ext.local"] == sum(1 for n in range(KEEP + 30) if n % 3)
    assert signals.circuits["ext.stub"].reason == f"quota refusal at {at(401)}"
    assert by_host == {}
