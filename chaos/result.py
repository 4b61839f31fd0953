"""What a scenario reports: pass or fail, how long it took, its figures and its problems."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ScenarioResult", "format_line"]


@dataclass
class ScenarioResult:
    name: str
    passed: bool
    seconds: float
    figures: dict[str, object] = field(default_factory=dict)
    """What the scenario did and saw, in the order it prints them: ``{"cycles": 212}`` prints
    ``212 cycles``, ``{"seed {}": 7}`` prints ``seed 7``."""
    problems: list[str] = field(default_factory=list)
    """Every invariant broken, one sentence each; empty when ``passed``."""


def _figure(key: str, value: object) -> str:
    """``("cycles", 212)`` -> ``212 cycles``; a key with ``{}`` places the value itself
    (``("seed {}", 7)`` -> ``seed 7``); a float keeps one decimal."""
    shown = f"{value:.1f}" if isinstance(value, float) else str(value)
    return key.replace("{}", shown) if "{}" in key else f"{shown} {key}"


def format_line(result: ScenarioResult) -> str:
    """``PASS  kill-roles       212 cycles, 9 kills, 0 leaked  84.2 s``: one line per scenario."""
    verdict = "PASS" if result.passed else "FAIL"
    figures = ", ".join(_figure(k, v) for k, v in result.figures.items())
    return f"{verdict}  {result.name:<18} {figures}  {result.seconds:.1f} s"
