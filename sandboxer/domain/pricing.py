"""Money from a declaration's prices: integer micro-USD, never floats.

Pure. A declaration states its prices in USD as YAML numbers (floats); they
are read here through ``str()`` into :class:`~decimal.Decimal`, so ``0.0001``
is exactly one ten-thousandth and not the nearest binary fraction, and every
amount that leaves this module is an ``int`` of micro-USD (1 credit = 1
micro-USD, docs/payments.md), rounded up: a fraction of a micro-USD is charged
as a whole one, never dropped.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal

from sandboxer.config.extension_decl import Pricing

__all__ = [
    "MICRO",
    "ceil_microusd",
    "estimate_microusd",
    "per_create_microusd",
    "per_second_microusd",
]

MICRO = Decimal(1_000_000)
"""Micro-USD per USD: the credit unit."""


def _usd(value: float) -> Decimal:
    """A declared USD price as the decimal its YAML spelled (``0.0001``, not 1.0000000000000000479e-4)."""
    return Decimal(str(value))


def ceil_microusd(amount: Decimal) -> int:
    """A micro-USD amount rounded up to a whole credit."""
    return int(amount.to_integral_value(rounding=ROUND_CEILING))


def per_second_microusd(pricing: Pricing, gpu: bool = False) -> Decimal:
    """The price of one second, in micro-USD (exact; a fraction of a credit is possible)."""
    per_second = _usd(pricing.per_second) + (_usd(pricing.gpu_per_second) if gpu else Decimal(0))
    return per_second * MICRO


def per_create_microusd(pricing: Pricing) -> Decimal:
    """The price charged once per sandbox, in micro-USD (exact)."""
    return _usd(pricing.per_create) * MICRO


def estimate_microusd(pricing: Pricing, ttl_seconds: float, gpu: bool = False) -> int:
    """What a sandbox living ``ttl_seconds`` costs: its create plus every second, rounded up."""
    seconds = _usd(ttl_seconds)  # str() of a float: the exact decimal it prints as
    return ceil_microusd(per_create_microusd(pricing) + per_second_microusd(pricing, gpu) * seconds)
