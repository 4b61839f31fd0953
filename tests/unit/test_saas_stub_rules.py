"""ext.saas-stub's pure rules: liveness, quota, cost arithmetic and the failure draw."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandboxer.domain.timestamps import shift
from sandboxer.extensions.saas_stub import rules
from sandboxer.extensions.saas_stub.rules import Price, Record

T0 = "2026-12-02T10:00:00.000Z"
PRICE = Price(per_create=0.001, per_second=0.0001, gpu_per_second=0.002)

prices = st.builds(
    Price,
    per_create=st.floats(0, 10, allow_nan=False),
    per_second=st.floats(0, 1, allow_nan=False),
    gpu_per_second=st.floats(0, 1, allow_nan=False),
)
seconds = st.floats(0, 10 * 86400, allow_nan=False)


def record(sandbox_id: str = "sbx00000001", **fields: Any) -> Record:
    return Record(
        sandbox_id=sandbox_id, profile="profile.saas-stub", created_at=T0, price=PRICE, **fields
    )


def at(offset: float) -> str:
    return shift(T0, offset)


# -- liveness and quota ------------------------------------------------------------------------


def test_a_running_record_lives_until_its_deadline_and_a_paused_one_past_it() -> None:
    running = record(deadline=at(60))
    assert rules.is_alive(running, at(59))
    assert not rules.is_alive(running, at(60))
    assert rules.is_alive(rules.paused(running, at(30)), at(3600))
    assert rules.is_alive(record(), at(10**6))  # no deadline: until torn down


def test_the_quota_counts_live_records_paused_ones_too_but_not_ended_ones() -> None:
    records = [
        record("sbx00000001"),
        rules.paused(record("sbx00000002", deadline=at(10)), at(5)),
        record("sbx00000003", deadline=at(10)),  # ended by its timeout at 10
    ]
    assert rules.live_count(records, at(20)) == 2
    assert rules.live_count(records, at(20), excluding="sbx00000001") == 1
    assert not rules.quota_full(1, 2)
    assert rules.quota_full(2, 2)
    assert rules.quota_full(0, 0)  # max_live 0 refuses every create


def test_the_deadline_is_a_margin_past_our_expiry() -> None:
    assert rules.deadline_for(None, 60) is None
    assert rules.deadline_for(at(100), 60) == at(160)


# -- pause, resume and billable time -----------------------------------------------------------


def test_paused_time_is_not_billed_and_moves_the_deadline() -> None:
    start = record(deadline=at(100))
    held = rules.paused(start, at(10))
    assert rules.paused(held, at(20)) == held  # pausing twice changes nothing
    assert rules.billable_seconds(held, at(500)) == 10
    back = rules.resumed(held, at(40))
    assert rules.resumed(back, at(50)) == back
    assert back.paused_seconds == 30
    assert back.deadline == at(130)
    assert rules.billable_seconds(back, at(100)) == 70


def test_no_time_is_billed_past_the_provider_side_deadline() -> None:
    assert rules.billable_seconds(record(deadline=at(60)), at(3600)) == 60


@given(
    before=st.floats(0, 86400, allow_nan=False),
    pause=st.floats(0, 86400, allow_nan=False),
    after=st.floats(0, 86400, allow_nan=False),
)
def test_billable_time_is_wall_time_minus_the_pause(
    before: float, pause: float, after: float
) -> None:
    held = rules.paused(record(), at(before))
    back = rules.resumed(held, at(before + pause))
    billed = rules.billable_seconds(back, at(before + pause + after))
    assert billed == pytest.approx(before + after, abs=0.003)  # timestamps keep milliseconds


# -- cost ----------------------------------------------------------------------------------------


def test_cost_is_the_create_plus_the_seconds() -> None:
    assert rules.cost(PRICE, 0, gpu=False) == 0.001
    assert rules.cost(PRICE, 100, gpu=False) == pytest.approx(0.011)
    assert rules.cost(PRICE, 100, gpu=True) == pytest.approx(0.211)
    assert rules.estimate(PRICE, 100, {"gpu": "a10g"}) == pytest.approx(0.211)
    assert rules.estimate(PRICE, 100, {"gpu": None, "cpu": 2}) == pytest.approx(0.011)


@given(price=prices, a=seconds, b=seconds, gpu=st.booleans())
def test_cost_grows_with_time_and_adds_up(price: Price, a: float, b: float, gpu: bool) -> None:
    low, high = sorted((a, b))
    assert price.per_create <= rules.cost(price, low, gpu=gpu) <= rules.cost(price, high, gpu=gpu)
    run = rules.cost(price, a + b, gpu=gpu) - price.per_create
    parts = (rules.cost(price, a, gpu=gpu) - price.per_create) + (
        rules.cost(price, b, gpu=gpu) - price.per_create
    )
    assert run == pytest.approx(parts, rel=1e-9, abs=1e-9)


@given(price=prices, ttl=seconds)
def test_a_gpu_adds_exactly_its_own_rate(price: Price, ttl: float) -> None:
    extra = rules.estimate(price, ttl, {"gpu": "a10g"}) - rules.estimate(price, ttl, {})
    assert extra == pytest.approx(price.gpu_per_second * ttl, rel=1e-9, abs=1e-9)


@given(price=prices, ttl=st.floats(-1e6, 0, allow_nan=False))
def test_a_negative_time_costs_only_the_create(price: Price, ttl: float) -> None:
    assert rules.estimate(price, ttl, {}) == price.per_create


# -- the failure draw ----------------------------------------------------------------------------


def test_rates_zero_and_one_are_certain_whatever_the_seed() -> None:
    rng = random.Random(1)
    for seed in (None, 7):
        assert not rules.fails(0, seed=seed, sandbox_id="sbx00000001", attempt=1, rng=rng)
        assert rules.fails(1, seed=seed, sandbox_id="sbx00000001", attempt=1, rng=rng)


def test_a_seeded_draw_is_repeatable_and_near_its_rate() -> None:
    ids = [f"sbx{n:08d}" for n in range(2000)]

    def outcomes(seed: int) -> list[bool]:
        rng = random.Random()  # unused with a seed: the draw does not depend on it
        return [rules.fails(0.3, seed=seed, sandbox_id=i, attempt=1, rng=rng) for i in ids]

    first = outcomes(42)
    assert outcomes(42) == first
    assert outcomes(43) != first
    assert 0.25 < sum(first) / len(first) < 0.35
    retried = [rules.fails(0.3, seed=42, sandbox_id=i, attempt=2, rng=random.Random()) for i in ids]
    assert retried != first  # a retry of the same id is a new draw
