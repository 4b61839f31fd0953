"""Identifiers that travel in NATS subjects and file paths, validated before use.

Sandbox ids and command ids become subject tokens and directory names, so
anything beyond a small alphabet (dots, wildcards, slashes, spaces, shell
metacharacters) is refused here, at the edge.
"""

from __future__ import annotations

import base64
import hashlib
import re
import uuid

__all__ = [
    "COMMAND_ID_RULE",
    "SANDBOX_ID_RULE",
    "derive_sandbox_id",
    "derive_snapshot_id",
    "is_valid_command_id",
    "is_valid_sandbox_id",
    "new_command_id",
]

SANDBOX_ID_RULE = "lowercase letters and digits, 8 to 32 characters"
COMMAND_ID_RULE = "letters, digits, '-' and '_', 1 to 128 characters"

_SANDBOX_ID = re.compile(r"^[a-z0-9]{8,32}$")
_COMMAND_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def is_valid_sandbox_id(value: object) -> bool:
    return isinstance(value, str) and _SANDBOX_ID.fullmatch(value) is not None


def is_valid_command_id(value: object) -> bool:
    return isinstance(value, str) and _COMMAND_ID.fullmatch(value) is not None


def derive_sandbox_id(command_id: str) -> str:
    """The sandbox id the service assigns to a create: a pure function of the command id.

    Deriving it (rather than drawing a random one) makes a redelivered or
    re-sent create land on the same aggregate, so it is decided only once.
    """
    digest = hashlib.sha256(command_id.encode()).digest()
    return "sbx" + base64.b32encode(digest).decode().lower().rstrip("=")[:17]


def derive_snapshot_id(command_id: str) -> str:
    """The snapshot id of a snapshot command: derived from its id, as a sandbox's is, so a
    re-sent snapshot command lands on the same snapshot aggregate."""
    digest = hashlib.sha256(b"snapshot:" + command_id.encode()).digest()
    return "snp" + base64.b32encode(digest).decode().lower().rstrip("=")[:17]


def new_command_id() -> str:
    return uuid.uuid4().hex
