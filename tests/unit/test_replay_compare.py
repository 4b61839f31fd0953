"""The replay check's comparison of the live view with the rebuilt one (pure)."""

from __future__ import annotations

from sandboxer.projections.projector import _compare


def test_rows_under_one_first_column_are_each_compared() -> None:
    """A command id's rejections are one row per project: a difference in any of them is
    reported, not only in the last row under the command id (which hid alpha's here)."""
    live = {"rejections": [("c1", "alpha", "unknown_profile"), ("c1", "beta", "rate_limited")]}
    rebuilt = {"rejections": [("c1", "alpha", "sandbox_exists"), ("c1", "beta", "rate_limited")]}
    [difference] = _compare(live, rebuilt)
    assert difference.startswith("rejections[c1]: live ('c1', 'alpha', 'unknown_profile')")
    assert "rebuilt ('c1', 'alpha', 'sandbox_exists')" in difference


def test_a_row_on_one_side_only_is_reported_and_equal_views_have_none() -> None:
    live = {"sandboxes": [("sbx1", "ready"), ("sbx2", "ready")], "meta": [("k", "v")]}
    rebuilt = {"sandboxes": [("sbx1", "ready")], "meta": [("k", "v")]}
    assert _compare(live, rebuilt) == ["sandboxes[sbx2]: live ('sbx2', 'ready') != rebuilt None"]
    assert _compare(live, live) == []
