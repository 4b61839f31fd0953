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
    "HOST_NAME",
    "SANDBOX_ID_RULE",
    "derive_sandbox_id",
    "derive_snapshot_id",
    "is_valid_command_id",
    "is_valid_sandbox_id",
    "new_command_id",
    "system_id_refusal",
]

SANDBOX_ID_RULE = "lowercase letters and digits, 8 to 32 characters"
COMMAND_ID_RULE = "letters, digits, '-' and '_', 1 to 128 characters"

HOST_NAME = r"^[a-z0-9][a-z0-9-]{0,62}$"
"""A host's name in the hosts file, in a create's ``--host`` and in a placement: here, not
in the hosts file's model, so a client that checks a command loads no pydantic model."""

_SANDBOX_ID = re.compile(r"^[a-z0-9]{8,32}$")
_COMMAND_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def is_valid_sandbox_id(value: object) -> bool:
    return isinstance(value, str) and _SANDBOX_ID.fullmatch(value) is not None


def is_valid_command_id(value: object) -> bool:
    return isinstance(value, str) and _COMMAND_ID.fullmatch(value) is not None


SYSTEM_ID_PREFIXES: dict[str, str | None] = {
    "reserve-": None,  # a create's credit reservation (domain/account_decide.py)
    "meter-": None,  # a sandbox's metering (the same)
    "extend-": None,  # an extension's reservation (workers/credit_reservation.py)
    "release-": None,  # an extension's hold given back when it is refused (the same)
    "expire-": "expire",  # the expirer's expiry of a sandbox at a version (workers/expirer.py)
    "reroute-": "reroute",  # a refused provision's reroute (workers/job_dispatch.py)
}
"""Command ids the service derives for its own commands, and the one verb each is sent on.

An aggregate records the ids it has handled, and a handled id decides nothing again; the
commands stream drops a second message with the same id for two minutes. A client id of
one of these forms would be taken for the service's own: ``reserve-<sandbox>`` sent as a
``set_byok`` on the project's account, before the create, and the create reserved nothing
and was never metered; ``expire-<sandbox>-<version>`` sent first, and that expiry was
dropped."""


def system_id_refusal(command_id: str, verb: str) -> str | None:
    """Why a client may not send ``command_id`` on ``verb`` (None: it may)."""
    for prefix, own_verb in SYSTEM_ID_PREFIXES.items():
        if command_id.startswith(prefix) and verb != own_verb:
            return (
                f"command ids that start with {prefix!r} are the service's own; "
                "choose another (a fresh UUID, say)"
            )
    return None


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
