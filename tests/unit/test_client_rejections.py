"""A key's limit refused over the bus is RateLimited, waiting as long as its rejection says
(client/rejections.py)."""

from __future__ import annotations

from typing import Any

import pytest

from sandboxer.client.rejections import LIMIT_RETRY_AFTER, rejection_error
from sandboxer.errors import RateLimited


def rejected(code: str, **more: Any) -> dict[str, Any]:
    return {"type": "rejected", "code": code, "reason": "slow down", **more}


def test_a_rate_rejection_says_when_to_come_back() -> None:
    error = rejection_error("slow down", rejected("rate_limited", retry_after=0.2))
    assert isinstance(error, RateLimited)
    assert (error.code, error.retry_after) == ("rate_limited", 0.2)
    # A Retry-After the gateway sent (whole seconds) is the answer's own, and wins.
    error = rejection_error("slow down", rejected("rate_limited", retry_after=0.2), retry_after=1)
    assert isinstance(error, RateLimited)
    assert error.retry_after == 1


@pytest.mark.parametrize("said", [None, "soon", True, 0, -1, 1e9, [1]])
def test_a_limit_that_says_no_sensible_wait_waits_the_default(said: object) -> None:
    error = rejection_error("full", rejected("live_limit", retry_after=said))
    assert isinstance(error, RateLimited)
    assert error.retry_after == LIMIT_RETRY_AFTER
