"""The labels (E2B metadata, Daytona labels, Modal tags) we put on every provider sandbox.

They are how we find our own: a create whose answer was lost, a sandbox made
by a worker killed before ``ready``, and leaks that ``inspect stale`` shows.

Each also names the backend declaration that made it (:data:`EXTENSION_LABEL`): two
declarations may share one provider account (``ext.e2b`` and an ``ext.e2b-eu`` with the
same key), and each must list and tear down only its own. E2B and Modal sandboxes made
before that label have none: whose they are is the log's to say (:func:`maker`).

E2B, Modal and Daytona sandboxes also name the provisioning that made them
(:data:`ATTEMPT_LABEL`), so that an attempt removes only its own and earlier ones'
(:mod:`.attempt_fence`).
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "ATTEMPT_LABEL",
    "EXTENSION_LABEL",
    "PROJECT_LABEL",
    "SANDBOX_LABEL",
    "labels_for",
    "made_elsewhere",
    "maker",
    "our_sandbox_id",
]

SANDBOX_LABEL = "sandboxer_id"
PROJECT_LABEL = "sandboxer_project"
EXTENSION_LABEL = "sandboxer_extension"
"""The declaration's id (``ext.e2b-eu``). The providers' specs set no limit on these keys and
values; an id is ``ext.`` and ``[a-z0-9-]``, safe in E2B's URL-encoded metadata query."""
ATTEMPT_LABEL = "sandboxer_attempt"
"""The provisioning that made the sandbox, ``<generation>.<attempt>`` (digits and a dot)."""


def labels_for(
    sandbox_id: str,
    project: str | None,
    extension: str,
    made_by: tuple[int, int] | None = None,
) -> dict[str, str]:
    """Our labels; with ``made_by`` (generation, attempt), the provisioning's too."""
    labels = {SANDBOX_LABEL: sandbox_id, EXTENSION_LABEL: extension}
    if project:
        labels[PROJECT_LABEL] = project
    if made_by is not None:
        labels[ATTEMPT_LABEL] = "{}.{}".format(*made_by)
    return labels


def our_sandbox_id(labels: Mapping[str, str] | None) -> str | None:
    """Our sandbox id when the provider's sandbox carries our label, else None (not ours)."""
    return (labels or {}).get(SANDBOX_LABEL) or None


def maker(labels: Mapping[str, str] | None) -> str | None:
    """The backend declaration that made the sandbox; None when its labels do not say
    (made before they did)."""
    return (labels or {}).get(EXTENSION_LABEL) or None


def made_elsewhere(labels: Mapping[str, str] | None, extension: str) -> bool:
    """The labels name another backend: the sandbox is not ``extension``'s to list or tear
    down (one without the label may be: the log decides)."""
    made_by = maker(labels)
    return made_by is not None and made_by != extension
