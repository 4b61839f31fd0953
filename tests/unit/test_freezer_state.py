"""How much of a group the cgroup freezer has frozen, read from its files (extensions/local/
freezer.how_frozen). cgroup v1 is tested against the real kernel in test_pause.py; this
machine has no v2 freezer, so its files are laid out here as the kernel writes them."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandboxer.extensions.local.freezer import how_frozen


@pytest.mark.parametrize(
    ("state", "frozen"), [("FROZEN", "all"), ("THAWED", "none"), ("FREEZING", "part")]
)
def test_a_v1_group_reads_its_state(tmp_path: Path, state: str, frozen: str) -> None:
    (tmp_path / "freezer.state").write_text(f"{state}\n")
    assert how_frozen(tmp_path) == frozen


@pytest.mark.parametrize(
    ("asked", "settled", "frozen"),
    [("1", "1", "all"), ("0", "0", "none"), ("1", "0", "part"), ("0", "1", "part")],
)
def test_a_v2_group_is_all_frozen_only_once_the_freeze_it_asks_for_took_effect(
    tmp_path: Path, asked: str, settled: str, frozen: str
) -> None:
    (tmp_path / "cgroup.freeze").write_text(f"{asked}\n")
    (tmp_path / "cgroup.events").write_text(f"populated 1\nfrozen {settled}\n")
    assert how_frozen(tmp_path) == frozen
