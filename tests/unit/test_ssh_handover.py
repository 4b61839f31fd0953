"""The provision → wait_ready hand-over of the SSH backends: taken once, bounded."""

from __future__ import annotations

from sandboxer.extensions.ssh_handover import Handover


def test_an_entry_is_taken_once() -> None:
    handover: Handover[list[str]] = Handover()
    handover.give("sbxone001", ["web"])
    assert handover.take("sbxone001") == ["web"]
    assert handover.take("sbxone001") is None  # the next wait_ready asks the host


def test_nothing_given_is_none_and_drop_forgets() -> None:
    handover: Handover[str] = Handover()
    assert handover.take("sbxnever01") is None
    handover.give("sbxretry01", "first attempt")
    handover.drop("sbxretry01")  # a retried provision starts over
    assert handover.take("sbxretry01") is None


def test_the_oldest_goes_first_past_the_limit() -> None:
    handover: Handover[int] = Handover(limit=3)
    for number in range(5):
        handover.give(f"sbx{number:06d}", number)
    assert len(handover) == 3
    assert handover.take("sbx000000") is None
    assert handover.take("sbx000001") is None
    assert [handover.take(f"sbx{n:06d}") for n in (2, 3, 4)] == [2, 3, 4]


def test_giving_again_replaces_and_refreshes() -> None:
    handover: Handover[int] = Handover(limit=2)
    handover.give("sbxaaaa01", 1)
    handover.give("sbxbbbb01", 2)
    handover.give("sbxaaaa01", 3)  # now the newest
    handover.give("sbxcccc01", 4)
    assert handover.take("sbxbbbb01") is None
    assert handover.take("sbxaaaa01") == 3
