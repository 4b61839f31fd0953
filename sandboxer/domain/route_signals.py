"""What routing knows besides declarations: measured latency, live counts, host limits, circuits.

Pure. The projector keeps the raw material as rows (``projections/route_rows.py``):
create->ready latency samples and retryable failures, each taken from one
event by :func:`latency_sample` and :func:`failure_sample`; this module turns
them into :class:`RouteSignals` (:func:`signals_from_rows`), with the circuit
rule applied at a given ``now``.

**Circuit rule.** For each extension, looking only at failures after its
latest success (a ``ready``):

- a quota refusal (code ``provider_quota``) opens its circuit for
  :data:`QUOTA_OPEN_SECONDS` (60 s) from the refusal;
- :data:`FAILURES_TO_OPEN` (3) retryable failures within
  :data:`FAILURE_WINDOW_SECONDS` (5 minutes) open it for 60 s from the third;
- a success (``ready``) closes it.

While a circuit is open, routing treats the extension as ineligible.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sandboxer.domain.sandbox_state import SandboxState
from sandboxer.domain.timestamps import seconds_between, shift
from sandboxer.events.types import SandboxEvent, SandboxFailed, SandboxReady, SandboxRerouting

__all__ = [
    "CAPACITY_STATUSES",
    "FAILURES_TO_OPEN",
    "FAILURE_WINDOW_SECONDS",
    "QUOTA_OPEN_SECONDS",
    "Circuit",
    "FailureSample",
    "LatencySample",
    "RouteSignals",
    "circuit_at",
    "failure_sample",
    "latency_sample",
    "median",
    "signals_from_rows",
]

QUOTA_OPEN_SECONDS = 60.0
FAILURES_TO_OPEN = 3
FAILURE_WINDOW_SECONDS = 300.0
QUOTA_CODE = "provider_quota"
RECENT_SAMPLES = 20
"""The p50 is taken over this many most recent samples of an extension (or host)."""

CAPACITY_STATUSES = frozenset(
    {
        "requested",
        "routed",
        "provisioning",
        "ready",
        "active",
        "recreating",
        "pausing",
        "paused",
        "resuming",
        "destroying",
    }
)
"""Sandboxes that hold a place on their backend (a failed one was torn down; a destroying
one still holds its place until ``destroyed``)."""


@dataclass(frozen=True)
class Circuit:
    until: str
    """When the circuit closes again by itself (ISO 8601 UTC)."""
    reason: str


@dataclass(frozen=True)
class RouteSignals:
    """Everything routing may know besides declarations. ``known`` False: no signals could be
    had (``note`` says why): capacity is then not enforced and latency is unmeasured."""

    latency_p50: Mapping[str, float] = field(default_factory=dict)
    """Seconds from routed to ready, median of recent sandboxes, per extension."""
    live: Mapping[str, int] = field(default_factory=dict)
    """Sandboxes holding a place, per extension."""
    live_by_host: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    live_by_project: Mapping[str, int] = field(default_factory=dict)
    """Sandboxes counting against an API key's ``max_live``
    (:data:`~sandboxer.domain.key_access.KEY_LIVE_STATUSES`), for the one project the request
    named only: the control worker names a key's create's (one project's count is not
    another's business)."""
    host_limits: Mapping[str, int | None] | None = None
    """Each host of the hosts file and its ``max_sandboxes`` (None: no limit), added by the
    control worker for backends on hosts; None when it did not read the file (routing then
    judges no host)."""
    circuits: Mapping[str, Circuit] = field(default_factory=dict)
    known: bool = True
    note: str = ""

    @classmethod
    def unknown(cls, note: str) -> RouteSignals:
        return cls(known=False, note=note)

    def to_dict(self) -> dict[str, Any]:
        return {
            "known": self.known,
            "note": self.note,
            "latency_p50": dict(sorted(self.latency_p50.items())),
            "live": dict(sorted(self.live.items())),
            "live_by_host": {
                k: dict(sorted(v.items())) for k, v in sorted(self.live_by_host.items())
            },
            "live_by_project": dict(sorted(self.live_by_project.items())),
            "host_limits": (
                None if self.host_limits is None else dict(sorted(self.host_limits.items()))
            ),
            # Replies never lose a field (protocol.md, Compatibility): readers of the summed
            # capacity this once carried get none, which it always meant for hosts not read.
            "capacity": {},
            "circuits": {
                k: {"until": c.until, "reason": c.reason} for k, c in sorted(self.circuits.items())
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RouteSignals:
        """Read a signals reply; a malformed one raises ValueError (the caller routes without)."""

        def ints(value: Any) -> dict[str, int]:
            if not isinstance(value, dict):
                raise ValueError("expected an object")
            out = {}
            for k, v in value.items():
                if not isinstance(k, str) or not isinstance(v, int) or isinstance(v, bool):
                    raise ValueError(f"bad count {k!r}")
                out[k] = v
            return out

        latency = data.get("latency_p50", {})
        if not isinstance(latency, dict) or not all(
            isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool)
            for k, v in latency.items()
        ):
            raise ValueError("bad latency_p50")
        circuits_raw = data.get("circuits", {})
        if not isinstance(circuits_raw, dict):
            raise ValueError("bad circuits")
        circuits = {}
        for k, c in circuits_raw.items():
            if not isinstance(c, dict) or not isinstance(c.get("until"), str):
                raise ValueError(f"bad circuit {k!r}")
            circuits[str(k)] = Circuit(until=c["until"], reason=str(c.get("reason", "")))
        by_host = data.get("live_by_host", {})
        if not isinstance(by_host, dict):
            raise ValueError("bad live_by_host")
        limits = data.get("host_limits")
        if limits is not None and not (
            isinstance(limits, dict)
            and all(
                v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 0)
                for v in limits.values()
            )
        ):
            raise ValueError("bad host_limits")
        return cls(
            latency_p50={k: float(v) for k, v in latency.items()},
            live=ints(data.get("live", {})),
            live_by_host={str(k): ints(v) for k, v in by_host.items()},
            live_by_project=ints(data.get("live_by_project", {})),
            host_limits=None if limits is None else {str(k): v for k, v in limits.items()},
            circuits=circuits,
            known=bool(data.get("known", True)),
            note=str(data.get("note", "")),
        )


@dataclass(frozen=True)
class LatencySample:
    """One sandbox became ready: how long after it was routed (or recreated)."""

    key: str
    """``<sandbox_id>:<generation>``: one sample per provisioned generation."""
    extension: str
    host: str | None
    started_at: str
    ready_at: str
    seconds: float


@dataclass(frozen=True)
class FailureSample:
    """A retryable failure (or a refusal that sent the sandbox elsewhere) on an extension."""

    extension: str
    at: str
    code: str | None


def latency_sample(
    before: SandboxState, after: SandboxState, event: SandboxEvent
) -> LatencySample | None:
    """The sample a ``ready`` event gives (None for any other event, or without a start time).

    The start is when the sandbox was routed: the time of its ``routed`` event when the state
    kept it, else its creation (``requested`` and ``routed`` are appended together); for a
    recreate, the recreate's time."""
    if not isinstance(event, SandboxReady):
        return None
    if before.status != "provisioning" or after.status != "ready" or after.extension is None:
        return None
    started = before.recreated_at if after.generation > 1 and before.recreated_at else None
    started = started or before.created_at
    if started is None:
        return None
    ready_at = event.at
    return LatencySample(
        key=f"{after.sandbox_id}:{after.generation}",
        extension=after.extension,
        host=after.host,
        started_at=started,
        ready_at=ready_at,
        seconds=max(0.0, round(seconds_between(started, ready_at), 3)),
    )


def failure_sample(before: SandboxState, event: SandboxEvent) -> FailureSample | None:
    """The sample a retryable ``failed`` event (or a ``rerouting`` refusal) gives."""
    if isinstance(event, SandboxFailed):
        if not (event.retryable or event.code == QUOTA_CODE) or before.extension is None:
            return None
        return FailureSample(extension=before.extension, at=event.at, code=event.code)
    if isinstance(event, SandboxRerouting):  # fallback's refusal: the backend it names
        return FailureSample(extension=event.extension, at=event.at, code=event.code)
    return None


def median(values: Iterable[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        raise ValueError("median of nothing")
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return round((ordered[middle - 1] + ordered[middle]) / 2, 3)


def circuit_at(
    failures: Iterable[FailureSample], last_success: str | None, now: str
) -> Circuit | None:
    """The circuit of one extension at ``now`` (None: closed). ``failures`` in any order."""
    recent = sorted(
        (f for f in failures if last_success is None or f.at > last_success), key=lambda f: f.at
    )
    opened: Circuit | None = None
    for index, failure in enumerate(recent):
        candidate: Circuit | None = None
        if failure.code == QUOTA_CODE:
            candidate = Circuit(
                shift(failure.at, QUOTA_OPEN_SECONDS), f"quota refusal at {failure.at}"
            )
        if index + 1 >= FAILURES_TO_OPEN:
            first = recent[index + 1 - FAILURES_TO_OPEN]
            if seconds_between(first.at, failure.at) <= FAILURE_WINDOW_SECONDS:
                candidate = Circuit(
                    shift(failure.at, QUOTA_OPEN_SECONDS),
                    f"{FAILURES_TO_OPEN} retryable failures from {first.at} to {failure.at}",
                )
        if candidate is not None and (opened is None or candidate.until >= opened.until):
            opened = candidate
    if opened is None or opened.until <= now:
        return None
    return opened


def signals_from_rows(
    *,
    latencies: Iterable[LatencySample],
    failures: Iterable[FailureSample],
    live: Iterable[tuple[str, str | None, int]],
    now: str,
    recent: int = RECENT_SAMPLES,
) -> RouteSignals:
    """Signals from the view's rows: ``live`` is (extension, host, count) of sandboxes holding a
    place; latencies and failures in any order (each extension's ``recent`` newest count)."""
    per_ext: dict[str, list[LatencySample]] = {}
    for sample in latencies:
        per_ext.setdefault(sample.extension, []).append(sample)
    p50: dict[str, float] = {}
    last_success: dict[str, str] = {}
    for ext, samples in per_ext.items():
        samples.sort(key=lambda s: (s.ready_at, s.key))
        p50[ext] = median(s.seconds for s in samples[-recent:])
        last_success[ext] = samples[-1].ready_at
    per_ext_failures: dict[str, list[FailureSample]] = {}
    for failure in failures:
        per_ext_failures.setdefault(failure.extension, []).append(failure)
    circuits = {}
    for ext, ext_failures in per_ext_failures.items():
        circuit = circuit_at(ext_failures, last_success.get(ext), now)
        if circuit is not None:
            circuits[ext] = circuit
    counts: dict[str, int] = {}
    by_host: dict[str, dict[str, int]] = {}
    for ext, host, count in live:
        counts[ext] = counts.get(ext, 0) + count
        if host is not None:
            by_host.setdefault(ext, {})[host] = by_host.get(ext, {}).get(host, 0) + count
    return RouteSignals(latency_p50=p50, live=counts, live_by_host=by_host, circuits=circuits)
