"""Routing's rows in the view: create->ready latency samples and retryable failures.

Kept in the sandbox view's database, written in the same transaction as the
sandboxes and the position (like ``snapshot_rows.py``). Each extension keeps
its :data:`KEEP` newest rows of each table, by stream sequence: pruning only
drops rows that can never be among the newest again, so a live view and a
rebuild keep the same rows whatever their batches were.

:func:`load_signals` turns the rows, plus live counts from the sandboxes
table, into :class:`~sandboxer.domain.route_signals.RouteSignals` at a given
time (the circuit rule lives in the pure module).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import aiosqlite
import msgspec

from sandboxer.domain.key_access import KEY_LIVE_STATUSES
from sandboxer.domain.route_signals import (
    CAPACITY_STATUSES,
    FailureSample,
    LatencySample,
    RouteSignals,
    failure_sample,
    latency_sample,
    median,
    signals_from_rows,
)
from sandboxer.domain.sandbox_state import SandboxState
from sandboxer.events.types import SandboxEvent, SandboxFailed, SandboxReady, SandboxRerouting
from sandboxer.projections.rows import write_rows

__all__ = [
    "KEEP",
    "ROUTE_SCHEMA",
    "ROUTE_TABLES",
    "SAMPLED_EVENTS",
    "RouteSamples",
    "load_signals",
    "newest_latencies",
    "save_route_samples",
]

KEEP = 50
"""Rows kept per extension in each table (the p50 reads the newest 20)."""

ROUTE_SCHEMA = """
CREATE TABLE IF NOT EXISTS route_latency (
    key TEXT PRIMARY KEY,
    extension TEXT NOT NULL,
    host TEXT,
    started_at TEXT NOT NULL,
    ready_at TEXT NOT NULL,
    seconds REAL NOT NULL,
    seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS route_latency_ext ON route_latency(extension, seq);
CREATE TABLE IF NOT EXISTS route_failures (
    seq INTEGER PRIMARY KEY,
    extension TEXT NOT NULL,
    at TEXT NOT NULL,
    code TEXT
);
CREATE INDEX IF NOT EXISTS route_failures_ext ON route_failures(extension, seq);
"""


class _Where(msgspec.Struct):
    """The two fields of a stored sandbox state that live counts need."""

    extension: str | None = None
    host: str | None = None


_decode_where = msgspec.json.Decoder(_Where).decode

SAMPLED_EVENTS: frozenset[type[Any]] = frozenset({SandboxReady, SandboxFailed, SandboxRerouting})
"""The only event classes :meth:`RouteSamples.observe` takes a sample from (a ``ready``'s
latency, a retryable failure or a refusal): replay skips the call for every other event."""

ROUTE_TABLES = (("route_latency", "key"), ("route_failures", "seq"))
"""(table, key) pairs, for the view's dump."""


@dataclass
class RouteSamples:
    """Samples folded since the last save."""

    latencies: list[tuple[LatencySample, int]] = field(default_factory=list)
    failures: list[tuple[FailureSample, int]] = field(default_factory=list)

    def observe(
        self, before: SandboxState, after: SandboxState, event: SandboxEvent, seq: int
    ) -> None:
        sample = latency_sample(before, after, event)
        if sample is not None:
            self.latencies.append((sample, seq))
        failure = failure_sample(before, event)
        if failure is not None:
            self.failures.append((failure, seq))

    def __bool__(self) -> bool:
        return bool(self.latencies or self.failures)


def newest_latencies(
    latencies: list[tuple[LatencySample, int]],
) -> tuple[list[tuple[LatencySample, int]], list[str]]:
    """The samples of a batch that can be among their extension's :data:`KEEP` newest once
    written (the last per key, as ``INSERT OR REPLACE`` leaves it), and the keys of the
    others. A rebuild's batch holds thousands of samples per extension, of which the prune
    would keep fifty: writing only those, and deleting the keys of the rest (which their
    insert would have replaced), leaves the same rows."""
    last: dict[str, tuple[LatencySample, int]] = {}
    for sample, seq in latencies:
        last[sample.key] = (sample, seq)
    by_extension: dict[str, list[tuple[LatencySample, int]]] = {}
    for item in last.values():
        by_extension.setdefault(item[0].extension, []).append(item)
    kept: list[tuple[LatencySample, int]] = []
    dropped: list[str] = []
    for items in by_extension.values():
        if len(items) <= KEEP:
            kept.extend(items)
            continue
        items.sort(key=lambda item: item[1], reverse=True)
        kept.extend(items[:KEEP])
        dropped.extend(sample.key for sample, _ in items[KEEP:])
    return kept, dropped


async def save_route_samples(db: aiosqlite.Connection, samples: RouteSamples) -> None:
    """Write the samples and prune each touched extension (the caller commits)."""
    kept, dropped = newest_latencies(samples.latencies)
    if dropped:  # what their own insert would have replaced, before the prune removed them
        await db.executemany("DELETE FROM route_latency WHERE key = ?", [(k,) for k in dropped])
    await write_rows(
        db,
        "INSERT OR REPLACE INTO route_latency VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(s.key, s.extension, s.host, s.started_at, s.ready_at, s.seconds, seq) for s, seq in kept],
    )
    await write_rows(
        db,
        "INSERT OR REPLACE INTO route_failures VALUES (?, ?, ?, ?)",
        [(seq, f.extension, f.at, f.code) for f, seq in samples.failures],
    )
    for table, touched in (
        ("route_latency", {s.extension for s, _ in samples.latencies}),
        ("route_failures", {f.extension for f, _ in samples.failures}),
    ):
        for extension in sorted(touched):
            await db.execute(
                f"DELETE FROM {table} WHERE extension = ? AND seq NOT IN "
                f"(SELECT seq FROM {table} WHERE extension = ? ORDER BY seq DESC LIMIT ?)",
                (extension, extension, KEEP),
            )


async def load_signals(
    db: aiosqlite.Connection, now: str, project: str | None = None
) -> tuple[RouteSignals, dict[str, Any]]:
    """The signals at ``now`` (with ``project``'s count against a key's limit when one is
    named), and the per-host latency (``{ext: {host: p50}}``) for people."""
    async with db.execute(
        "SELECT key, extension, host, started_at, ready_at, seconds FROM route_latency"
    ) as cursor:
        latencies = [
            LatencySample(key, ext, host, started, ready, float(seconds))
            for key, ext, host, started, ready, seconds in await cursor.fetchall()
        ]
    async with db.execute("SELECT extension, at, code FROM route_failures") as cursor:
        failures = [FailureSample(ext, at, code) for ext, at, code in await cursor.fetchall()]
    marks = ", ".join("?" for _ in CAPACITY_STATUSES)
    counts: dict[tuple[str, str | None], int] = {}
    async with db.execute(
        f"SELECT state FROM sandboxes WHERE status IN ({marks})", sorted(CAPACITY_STATUSES)
    ) as cursor:
        async for (blob,) in cursor:
            where = _decode_where(blob)
            if where.extension is not None:
                key = (where.extension, where.host)
                counts[key] = counts.get(key, 0) + 1
    live = [(ext, host, count) for (ext, host), count in counts.items()]
    signals = signals_from_rows(latencies=latencies, failures=failures, live=live, now=now)
    if project is not None:
        signals = replace(signals, live_by_project={project: await _project_live(db, project)})
    by_host: dict[str, dict[str, list[LatencySample]]] = {}
    for sample in latencies:
        if sample.host is not None:
            by_host.setdefault(sample.extension, {}).setdefault(sample.host, []).append(sample)
    host_p50 = {
        ext: {
            host: median(s.seconds for s in sorted(samples, key=lambda s: s.ready_at)[-20:])
            for host, samples in sorted(hosts.items())
        }
        for ext, hosts in sorted(by_host.items())
    }
    return signals, host_p50


async def _project_live(db: aiosqlite.Connection, project: str) -> int:
    """How many of ``project``'s sandboxes count against a key's ``max_live``."""
    marks = ", ".join("?" for _ in KEY_LIVE_STATUSES)
    async with db.execute(
        f"SELECT COUNT(*) FROM sandboxes WHERE project = ? AND status IN ({marks})",
        (project, *sorted(KEY_LIVE_STATUSES)),
    ) as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row else 0
