"""The benchmark table (bench/_table.py): targets judged right, failures shown, rows survive JSON."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from _table import Row, Target, failed, render, rows_from_json, rows_to_json


def test_a_ratio_target_compares_the_value_with_its_baseline() -> None:
    within = Row("cold p50", "ms", 20.0, 8.0, "raw spawn", Target("<=", 3, "ratio"))
    beyond = Row("cold p50", "ms", 30.0, 8.0, "raw spawn", Target("<=", 3, "ratio"))
    assert within.ratio == 2.5
    assert within.met is True
    assert beyond.met is False


def test_an_at_least_target_and_an_absolute_one() -> None:
    replay = Row("replay", "events/s", 70.0, 100.0, "bulk read", Target(">=", 0.6, "ratio"))
    memory = Row("idle RSS", "MB", 81.0, 36.0, "bare python", Target("<=", 80))
    assert replay.met is True
    assert memory.met is False
    assert Target(">=", 0.6, "ratio").text("events/s") == "≥ 60% of baseline"
    assert Target("<=", 80).text("MB") == "≤ 80 MB"


def test_a_row_without_a_target_or_a_value_is_not_judged() -> None:
    assert Row("nats RSS", "MB", 19.0).met is None
    assert failed("remote", "ms", "no sshd", Target("<=", 1.2, "ratio")).met is None


def test_a_failure_shows_in_the_table_with_its_reason_and_a_missed_target_says_no() -> None:
    text = render(
        [
            Row("cold p50", "ms", 30.0, 8.0, "raw spawn", Target("<=", 3, "ratio")),
            failed(
                "compose-ssh p50",
                "ms",
                "'sshd' is missing: apt-get install -y openssh-server (or make system-deps)",
                Target("<=", 1.2, "ratio"),
            ),
        ]
    )
    lines = text.splitlines()
    assert lines[0].split(" | ")[0].strip() == "figure"
    cold = next(line for line in lines if line.startswith("cold p50"))
    assert cold.rstrip().endswith("NO")
    assert "3.75x" in cold
    assert any("FAILED" in line and line.startswith("compose-ssh") for line in lines)
    assert any("apt-get install -y openssh-server" in line for line in lines)


def test_rows_survive_the_json_between_a_module_and_the_runner() -> None:
    rows = [
        Row("cold p50", "ms", 30.0, 8.0, "raw spawn", Target("<=", 3, "ratio")),
        failed("remote", "", "exited 1: boom"),
    ]
    assert rows_from_json(rows_to_json(rows)) == rows
