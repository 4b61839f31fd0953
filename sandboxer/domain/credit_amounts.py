"""How an amount of credits reads to people (the log keeps integers). Standard library only:
the CLI imports it at start, and ``--help`` loads no pydantic."""

from __future__ import annotations

from decimal import Decimal

__all__ = ["format_credits"]


def format_credits(amount: int) -> str:
    """``181000`` -> ``"181000 credits (0.181000 USD)"``: people read dollars, the log keeps ints."""
    usd = Decimal(amount) / Decimal(1_000_000)
    return f"{amount} credits ({usd:.6f} USD)"
