"""The labels (E2B metadata, Daytona labels, Modal tags) we put on every provider sandbox.

They are how we find our own: a create whose answer was lost, a sandbox made
by a worker killed before ``ready``, and leaks that ``inspect stale`` shows.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["PROJECT_LABEL", "SANDBOX_LABEL", "labels_for", "our_sandbox_id"]

SANDBOX_LABEL = "sandboxer_id"
PROJECT_LABEL = "sandboxer_project"


def labels_for(sandbox_id: str, project: str | None) -> dict[str, str]:
    labels = {SANDBOX_LABEL: sandbox_id}
    if project:
        labels[PROJECT_LABEL] = project
    return labels


def our_sandbox_id(labels: Mapping[str, str] | None) -> str | None:
    """Our sandbox id when the provider's sandbox carries our label, else None (not ours)."""
    return (labels or {}).get(SANDBOX_LABEL) or None
