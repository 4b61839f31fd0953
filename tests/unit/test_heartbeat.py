"""How long a client waits on a silent worker (an exec's or a copy's): from the ``started``
message's heartbeat header, and not at all (as before) when the worker promised none."""

from __future__ import annotations

import pytest

from sandboxer.exec_protocol.heartbeat import HEADER, MISSES, allowed_silence
from sandboxer.exec_protocol.wire import EXEC_HEADER


def test_a_few_missed_heartbeats_are_allowed() -> None:
    assert allowed_silence({EXEC_HEADER: "started", HEADER: "10"}) == 10 * MISSES
    assert allowed_silence({HEADER: "2.5"}) == 2.5 * MISSES


@pytest.mark.parametrize(
    "headers",
    [
        None,  # a worker older than the header: the client waits for the exit as it did
        {EXEC_HEADER: "started"},
        {HEADER: ""},
        {HEADER: "soon"},
        {HEADER: "0"},
        {HEADER: "-10"},
        {HEADER: "nan"},
        {HEADER: "inf"},
    ],
)
def test_no_promise_or_one_that_cannot_be_read_means_no_limit(
    headers: dict[str, str] | None,
) -> None:
    assert allowed_silence(headers) is None
