"""Which NATS answers are waited out, and for how long: without a server.

The real behaviour (elections, restarts, a forming cluster) is tested in
tests/integration/test_publish.py and test_cluster.py; this checks the
classification and the time budget, which a real server cannot be made to
answer on demand (10005 shows only in a narrow window while a cluster forms).
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from nats import errors as nats_errors
from nats.js.errors import APIError, NoStreamResponseError, NotFoundError, ServiceUnavailableError

from sandboxer.bus.publish import is_transient, is_unavailability
from sandboxer.bus.streams import ensure_streams
from sandboxer.errors import BusError, StreamUnavailable


def api_error(code: int, err_code: int) -> APIError:
    return APIError(code=code, err_code=err_code, description="test")


@pytest.mark.parametrize(
    "exc",
    [
        nats_errors.TimeoutError(),
        nats_errors.NoRespondersError(),
        NoStreamResponseError(),
        nats_errors.ConnectionReconnectingError(),
        ServiceUnavailableError(code=503, err_code=10008),
        api_error(500, 10009),
    ],
)
def test_leaderless_and_reconnecting_answers_are_transient(exc: Exception) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        api_error(400, 10071),  # wrong last sequence: a conflict, the caller's to settle
        api_error(400, 10164),
        api_error(503, 10063),  # a 503, but an expectation failed: not "not now"
        api_error(400, 10054),  # message too large
        nats_errors.ConnectionClosedError(),
    ],
)
def test_refusals_and_conflicts_are_not_transient(exc: Exception) -> None:
    assert not is_transient(exc)


def test_unavailability_is_found_through_the_cause_chain() -> None:
    wrapped = BusError("reading timed out")
    wrapped.__cause__ = nats_errors.TimeoutError()
    assert is_unavailability(wrapped)
    assert is_unavailability(StreamUnavailable("no leader"))
    assert not is_unavailability(BusError("refused"))
    assert not is_unavailability(ValueError("bug"))
    bug = KeyError("a bug met while handling a timeout")
    bug.__context__ = nats_errors.TimeoutError()  # as `raise` inside `except` would set it
    assert not is_unavailability(bug)


class PlacingJetStream:
    """Answers ``add_stream`` with the given errors first, then accepts."""

    def __init__(self, errors: list[Exception]) -> None:
        self.errors = errors
        self.created: list[str] = []

    async def stream_info(self, name: str) -> Any:
        raise NotFoundError

    async def add_stream(self, config: Any) -> None:
        if self.errors:
            raise self.errors.pop(0)
        self.created.append(config.name)

    async def update_stream(self, config: Any) -> None:
        raise AssertionError("not reached: no stream exists")


async def test_streams_wait_until_the_cluster_can_place_them() -> None:
    js = PlacingJetStream(
        [
            api_error(400, 10005),
            api_error(503, 10008),
            nats_errors.TimeoutError(),
            api_error(400, 10005),
        ]
    )
    await ensure_streams(js, 3)  # type: ignore[arg-type]
    assert js.created == ["SANDBOXER_COMMANDS", "SANDBOXER_EVENTS", "SANDBOXER_JOBS"]


async def test_placement_that_never_comes_is_stream_unavailable_after_the_budget() -> None:
    js = PlacingJetStream([api_error(400, 10005)] * 1000)
    started = time.monotonic()
    with pytest.raises(StreamUnavailable, match="could not be placed within 1 s"):
        await ensure_streams(js, 3, budget_seconds=1.0)  # type: ignore[arg-type]
    assert time.monotonic() - started < 4


async def test_a_refused_stream_is_a_bus_error_at_once() -> None:
    js = PlacingJetStream([api_error(400, 10052)])
    with pytest.raises(BusError, match="was refused"):
        await ensure_streams(js, 3)  # type: ignore[arg-type]
