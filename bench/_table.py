"""One row per figure, each beside the baseline measured in the same run, and the table they make.

A bench module returns a list of :class:`Row`; ``bench/run.py`` collects them
from every module (each in its own process, as JSON) and prints one table.
A figure that could not be measured is a row too, with ``failure`` saying why
and how to fix it: never a silent gap.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Row", "Target", "failed", "render", "rows_from_json", "rows_to_json"]


@dataclass(frozen=True)
class Target:
    """``value <op> limit`` (``kind="absolute"``, in the row's unit) or
    ``value / baseline <op> limit`` (``kind="ratio"``)."""

    op: Literal["<=", ">="]
    limit: float
    kind: Literal["absolute", "ratio"] = "absolute"

    def text(self, unit: str) -> str:
        sign = "≤" if self.op == "<=" else "≥"
        if self.kind == "ratio":
            if self.op == ">=" and self.limit < 1:
                return f"{sign} {self.limit:.0%} of baseline"
            return f"{sign} {self.limit:g}x baseline"
        return f"{sign} {self.limit:g} {unit}"


@dataclass(frozen=True)
class Row:
    figure: str
    unit: str
    value: float | None = None
    baseline: float | None = None
    baseline_name: str = ""
    target: Target | None = None
    # Why there is no value: a tool missing (with its install command), a crash.
    failure: str | None = None

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.baseline:
            return None
        return self.value / self.baseline

    @property
    def met(self) -> bool | None:
        """True/False against the target; None when there is no target or nothing measured."""
        if self.target is None or self.value is None:
            return None
        measured = self.value if self.target.kind == "absolute" else self.ratio
        if measured is None:
            return None
        if self.target.op == "<=":
            return measured <= self.target.limit
        return measured >= self.target.limit


def failed(figure: str, unit: str, why: str, target: Target | None = None) -> Row:
    return Row(figure, unit, target=target, failure=why)


def _number(value: float, unit: str) -> str:
    if math.isnan(value):
        return "nan"
    if unit in {"ms", "s", "MB"}:
        text = f"{value:,.2f}" if value < 100 else f"{value:,.0f}"
    else:  # rates and counts
        text = f"{value:,.0f}" if value >= 100 else f"{value:,.2f}"
    return f"{text} {unit}"


def _cells(row: Row) -> list[str]:
    if row.value is None:
        value = f"FAILED: {row.failure}" if row.failure else "FAILED"
    else:
        value = _number(row.value, row.unit)
    baseline = ""
    if row.baseline is not None:
        baseline = f"{_number(row.baseline, row.unit)} ({row.baseline_name})"
    elif row.baseline_name:
        baseline = row.baseline_name
    ratio = f"{row.ratio:.2f}x" if row.ratio is not None else ""
    target = row.target.text(row.unit) if row.target else ""
    met = {True: "yes", False: "NO", None: ""}[row.met]
    if row.value is None and row.target is not None:
        met = "NO"
    return [row.figure, value, baseline, ratio, target, met]


HEADER = ["figure", "value", "baseline (same run)", "ratio", "target", "met?"]


def render(rows: list[Row]) -> str:
    """A plain-text table; a failure's long message is wrapped under its row."""
    cells = [_cells(row) for row in rows]
    # A failure message does not widen the value column: it goes on its own line below.
    shown = [
        [c if i != 1 or len(c) <= 32 else c.split(":")[0] for i, c in enumerate(r)] for r in cells
    ]
    widths = [max(len(r[i]) for r in [HEADER, *shown]) for i in range(len(HEADER))]

    def line(values: list[str]) -> str:
        return " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    out = [line(HEADER), "-+-".join("-" * w for w in widths)]
    for full, short in zip(cells, shown, strict=True):
        out.append(line(short))
        if full[1] != short[1]:
            out.append(f"    ↳ {full[1]}")
    return "\n".join(out)


def rows_to_json(rows: list[Row]) -> str:
    return json.dumps([dataclasses.asdict(row) for row in rows])


def rows_from_json(text: str) -> list[Row]:
    rows = []
    for raw in json.loads(text):
        fields: dict[str, Any] = dict(raw)
        if fields.get("target") is not None:
            fields["target"] = Target(**fields["target"])
        rows.append(Row(**fields))
    return rows
