"""Limits on a directory archive, enforced where it is packed and again where it is unpacked."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_MAX_ENTRIES", "DEFAULT_MAX_MB", "ArchiveLimits"]

DEFAULT_MAX_MB = 1024
DEFAULT_MAX_ENTRIES = 200_000
"""Files, directories and links together: enough for a large monorepo checkout."""


@dataclass(frozen=True)
class ArchiveLimits:
    """The largest archive (and unpacked content) and the most entries accepted."""

    max_bytes: int = DEFAULT_MAX_MB * 1024 * 1024
    max_entries: int = DEFAULT_MAX_ENTRIES

    @classmethod
    def from_mb(cls, max_mb: int) -> ArchiveLimits:
        return cls(max_bytes=max_mb * 1024 * 1024)
