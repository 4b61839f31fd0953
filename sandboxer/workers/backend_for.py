"""Which key a call for one sandbox speaks to its provider with: the project's own (BYOK) or
the operator's (the declaration's).

A project that brought its own key for a backend (``sandboxer credits byok``,
docs/payments.md) pays the provider itself, so every call the workers make for
its sandboxes there (provision, readiness, teardown, retime, pause, resume,
snapshot, exec, tokens) goes through :func:`backend_for`, which hands back the
backend's copy speaking with that key (:class:`KeyedBackend`). Listing what a
provider holds (reconcile, ``inspect stale``, ``reap-stale``) stays on the
operator's key: a BYOK sandbox lives in the project's own provider account.

The key is the one the sandbox's ``routed`` chose with its credits
(``provider_key``: the project's reference, or the operator's), kept for the
sandbox's whole life; the reference is resolved at each call, and the value is
read in the worker, never recorded, and no message carries it.

**Which references a project may name.** A project sets its reference itself,
so the worker resolves only references the operator put there for that project:

- ``env:SANDBOXER_BYOK_<project>_<NAME>`` (``<NAME>`` starts with an uppercase
  letter: ``SANDBOXER_BYOK_team_a_E2B``; a project whose name has a ``-`` cannot
  be named in a variable, and uses a file), or
- ``file:$SANDBOXER_HOME/byok/<project>/<file>`` (symbolic links are followed,
  and the target must lie in that directory too).

Anything else (the operator's ``env:E2B_API_KEY``, another project's key, a
file of the worker) fails the call with a ConfigError naming the reference.

**Which provider sandbox.** A backend that may hold two provider sandboxes of one id
(:class:`~sandboxer.extensions.capabilities.LogGuided`: E2B, where an earlier attempt's
late create runs beside the live one until it is removed) is told here, on every call,
the provisioning the log is at and the provider id its ``ready`` recorded, so it acts on
that sandbox, never on the copy.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TypeVar, cast

from sandboxer.bus.event_store import EventStore
from sandboxer.domain.account_state import OPERATOR_KEY, is_valid_project, project_of
from sandboxer.domain.drift import USABLE_STATUSES
from sandboxer.domain.sandbox_state import SandboxState
from sandboxer.errors import ConfigError
from sandboxer.events.reachability import ProviderAccess, access_of
from sandboxer.extensions.capabilities import KeyedBackend, LogGuided
from sandboxer.secrets import resolve_secrets

__all__ = ["ENV_PREFIX", "backend_for", "backend_for_id", "byok_ref_problem", "on_project_keys"]

B = TypeVar("B")

ENV_PREFIX = "SANDBOXER_BYOK_"
_ENV_REST = re.compile(r"^(?P<project>[a-z0-9][a-z0-9_-]{0,62})_(?P<name>[A-Z][A-Z0-9_]*)$")
"""After the prefix: the project (lowercase) and, after the ``_`` before the first uppercase
letter, the name: a project name has no uppercase letter, so the split is unique."""


def default_home() -> Path:
    raw = os.environ.get("SANDBOXER_HOME")
    return Path(raw or Path.home() / ".local" / "share" / "sandboxer").expanduser()


def byok_ref_problem(project: str, ref: str, home: Path) -> str | None:
    """Why ``project`` may not use the key at ``ref``, or None when it may (see the module)."""
    scheme, _, target = ref.partition(":")
    if scheme == "env":
        if target.startswith(ENV_PREFIX):
            match = _ENV_REST.fullmatch(target.removeprefix(ENV_PREFIX))
            if match is not None and match["project"] == project:
                return None
        if "-" in project:
            return f"a project whose name has a '-' keeps its key in a file under {home}/byok/"
        return (
            f"a project's key must be an environment variable named "
            f"{ENV_PREFIX}{project}_<NAME> (NAME in uppercase), or a file"
        )
    if scheme == "file":
        root = (home / "byok" / project).resolve()
        try:
            resolved = Path(target).expanduser().resolve()
        except (OSError, RuntimeError):
            resolved = None
        if resolved is not None and resolved.is_relative_to(root) and resolved != root:
            return None
        return f"a project's key file must lie in {root}"
    return "a project's key is env:NAME or file:PATH"


async def backend_for(
    store: EventStore, extension: B, state: SandboxState, *, home: Path | None = None
) -> B:
    """``extension`` itself, or its copy speaking with the key the sandbox's project brought
    for it. ConfigError (naming the reference, never a value) when that key cannot be used.
    A :class:`LogGuided` one is told which provider sandbox the log names (see the module)."""
    if _as_it_is(extension):
        return extension
    backend = await _keyed(store, extension, state, home)
    if isinstance(backend, LogGuided):
        backend.follow_log(state.sandbox_id, *named_by_log(state))
    return backend


_AS_IT_IS: dict[type, bool] = {}


def _as_it_is(extension: object) -> bool:
    """Whether ``extension`` is neither keyed nor log-guided, so every call for a sandbox uses
    it as it is (ext.local, the SSH backends, the stub). Asked once per class: a runtime
    Protocol's ``isinstance`` that fails costs 10 to 20 µs on Python 3.11, on every call."""
    kind = type(extension)
    answer = _AS_IT_IS.get(kind)
    if answer is None:
        answer = _AS_IT_IS[kind] = not isinstance(extension, KeyedBackend | LogGuided)
    return answer


