"""``list``'s consumer filters (docs/protocol.md#consumer-attribution), read from a query.

The view keeps a sandbox's consumer in columns (``harness``, ``session_id``,
``run_id``, ``job_id``, and ``labels`` as sorted JSON) filled when its
``requested`` is folded, so a rebuilt view has them like a live one. Every
value is checked by the rules a command's consumer passes, so a filter can
only ask for what a consumer can hold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sandboxer.commands.consumer_rules import MAX_LABELS, filter_refusal, label_refusal
from sandboxer.errors import RequestError

__all__ = ["ConsumerFilter", "consumer_filter"]

PARTS = ("harness", "session_id", "run_id", "job_id")


@dataclass(frozen=True)
class ConsumerFilter:
    """The consumer parts a sandbox must have to be listed (every one given must match)."""

    parts: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.parts or self.labels)

    def where(self, table: str = "") -> tuple[list[str], list[Any]]:
        """SQL clauses (joined with AND by the caller) and their parameters."""
        prefix = f"{table}." if table else ""
        clauses = [f"{prefix}{name} = ?" for name in self.parts]
        params: list[Any] = list(self.parts.values())
        for key, value in self.labels.items():
            clauses.append(f"json_extract({prefix}labels, ?) = ?")
            params += [f'$."{key}"', value]  # keys are checked: no quote can be in one
        return clauses, params


def consumer_filter(request: dict[str, Any]) -> ConsumerFilter | None:
    """The filter a query asks for (``harness``, ``session_id``, ``run_id``, ``job_id``: strings;
    ``labels``: an object of strings); None when it asks for none. RequestError says why a
    value cannot be one."""
    parts: dict[str, str] = {}
    for name in PARTS:
        value = request.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise RequestError(f"field {name!r} must be a string")
        refusal = filter_refusal(name, value)
        if refusal is not None:
            raise RequestError(refusal)
        parts[name] = value
    raw = request.get("labels")
    labels: dict[str, str] = {}
    if raw is not None:
        if not isinstance(raw, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
        ):
            raise RequestError("field 'labels' must be an object of strings")
        if len(raw) > MAX_LABELS:
            raise RequestError(f"at most {MAX_LABELS} labels may be asked for")
        for key, value in raw.items():
            refusal = label_refusal(key, value)
            if refusal is not None:
                raise RequestError(refusal)
        labels = dict(raw)
    found = ConsumerFilter(parts, labels)
    return found if found else None
