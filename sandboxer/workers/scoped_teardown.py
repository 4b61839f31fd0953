"""Removing a sandbox only as far as one provisioning reaches, where the backend can tell.

The extension worker (a failed or taken-over attempt's cleanup, a recreate's clean start, its
start's and its leak sweep's removals) and ``reap-stale --apply`` remove through it: between
the moment the log was read and the teardown, another worker may have started a later
provisioning of the sandbox (the job redelivered, a recreate), whose sandbox a plain teardown
would remove too.
"""

from __future__ import annotations

from sandboxer.domain.found import MadeBy
from sandboxer.extensions.base import Extension
from sandboxer.extensions.capabilities import AttemptScoped

__all__ = ["remove_scoped"]


async def remove_scoped(
    backend: Extension, sandbox_id: str, host: str | None, scope: MadeBy | None
) -> None:
    """Tear the sandbox down; with ``scope`` (generation, attempt), only what that
    provisioning and earlier ones made where the backend can tell (:class:`AttemptScoped`),
    never a later one's. Other backends, and no ``scope``, remove everything under the id."""
    if scope is not None and isinstance(backend, AttemptScoped):
        await backend.teardown_attempt(sandbox_id, scope, host=host)
    else:
        await backend.teardown(sandbox_id, host=host)
