"""The CLI's words for a consumer's parts (docs/protocol.md#consumer-attribution).

``create --harness/--session/--run/--job/--label k=v`` names them,
``list`` with the same options filters by them, and
``usage --by harness|session|run|job`` groups by one; the service checks
every value and says why it refuses one.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CONSUMER_PARTS", "consumer_filter"]

CONSUMER_PARTS = {"harness": "harness", "session": "session_id", "run": "run_id", "job": "job_id"}
"""The option's word -> the consumer's field."""


def consumer_filter(
    *,
    harness: str | None,
    session: str | None,
    run: str | None,
    job: str | None,
    labels: list[str],
) -> dict[str, Any]:
    """The consumer (or consumer filter) the options give; ValueError names a label that is
    not k=v."""
    given = {"harness": harness, "session_id": session, "run_id": run, "job_id": job}
    wanted: dict[str, Any] = {name: value for name, value in given.items() if value is not None}
    pairs: dict[str, str] = {}
    for label in labels:
        key, sep, value = label.partition("=")
        if not sep or not key:
            raise ValueError(f"--label {label!r}: use KEY=VALUE")
        pairs[key] = value
    if pairs:
        wanted["labels"] = pairs
    return wanted
