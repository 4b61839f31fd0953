"""The gateway's cap on each key's execs and copies at once (sandboxer/gateway/transfers.py);
the real gateway holding it is tests/integration/test_gateway_transfers.py."""

from __future__ import annotations

from pathlib import Path

from sandboxer.gateway.transfers import MAX_KEY_TRANSFERS, KeyTransfers

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_a_key_holds_at_most_its_slots_and_gets_them_back() -> None:
    transfers = KeyTransfers(limit=2)
    assert transfers.take("k1")
    assert transfers.take("k1")
    assert not transfers.take("k1")
    assert transfers.take("k2")  # another key's slots are its own
    transfers.release("k1")
    assert transfers.take("k1")
    for key in ("k1", "k1", "k2"):
        transfers.release(key)
    assert transfers.running == {}  # a key with nothing running is not kept


def test_the_docs_state_the_cap() -> None:
    assert f"at most {MAX_KEY_TRANSFERS} execs and copies" in (DOCS / "http-api.md").read_text()
