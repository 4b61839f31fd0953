"""Copies of a hosted backend that speak to the provider with another key (BYOK).

A backend implementing :class:`~sandboxer.extensions.capabilities.KeyedBackend`
keeps its copies here, one per key source (``project p's key (env:NAME)``), so a
worker holds one HTTP client or SDK connection per key rather than one per call.
A source whose value changed (a rotated key file) gets a fresh copy; the old one
is closed with the rest when the backend closes, never under a call that may
still be using it. Only a digest of each value is kept, to notice a rotation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Generic, TypeVar

from sandboxer.extensions.capabilities import Closable

__all__ = ["KeyedCopies"]

T = TypeVar("T")


class KeyedCopies(Generic[T]):
    def __init__(self, make: Callable[[str, str], T]) -> None:
        self._make = make
        self._by_source: dict[str, tuple[bytes, T]] = {}
        self._retired: list[T] = []

    def get(self, key: str, source: str) -> T:
        """The copy for ``key`` from ``source``, made on first use."""
        digest = hashlib.sha256(key.encode()).digest()
        held = self._by_source.get(source)
        if held is not None and held[0] == digest:
            return held[1]
        if held is not None:
            self._retired.append(held[1])
        copy = self._make(key, source)
        self._by_source[source] = (digest, copy)
        return copy

    async def aclose(self) -> None:
        copies = [copy for _digest, copy in self._by_source.values()] + self._retired
        self._by_source.clear()
        self._retired.clear()
        for copy in copies:
            if isinstance(copy, Closable):
                await copy.aclose()
