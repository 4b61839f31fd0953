"""The name a local sandbox's host-wide resources carry: ``<sandbox id>-<root tag>``.

Cgroups, network namespaces, link slots and uids are the whole host's, shared by every
ext.local root on it (another ``$SANDBOXER_HOME``, another worker's). Each carries its
sandbox's id and its root's tag, so a root finds its own after a crash that lost
``state.json`` and never touches another root's. Pure.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from sandboxer.ids import is_valid_sandbox_id

__all__ = ["owner_of", "resource_name", "root_tag"]


def root_tag(root: Path) -> str:
    """The tag of the root at ``root``: 8 hex digits of its resolved path's hash."""
    return hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:8]


def resource_name(sandbox_id: str, tag: str) -> str:
    return f"{sandbox_id}-{tag}"


def owner_of(name: str, tag: str) -> str | None:
    """The sandbox id in ``name`` when the name is one the root tagged ``tag`` gives (a valid
    sandbox id has no ``-``); None for another root's, or for what no root would write."""
    sandbox_id, dash, its_tag = name.rpartition("-")
    if dash and its_tag == tag and is_valid_sandbox_id(sandbox_id):
        return sandbox_id
    return None
