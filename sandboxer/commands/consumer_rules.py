"""What a consumer (docs/protocol.md#consumer-attribution) may say: pure checks.

A consumer is recorded in events, shown in views and lists, and used as a
filter, so each part is short and made of characters that need no quoting
anywhere (labels' values are free printable text). The same rules check the
filters of ``list`` so that a filter can only name what a consumer can hold.
"""

from __future__ import annotations

import re

from sandboxer.events.types import ConsumerRecord

__all__ = [
    "CONSUMER_ID",
    "HARNESS",
    "LABEL_KEY",
    "MAX_LABELS",
    "MAX_LABEL_VALUE",
    "consumer_refusal",
    "filter_refusal",
    "label_refusal",
]

HARNESS = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
"""The calling service's name: lowercase letters, digits, '.', '_' and '-', at most 64."""
CONSUMER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+/-]{0,127}")
"""A session, run or job id: letters, digits and ``._:@+/-``, at most 128."""
LABEL_KEY = re.compile(r"[a-z0-9][a-z0-9._/-]{0,62}")
MAX_LABELS = 16
MAX_LABEL_VALUE = 256

_RULES = {
    "harness": (HARNESS, "lowercase letters, digits, '.', '_' and '-' (at most 64)"),
    "session_id": (CONSUMER_ID, "letters, digits and ._:@+/- (at most 128)"),
    "run_id": (CONSUMER_ID, "letters, digits and ._:@+/- (at most 128)"),
    "job_id": (CONSUMER_ID, "letters, digits and ._:@+/- (at most 128)"),
}


def filter_refusal(name: str, value: str) -> str | None:
    """Why ``value`` cannot be the consumer part ``name`` (harness, session_id, run_id,
    job_id); None when it can."""
    pattern, rule = _RULES[name]
    if pattern.fullmatch(value):
        return None
    return f"consumer.{name} {value[:100]!r} is invalid: use {rule}"


def label_refusal(key: str, value: str) -> str | None:
    """Why ``key: value`` cannot be a label; None when it can."""
    if not LABEL_KEY.fullmatch(key):
        return (
            f"consumer label key {key[:100]!r} is invalid: use lowercase letters, digits and "
            "'._/-' (at most 63, starting with a letter or digit)"
        )
    if len(value) > MAX_LABEL_VALUE or not value.isprintable():
        return (
            f"consumer label {key!r}: its value must be at most {MAX_LABEL_VALUE} printable "
            "characters"
        )
    return None


def consumer_refusal(consumer: ConsumerRecord) -> str | None:
    """Why a command's consumer cannot be recorded; None when it can."""
    for name in _RULES:
        value = getattr(consumer, name)
        if value is not None:
            refusal = filter_refusal(name, value)
            if refusal is not None:
                return refusal
    if len(consumer.labels) > MAX_LABELS:
        return f"consumer has {len(consumer.labels)} labels; the limit is {MAX_LABELS}"
    for key, value in consumer.labels.items():
        refusal = label_refusal(key, value)
        if refusal is not None:
            return refusal
    return None
