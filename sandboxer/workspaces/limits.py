"""Limits on a directory archive, enforced where it is packed and again where it is unpacked."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DEFAULT_MAX_ENTRIES",
    "DEFAULT_MAX_MB",
    "MAX_DEPTH",
    "MAX_PATH_BYTES",
    "NAME_MAX",
    "ArchiveLimits",
    "shape_refusal",
]

DEFAULT_MAX_MB = 1024
DEFAULT_MAX_ENTRIES = 200_000
"""Files, directories and links together: enough for a large monorepo checkout."""
MAX_DEPTH = 256
"""The most names a path in a tree may have (``a/b/c`` has three). The walks that copy and
pack a tree on the way into a sandbox (ext.local's copy, the SSH backends' tar, Python's
``os.walk`` on 3.11) go down one stack frame or two per level and stop with RecursionError
near a thousand frames; a tree of a real project nests a few dozen deep."""
MAX_PATH_BYTES = 3072
"""The longest path in a tree, in bytes: unpacked below a staging or workspace directory it
must stay under the kernel's 4096 (PATH_MAX), or the unpack fails half-way."""
NAME_MAX = 255
"""The longest name of one file or directory, in bytes, that Linux file systems take."""


@dataclass(frozen=True)
class ArchiveLimits:
    """The largest archive (and unpacked content) and the most entries accepted."""

    max_bytes: int = DEFAULT_MAX_MB * 1024 * 1024
    max_entries: int = DEFAULT_MAX_ENTRIES

    @classmethod
    def from_mb(cls, max_mb: int) -> ArchiveLimits:
        return cls(max_bytes=max_mb * 1024 * 1024)


def shape_refusal(relative: str) -> str | None:
    """Why the path ``relative`` (in a tree, ``/``-separated) is deeper or longer than a
    workspace's may be, or None. One rule for packing and unpacking, so that a client never
    packs what a worker refuses."""
    parts = relative.split("/")
    if len(parts) > MAX_DEPTH:
        return f"nests {len(parts)} names deep, more than the {MAX_DEPTH} a workspace path may"
    size = len(relative.encode("utf-8", "surrogateescape"))
    if size > MAX_PATH_BYTES:
        return f"is {size} bytes long, more than the {MAX_PATH_BYTES} a workspace path may be"
    longest = max(len(part.encode("utf-8", "surrogateescape")) for part in parts)
    if longest > NAME_MAX:
        return f"holds a name of {longest} bytes, more than the {NAME_MAX} a file system takes"
    return None