def named_by_log(state: SandboxState) -> tuple[tuple[int, int] | None, str | None]:
    """The provisioning the log is at, (generation, attempt), and the provider id its
    ``ready`` recorded while the log calls the sandbox usable (a recreate being provisioned
    still holds the last generation's); None each when the log has none."""
    made_by = (state.generation, state.attempt) if state.attempt >= 1 else None
    usable = state.reachability if state.status in USABLE_STATUSES else None
    access = access_of(usable) if usable else None
    provider_id = access.provider_sandbox_id if isinstance(access, ProviderAccess) else None
    return made_by, provider_id


async def _keyed(store: EventStore, extension: B, state: SandboxState, home: Path | None) -> B:
    if not isinstance(extension, KeyedBackend):
        return extension  # local, SSH, the stub: no provider key to swap
    project = project_of(state.actor)
    if not is_valid_project(project):
        return extension
    # The key chosen when the sandbox was routed, for its whole life: a sandbox lives in
    # the provider account that made it, and a key set or removed since would look for it
    # in the other one (its teardown finding nothing, the sandbox left running).
    ref = state.provider_key
    if ref is None:  # routed before the key was recorded: the account's key now, as then
        ref = (await store.load_account(project)).state.byok.get(extension.id)
    if ref is None or ref == OPERATOR_KEY:
        return extension
    where = f"project {project}'s own key ({ref})"
    problem = byok_ref_problem(project, ref, home or default_home())
    if problem is not None:
        raise ConfigError(
            f"{extension.id}: {where} is not one the worker may use: {problem}. "
            "Ask the operator to provide it there, or set the project's key again "
            "(sandboxer credits byok)",
            extension=extension.id,
            sandbox_id=state.sandbox_id,
        )
    name = f"{where} for {extension.id}"
    value = resolve_secrets({name: ref})[name].strip()
    if not value:
        raise ConfigError(
            f"{extension.id}: {where} is empty", extension=extension.id, sandbox_id=state.sandbox_id
        )
    return cast(B, extension.with_key(value, where))


async def backend_for_id(store: EventStore, extension: B, sandbox_id: str) -> B:
    """:func:`backend_for` when only the sandbox's id is at hand (its state is loaded)."""
    if _as_it_is(extension) or not isinstance(extension, KeyedBackend):
        return extension
    return await backend_for(store, extension, (await store.load(sandbox_id)).state)


async def on_project_keys(store: EventStore, extension: object, sandbox_ids: list[str]) -> set[str]:
    """Those of ``sandbox_ids`` whose project has its own key for ``extension``: they live in
    the project's provider account, which listing with the operator's key cannot see, so
    ``reap-stale`` must not take their absence there for a sandbox that is gone."""
    if not isinstance(extension, KeyedBackend):
        return set()
    keyed: dict[str, bool] = {}
    found = set()
    for sandbox_id in sandbox_ids:
        project = project_of((await store.load(sandbox_id)).state.actor)
        if project not in keyed:
            account = (await store.load_account(project)).state
            keyed[project] = extension.id in account.byok
        if keyed[project]:
            found.add(sandbox_id)
    return found
