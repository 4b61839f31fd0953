"""The value a directory input carries when its tree was uploaded: ``object:sha256:<hex>``.

The hex is the SHA-256 of the archive's bytes, so the reference names the
content itself: a worker that fetches it checks that the bytes it got hash
to the name, and the same tree packed twice gets the same name (stored once).
"""

from __future__ import annotations

import re

from sandboxer.errors import WorkspaceRefused

__all__ = [
    "OBJECT_REF_PREFIX",
    "is_object_ref",
    "object_name",
    "object_ref",
    "parse_object_ref",
]

OBJECT_REF_PREFIX = "object:"
_REF = re.compile(r"^object:sha256:([0-9a-f]{64})$")


def object_ref(sha256_hex: str) -> str:
    """The input value that refers to the uploaded archive with this digest."""
    return f"object:sha256:{sha256_hex}"


def object_name(sha256_hex: str) -> str:
    """The object's name in the workspaces bucket."""
    return f"sha256-{sha256_hex}"


def is_object_ref(value: str) -> bool:
    return value.startswith(OBJECT_REF_PREFIX)


def parse_object_ref(value: str) -> str:
    """The digest a reference names; :class:`WorkspaceRefused` when it is malformed."""
    match = _REF.fullmatch(value)
    if match is None:
        raise WorkspaceRefused(
            f"{value[:100]!r} is not a workspace reference; write object:sha256:<64 lowercase "
            "hex digits> (the CLI and the Python client write it for you)"
        )
    return match.group(1)
