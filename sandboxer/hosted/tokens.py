"""Tokens a provider issues for one sandbox (an access token for the sandbox's own endpoint).

They are secrets of that sandbox: never in an event, a view, a descriptor or
a log line. The worker that made the sandbox keeps them here, in files only
the service's user can read (``$SANDBOXER_HOME/tokens``, 0700, each 0600),
and hands them to the sandbox's own actor or project on request
(:mod:`sandboxer.workers.token_service`); teardown forgets them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from sandboxer.ids import is_valid_sandbox_id

__all__ = ["SandboxTokens"]


class SandboxTokens:
    def __init__(self, root: Path) -> None:
        self._root = root

    def _file(self, sandbox_id: str) -> Path:
        if not is_valid_sandbox_id(sandbox_id):  # the id names a file: nothing else may
            raise ValueError(f"invalid sandbox id {sandbox_id!r}")
        return self._root / f"{sandbox_id}.json"

    def keep(self, sandbox_id: str, tokens: Mapping[str, str]) -> None:
        """Store (replace) the sandbox's tokens, atomically, readable by this user only."""
        self._root.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = self._file(sandbox_id)
        partial = target.with_suffix(".partial")
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as out:
            json.dump(dict(tokens), out)
        partial.replace(target)

    def read(self, sandbox_id: str) -> dict[str, str]:
        try:
            return dict(json.loads(self._file(sandbox_id).read_text()))
        except FileNotFoundError:
            return {}

    def forget(self, sandbox_id: str) -> None:
        self._file(sandbox_id).unlink(missing_ok=True)
